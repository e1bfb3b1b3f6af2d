"""The discrete grid of variance proportions and the per-group rotations (Grid-LMM).

With one random effect, the eigendecomposition K[rows, rows] = Q diag(s) Q' makes every
trait's covariance diagonal in the rotated basis: row i of y* = Q' y has variance
sigma2 * (h2 * s_i + 1 - h2). All grid log-likelihoods below work in that basis.
"""

from dataclasses import dataclass
from functools import cached_property
from itertools import product

import numpy as np

from .errors import UserError

EIGEN_TOL = 1e-10  # eigenvalues below this (relative to the largest) are treated as zero


def h2_grid(n_effects: int, divisions: int) -> np.ndarray:
    """All vectors of variance proportions on the grid.

    Each component takes 0, 1/D, ..., (D-1)/D and the components sum to < 1.
    Returns (G, m) with the first component varying fastest and row 0 the zero vector;
    G = C(D - 1 + m, m).
    """
    if n_effects < 1 or divisions < 2:
        raise ValueError("need n_effects >= 1 and divisions >= 2")
    steps = range(divisions)
    points = [p[::-1] for p in product(steps, repeat=n_effects) if sum(p) < divisions]
    points.sort(key=lambda p: tuple(reversed(p)))
    return np.asarray(points, dtype=np.float64) / divisions


def h2_log_prior(weights, n_points: int, key: str) -> np.ndarray:
    """Normalised log prior over the G grid points: 'uniform' or a list of G weights."""
    if isinstance(weights, str):
        return np.full(n_points, -np.log(n_points))
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n_points,) or np.any(w < 0) or not np.any(w > 0):
        raise UserError(
            f"{key}: needs {n_points} non-negative weights (one per grid point), got {w.size}"
        )
    with np.errstate(divide="ignore"):
        return np.log(w / w.sum())


@dataclass(frozen=True)
class Rotation:
    """Eigenbasis of a kinship block: K[rows, rows] = vectors @ diag(values) @ vectors.T.

    rows: (n_g,) row indices; vectors: (n_g, n_g); values: (n_g,) clipped at 0.
    """

    rows: np.ndarray
    vectors: np.ndarray
    values: np.ndarray

    @cached_property
    def vectors32(self) -> np.ndarray:
        """vectors in float32, for the per-draw products of the running means."""
        return self.vectors.astype(np.float32)


def rotation(kinship: np.ndarray, rows: np.ndarray) -> Rotation:
    """Eigendecomposition of kinship[rows][:, rows] (identity kinship when kinship is None)."""
    rows = np.asarray(rows, dtype=np.int64)
    if kinship is None:
        n = rows.size
        return Rotation(rows, np.eye(n), np.ones(n))
    block = kinship[np.ix_(rows, rows)]
    values, vectors = np.linalg.eigh(block)
    values = np.where(values > EIGEN_TOL * max(values.max(), 1e-300), values, 0.0)
    return Rotation(rows, np.ascontiguousarray(vectors), values)


def grid_weights(h2: np.ndarray, eigenvalues: np.ndarray) -> np.ndarray:
    """Inverse relative variances w[g, i] = 1 / (h2_g s_i + 1 - h2_g).

    h2: (G,) proportions of one random effect; eigenvalues: (n_g,). Returns (G, n_g).
    """
    return 1.0 / (h2[:, None] * eigenvalues[None, :] + (1.0 - h2[:, None]))


def grid_loglik(
    resid_sq: np.ndarray,
    weights: np.ndarray,
    tot_prec: np.ndarray,
    log_prior: np.ndarray,
    half_logdet: np.ndarray | None = None,
) -> np.ndarray:
    """Log posterior (up to a constant) of each grid point for each column.

    resid_sq: (n_g, c) squared rotated residuals; weights: (G, n_g) from grid_weights;
    tot_prec: (c,) total precisions; log_prior: (G,). Returns (G, c):
    sum_i log w_gi / 2 - tot_prec * sum_i w_gi e_i^2 / 2 + log prior_g.
    """
    return grid_loglik_of_sums(weights @ resid_sq, weights, tot_prec, log_prior, half_logdet)


def grid_loglik_of_sums(quad, weights, tot_prec, log_prior, half_logdet=None) -> np.ndarray:
    """grid_loglik given quad: (G, c) the weighted sums of squares weights @ resid_sq."""
    if half_logdet is None:  # sum_i log w_gi / 2, constant for a group: callers may cache it
        half_logdet = 0.5 * np.log(weights).sum(axis=1)
    return half_logdet[:, None] - 0.5 * quad * tot_prec[None, :] + log_prior[:, None]


def draw_grid_index(loglik: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """One categorical draw per column from unnormalised log probabilities.

    loglik: (G, c); uniforms: (c,) in [0, 1). Returns (c,) grid indices.
    """
    prob = np.exp(loglik - loglik.max(axis=0, keepdims=True))
    cum = np.cumsum(prob, axis=0)
    cum /= cum[-1:]
    index = (cum < uniforms[None, :]).sum(axis=0)
    return np.minimum(index, loglik.shape[0] - 1)
