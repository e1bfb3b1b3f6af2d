"""`megalmm export`: the stored draws as an ArviZ InferenceData file (netCDF4 via h5netcdf).

Groups, each with dimensions (chain, draw, ...) and named coordinates:

- posterior: every stored parameter as in the chain files (Lambda, f_h2, resid_h2,
  tot_eta_prec, B1, ...; U_cells, the monitored genetic values) and, per trait and draw, the
  identified quantities summarize reports: h2, G_var, R_var (and h2_by_effect with several
  random effects), computed exactly as summarize computes them;
- sample_stats: the iteration of each draw and the number of effective factors.

Chains are numbered as their files; chains of unequal length are cut to the shortest, as the
diagnostics are. The file is written under a temporary name and renamed.
"""

from __future__ import annotations

import time
from pathlib import Path

import h5py
import numpy as np

from . import __version__
from .config import Config
from .covariance import chain_draws, effective_factors, trait_diagonals
from .errors import UserError
from .posterior import u_cell_indices
from .prepare import read_effect_names, read_names
from .rawh5 import install, temporary_path
from .runinfo import chain_number, chains_for_reading, require_prepared
from .storage import ChainFile

CHUNK_DRAWS = 64
# vectors per draw are written in float64 (ArviZ computes its diagnostics in the data's
# precision: so its R-hat of them equals diagnostics.csv); matrices as stored (float32 default)
AS_FLOAT64 = ("f_h2", "resid_h2", "tot_eta_prec", "tot_f_prec", "U_cells")


def _require_h5netcdf():
    try:
        import h5netcdf
    except ImportError:
        raise UserError("megalmm export needs the h5netcdf package; install it with "
                        "`pip install \"megalmm-cli[arviz]\"` (or `pip install h5netcdf`)") from None
    return h5netcdf


def _strings(values) -> np.ndarray:
    return np.array([str(v) for v in values], dtype=object)


def _dims_of(name: str, shape: tuple, n_effects: int) -> tuple:
    """Dimension names of a stored parameter's draw (without chain, draw)."""
    per_effect = ("effect",) if n_effects > 1 else ()
    dims = {
        "Lambda": ("factor", "trait"), "f_h2": per_effect + ("factor",),
        "resid_h2": per_effect + ("trait",), "tot_eta_prec": ("trait",),
        "tot_f_prec": ("factor",), "B1": ("fixed_effect", "trait"),
        "B2F": ("factor_covariate", "factor"), "F": ("id", "factor"), "U_cells": ("u_cell",),
    }.get(name)
    if dims is None or len(dims) != len(shape):
        dims = tuple(f"{name}_dim_{i}" for i in range(len(shape)))
    return dims


def run_export(config: Config, output: Path | None = None, echo=print, warn=None,
               progress=None) -> Path:
    """Write the InferenceData file; returns its path. progress: callable(done, total, text)."""
    h5netcdf = _require_h5netcdf()
    require_prepared(config)
    chains = [ChainFile(p) for p in chains_for_reading(config, warn)]
    counts = {c.path: c.progress().n_draws for c in chains}
    chains = [c for c in chains if counts[c.path] > 0]
    if not chains:
        raise UserError(f"{config.path.name}: the chains hold no draws yet; let `megalmm sample "
                        f"{config.path}` run past burn-in first")
    draws = min(counts[c.path] for c in chains)
    if warn is not None and len({counts[c.path] for c in chains}) > 1:
        warn(f"chains hold {', '.join(str(counts[c.path]) for c in chains)} draws; each is cut "
             f"to {draws}, as in the diagnostics")
    traits, ids, fixed_names, n_train = read_names(config)
    effect_names = read_effect_names(config)
    names = chains[0].sample_names()
    shapes = {}
    for chain in chains:  # the widest shape over chains (their k may differ: factors: auto)
        with chain._open() as f:
            for name in names:
                shape, dtype = f["samples"][name].shape[1:], f["samples"][name].dtype
                if name in shapes:
                    shape = tuple(max(a, b) for a, b in zip(shape, shapes[name][0]))
                shapes[name] = (shape, dtype)
    k = shapes["Lambda"][0][0] if "Lambda" in shapes else 0
    n_effects = len(effect_names)

    path = Path(output) if output else Path(config.run.output_dir) / "posterior.nc"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    total = len(chains) * (len(names) + 1)
    done = 0
    try:
        with h5netcdf.File(tmp, "w") as nc:
            post = nc.create_group("posterior")
            stats = nc.create_group("sample_stats")
            coords = {"chain": np.array([chain_number(c.path) for c in chains]),
                      "draw": np.arange(draws), "trait": _strings(traits),
                      "factor": np.arange(k), "fixed_effect": _strings(fixed_names),
                      "effect": _strings(effect_names), "id": _strings(ids[:n_train])}
            rows, cols = u_cell_indices(n_train, len(traits))
            coords["u_cell"] = _strings(f"U[{ids[i]},{traits[j]}]" for i, j in zip(rows, cols))
            if "B2F" in shapes:
                coords["factor_covariate"] = np.arange(shapes["B2F"][0][0])
            for group in (post, stats):
                group.dimensions = {"chain": len(chains), "draw": draws}
                group.attrs.update(created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                   inference_library="megalmm", inference_library_version=__version__)
                for dim in ("chain", "draw"):
                    group.create_variable(dim, (dim,), data=coords[dim])

            def variable(group, name, dims, dtype):
                for dim in dims:
                    if dim not in group.dimensions:
                        size = len(coords[dim]) if dim in coords else shapes[name][0][dims.index(dim)]
                        group.dimensions[dim] = size
                        if dim in coords:
                            data = coords[dim]
                            kind = h5py.string_dtype() if data.dtype == object else data.dtype
                            group.create_variable(dim, (dim,), data=data, dtype=kind)
                sizes = [group.dimensions[d].size for d in dims]
                chunks = (1, min(draws, CHUNK_DRAWS), *[min(s, 4096) for s in sizes])
                return group.create_variable(name, ("chain", "draw", *dims), dtype=dtype,
                                             chunks=chunks)

            for name in names:
                shape, dtype = shapes[name]
                dtype = np.float64 if name in AS_FLOAT64 else dtype
                var = variable(post, name, _dims_of(name, shape, n_effects), dtype)
                for c, chain in enumerate(chains):
                    with chain._open() as f:
                        data = f["samples"][name]
                        for start in range(0, draws, CHUNK_DRAWS):
                            stop = min(draws, start + CHUNK_DRAWS)
                            var[c, start:stop] = _widened(data[start:stop].astype(dtype), shape)
                    done += 1
                    if progress is not None:
                        progress(done, total, f"export: {name}, chain {c + 1}")
            _write_derived(chains, draws, post, stats, variable, n_effects, config)
            done = total
            if progress is not None:
                progress(done, total, "export: done")
        install(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    size = path.stat().st_size
    echo(f"wrote {path}: {len(chains)} chain(s) x {draws} draws of {', '.join(names)} and per "
         f"trait h2, G_var, R_var ({size / 1e6:.1f} MB); open it with arviz.from_netcdf or "
         "xarray.open_datatree")
    return path


def _widened(block: np.ndarray, shape: tuple) -> np.ndarray:
    """(s, *shape) block: a chain's draws padded with NaN where that chain has fewer factors
    than the widest chain."""
    if block.shape[1:] == tuple(shape):
        return block
    out = np.full((block.shape[0], *shape), np.nan, dtype=block.dtype)
    out[(slice(None), *(slice(0, d) for d in block.shape[1:]))] = block
    return out


def _write_derived(chains, draws, post, stats, variable, n_effects, config) -> None:
    """h2, G_var, R_var (and h2_by_effect) per draw and trait; iteration and n_factors."""
    out = {name: variable(post, name, ("trait",), "f8") for name in ("h2", "G_var", "R_var")}
    if n_effects > 1:
        out["h2_by_effect"] = variable(post, "h2_by_effect", ("effect", "trait"), "f8")
    n_factors = variable(stats, "n_effective_factors", (), "i4")
    iteration = variable(stats, "iteration", (), "i8")
    first = config.mcmc.burn_in + config.mcmc.thin
    for c, chain in enumerate(chains):
        start = 0
        for d in chain_draws(chain):
            stop = min(draws, start + d.lam.shape[0])
            if stop <= start:
                break
            diag = trait_diagonals(d)
            used = stop - start
            for name in ("h2", "G_var", "R_var"):
                out[name][c, start:stop] = diag[name][:used]
            if n_effects > 1:
                out["h2_by_effect"][c, start:stop] = diag["shares"][:used]
            n_factors[c, start:stop] = effective_factors(d.lam[:used])
            iteration[c, start:stop] = first + config.mcmc.thin * np.arange(start, stop)
            start = stop
