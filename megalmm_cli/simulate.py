"""Simulate a data set (and its truth) from the MegaLMM generative model.

One random effect (individuals = rows), DESIGN.md section 2:

    Y = c * (X1 B1 + F Lambda + U_R + E_R),   F = U_F + E_F

with c (t,) a per-trait scale. All stored truth is in the scale of the written Y. With
n_blocks > 0 a second random effect is added to the traits: a "Block" column groups the
individuals into n_blocks independent levels (Z I Z'), with its own share block_h2 per trait.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import yaml

from megalmm_cli import __version__
from megalmm_cli.errors import UserError
from megalmm_cli.kinship import vanraden

MIN_OBS_PER_TRAIT = 5


@dataclass(frozen=True)
class Simulation:
    """A simulated data set with its true parameters (all in the units of the written Y)."""

    ids: tuple[str, ...]          # (n,) "ind0001" ...
    traits: tuple[str, ...]       # (t,) "trait001" ...
    populations: np.ndarray       # (n,) str "P1"/"P2"
    x: np.ndarray                 # (n,) continuous covariate
    markers: np.ndarray           # (n, n_markers) int8 0/1/2
    kinship: np.ndarray           # (n, n) VanRaden K
    Y: np.ndarray                 # (n, t) complete phenotypes
    observed: np.ndarray          # (n, t) bool, False = missing (new individuals: all False)
    n_new: int                    # the last n_new individuals have no phenotype
    Lambda: np.ndarray            # (k, t) loadings (scaled)
    f_h2: np.ndarray              # (k,) factor heritabilities
    F: np.ndarray                 # (n, k) factor scores, unit total variance
    U_F: np.ndarray               # (n, k) genetic part of F
    resid_h2: np.ndarray          # (t,) residual heritabilities
    tot_eta_prec: np.ndarray      # (t,) 1 / residual total variance (scaled)
    U_R: np.ndarray               # (n, t) residual genetic values (scaled)
    B1: np.ndarray                # (3, t) fixed effects for [1, Population==P2, x] (scaled)
    trait_scale: np.ndarray       # (t,) c_j multiplying trait j
    G_extra: np.ndarray           # (t,) diagonal part of G: (resid_h2 [+ block_h2]) / tot_eta_prec
    R_extra: np.ndarray           # (t,) diagonal part of R: (1 - resid_h2 [- block_h2]) / tot_eta_prec
    h2: np.ndarray                # (t,) G_jj / (G_jj + R_jj)
    U: np.ndarray                 # (n, t) genetic values U_F Lambda + U_R (scaled)
    missing: float = 0.0          # requested missing fraction
    seed: int = 1                 # seed given to numpy.random.default_rng
    blocks: np.ndarray | None = None     # (n,) str block of each individual (n_blocks > 0)
    block_h2: np.ndarray | None = None   # (t,) share of the block effect in the residual LMM
    U_block: np.ndarray | None = None    # (n, t) block effect of each individual (scaled)
    h2_by_effect: np.ndarray | None = None  # (2, t) kinship and block shares of each trait

    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def t(self) -> int:
        return len(self.traits)

    @property
    def k(self) -> int:
        return int(self.Lambda.shape[0])

    @property
    def G(self) -> np.ndarray:
        """(t, t) genetic covariance Lambda' diag(f_h2) Lambda + diag(G_extra) (built on demand:
        with many traits it is gigabytes, so it is never stored)."""
        return low_rank_plus_diagonal(self.Lambda, self.f_h2, self.G_extra)

    @property
    def R(self) -> np.ndarray:
        """(t, t) residual covariance Lambda' diag(1 - f_h2) Lambda + diag(R_extra)."""
        return low_rank_plus_diagonal(self.Lambda, 1.0 - self.f_h2, self.R_extra)

    @property
    def X1(self) -> np.ndarray:
        """(n, 3) fixed-effect design [1, Population==P2, x]."""
        return np.column_stack([np.ones(self.n), self.populations == "P2", self.x]).astype(float)


def low_rank_plus_diagonal(lam: np.ndarray, weights: np.ndarray, diagonal: np.ndarray) -> np.ndarray:
    """lam' diag(weights) lam + diag(diagonal): lam (k, t), weights (k,), diagonal (t,) -> (t, t)."""
    out = (lam.T * weights) @ lam
    out[np.diag_indices(lam.shape[1])] += diagonal
    return out


def _names(prefix: str, count: int, min_width: int) -> tuple[str, ...]:
    width = max(min_width, len(str(count)))
    return tuple(f"{prefix}{i:0{width}d}" for i in range(1, count + 1))


def _kinship_factor(K: np.ndarray) -> np.ndarray:
    """L (n, n) with L L' = K (eigh, negative eigenvalues clipped to 0)."""
    w, V = np.linalg.eigh(K)
    return V * np.sqrt(np.clip(w, 0.0, None))


def _missing_mask(rng: np.random.Generator, n_pheno: int, t: int, missing: float) -> np.ndarray:
    """(n_pheno, t) bool observed mask: a fraction `missing` of cells MCAR, then every trait
    keeps >= MIN_OBS_PER_TRAIT observed cells and every row >= 1."""
    n_cells = n_pheno * t
    n_miss = int(round(missing * n_cells))
    observed = np.ones(n_cells, dtype=bool)
    if n_miss:
        observed[rng.choice(n_cells, size=n_miss, replace=False)] = False
    observed = observed.reshape(n_pheno, t)
    if n_miss == 0:
        return observed
    # traits: keep the MIN_OBS highest keys observed (observed cells first, ties at random)
    need = min(MIN_OBS_PER_TRAIT, n_pheno)
    key = observed + rng.random((n_pheno, t))
    top = np.argpartition(-key, need - 1, axis=0)[:need]            # (need, t)
    observed[top, np.arange(t)[None, :]] = True
    # rows: the highest key (an observed cell if any, else a random one)
    key = observed + rng.random((n_pheno, t))
    observed[np.arange(n_pheno), np.argmax(key, axis=1)] = True
    return observed


def simulate_data(n: int, t: int, k: int, missing: float = 0.2, seed: int = 1,
                  n_markers: int = 2000, n_new: int = 0, n_blocks: int = 0,
                  loading_decay: float = 0.8) -> Simulation:
    """Draw a data set of n individuals (the last n_new unphenotyped), t traits, k true factors
    and n_markers markers; factor l's loadings have sd loading_decay^l. All randomness comes
    from numpy.random.default_rng(seed); the block
    effect (n_blocks > 0) from default_rng([seed, 1]), so the rest does not change with it."""
    n, t, k, n_markers, n_new = int(n), int(t), int(k), int(n_markers), int(n_new)
    missing = float(missing)
    if t < 1 or k < 1:
        raise UserError(f"simulate needs at least 1 trait and 1 factor (got t={t}, k={k})")
    if n_new < 0:
        raise UserError(f"n_new must be >= 0 (got {n_new})")
    if n - n_new < MIN_OBS_PER_TRAIT:
        raise UserError(f"simulate needs at least {MIN_OBS_PER_TRAIT} phenotyped individuals "
                        f"(got n={n}, n_new={n_new})")
    if not 0.0 <= missing < 1.0:
        raise UserError(f"missing must be in [0, 1) (got {missing})")
    if n_markers < 2:
        raise UserError(f"n_markers must be >= 2 (got {n_markers})")
    rng = np.random.default_rng(seed)

    # populations (~40% P1) and markers with shifted allele frequencies
    n_p1 = int(round(0.4 * n))
    populations = np.where(rng.permutation(n) < n_p1, "P1", "P2")
    p = rng.uniform(0.05, 0.5, size=n_markers)
    p_pop = np.clip(p + rng.normal(0.0, 0.1, size=(2, n_markers)), 0.02, 0.98)    # (2, m)
    p_ind = p_pop[(populations == "P2").astype(int)]                             # (n, m)
    markers = rng.binomial(2, p_ind).astype(np.int8)
    if np.all(markers == markers[:1]):
        raise UserError("all simulated markers are monomorphic: increase n or n_markers")
    kinship = vanraden(markers)
    L = _kinship_factor(kinship)

    # covariates and fixed effects
    x = rng.normal(0.0, 1.0, size=n)
    X1 = np.column_stack([np.ones(n), populations == "P2", x]).astype(float)
    B1 = np.vstack([rng.normal(10.0, 3.0, size=t),
                    rng.normal(0.0, 0.5, size=t),
                    rng.normal(0.0, 0.3, size=t)])                                # (3, t)

    # factors, unit total variance
    f_h2 = rng.uniform(0.1, 0.9, size=k)
    U_F = (L @ rng.standard_normal((n, k))) * np.sqrt(f_h2)
    F = U_F + rng.standard_normal((n, k)) * np.sqrt(1.0 - f_h2)

    # sparse loadings with decaying scale; every factor gets >= 1 non-zero loading
    nonzero = rng.random((k, t)) < 0.4
    empty = np.flatnonzero(~nonzero.any(axis=1))
    nonzero[empty, rng.integers(0, t, size=empty.size)] = True
    scale_l = float(loading_decay) ** np.arange(k)
    Lambda = np.where(nonzero, rng.standard_normal((k, t)) * scale_l[:, None], 0.0)

    # residual LMM per trait
    resid_h2 = rng.uniform(0.0, 0.5, size=t)
    sigma2 = rng.uniform(0.2, 0.6, size=t)
    U_R = L @ rng.standard_normal((n, t))
    U_R *= np.sqrt(resid_h2 * sigma2)
    del L
    blocks = block_h2 = U_block = None
    if n_blocks:
        block_rng = np.random.default_rng([seed, 1])
        labels = np.asarray(_names("B", int(n_blocks), 2))
        level_of = block_rng.integers(0, int(n_blocks), size=n)
        blocks = labels[level_of]
        block_h2 = block_rng.uniform(0.1, 0.4, size=t)
        level_effects = block_rng.standard_normal((int(n_blocks), t)) * np.sqrt(block_h2 * sigma2)
        U_block = level_effects[level_of]
    Y = rng.standard_normal((n, t))
    Y *= np.sqrt((1.0 - resid_h2 - (block_h2 if n_blocks else 0.0)) * sigma2)   # E_R
    Y += U_R
    if n_blocks:
        Y += U_block
    Y += X1 @ B1
    FL = F @ Lambda
    Y += FL
    del FL

    # trait scale: everything below is in the units of the written Y
    c = rng.uniform(0.5, 3.0, size=t)
    Y *= c
    U_R *= c
    B1 = B1 * c
    Lambda = Lambda * c
    sigma2 = sigma2 * c ** 2
    tot_eta_prec = 1.0 / sigma2
    U = U_F @ Lambda
    U += U_R
    squared = Lambda * Lambda
    g_factor, r_factor = f_h2 @ squared, (1.0 - f_h2) @ squared       # diagonals of the low rank
    G_extra = resid_h2 * sigma2
    R_extra = (1.0 - resid_h2) * sigma2
    h2_by_effect = None
    if n_blocks:
        U_block = U_block * c
        R_extra = R_extra - block_h2 * sigma2          # the block effect is not residual
        G_block = block_h2 * sigma2
        total = g_factor + G_extra + G_block + r_factor + R_extra
        h2_by_effect = np.vstack([(g_factor + G_extra) / total, G_block / total])
        G_extra = G_extra + G_block                   # G: all random effects together
        U += U_block
    g_diag, r_diag = g_factor + G_extra, r_factor + R_extra
    h2 = g_diag / (g_diag + r_diag)

    # missing cells; new individuals are entirely unobserved
    n_pheno = n - n_new
    observed = np.zeros((n, t), dtype=bool)
    observed[:n_pheno] = _missing_mask(rng, n_pheno, t, missing)

    return Simulation(
        ids=_names("ind", n, 1), traits=_names("trait", t, 3), populations=populations, x=x,
        markers=markers, kinship=kinship, Y=Y, observed=observed, n_new=n_new,
        Lambda=Lambda, f_h2=f_h2, F=F, U_F=U_F, resid_h2=resid_h2, tot_eta_prec=tot_eta_prec,
        U_R=U_R, B1=B1, trait_scale=c, G_extra=G_extra, R_extra=R_extra, h2=h2, U=U,
        missing=missing, seed=seed,
        blocks=blocks, block_h2=block_h2, U_block=U_block, h2_by_effect=h2_by_effect,
    )


def _write_csv(path: Path, header: list[str], lead: list[np.ndarray], values: np.ndarray,
               fmt: str, chunk_cells: int = 1_000_000) -> None:
    """Write a CSV: `header`, then per row the string columns `lead` (each (n,)) and the
    numeric columns `values` (n, p) formatted with `fmt`; NaN cells are written as NA."""
    n, p = values.shape
    n_lead = len(lead)
    row_fmt = ",".join(["%s"] * n_lead + [fmt] * p)
    chunk = max(1, chunk_cells // (n_lead + p))
    with open(path, "w", newline="\n") as fh:
        fh.write(",".join(header) + "\n")
        for start in range(0, n, chunk):                     # blocks of rows: bounded memory
            stop = min(n, start + chunk)
            cells = np.empty((stop - start, n_lead + p), dtype=object)
            for j, col in enumerate(lead):
                cells[:, j] = col[start:stop]
            cells[:, n_lead:] = values[start:stop]
            block = "\n".join([row_fmt] * (stop - start)) % tuple(cells.ravel().tolist())
            if values.dtype.kind == "f":
                block = block.replace("nan", "NA")
            fh.write(block + "\n")


def write_simulation(sim: Simulation, outdir: Path, factors: int | None = None) -> dict[str, Path]:
    """Write the data files, truth.h5 and a ready config.yaml into outdir (created if needed).

    Returns {"phenotypes", "covariates", "genotypes", "kinship", "heldout_cells", "truth",
    "config"} -> path.
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    ids = np.asarray(sim.ids)
    traits = list(sim.traits)
    n_pheno = sim.n - sim.n_new
    paths = {name: outdir / fname for name, fname in [
        ("phenotypes", "phenotypes.csv"), ("covariates", "covariates.csv"),
        ("genotypes", "genotypes.csv"), ("kinship", "kinship.csv"),
        ("heldout_cells", "heldout_cells.csv"), ("truth", "truth.h5"), ("config", "config.yaml")]}

    pheno = np.where(sim.observed[:n_pheno], sim.Y[:n_pheno], np.nan)
    lead_names, lead = ["id", "Population"], [ids[:n_pheno], sim.populations[:n_pheno]]
    if sim.blocks is not None:
        lead_names.append("Block")
        lead.append(sim.blocks[:n_pheno])
    _write_csv(paths["phenotypes"], lead_names + traits, lead, pheno, "%.6g")
    blocks = [] if sim.blocks is None else [sim.blocks]   # every individual's block, new ones too
    _write_csv(paths["covariates"], ["id", "Population"] + ["Block"] * bool(blocks) + ["x"],
               [ids, sim.populations, *blocks], sim.x[:, None], "%.8g")
    _write_csv(paths["genotypes"], ["id"] + list(_names("m", sim.markers.shape[1], 4)), [ids],
               sim.markers, "%d")
    _write_csv(paths["kinship"], ["id"] + list(ids), [ids], sim.kinship, "%.8g")
    rows, cols = np.nonzero(~sim.observed[:n_pheno])
    _write_csv(paths["heldout_cells"], ["id", "trait", "value"],
               [ids[rows], np.asarray(traits)[cols]], sim.Y[rows, cols][:, None], "%.10g")

    str_dt = h5py.string_dtype("utf-8")
    with h5py.File(paths["truth"], "w") as h5:
        for name in ("Lambda", "f_h2", "F", "U_F", "resid_h2", "tot_eta_prec", "U_R", "B1",
                     "trait_scale", "G_extra", "R_extra", "h2", "U", "observed", "Y", "block_h2",
                     "U_block", "h2_by_effect"):
            if getattr(sim, name) is not None:
                h5.create_dataset(name, data=getattr(sim, name))
        h5.attrs["G"] = "Lambda' diag(f_h2) Lambda + diag(G_extra) (t x t; not stored)"
        h5.attrs["R"] = "Lambda' diag(1 - f_h2) Lambda + diag(R_extra) (t x t; not stored)"
        h5.create_dataset("ids", data=list(sim.ids), dtype=str_dt)
        h5.create_dataset("traits", data=traits, dtype=str_dt)
        h5.attrs.update({"n": sim.n, "t": sim.t, "k": sim.k, "n_new": sim.n_new,
                         "n_markers": sim.markers.shape[1], "missing": sim.missing,
                         "missing_realised": float(1.0 - sim.observed[:n_pheno].mean()),
                         "seed": sim.seed, "megalmm_version": __version__})

    n_factors = int(factors) if factors is not None else min(sim.t, max(2 * sim.k, sim.k + 5))
    data = {
        "phenotypes": {"file": "phenotypes.csv", "layout": "wide", "id": "id",
                       "covariate_columns": lead_names[1:]},
        "covariates": {"file": "covariates.csv", "id": "id"},
        "kinships": {"id": {"file": "kinship.csv"}},
    }
    if sim.blocks is not None:
        data["kinships"]["Block"] = None    # independent levels
    if rows.size:
        data["test_cells"] = {"file": "heldout_cells.csv"}
    config = {
        "run": {"name": outdir.resolve().name, "output_dir": "run", "seed": 1},
        "data": data,
        "model": {"fixed": "~ Population + x", "random": list(data["kinships"]), "factors": n_factors,
                  "h2_divisions": 20},
        "missing_data": {"max_groups": "auto"},
        "mcmc": {"burn_in": 500, "reorder_every": 100, "samples": 1000, "thin": 2,
                 "checkpoint_every": 100, "chains": 1},
        "posterior": {"samples": ["Lambda", "f_h2", "resid_h2", "tot_eta_prec", "B1"],
                      "means": ["U", "eta_hat"]},
    }
    with open(paths["config"], "w") as fh:
        yaml.safe_dump(config, fh, sort_keys=False, default_flow_style=None)
    return paths
