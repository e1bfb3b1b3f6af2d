"""The YAML run config: loading, validation, hashing.

`load_config` reads a YAML file into frozen dataclasses (config_schema.py) and checks every key
(config_parse.py); every problem is a one-line `UserError` of the form "<config file>:
<key.path>: <what is wrong>; <what is allowed>". Keys, types, defaults and meanings are
documented in docs/config.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from . import FORMAT_VERSION
from .config_parse import (_SECTIONS, _absolute, _Checker, _parse_data, _parse_mcmc, _parse_missing_data,
                           _parse_model, _parse_posterior, _parse_priors, _parse_run, _parse_summary,
                           _read_yaml, _show)
from .config_schema import Config, KinshipConfig


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML config; every problem raises a one-line UserError."""
    shown = str(path)
    config_path = _absolute(Path(path).expanduser())
    raw = _read_yaml(config_path, shown)
    ck = _Checker(config_path, shown)
    if not isinstance(raw, dict):
        ck.fail("top level", f"must be a mapping of sections ({', '.join(_SECTIONS)}), "
                             f"got {_show(raw)}")
    ck.mapping(raw, "", _SECTIONS)

    version = ck.integer(raw.get("format_version", 1), "format_version", 1)
    if version > FORMAT_VERSION:
        ck.fail("format_version", f"this config was written for a newer megalmm (format_version "
                                  f"{version}, this megalmm reads up to {FORMAT_VERSION}); "
                                  "upgrade megalmm")
    if raw.get("data") is None:
        ck.fail("data", "required section is missing; it needs at least data.phenotypes.file "
                        "and data.kinships")
    data = _parse_data(ck, raw["data"])
    return Config(
        path=config_path,
        format_version=version,
        run=_parse_run(ck, raw.get("run"), config_path),
        data=data,
        model=_parse_model(ck, raw.get("model"), data),
        priors=_parse_priors(ck, raw.get("priors")),
        missing_data=_parse_missing_data(ck, raw.get("missing_data")),
        mcmc=_parse_mcmc(ck, raw.get("mcmc")),
        posterior=_parse_posterior(ck, raw.get("posterior")),
        summary=_parse_summary(ck, raw.get("summary")),
    )


def _plain(value):
    """Dataclasses -> dicts with YAML key names, tuples -> lists, paths -> strings."""
    if dataclasses.is_dataclass(value):
        return {f.name.rstrip("_"): _plain(getattr(value, f.name))
                for f in dataclasses.fields(value)}
    if isinstance(value, tuple) and value and isinstance(value[0], KinshipConfig):
        return {k.name: {n: v for n, v in _plain(k).items() if n != "name"} for k in value}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def config_to_dict(config: Config) -> dict:
    """A plain, YAML-serialisable dict in the shape of the YAML config (without `path`).

    Writing it out with yaml.safe_dump gives a config that loads back to the same Config.
    """
    plain = _plain(config)
    del plain["path"]
    return plain


def config_hash(config: Config, sections: tuple[str, ...]) -> str:
    """sha256 hex of a canonical JSON of the named top-level sections (paths, not file contents)."""
    plain = config_to_dict(config)
    unknown = [s for s in sections if s not in plain]
    if unknown:
        raise ValueError(f"unknown config section(s) {unknown}; known: {sorted(plain)}")
    chosen = {s: plain[s] for s in sections}
    text = json.dumps(chosen, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
