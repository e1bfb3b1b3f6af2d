"""`megalmm prepare`: config + data -> prepared.h5 (designs, groups, rotations).

Also reads prepared.h5 back into a Model for the sampler. The file is written under a
temporary name and renamed when complete, so an interrupted prepare leaves nothing that a
later run could mistake for a finished one.
"""

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from . import FORMAT_VERSION, __version__
from .config import Config, config_to_dict
from .config_schema import FactorAdaptation
from .data import align_individuals, load_covariates, load_phenotypes, load_test_cells
from .kinship import load_kinship
from .design import fixed_design, formula_variables, level_kinship, missing_data_groups
from .cachefile import CACHE_NAME, CacheFile, CacheGroup, fingerprint, is_complete, read_cache
from .errors import UserError
from .factor_count import factor_range
from .gibbs.small_groups import PACKED_MAX_BYTES, is_small
from .gridcache import build_cache, cache_bytes, grid_point_count, slice_count, whitened_bytes
from .lock import prepare_lock
from .rawh5 import install, remove_stale_temporaries, temporary_path
from .gridlmm import Rotation, grid_weights, h2_grid, h2_log_prior
from .model import GroupModel, Model, Priors, Projection, build_model, memory_cache

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
    kinships: tuple           # per random effect: (N, N) row-level Z K Z', or None (identity)
    x1: np.ndarray
    x1_names: list
    x2: np.ndarray
    test_rows: np.ndarray
    test_cols: np.ndarray
    test_values: np.ndarray
    n_phenotyped: int
    effect_names: tuple = ("id",)


def check_factors(config: Config, n_traits: int) -> None:
    setting = config.model.factors
    if isinstance(setting, FactorAdaptation):
        given = {f"model.factors.{key}": getattr(setting, key) for key in ("start", "max")
                 if getattr(setting, key) is not None}
    else:
        given = {"model.factors": setting}
    for key, value in given.items():
        if value > n_traits:
            raise UserError(
                f"{config.path.name}: {key}: {value} factors for {n_traits} traits; use at "
                f"most {n_traits} (more factors than traits cannot be identified)")


def starting_factors(config: Config, n_traits: int) -> int:
    """k of the model (the starting k for `model.factors: auto`)."""
    return factor_range(config.model.factors, n_traits)[0]


def load_inputs(config: Config) -> Inputs:
    """Read and check every input file named by the config."""
    data = config.data
    id_column = data.phenotypes.id
    effects = config.model.random
    covariate_vars = formula_variables(config.model.fixed) + formula_variables(config.model.factor_fixed)
    grouping = [name for name in effects if name != id_column]
    pheno = load_phenotypes(data.phenotypes, extra_covariate_columns=covariate_vars + grouping,
                            text_columns=grouping)
    extra = (load_covariates(data.covariates, text_columns=grouping)
             if data.covariates is not None else None)
    columns = set(pheno.covariates.columns) | (set(extra.columns) if extra is not None else set())
    loaded = [load_kinship(next(k for k in data.kinships if k.name == name), data.psd_tolerance)
              for name in effects]
    # an effect is over individuals (Z = I) when its grouping column is the id column (or, for
    # the first effect, not a column at all: the kinship is keyed by individual); else its
    # column maps individuals to levels
    by_level = [name != id_column and (e > 0 or name in columns) for e, name in enumerate(effects)]
    for e, name in enumerate(effects):
        if by_level[e] and name not in columns:
            raise UserError(
                f"{config.path.name}: model.random[{e}]: '{name}' is neither the id column "
                f"('{id_column}') nor a column of the phenotype or covariate file; name the "
                "grouping column of each random effect")
        if len(effects) > 1 and not by_level[e] and loaded[e].matrix is None:
            raise UserError(
                f"{config.path.name}: model.random[{e}]: an identity kinship over individuals "
                f"('{name}') is the residual itself and cannot be estimated; give it a kinship "
                "or group individuals by another column")
    aligned = align_individuals(pheno, [k for k, lv in zip(loaded, by_level) if not lv])
    check_factors(config, len(aligned.traits))
    covariates = pheno.covariates
    if extra is not None:
        covariates = extra.combine_first(covariates.reindex(extra.index.union(covariates.index)))
    row_kinships, next_row = [], iter(aligned.kinships)
    for e, name in enumerate(effects):
        if not by_level[e]:
            row_kinships.append(next(next_row))
            continue
        levels = covariates[name].reindex(list(aligned.ids))
        lacking = np.flatnonzero(levels.isna().to_numpy()[: aligned.n_phenotyped])
        if lacking.size:
            raise UserError(
                f"{data.phenotypes.file.name}: individual '{aligned.ids[lacking[0]]}' has no value "
                f"in grouping column '{name}' (model.random[{e}]; {lacking.size} phenotyped "
                "individuals lack one); supply it or drop the individual")
        row_kinships.append(level_kinship(levels, loaded[e], loaded[e].source, name))
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
    return Inputs(aligned.ids, aligned.traits, values, tuple(row_kinships), x1, x1_names, x2,
                  test_rows, test_cols, test_values, aligned.n_phenotyped, tuple(effects))


def memory_estimate(n_all: int, group_rows, t: int, divisions: int, b: int,
                    n_effects: int = 1, group_traits=None, k: int = 0) -> int:
    """Bytes prepare (and later sample) holds at peak, the Grid-LMM cache excluded.

    group_rows: number of rows of each missing-data group. Counts the kinships (twice: as read
    and as reordered), each group's eigenvectors (plus workspace), its grid weights and its
    conditioning maps to the other individuals, and the N x t arrays of the sampler (data,
    rotated data, U_R, running means). With several effects also the effect blocks and slice
    workspace of the group being built, one conditioning map per effect, and the running
    means and per-draw arrays of each effect's genetic values (U_by_effect), and each group's
    whitened data (gridcache.WhitenedData, for the groups where it fits WHITENED_MAX_BYTES;
    group_traits: each group's number of traits, t for all when not given), and one group's
    whitened covariates and factors T_s [X1, F] (k: the largest number of factors). With one
    effect, the copies of the small groups' eigenvectors, maps and weights that
    gibbs/small_groups.py packs (at most PACKED_MAX_BYTES of the first two).
    """
    n_train = max(group_rows)
    n_points = grid_point_count(n_effects, divisions)
    floats = (2 * n_effects * n_all * n_all + 2 * n_train * n_train + 4 * n_all * t
              + n_points * n_train + n_all * b)
    if n_effects > 1:
        floats += (n_effects + 4) * n_train * n_train + 8 * n_effects * n_all * t
        n_slices = slice_count(n_effects, divisions)
        traits = group_traits if group_traits is not None else [t] * len(group_rows)
        floats += sum(whitened_bytes(n_g, t_g, n_slices) // 8 for n_g, t_g in zip(group_rows, traits))
        floats += n_slices * n_train * (b + k)  # one group's T_s [X1, F] (SliceProducts)
    for n_g in group_rows:
        n_o = n_all - n_g
        maps = n_effects if n_effects > 1 else 1
        floats += 2 * n_g * n_g + maps * (n_o * n_g + n_o * n_o) + n_points * n_g
    if n_effects == 1 and group_traits is not None:  # copies packed for the small groups
        small = [n_g for n_g, t_g in zip(group_rows, group_traits) if is_small(n_g, t_g)]
        packed = sum(n_g * n_g + (n_all - n_g) * (n_g + n_all - n_g) for n_g in small)
        floats += min(packed, PACKED_MAX_BYTES // 8) + sum(n_points * n_g for n_g in small)
    return 8 * floats


def cache_size(n_train: int, group_rows, n_effects: int, divisions: int) -> int:
    """Bytes of grid_cache.h5 (data; 0 with one effect): one cache per missing-data group,
    plus the factors' unless a group covers every training row and shares it."""
    if n_effects == 1:
        return 0
    sizes = [cache_bytes(n_g, n_effects, divisions) for n_g in group_rows]
    if n_train not in group_rows:
        sizes.append(cache_bytes(n_train, n_effects, divisions))
    return int(sum(sizes))


def check_cache_size(config: Config, size: int, limit: int, directory: Path, group_rows,
                     n_effects: int, echo) -> None:
    """Report the Grid-LMM cache size; refuse when it exceeds the memory limit or free disk."""
    divisions = config.model.h2_divisions
    echo(f"Grid-LMM cache: {n_effects} random effects, {grid_point_count(n_effects, divisions)} "
         f"grid points in {slice_count(n_effects, divisions)} slices per group, "
         f"{len(group_rows)} group(s) of up to {max(group_rows)} rows: {human_bytes(size)} "
         f"({size} bytes) in {CACHE_NAME}")
    fix = ("lower model.h2_divisions (the cache grows as h2_divisions^(m-1)) or "
           "missing_data.max_groups (one cache per group)")
    if size > limit:
        raise UserError(f"{config.path.name}: the Grid-LMM cache needs {human_bytes(size)} but the "
                        f"memory limit is {human_bytes(limit)}; {fix}, or raise --max-memory")
    directory.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(directory).free
    existing = directory / CACHE_NAME
    free += existing.stat().st_size if existing.exists() else 0
    if size > free:
        raise UserError(f"{config.path.name}: the Grid-LMM cache needs {human_bytes(size)} but "
                        f"{directory} has {human_bytes(free)} free; {fix}, or free disk space")


def cache_layout(inputs: Inputs, groups, train: np.ndarray, grid: np.ndarray) -> list:
    """The caches grid_cache.h5 holds: the factors' (every training row) and one per
    missing-data group with fewer rows, each with the fingerprint of its inputs."""
    train_idx = np.flatnonzero(train)

    def group(key, rows):
        idx = train_idx[rows]
        blocks = [None if K is None else K[np.ix_(idx, idx)] for K in inputs.kinships]
        return CacheGroup(key, rows.size, fingerprint(blocks, grid))

    layout = [group("factors", np.arange(train_idx.size))]
    layout += [group(str(gi), g.rows) for gi, g in enumerate(groups) if g.rows.size != train_idx.size]
    return layout


def disk_cache_builder(cache: CacheFile, progress):
    """cache_builder for build_model that streams every slice into grid_cache.h5 (resumable)."""
    def build(key, blocks, grid):
        label = "factors" if key == "factors" else f"group {key}"
        step = None if progress is None else (
            lambda i, total: progress(i, total, f"prepare: cache of {label} (slices)"))
        return build_cache(blocks, grid, store=cache.store(str(key)), progress=step)
    return build


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
            current = (f.attrs.get("format_version") == FORMAT_VERSION
                       and f.attrs.get("config_hash") == prepare_hash(config))
            several = int(f.attrs.get("n_effects", 1)) > 1
            cache_stamp = str(f.attrs.get("cache_stamp", ""))
        # several effects: grid_cache.h5 must be whole and of the layout prepared.h5 names
        return current and (not several or (bool(cache_stamp)
                                             and is_complete(path.parent / CACHE_NAME, cache_stamp)))
    except OSError:
        return False


def write_prepared(path: Path, model: Model, inputs: Inputs, config_hash: str,
                   cache_stamp: str = "") -> None:
    """Write prepared.h5 atomically (temporary file, then rename). cache_stamp: the layout
    hash of the grid_cache.h5 it goes with (several random effects)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    str_dt = h5py.string_dtype()
    with h5py.File(tmp, "w") as f:
        f.attrs.update({"format_version": FORMAT_VERSION, "package_version": __version__,
                        "config_hash": config_hash, "n_train": model.n_train,
                        "n_effects": model.n_effects, "cache_stamp": cache_stamp})
        f.create_dataset("effect_names", data=np.array(model.effect_names, dtype=object), dtype=str_dt)
        _write_effect_projections(f, "factor_effect_projections", model.factor_effect_projections)
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
            _write_effect_projections(gg, "effect_projections", g.effect_projections)
        order = {id_: i for i, id_ in enumerate(model.ids)}
        old_to_new = np.array([order[i] for i in inputs.ids], dtype=np.int64)
        tc = f.create_group("test_cells")
        tc.create_dataset("rows", data=old_to_new[inputs.test_rows] if inputs.test_rows.size else inputs.test_rows)
        tc.create_dataset("cols", data=inputs.test_cols)
        tc.create_dataset("values", data=inputs.test_values)
    install(tmp, path, "prepare:before_rename")


def _write_rotation(group, rot: Rotation) -> None:
    group.create_dataset("rows", data=rot.rows)
    group.create_dataset("vectors", data=rot.vectors, chunks=True)
    group.create_dataset("values", data=rot.values)


def _write_projection(group, proj: Projection) -> None:
    for name in ("other_rows", "mean_map", "chol"):
        group.create_dataset(name, data=getattr(proj, name))


def _write_effect_projections(parent, name: str, projections) -> None:
    group = parent.create_group(name)
    for e, proj in enumerate(projections):
        _write_projection(group.create_group(str(e)), proj)


def _read_effect_projections(parent, name: str) -> tuple:
    if name not in parent:
        return ()
    group = parent[name]
    return tuple(_read_projection(group[str(e)]) for e in range(len(group)))


def _read_rotation(group) -> Rotation:
    return Rotation(group["rows"][()], np.ascontiguousarray(group["vectors"][()]), group["values"][()])


def _read_projection(group) -> Projection:
    return Projection(group["other_rows"][()], group["mean_map"][()], group["chol"][()])


def load_model(config: Config, cache_in_memory: bool | None = None) -> Model:
    """Read prepared.h5 into a Model, with priors, k and the h2 grid from the config.

    With several random effects the Grid-LMM cache comes from grid_cache.h5: into memory
    when cache_in_memory (default: when it takes under half the available memory), else its
    slices are read from disk as the sampler needs them.
    """
    path = prepared_path(config)
    if not path.exists():
        raise UserError(f"{path}: not found; run `megalmm prepare {config.path}` first")
    if not is_up_to_date(config):
        raise UserError(
            f"{path}: was prepared from a different config or megalmm format; "
            f"run `megalmm prepare {config.path}` again"
        )
    divisions = config.model.h2_divisions
    with h5py.File(path, "r") as f:
        n_effects = int(f.attrs.get("n_effects", 1))
        grid = h2_grid(n_effects, divisions)
        cache_path = path.parent / CACHE_NAME
        if n_effects > 1 and cache_in_memory is None:
            size = cache_path.stat().st_size if cache_path.exists() else 0
            cache_in_memory = size < available_memory() // 2
        caches = {}

        def cache(key):
            if n_effects == 1:
                return None
            if key not in caches:
                caches[key] = read_cache(cache_path, key, grid, cache_in_memory)
            return caches[key]

        factor_rot = _read_rotation(f["factor_rot"])
        groups = []
        for i in range(int(f["groups"].attrs["count"])):
            gg = f["groups"][str(i)]
            shared = gg.attrs.get("shares_factor_rotation", False)
            rot = factor_rot if shared else _read_rotation(gg["rot"])
            x1_rot = gg["x1_rot"][()]
            group_cache = cache("factors" if shared else str(i))
            groups.append(GroupModel(
                rows=gg["rows"][()], cols=gg["cols"][()], rot=rot,
                weights=group_cache.weights if group_cache else grid_weights(grid[:, 0], rot.values),
                x1_keep=gg["x1_keep"][()], x1_rot=np.ascontiguousarray(x1_rot), observed=gg["observed"][()],
                miss_ptr=gg["miss_ptr"][()], miss_rows=gg["miss_rows"][()],
                projection=_read_projection(gg["projection"]), cache=group_cache,
                effect_projections=_read_effect_projections(gg, "effect_projections"),
            ))
        pattern_groups = tuple(f["pattern_groups"][str(i)][()] for i in range(len(f["pattern_groups"])))
        check_factors(config, len(f["traits"]))
        p = config.priors
        return Model(
            ids=tuple(s.decode() if isinstance(s, bytes) else s for s in f["ids"][()]),
            traits=tuple(s.decode() if isinstance(s, bytes) else s for s in f["traits"][()]),
            n_train=int(f.attrs["n_train"]), k=starting_factors(config, len(f["traits"])),
            y_std=f["y_std"][()],
            trait_mean=f["trait_mean"][()], trait_sd=f["trait_sd"][()], x1_all=f["x1_all"][()],
            x1_names=tuple(s.decode() if isinstance(s, bytes) else s for s in f["x1_names"][()]),
            x2_all=f["x2_all"][()], grid=grid,
            resid_log_prior=h2_log_prior(p.h2_prior.resid, len(grid), "priors.h2_prior.resid"),
            factor_log_prior=h2_log_prior(p.h2_prior.factors, len(grid), "priors.h2_prior.factors"),
            groups=tuple(groups), factor_rot=factor_rot,
            factor_weights=(cache("factors").weights if n_effects > 1
                            else grid_weights(grid[:, 0], factor_rot.values)),
            x2_rot=f["x2_rot"][()],
            factor_projection=_read_projection(f["factor_projection"]),
            pattern_of_row=f["pattern_of_row"][()], pattern_groups=pattern_groups,
            priors=priors_from_config(config), group_of_trait=f["group_of_trait"][()],
            effect_names=tuple(_text(f["effect_names"][()])) if "effect_names" in f else ("id",),
            factor_cache=cache("factors"),
            factor_effect_projections=_read_effect_projections(f, "factor_effect_projections"),
        )


def _text(values) -> list:
    return [s.decode() if isinstance(s, bytes) else s for s in values]


def read_names(config: Config) -> tuple[list, list, list, int]:
    """(traits, ids, fixed-effect column names, n_train) as prepared.h5 records them."""
    with h5py.File(prepared_path(config), "r") as f:
        return (_text(f["traits"][()]), _text(f["ids"][()]), _text(f["x1_names"][()]),
                int(f.attrs["n_train"]))


def read_effect_names(config: Config) -> list:
    """Grouping columns of the random effects, as prepared.h5 records them."""
    with h5py.File(prepared_path(config), "r") as f:
        return _text(f["effect_names"][()]) if "effect_names" in f else ["id"]


def read_test_cells(config: Config) -> tuple[tuple, tuple, np.ndarray, np.ndarray, np.ndarray]:
    """(ids, traits, rows, cols, values) of the test cells stored by prepare."""
    with h5py.File(prepared_path(config), "r") as f:
        ids = tuple(s.decode() if isinstance(s, bytes) else s for s in f["ids"][()])
        traits = tuple(s.decode() if isinstance(s, bytes) else s for s in f["traits"][()])
        tc = f["test_cells"]
        return ids, traits, tc["rows"][()], tc["cols"][()], tc["values"][()]


def run_prepare(config: Config, force: bool = False, max_memory: int | None = None,
                progress=None, echo=print) -> bool:
    """Build prepared.h5 unless it is up to date. Returns True when work was done.

    One prepare at a time per output directory (a second one waits for the first, then
    finds the files up to date). A prepare killed at any instant leaves the previous
    prepared.h5 whole, and the Grid-LMM cache keeps every slice it finished.
    """
    path = prepared_path(config)
    if not force and is_up_to_date(config):
        if path.with_name(path.name + ".lock").exists() or any(path.parent.glob("*.tmp[0-9]*")):
            with prepare_lock(path):  # tidy what an earlier prepare left when it was killed
                _remove_temporaries(path)
        echo(f"{path} is up to date with {config.path.name}; nothing to do (--force rebuilds)")
        return False
    inputs = load_inputs(config)  # every input is checked before anything is written
    path.parent.mkdir(parents=True, exist_ok=True)
    with prepare_lock(path):
        if not force and is_up_to_date(config):  # another prepare finished it meanwhile
            echo(f"{path} is up to date with {config.path.name}; nothing to do (--force rebuilds)")
            return False
        _remove_temporaries(path)
        _prepare(config, inputs, path, max_memory, progress, echo)
    return True


def _remove_temporaries(path: Path) -> None:
    """Temporary files of killed prepares (the caller holds the prepare lock)."""
    remove_stale_temporaries(path)
    remove_stale_temporaries(path.parent / CACHE_NAME)


def _prepare(config: Config, inputs: Inputs, path: Path, max_memory, progress, echo) -> None:
    n_all, t = inputs.values.shape
    observed = ~np.isnan(inputs.values)
    train = observed.any(axis=1)
    groups = missing_data_groups(observed[train], config.missing_data.max_groups)
    n_effects = len(inputs.kinships)
    group_rows = [g.rows.size for g in groups]
    need = memory_estimate(n_all, group_rows, t, config.model.h2_divisions, inputs.x1.shape[1],
                           n_effects, [g.cols.size for g in groups],
                           factor_range(config.model.factors, t)[1])
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
    cache_path = path.parent / CACHE_NAME
    cache = None
    if n_effects > 1:
        check_cache_size(config, cache_size(int(train.sum()), group_rows, n_effects,
                                            config.model.h2_divisions),
                         limit, path.parent, group_rows, n_effects, echo)
        grid = h2_grid(n_effects, config.model.h2_divisions)
        cache = CacheFile.for_layout(cache_path, cache_layout(inputs, groups, train, grid),
                                     slice_count(n_effects, config.model.h2_divisions), n_effects)
    model = build_model(
        inputs.ids, inputs.traits, inputs.values, list(inputs.kinships), inputs.x1,
        inputs.x1_names, inputs.x2, starting_factors(config, len(inputs.traits)),
        config.model.h2_divisions,
        priors_from_config(config), trait_groups=groups, scale_y=config.model.scale_y,
        resid_h2_prior=config.priors.h2_prior.resid,
        factor_h2_prior=config.priors.h2_prior.factors,
        progress=None if progress is None else (lambda i, n: progress(i, n, "prepare: groups")),
        effect_names=inputs.effect_names,
        cache_builder=disk_cache_builder(cache, progress) if cache is not None else memory_cache,
    )
    write_prepared(path, model, inputs, prepare_hash(config),
                   cache.layout_hash if cache is not None else "")
    if n_effects == 1 and cache_path.exists():  # left by an earlier config with several effects
        cache_path.unlink()
    imputed = sum(int(g.miss_rows.size) for g in model.groups)
    echo(f"wrote {path}: {len(model.groups)} missing-data group(s), {imputed} imputed cells, "
         f"{model.n_train} training rows, fixed effects: {', '.join(model.x1_names)}")
