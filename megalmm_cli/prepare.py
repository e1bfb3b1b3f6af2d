"""`megalmm prepare`: config + data -> prepared.h5 (designs, groups, rotations).

Also reads prepared.h5 back into a Model for the sampler. The file is written under a
temporary name and renamed when complete, so an interrupted prepare leaves nothing that a
later run could mistake for a finished one.
"""

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from . import FORMAT_VERSION, __version__
from .config import Config, config_to_dict
from .data import align_individuals, load_covariates, load_kinship, load_phenotypes, load_test_cells
from .design import fixed_design, formula_variables, missing_data_groups
from .errors import UserError
from .gridlmm import Rotation, grid_weights, h2_grid, h2_log_prior
from .model import GroupModel, Model, Priors, Projection, build_model

PREPARED_NAME = "prepared.h5"


def prepared_path(config: Config) -> Path:
    return Path(config.run.output_dir) / PREPARED_NAME


def prepare_hash(config: Config) -> str:
    """Hash of everything prepare's output depends on (data, model except factors, groups)."""
    plain = config_to_dict(config)
    model = dict(plain["model"])
    model.pop("factors", None)
    keyed = {"data": plain["data"], "model": model, "missing_data": plain["missing_data"]}
    return hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()


def priors_from_config(config: Config) -> Priors:
    p = config.priors
    return Priors(
        tot_eta_shape=p.tot_Y_var.nu - 1.0, tot_eta_rate=p.tot_Y_var.nu * p.tot_Y_var.V,
        tot_f_shape=p.tot_F_var.nu - 1.0, tot_f_rate=p.tot_F_var.nu * p.tot_F_var.V,
        lambda_type=p.lambda_.type, lambda_df=p.lambda_.df,
        delta_1=(p.lambda_.delta_1.shape, p.lambda_.delta_1.rate),
        delta_2=(p.lambda_.delta_2.shape, p.lambda_.delta_2.rate),
        delta_iterations=p.lambda_.delta_iterations_factor, lambda_prop_0=p.lambda_.prop_0,
        b2_type=p.B2.type, b2_prop_0=p.B2.prop_0, b2_ridge_prec=p.B2.ridge_prec,
    )


@dataclass(frozen=True)
class Inputs:
    """Loaded and aligned data, before any heavy linear algebra."""

    ids: tuple
    traits: tuple
    values: np.ndarray        # (N, t) training values (test cells hidden)
    kinship: np.ndarray | None
    x1: np.ndarray
    x1_names: list
    x2: np.ndarray
    test_rows: np.ndarray
    test_cols: np.ndarray
    test_values: np.ndarray
    n_phenotyped: int


def check_factors(config: Config, n_traits: int) -> None:
    if config.model.factors > n_traits:
        raise UserError(
            f"{config.path.name}: model.factors: {config.model.factors} factors for {n_traits} "
            f"traits; use at most {n_traits} (more factors than traits cannot be identified)")


def load_inputs(config: Config) -> Inputs:
    """Read and check every input file named by the config."""
    data = config.data
    if len(config.model.random) > 1:
        raise UserError(
            f"{config.path.name}: model.random: this version fits one random effect "
            f"(got {len(config.model.random)}: {', '.join(config.model.random)}); keep one"
        )
    covariate_vars = formula_variables(config.model.fixed) + formula_variables(config.model.factor_fixed)
    pheno = load_phenotypes(data.phenotypes, extra_covariate_columns=covariate_vars)
    kin_cfg = next(k for k in data.kinships if k.name == config.model.random[0])
    kinship = load_kinship(kin_cfg, data.psd_tolerance)
    aligned = align_individuals(pheno, [kinship])
    check_factors(config, len(aligned.traits))
    covariates = pheno.covariates
    if data.covariates is not None:
        extra = load_covariates(data.covariates)
        covariates = extra.combine_first(covariates.reindex(extra.index.union(covariates.index)))
    values = aligned.values.copy()
    if data.test_cells is not None:
        cells = load_test_cells(data.test_cells, aligned.ids, aligned.traits)
        test_values = np.where(np.isnan(cells.values), values[cells.rows, cells.cols], cells.values)
        values[cells.rows, cells.cols] = np.nan
        test_rows, test_cols = cells.rows, cells.cols
    else:
        test_rows = test_cols = np.zeros(0, dtype=np.int64)
        test_values = np.zeros(0)
    empty = np.flatnonzero(np.isnan(values).all(axis=0))
    if empty.size:
        raise UserError(
            f"{data.phenotypes.file.name}: trait '{aligned.traits[empty[0]]}' has no observed value "
            "left after hiding the test cells; remove it or hide fewer cells"
        )
    x1, x1_names = fixed_design(config.model.fixed, covariates, aligned.ids, aligned.n_phenotyped,
                                "model.fixed")
    if config.model.factor_fixed:
        x2, x2_names = fixed_design(config.model.factor_fixed, covariates, aligned.ids,
                                    aligned.n_phenotyped, "model.factor_fixed")
        keep = [i for i, name in enumerate(x2_names) if name != "Intercept"]
        x2 = x2[:, keep]
    else:
        x2 = np.zeros((len(aligned.ids), 0))
    return Inputs(aligned.ids, aligned.traits, values, aligned.kinships[0], x1, x1_names, x2,
                  test_rows, test_cols, test_values, aligned.n_phenotyped)


def memory_estimate(n_all: int, group_rows, t: int, divisions: int, b: int) -> int:
    """Bytes prepare (and later sample) holds at peak.

    group_rows: number of rows of each missing-data group. Counts the kinship, each group's
    eigenvectors (plus workspace) and its conditioning maps to the other individuals, and the
    n x t arrays of the sampler (data, rotated data, U_R, running means).
    """
    n_train = max(group_rows)
    floats = n_all * n_all + 2 * n_train * n_train + 4 * n_all * t + divisions * n_train + n_all * b
    for n_g in group_rows:
        n_o = n_all - n_g
        floats += 2 * n_g * n_g + n_o * n_g + n_o * n_o
    return 8 * floats


def human_bytes(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.2f} {unit}"
        size /= 1024
    return f"{size:.2f} TiB"


def available_memory() -> int:
    """MemAvailable from /proc/meminfo (bytes), or a large number where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 50


def is_up_to_date(config: Config) -> bool:
    path = prepared_path(config)
    if not path.exists():
        return False
    try:
        with h5py.File(path, "r") as f:
            return (f.attrs.get("format_version") == FORMAT_VERSION
                    and f.attrs.get("config_hash") == prepare_hash(config))
    except OSError:
        return False


def write_prepared(path: Path, model: Model, inputs: Inputs, config_hash: str) -> None:
    """Write prepared.h5 atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    str_dt = h5py.string_dtype()
    with h5py.File(tmp, "w") as f:
        f.attrs.update({"format_version": FORMAT_VERSION, "package_version": __version__,
                        "config_hash": config_hash, "n_train": model.n_train})
        f.create_dataset("ids", data=np.array(model.ids, dtype=object), dtype=str_dt)
        f.create_dataset("traits", data=np.array(model.traits, dtype=object), dtype=str_dt)
        f.create_dataset("x1_names", data=np.array(model.x1_names, dtype=object), dtype=str_dt)
        for name in ("y_std", "trait_mean", "trait_sd", "x1_all", "x2_all", "x2_rot",
                     "pattern_of_row", "group_of_trait"):
            f.create_dataset(name, data=getattr(model, name))
        _write_rotation(f.create_group("factor_rot"), model.factor_rot)
        _write_projection(f.create_group("factor_projection"), model.factor_projection)
        pg = f.create_group("pattern_groups")
        for i, groups in enumerate(model.pattern_groups):
            pg.create_dataset(str(i), data=groups)
        gs = f.create_group("groups")
        gs.attrs["count"] = len(model.groups)
        for i, g in enumerate(model.groups):
            gg = gs.create_group(str(i))
            for name in ("rows", "cols", "x1_keep", "x1_rot", "observed", "miss_ptr", "miss_rows"):
                gg.create_dataset(name, data=getattr(g, name))
            if g.rot is model.factor_rot:
                gg.attrs["shares_factor_rotation"] = True
            else:
                _write_rotation(gg.create_group("rot"), g.rot)
            _write_projection(gg.create_group("projection"), g.projection)
        order = {id_: i for i, id_ in enumerate(model.ids)}
        old_to_new = np.array([order[i] for i in inputs.ids], dtype=np.int64)
        tc = f.create_group("test_cells")
        tc.create_dataset("rows", data=old_to_new[inputs.test_rows] if inputs.test_rows.size else inputs.test_rows)
        tc.create_dataset("cols", data=inputs.test_cols)
        tc.create_dataset("values", data=inputs.test_values)
        f.flush()
    os.replace(tmp, path)


def _write_rotation(group, rot: Rotation) -> None:
    group.create_dataset("rows", data=rot.rows)
    group.create_dataset("vectors", data=rot.vectors, chunks=True)
    group.create_dataset("values", data=rot.values)


def _write_projection(group, proj: Projection) -> None:
    for name in ("other_rows", "mean_map", "chol"):
        group.create_dataset(name, data=getattr(proj, name))


def _read_rotation(group) -> Rotation:
    return Rotation(group["rows"][()], np.ascontiguousarray(group["vectors"][()]), group["values"][()])


def _read_projection(group) -> Projection:
    return Projection(group["other_rows"][()], group["mean_map"][()], group["chol"][()])


def load_model(config: Config) -> Model:
    """Read prepared.h5 into a Model, with priors, k and the h2 grid from the config."""
    path = prepared_path(config)
    if not path.exists():
        raise UserError(f"{path}: not found; run `megalmm prepare {config.path}` first")
    if not is_up_to_date(config):
        raise UserError(
            f"{path}: was prepared from a different config or megalmm format; "
            f"run `megalmm prepare {config.path}` again"
        )
    divisions = config.model.h2_divisions
    grid = h2_grid(1, divisions)[:, 0]
    with h5py.File(path, "r") as f:
        factor_rot = _read_rotation(f["factor_rot"])
        groups = []
        for i in range(int(f["groups"].attrs["count"])):
            gg = f["groups"][str(i)]
            rot = factor_rot if gg.attrs.get("shares_factor_rotation", False) else _read_rotation(gg["rot"])
            x1_rot = gg["x1_rot"][()]
            groups.append(GroupModel(
                rows=gg["rows"][()], cols=gg["cols"][()], rot=rot, weights=grid_weights(grid, rot.values),
                x1_keep=gg["x1_keep"][()], x1_rot=np.ascontiguousarray(x1_rot), observed=gg["observed"][()],
                miss_ptr=gg["miss_ptr"][()], miss_rows=gg["miss_rows"][()],
                projection=_read_projection(gg["projection"]),
            ))
        pattern_groups = tuple(f["pattern_groups"][str(i)][()] for i in range(len(f["pattern_groups"])))
        check_factors(config, len(f["traits"]))
        p = config.priors
        return Model(
            ids=tuple(s.decode() if isinstance(s, bytes) else s for s in f["ids"][()]),
            traits=tuple(s.decode() if isinstance(s, bytes) else s for s in f["traits"][()]),
            n_train=int(f.attrs["n_train"]), k=config.model.factors, y_std=f["y_std"][()],
            trait_mean=f["trait_mean"][()], trait_sd=f["trait_sd"][()], x1_all=f["x1_all"][()],
            x1_names=tuple(s.decode() if isinstance(s, bytes) else s for s in f["x1_names"][()]),
            x2_all=f["x2_all"][()], grid=grid,
            resid_log_prior=h2_log_prior(p.h2_prior.resid, grid.size, "priors.h2_prior.resid"),
            factor_log_prior=h2_log_prior(p.h2_prior.factors, grid.size, "priors.h2_prior.factors"),
            groups=tuple(groups), factor_rot=factor_rot,
            factor_weights=grid_weights(grid, factor_rot.values), x2_rot=f["x2_rot"][()],
            factor_projection=_read_projection(f["factor_projection"]),
            pattern_of_row=f["pattern_of_row"][()], pattern_groups=pattern_groups,
            priors=priors_from_config(config), group_of_trait=f["group_of_trait"][()],
        )


def read_test_cells(config: Config) -> tuple[tuple, tuple, np.ndarray, np.ndarray, np.ndarray]:
    """(ids, traits, rows, cols, values) of the test cells stored by prepare."""
    with h5py.File(prepared_path(config), "r") as f:
        ids = tuple(s.decode() if isinstance(s, bytes) else s for s in f["ids"][()])
        traits = tuple(s.decode() if isinstance(s, bytes) else s for s in f["traits"][()])
        tc = f["test_cells"]
        return ids, traits, tc["rows"][()], tc["cols"][()], tc["values"][()]


def run_prepare(config: Config, force: bool = False, max_memory: int | None = None,
                progress=None, echo=print) -> bool:
    """Build prepared.h5 unless it is up to date. Returns True when work was done."""
    path = prepared_path(config)
    if not force and is_up_to_date(config):
        echo(f"{path} is up to date with {config.path.name}; nothing to do (--force rebuilds)")
        return False
    inputs = load_inputs(config)
    n_all, t = inputs.values.shape
    observed = ~np.isnan(inputs.values)
    train = observed.any(axis=1)
    groups = missing_data_groups(observed[train], config.missing_data.max_groups)
    need = memory_estimate(n_all, [g.rows.size for g in groups], t, config.model.h2_divisions,
                           inputs.x1.shape[1])
    limit = max_memory if max_memory is not None else int(0.8 * available_memory())
    echo(f"data: {n_all} individuals ({int(train.sum())} with phenotypes), {t} traits, "
         f"{int(observed.sum())} observed training cells, {inputs.test_rows.size} test cells, "
         f"{len(groups)} missing-data group(s); memory estimate {human_bytes(need)}")
    if need > limit:
        raise UserError(
            f"{config.path.name}: prepare needs about {human_bytes(need)} but the limit is "
            f"{human_bytes(limit)}; raise --max-memory, or lower missing_data.max_groups "
            "(fewer groups hold fewer rotations)"
        )
    model = build_model(
        inputs.ids, inputs.traits, inputs.values, inputs.kinship, inputs.x1, inputs.x1_names,
        inputs.x2, config.model.factors, config.model.h2_divisions, priors_from_config(config),
        trait_groups=groups, scale_y=config.model.scale_y,
        resid_h2_prior=config.priors.h2_prior.resid, factor_h2_prior=config.priors.h2_prior.factors,
        progress=progress,
    )
    write_prepared(path, model, inputs, prepare_hash(config))
    imputed = sum(int(g.miss_rows.size) for g in model.groups)
    echo(f"wrote {path}: {len(model.groups)} missing-data group(s), {imputed} imputed cells, "
         f"{model.n_train} training rows, fixed effects: {', '.join(model.x1_names)}")
    return True
