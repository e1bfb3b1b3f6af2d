"""What a draw reports, in the original units of the traits, and running posterior means.

The sampler works on standardised traits and on factors of free scale (tot_f_prec is a
working parameter). Reported draws rescale factors to unit total variance and traits back
to their original units (DESIGN.md section 2).
"""

from dataclasses import dataclass

import numpy as np

from .gibbs.blas import matmul
from .gibbs.small_groups import project_small_groups
from .gibbs.threads import each_on_own_thread, side_by_side
from .gibbs.variance import sample_random_effects_general
from .model import Model, Projection
from .state import State

SAMPLE_PARAMS = ("Lambda", "f_h2", "resid_h2", "tot_eta_prec", "tot_f_prec", "B1", "B2F", "F",
                 "U_F", "U_R", "lambda_prec", "delta", "G", "R", "h2")
MEAN_PARAMS = ("U", "eta_hat", "F", "U_F", "U_R")
MAX_U_CELLS = 50


def u_cell_indices(n_train: int, t: int, max_cells: int = MAX_U_CELLS) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the U cells whose draws are kept ("U_cells") for diagnostics: up to
    `max_cells` cells (training individual, trait), drawn by default_rng(0) and sorted. They
    depend on (n_train, t) only, so summarize finds them from prepared.h5 without the model."""
    total = int(n_train) * int(t)
    m = min(int(max_cells), total)
    if m == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    flat = np.sort(np.random.default_rng(0).choice(total, size=m, replace=False))
    return (flat // t).astype(np.int64), (flat % t).astype(np.int64)


def model_u_cells(model: Model) -> tuple[np.ndarray, np.ndarray]:
    return u_cell_indices(model.n_train, model.t)


def extra_sample_shapes(model: Model, mean_names) -> dict:
    """Shapes of the sampled parameters run_chain records beyond posterior.samples:
    "U_cells" when "U" is among the posterior means."""
    return {"U_cells": param_shape(model, "U_cells")} if "U" in mean_names else {}


def param_shape(model: Model, name: str) -> tuple:
    """Shape of one draw of a reported parameter."""
    N, n, t, k = len(model.ids), model.n, model.t, model.k
    per_effect = (model.n_effects,) if model.n_effects > 1 else ()
    shapes = {
        "Lambda": (k, t), "f_h2": per_effect + (k,), "resid_h2": per_effect + (t,),
        "tot_eta_prec": (t,), "tot_f_prec": (k,),
        "B1": (model.x1_all.shape[1], t), "B2F": (model.x2_all.shape[1], k), "F": (n, k),
        "U_F": (N, k), "U_R": (N, t), "lambda_prec": (k, t), "delta": (k,), "G": (t, t),
        "R": (t, t), "h2": (t,), "U": (N, t), "eta_hat": (N, t),
        "U_cells": (len(u_cell_indices(n, t)[0]),),
    }
    return shapes[name]


def _other_rows_noise(projection: Projection, c: int, rng) -> np.ndarray | None:
    """The standard normals _project needs for c columns (None without other rows)."""
    if not projection.other_rows.size:
        return None
    return rng.standard_normal((projection.chol.shape[1], c))


def _project(rotation, u_rot, projection: Projection, n_all, rows, sd, noise, dtype=np.float64):
    """Random effects on all individuals from rotated ones on `rows`.

    rotation: the Rotation of `rows`; u_rot: (n_g, c) in it; sd: (c,) prior sd scale
    sqrt(h2 / tot_prec); noise: _other_rows_noise's normals. Returns (N, c) in `dtype`: rows
    from Q u*, others drawn from their conditional given them. float32 halves the cost of Q u*
    (n_g^2 c, the largest product of a stored draw); the random numbers are the same in
    either precision.
    """
    out = np.empty((n_all, u_rot.shape[1]), dtype=dtype)
    vectors = rotation.vectors32 if dtype == np.float32 else rotation.vectors
    # reading the vectors dominates when u_rot has few columns: two threads read halves
    out[rows] = matmul(vectors, u_rot.astype(dtype, copy=False), split_min=1e6)
    if noise is not None:
        out[projection.other_rows] = (projection.mean_map @ u_rot
                                      + (projection.chol @ noise) * sd[None, :])
    return out


def random_effects(model: Model, state: State, dtype=np.float64) -> tuple[np.ndarray, np.ndarray]:
    """U_F (N, k) and U_R (N, t) for every individual, standardised units, free factor scale;
    U_R in `dtype` (float32 for the running means of a stored draw, see _project)."""
    if model.n_effects > 1:
        u_f, u_r = random_effects_by_effect(model, state)
        return u_f.sum(axis=0), u_r.sum(axis=0)
    N = len(model.ids)
    rng = state.pred_rng
    f_h2 = model.grid[state.f_h2_index, 0]
    u_f = _project(model.factor_rot, state.U_F_rot, model.factor_projection, N,
                   np.arange(model.n), np.sqrt(f_h2 / state.tot_f_prec),
                   _other_rows_noise(model.factor_projection, model.k, rng))
    resid_h2 = model.grid[state.resid_h2_index, 0]
    if len(model.groups) == 1 and model.groups[0].col_index == slice(0, model.t):
        g = model.groups[0]  # every trait in one group: no copy into a larger array
        sd = np.sqrt(resid_h2 / state.tot_eta_prec)
        return u_f, _project(g.rot, state.U_R_rot[0], g.projection, N, g.rows, sd,
                             _other_rows_noise(g.projection, model.t, rng), dtype)
    u_r = np.empty((N, model.t), dtype=dtype)
    small = model.small_groups
    packed = set() if small is None or small.projections is None else set(small.members.tolist())
    sds, noise = [], []  # every group's normals first, in the groups' order
    for g in model.groups:
        sds.append(np.sqrt(resid_h2[g.cols] / state.tot_eta_prec[g.cols]))
        noise.append(_other_rows_noise(g.projection, g.cols.size, rng))
    alone = [gi for gi in range(len(model.groups)) if gi not in packed]

    def project(gi):
        g = model.groups[gi]
        u_r[:, g.cols] = _project(g.rot, state.U_R_rot[gi], g.projection, N, g.rows, sds[gi],
                                  noise[gi], dtype)

    if side_by_side([model.groups[gi].rows.size ** 2 * model.groups[gi].cols.size for gi in alone]):
        each_on_own_thread(project, alone)
    else:
        for gi in alone:
            project(gi)
    if packed:
        members = small.members.tolist()
        project_small_groups(small, [state.U_R_rot[gi] for gi in members],
                             [sds[gi] for gi in members],
                             [np.zeros(0) if noise[gi] is None else noise[gi] for gi in members],
                             u_r)
    return u_f, u_r


def _each_effect(cache, rot_vectors, resid_rot, h, tot_prec, index, projections, n_all, rows,
                 rng):
    """Several effects: draw each effect on `rows` given the residual (prediction Generator),
    then condition each on its own kinship to reach the other rows. Returns (m, N, c)."""
    m, c = h.shape[1], resid_rot.shape[1]
    by_effect = sample_random_effects_general(
        resid_rot, h, tot_prec, index, cache, rng.standard_normal((m, cache.roots.shape[2], c)),
        rng.standard_normal(resid_rot.shape), by_effect=True)
    out = np.zeros((m, n_all, c))
    for e in range(m):
        raw = rot_vectors @ by_effect[e]
        out[e, rows] = raw
        proj = projections[e]
        if proj.other_rows.size:
            noise = proj.chol @ rng.standard_normal((proj.chol.shape[1], c))
            sd = np.sqrt(h[:, e] / tot_prec)
            out[e, proj.other_rows] = proj.mean_map @ raw + noise * sd[None, :]
    return out


def random_effects_by_effect(model: Model, state: State) -> tuple[np.ndarray, np.ndarray]:
    """Several effects: U_F (m, N, k) and U_R (m, N, t) of each effect for every individual.

    A fresh draw of every effect from its full conditional (the chain keeps only their sum),
    so each reported draw is a joint posterior draw over training and other rows.
    """
    N, n = len(model.ids), model.n
    rng = state.pred_rng
    rot = model.factor_rot
    f_resid = matmul(rot.vectors.T, state.F - model.x2 @ state.B2F)
    u_f = _each_effect(model.factor_cache, rot.vectors, f_resid, model.grid[state.f_h2_index],
                       state.tot_f_prec, state.f_h2_index, model.factor_effect_projections, N,
                       np.arange(n), rng)
    u_r = np.empty((model.n_effects, N, model.t))
    for gi, g in enumerate(model.groups):
        cols = g.cols
        fitted = (model.x1[g.rows] @ state.B1[:, cols]) + state.F[g.rows] @ state.Lambda[:, cols]
        resid = g.rot.vectors.T @ (state.Y[gi] - fitted)
        index = state.resid_h2_index[cols]
        u_r[:, :, cols] = _each_effect(g.cache, g.rot.vectors, resid, model.grid[index],
                                       state.tot_eta_prec[cols], index, g.effect_projections, N,
                                       g.rows, rng)
    return u_f, u_r


def factor_parts(model: Model, state: State, u_f, dtype=np.float64) -> tuple[np.ndarray, np.ndarray]:
    """top = U_F Lambda and bottom = (scores - U_F) Lambda, both (N, t) in `dtype`,
    standardised units, from one product; scores are F on the training rows and their
    conditional mean X2 B2F + U_F elsewhere. Then U = top + U_R and
    eta_hat = top + bottom + U_R + X1 B1."""
    n = model.n
    rest = np.empty_like(u_f)
    rest[:n] = state.F - u_f[:n]
    rest[n:] = model.x2_all[n:] @ state.B2F
    both = matmul(np.vstack([u_f, rest]).astype(dtype, copy=False),
                  state.Lambda.astype(dtype, copy=False))
    return both[: u_f.shape[0]], both[u_f.shape[0]:]


def draw(model: Model, state: State, names, effects=None) -> dict:
    """Reported parameters of the current state, original units, unit-variance factors."""
    sd = model.trait_sd
    f_sd = 1.0 / np.sqrt(state.tot_f_prec)
    lam = state.Lambda * f_sd[:, None] * sd[None, :]
    resid_h2 = model.grid_total[state.resid_h2_index]
    f_h2 = model.grid_total[state.f_h2_index]
    tot_eta_prec = state.tot_eta_prec / sd**2
    out = {}
    for name in names:
        if name == "Lambda":
            out[name] = lam
        elif name == "f_h2":  # (k,), or (m, k) by effect
            out[name] = f_h2 if model.n_effects == 1 else model.grid[state.f_h2_index].T
        elif name == "resid_h2":  # (t,), or (m, t) by effect
            out[name] = resid_h2 if model.n_effects == 1 else model.grid[state.resid_h2_index].T
        elif name == "tot_eta_prec":
            out[name] = tot_eta_prec
        elif name == "tot_f_prec":
            out[name] = state.tot_f_prec.copy()
        elif name == "B1":
            b1 = state.B1 * sd[None, :]
            if "Intercept" in model.x1_names:
                b1[model.x1_names.index("Intercept")] += model.trait_mean
            out[name] = b1
        elif name == "B2F":
            out[name] = state.B2F / f_sd[None, :]
        elif name == "F":
            out[name] = state.F / f_sd[None, :]
        elif name in ("U_F", "U_R"):
            u_f, u_r = effects if effects is not None else random_effects(model, state)
            out[name] = u_f / f_sd[None, :] if name == "U_F" else u_r * sd[None, :]
        elif name == "lambda_prec":
            out[name] = state.lambda_prec.copy()
        elif name == "delta":
            out[name] = state.delta.copy()
        elif name in ("G", "R", "h2"):
            out.update({key: val for key, val in covariances(lam, f_h2, resid_h2, tot_eta_prec).items()
                        if key == name})
        else:
            raise KeyError(name)
    return out


def covariances(lam, f_h2, resid_h2, tot_eta_prec) -> dict:
    """G, R (t, t) and h2 (t,) from one draw (unit-variance factors, original units)."""
    genetic = (lam.T * f_h2[None, :]) @ lam + np.diag(resid_h2 / tot_eta_prec)
    residual = (lam.T * (1.0 - f_h2)[None, :]) @ lam + np.diag((1.0 - resid_h2) / tot_eta_prec)
    h2 = np.diag(genetic) / (np.diag(genetic) + np.diag(residual))
    return {"G": genetic, "R": residual, "h2": h2}


@dataclass
class RunningMoments:
    """Running mean and sum of squared deviations (Welford), weighted by draw counts; m2 is
    None for a mean-only accumulator (eta_hat: only its mean is reported)."""

    count: int
    mean: np.ndarray
    m2: np.ndarray | None

    @classmethod
    def empty(cls, shape, with_m2: bool = True):
        return cls(0, np.zeros(shape), np.zeros(shape) if with_m2 else None)

    def add(self, value: np.ndarray) -> None:
        self.count += 1
        delta = value - self.mean
        self.mean += delta / self.count
        if self.m2 is not None:
            self.m2 += delta * (value - self.mean)

    def sd(self) -> np.ndarray:
        if self.count < 2 or self.m2 is None:
            return np.full_like(self.mean, np.nan)
        return np.sqrt(self.m2 / (self.count - 1))
