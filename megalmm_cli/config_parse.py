"""Reading the YAML run config and checking it key by key, section by section.

Every problem is a one-line `UserError` of the form "<config file>: <key.path>: <what is
wrong>; <what is allowed>"; config.load_config puts the sections together.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
from functools import partial
from pathlib import Path

import yaml

from .config_schema import (
    TABLE_SUFFIXES, KINSHIP_SUFFIXES, PLINK_SUFFIXES, MAX_RANDOM_EFFECTS,
    POSTERIOR_SAMPLES, POSTERIOR_MEANS, RunConfig, PhenotypesConfig, CovariatesConfig,
    KinshipConfig, TestCellsConfig, DataConfig, FactorAdaptation, ModelConfig, LambdaPrior, B2Prior,
    H2Prior, PriorsConfig, MissingDataConfig, McmcConfig, PosteriorConfig, SummaryConfig,
)
from .errors import UserError

_SECTIONS = ("format_version", "run", "data", "model", "priors", "missing_data", "mcmc",
             "posterior", "summary")


# ---------------------------------------------------------------------------------------------
# YAML reading
# ---------------------------------------------------------------------------------------------

class _Loader(yaml.SafeLoader):
    """yaml.SafeLoader that also reads `1e-6` as a float and refuses duplicate keys."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def _construct_map(loader, node):
    """Build a mapping like SafeLoader does, but fail on a key written twice."""
    seen = set()
    for key_node, _ in node.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
            if key_node.value in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key '{key_node.value}'", key_node.start_mark)
            seen.add(key_node.value)
    return loader.construct_yaml_map(node)


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_map)


def _read_yaml(path: Path, shown: str):
    """Parse the config file; file, encoding and syntax problems become UserErrors."""
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "not found"
        raise UserError(f"{shown}: config file {what}; give the path of a YAML config file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{shown}: cannot read the config file ({exc}); it must be UTF-8 text")
    try:
        raw = yaml.load(text, Loader=_Loader)  # a SafeLoader: no arbitrary objects
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "YAML"
        problem = getattr(exc, "problem", None) or str(exc)
        raise UserError(f"{shown}: {where}: invalid YAML ({problem}); "
                        "check indentation, colons and quoting there")
    if raw is None:
        raise UserError(f"{shown}: the config file is empty; it needs at least "
                        "data.phenotypes.file and data.kinships (see docs/config.md)")
    return raw


# ---------------------------------------------------------------------------------------------
# Validation helpers
# ---------------------------------------------------------------------------------------------

def _show(value) -> str:
    """Describe a YAML value for an error message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, str):
        return repr(value)
    return str(value)


def _nearest(word, choices) -> str | None:
    """The choice closest to word (difflib), or None."""
    choices = [str(c) for c in choices]
    close = difflib.get_close_matches(str(word), choices, n=1, cutoff=0.6)
    close = close or [c for c in choices if c.lower() == str(word).lower()]
    return close[0] if close else None


def _suggest(word, choices) -> str:
    """'did you mean ...?' for the nearest choice, else the list of choices."""
    near = _nearest(word, choices)
    return f"did you mean '{near}'?" if near else "allowed: " + ", ".join(map(str, choices))


class _Checker:
    """Holds the config file's name and directory, and checks values key by key."""

    def __init__(self, path: Path, shown: str):
        self.shown = shown
        self.base = path.parent

    def fail(self, key: str, message: str):
        raise UserError(f"{self.shown}: {key}: {message}")

    def mapping(self, raw, key: str, allowed) -> dict:
        """A mapping with only allowed keys (null counts as an empty mapping)."""
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            self.fail(key, f"must be a mapping (key: value), got {_show(raw)}; "
                           f"allowed keys: {', '.join(allowed)}")
        for name in raw:
            if name not in allowed:
                self.fail(_join(key, name), f"unknown key; {_suggest(name, allowed)}")
        return raw

    def required(self, raw: dict, key: str, name: str):
        if raw.get(name) is None:
            self.fail(_join(key, name), "required key is missing")
        return raw[name]

    def integer(self, value, key: str, minimum: int):
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(key, f"must be an integer >= {minimum}, got {_show(value)}")
        if value < minimum:
            self.fail(key, f"must be an integer >= {minimum}, got {value}")
        return value

    def number(self, value, key: str, low=None, high=None, low_open=True, high_open=True):
        """A finite number (int or float, never a bool) within the given bounds."""
        bounds = []
        if low is not None:
            bounds.append(f"{'>' if low_open else '>='} {low}")
        if high is not None:
            bounds.append(f"{'<' if high_open else '<='} {high}")
        wanted = "must be a number" + (" " + " and ".join(bounds) if bounds else "")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(key, f"{wanted}, got {_show(value)}")
        if not math.isfinite(value):
            self.fail(key, f"{wanted}, got {value}")
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and (value >= high if high_open else value > high)
        if too_low or too_high:
            self.fail(key, f"{wanted}, got {value}")
        return float(value)

    def boolean(self, value, key: str) -> bool:
        if not isinstance(value, bool):
            self.fail(key, f"must be true or false, got {_show(value)}")
        return value

    def text(self, value, key: str, allow_int: bool = False) -> str:
        """A non-empty string; allow_int also takes an integer (column names like 2019)."""
        if allow_int and isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str) or not value.strip():
            hint = " (quote it)" if isinstance(value, (bool, int, float)) else ""
            self.fail(key, f"must be a non-empty string{hint}, got {_show(value)}")
        return value

    def choice(self, value, key: str, choices) -> str:
        """One of choices, matched case-insensitively; returns the canonical spelling."""
        if isinstance(value, str):
            for c in choices:
                if value.lower() == c.lower():
                    return c
        near = _nearest(value, choices) if isinstance(value, str) else None
        hint = f"; did you mean '{near}'?" if near else ""
        self.fail(key, f"must be one of {', '.join(choices)}, got {_show(value)}{hint}")

    def text_list(self, value, key: str, allow_int=False, choices=None) -> tuple[str, ...]:
        """A list of strings without repeats (a single string counts as a one-item list)."""
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list):
            self.fail(key, f"must be a list of strings, got {_show(value)}")
        items = tuple(self.text(v, f"{key}[{i}]", allow_int) for i, v in enumerate(value))
        for i, item in enumerate(items):
            if choices is not None and item not in choices:
                self.fail(f"{key}[{i}]", f"unknown name {item!r}; {_suggest(item, choices)}")
            if item in items[:i]:
                self.fail(f"{key}[{i}]", f"{item!r} is listed twice; list each name once")
        return items

    def missing_values(self, value, key: str) -> tuple[str, ...]:
        """Strings read as missing; empty strings are allowed here."""
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            if isinstance(item, bool) or not isinstance(item, (str, int)):
                self.fail(f"{key}[{i}]", f"must be a string, got {_show(item)}")
        return tuple(str(item) for item in items)

    def h2_weights(self, value, key: str):
        """'uniform' or a list of non-negative prior weights, one per grid point."""
        if isinstance(value, str):
            return self.choice(value, key, ("uniform",))
        if not isinstance(value, list) or not value:
            self.fail(key, f"must be 'uniform' or a list of non-negative weights, one per grid "
                           f"point, got {_show(value)}")
        weights = tuple(self.number(w, f"{key}[{i}]", low=0, low_open=False)
                        for i, w in enumerate(value))
        if sum(weights) <= 0:
            self.fail(key, "the weights must not all be zero")
        return weights

    def path(self, value, key: str, suffixes=None, must_exist=True) -> Path:
        """A path relative to the config file's directory, returned absolute."""
        text = self.text(value, key)
        path = _absolute(self.base / Path(text).expanduser())
        suffix = path.suffix.lower()
        if suffix == ".gz" and Path(path.stem).suffix.lower() in TABLE_SUFFIXES:
            suffix = Path(path.stem).suffix.lower()  # a gzip-compressed table: .csv.gz
        if suffixes and suffix not in suffixes:
            self.fail(key, f"must be a {_or(suffixes)} file (tables may be gzip-compressed: "
                           f".csv.gz), got {text!r}")
        if must_exist and path.is_dir():
            self.fail(key, f"{path} is a directory, not a file; name the file")
        if must_exist and not path.is_file():
            self.fail(key, f"file not found: {path}; paths are relative to the config file's "
                           f"directory ({self.base})")
        return path

    def formula(self, value, key: str) -> str:
        text = self.text(value, key).strip()
        if not text.startswith("~"):
            self.fail(key, f"must be an R-style formula starting with '~' "
                           f"(e.g. '~ 1' or '~ Population'), got {value!r}")
        return text


def _absolute(path: Path) -> Path:
    """Absolute and normalised ('..' removed) without following symlinks (git-annex, DVC)."""
    return Path(os.path.abspath(path))


def _join(key: str, name) -> str:
    return f"{key}.{name}" if key else str(name)


def _or(words) -> str:
    return ", ".join(words[:-1]) + " or " + words[-1]


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------

def _optional(check):
    """Wrap a check so that null gives None."""
    return lambda value, key: None if value is None else check(value, key)


def _build(ck: _Checker, cls, raw, key: str, checks: dict, required=()):
    """Table-driven section: run checks[name](value, "key.name") for each key given.

    Keys not given keep the dataclass default. The YAML key "lambda" fills the field lambda_.
    """
    raw = ck.mapping(raw, key, tuple(checks))
    for name in required:
        ck.required(raw, key, name)
    kwargs = {}
    for name, check in checks.items():
        if name in raw:
            kwargs["lambda_" if name == "lambda" else name] = check(raw[name], _join(key, name))
    return cls(**kwargs)


def _parse_run(ck: _Checker, raw, config_path: Path) -> RunConfig:
    raw = ck.mapping(raw, "run", ("name", "output_dir", "seed"))
    name = ck.text(raw["name"], "run.name") if "name" in raw else config_path.stem
    if "/" in name or "\\" in name or name in (".", ".."):
        ck.fail("run.name", f"must be a plain name without '/' (it names the run), got {name!r}")
    if "output_dir" in raw:
        output_dir = ck.path(raw["output_dir"], "run.output_dir", must_exist=False)
    else:
        output_dir = ck.base / "runs" / name
    seed = ck.integer(raw["seed"], "run.seed", 0) if "seed" in raw else RunConfig.seed
    return RunConfig(name=name, output_dir=output_dir, seed=seed)


def _parse_phenotypes(ck: _Checker, raw, key: str) -> PhenotypesConfig:
    column = partial(ck.text, allow_int=True)
    columns = partial(ck.text_list, allow_int=True)
    pheno = _build(ck, PhenotypesConfig, raw, key, {
        "file": partial(ck.path, suffixes=TABLE_SUFFIXES),
        "layout": partial(ck.choice, choices=("wide", "tall")),
        "id": _optional(column),
        "trait": _optional(column),
        "value": _optional(column),
        "traits": _optional(columns),
        "covariate_columns": columns,
        "missing_values": ck.missing_values,
    }, required=("file",))

    if pheno.layout == "tall":
        for name, meaning in (("trait", "trait names"), ("value", "values")):
            if getattr(pheno, name) is None:
                ck.fail(f"{key}.{name}",
                        f"required with layout: tall (the column holding the {meaning})")
        for name in ("traits", "covariate_columns"):
            if getattr(pheno, name):
                ck.fail(f"{key}.{name}", "only allowed with layout: wide; with layout: tall the "
                                         "traits are the values of the trait column")
        named = [c for c in (pheno.id, pheno.trait, pheno.value) if c is not None]
        if len(set(named)) < len(named):
            ck.fail(key, f"id, trait and value must be different columns, got {', '.join(named)}")
        return pheno

    for name in ("trait", "value"):
        if getattr(pheno, name) is not None:
            ck.fail(f"{key}.{name}", "only allowed with layout: tall; with layout: wide "
                                     "list the trait columns in data.phenotypes.traits")
    if pheno.traits == ():
        ck.fail(f"{key}.traits", "must list at least one trait column, or be left out "
                                 "(then all columns except id and covariate_columns are traits)")
    both = sorted(set(pheno.traits or ()) & set(pheno.covariate_columns))
    if both:
        ck.fail(f"{key}.covariate_columns", f"{', '.join(both)} also listed in {key}.traits; "
                                            "a column is either a trait or a covariate")
    if pheno.id is not None and pheno.id in (pheno.traits or ()) + pheno.covariate_columns:
        ck.fail(f"{key}.id",
                f"the id column {pheno.id!r} cannot also be a trait or covariate column")
    return pheno


def _plink_prefix(ck: _Checker, value, key: str) -> Path:
    """A PLINK prefix; `geno.bed` is taken as prefix `geno`. All three files must exist."""
    prefix = ck.path(value, key, must_exist=False)
    if prefix.suffix.lower() in PLINK_SUFFIXES:
        prefix = prefix.with_suffix("")
    for suffix in PLINK_SUFFIXES:
        if not prefix.with_name(prefix.name + suffix).is_file():
            ck.fail(key, f"PLINK file not found: {prefix}{suffix}; plink is a prefix and "
                         f"{prefix.name}.bed, .bim and .fam must all exist "
                         f"(paths are relative to {ck.base})")
    return prefix


def _parse_kinship(ck: _Checker, name: str, raw) -> KinshipConfig:
    key = f"data.kinships.{name}"
    if raw is None:
        return KinshipConfig(name=name, identity=True)
    if isinstance(raw, str):  # shorthand: `Line: K.csv`
        raw = {"file": raw}
    kin = _build(ck, partial(KinshipConfig, name=name), raw, key, {
        "file": _optional(partial(ck.path, suffixes=KINSHIP_SUFFIXES)),
        "h5_dataset": ck.text,
        "plink": _optional(partial(_plink_prefix, ck)),
        "genotypes": _optional(partial(ck.path, suffixes=TABLE_SUFFIXES)),
        "identity": ck.boolean,
    })
    sources = [s for s in ("file", "plink", "genotypes") if getattr(kin, s) is not None]
    if kin.identity and sources:
        ck.fail(f"{key}.identity", f"identity: true cannot be combined with {sources[0]}; "
                                   "give either a kinship source or identity: true")
    if len(sources) > 1:
        ck.fail(key, f"give exactly one of file, plink or genotypes, got {' and '.join(sources)}")
    if not sources and not kin.identity:
        ck.fail(key, "needs one of file, plink or genotypes (or identity: true, or null, "
                     "for independent levels)")
    return kin


def _parse_kinships(ck: _Checker, raw, key: str) -> tuple[KinshipConfig, ...]:
    example = "e.g. kinships: {Line: {file: K.csv}}"
    if not isinstance(raw, dict):
        ck.fail(key, f"must be a mapping from grouping column to kinship, got {_show(raw)}; "
                     f"{example}")
    if not raw:
        ck.fail(key, f"needs at least one kinship; {example}")
    if len(raw) > MAX_RANDOM_EFFECTS:
        ck.fail(key, f"at most {MAX_RANDOM_EFFECTS} kinships are supported, got {len(raw)}")
    return tuple(_parse_kinship(ck, ck.text(name, key, allow_int=True), spec)
                 for name, spec in raw.items())


def _parse_data(ck: _Checker, raw) -> DataConfig:
    column = partial(ck.text, allow_int=True)
    table = partial(ck.path, suffixes=TABLE_SUFFIXES)
    return _build(ck, DataConfig, raw, "data", {
        "phenotypes": partial(_parse_phenotypes, ck),
        "covariates": _optional(partial(_build, ck, CovariatesConfig, checks={
            "file": table, "id": _optional(column)}, required=("file",))),
        "kinships": partial(_parse_kinships, ck),
        "test_cells": _optional(partial(_build, ck, TestCellsConfig, checks={
            "file": table, "id": column, "trait": column, "value": column}, required=("file",))),
        "psd_tolerance": partial(ck.number, low=0, low_open=False),
    }, required=("phenotypes", "kinships"))


def _parse_model(ck: _Checker, raw, data: DataConfig) -> ModelConfig:
    model = _build(ck, ModelConfig, raw, "model", {
        "fixed": ck.formula,
        "factor_fixed": _optional(ck.formula),
        "random": partial(ck.text_list, allow_int=True),
        "factors": partial(_parse_factors, ck),
        "h2_divisions": partial(ck.integer, minimum=2),
        "scale_y": ck.boolean,
    })
    names = tuple(k.name for k in data.kinships)
    if not model.random:  # not given: the id column if it has a kinship, else the first kinship
        if raw and "random" in raw:
            ck.fail("model.random", f"must list 1 to {MAX_RANDOM_EFFECTS} grouping columns "
                                    f"(keys of data.kinships: {', '.join(names)})")
        default = data.phenotypes.id if data.phenotypes.id in names else names[0]
        return dataclasses.replace(model, random=(default,))
    if len(model.random) > MAX_RANDOM_EFFECTS:
        ck.fail("model.random", f"must list 1 to {MAX_RANDOM_EFFECTS} grouping columns, "
                                f"got {len(model.random)}")
    for i, name in enumerate(model.random):
        if name not in names:
            ck.fail(f"model.random[{i}]", f"{name!r} is not a key of data.kinships; "
                                          f"{_suggest(name, names)}")
    return model


def _parse_factors(ck: _Checker, raw, key: str):
    """model.factors: an integer k, `auto`, or a mapping {start, max, epsilon}."""
    if raw == "auto":
        return FactorAdaptation()
    if isinstance(raw, dict):
        adaptation = _build(ck, FactorAdaptation, raw, key, {
            "start": _optional(partial(ck.integer, minimum=1)),
            "max": _optional(partial(ck.integer, minimum=1)),
            "epsilon": partial(ck.number, low=0, high=1)})
        if None not in (adaptation.start, adaptation.max) and adaptation.max < adaptation.start:
            ck.fail(_join(key, "max"), f"must be >= start ({adaptation.start}), got {adaptation.max}")
        return adaptation
    if isinstance(raw, int) and not isinstance(raw, bool):
        return ck.integer(raw, key, minimum=1)
    ck.fail(key, f"must be an integer >= 1, `auto`, or a mapping {{start: .., max: ..}}, "
                 f"got {_show(raw)}")


def _parse_priors(ck: _Checker, raw) -> PriorsConfig:
    positive = partial(ck.number, low=0)
    share = partial(ck.number, low=0, high=1)

    def keep_defaults(default, checks):
        """A sub-mapping such as {V, nu}; a key left out keeps its value in `default`."""
        return partial(_build, ck, partial(dataclasses.replace, default), checks=checks)

    var_prior = {"V": positive, "nu": partial(ck.number, low=1)}
    gamma = {"shape": positive, "rate": positive}
    lam = LambdaPrior()
    return _build(ck, PriorsConfig, raw, "priors", {
        "tot_Y_var": keep_defaults(PriorsConfig.tot_Y_var, var_prior),
        "tot_F_var": keep_defaults(PriorsConfig.tot_F_var, var_prior),
        "lambda": partial(_build, ck, LambdaPrior, checks={
            "type": partial(ck.choice, choices=("ARD", "horseshoe")),
            "df": positive,
            "delta_1": keep_defaults(lam.delta_1, gamma),
            "delta_2": keep_defaults(lam.delta_2, gamma),
            "delta_iterations_factor": partial(ck.integer, minimum=1),
            "prop_0": share,
        }),
        "B2": partial(_build, ck, B2Prior, checks={
            "type": partial(ck.choice, choices=("horseshoe", "ridge")),
            "prop_0": share,
            "ridge_prec": positive,
        }),
        "h2_prior": partial(_build, ck, H2Prior, checks={
            "resid": ck.h2_weights, "factors": ck.h2_weights}),
    })


def _parse_missing_data(ck: _Checker, raw) -> MissingDataConfig:
    def max_groups(value, key):
        if isinstance(value, str) and value.lower() == "auto":
            return "auto"
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return value
        ck.fail(key, f"must be 'auto' or an integer >= 1, got {_show(value)}")

    return _build(ck, MissingDataConfig, raw, "missing_data", {"max_groups": max_groups})


def _parse_mcmc(ck: _Checker, raw) -> McmcConfig:
    minimum = {"burn_in": 0, "reorder_every": 0, "samples": 1, "thin": 1,
               "checkpoint_every": 1, "chains": 1}
    checks = {name: partial(ck.integer, minimum=low) for name, low in minimum.items()}
    return _build(ck, McmcConfig, raw, "mcmc", checks)


def _parse_posterior(ck: _Checker, raw) -> PosteriorConfig:
    return _build(ck, PosteriorConfig, raw, "posterior", {
        "samples": partial(ck.text_list, choices=POSTERIOR_SAMPLES),
        "means": partial(ck.text_list, choices=POSTERIOR_MEANS),
        "dtype": partial(ck.choice, choices=("float32", "float64")),
    })


def _parse_summary(ck: _Checker, raw) -> SummaryConfig:
    return _build(ck, SummaryConfig, raw, "summary", {
        "traits": partial(ck.text_list, allow_int=True),
        "top": partial(ck.integer, minimum=1),
        "by": partial(ck.choice, choices=("h2", "loading")),
        "matrices": ck.boolean,
        "dtype": partial(ck.choice, choices=("float32", "float64")),
    })
