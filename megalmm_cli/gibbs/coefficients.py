"""Step 2 (and the factor analogue in step 5): regression coefficients and total precision.

For each column j (a trait, or a factor), with its random effect integrated out and the
data rotated so that the covariance is diagonal:

    y*_j = X* beta_j + e,   e ~ N(0, W_j^-1 / tot_prec_j),   W_j = diag(w(h2_j))
    beta_j ~ N(0, (tot_prec_j * diag(prior_prec_j))^-1)   (prior_prec 0 = flat)
    tot_prec_j ~ Gamma(shape0, rate0)

Columns that share a grid point share the Gram matrix X*' W X*, so the kernel receives one
Gram matrix per used grid point and the per-column X*' W y*_j, y*_j' W y*_j.

Two exact Gibbs updates, chosen by the number of coefficients b:
- b <= JOINT_MAX: tot_prec_j with beta_j integrated out, then beta_j jointly (one b x b
  Cholesky per column);
- b > JOINT_MAX: tot_prec_j given beta_j, then beta_j in blocks of BLOCK_SIZE, each block
  given the others (cost about 2 b^2 + b BLOCK_SIZE^2 / 3 per column instead of b^3 / 3).
"""

import numpy as np
from numba import njit, prange

from .linalg import cholesky_lower, solve_lower, solve_upper_t

JOINT_MAX = 64
BLOCK_SIZE = 24


def is_collapsed(n_coefs: int) -> bool:
    return n_coefs <= JOINT_MAX


def gamma_shape(shape0: float, n_rows: int, n_flat: int, n_coefs: int) -> float:
    """Shape of tot_prec's conditional: collapsed over all coefficients, or given them."""
    if is_collapsed(n_coefs):
        return shape0 + 0.5 * (n_rows - n_flat)
    return shape0 + 0.5 * (n_rows + n_coefs - n_flat)


@njit(parallel=True, cache=True)
def sample_coefficients(gram, grid_of_col, xty, yty, prior_prec, rate0, std_gamma, normals, coefs):
    """Draw (tot_prec_j, beta_j) for every column j.

    Per-column arrays are row-major by column (one contiguous row per column).
    gram: (u, b, b) X*' W X* per used grid point; grid_of_col: (c,) index into gram;
    xty: (c, b) X*' W_j y*_j; yty: (c,) y*_j' W_j y*_j; prior_prec: (c, b), 0 = flat;
    rate0: (c,) prior Gamma rates; std_gamma: (c,) Gamma(shape, 1) draws with the shape from
    gamma_shape(); normals: (c, b) standard normals; coefs: (c, b) current values (used by
    the blocked update), overwritten with the draw. Returns tot_prec: (c,).
    """
    c, b = xty.shape
    tot_prec = np.empty(c)
    for j in prange(c):
        g = gram[grid_of_col[j]]
        if b <= JOINT_MAX:
            prec = g.copy()
            for p in range(b):
                prec[p, p] += prior_prec[j, p]
            low = cholesky_lower(prec)
            v = solve_lower(low, xty[j])
            quad = yty[j] - _dot(v, v)
            tau = std_gamma[j] / (rate0[j] + 0.5 * max(quad, 0.0))
            tot_prec[j] = tau
            coefs[j] = solve_upper_t(low, v + normals[j] / np.sqrt(tau))
        else:
            tot_prec[j] = _blocked_update(g, xty[j], yty[j], prior_prec[j], rate0[j], std_gamma[j],
                                          normals[j], coefs[j])
    return tot_prec


@njit(cache=True, fastmath=True)
def _dot(x, y):
    total = 0.0
    for i in range(x.shape[0]):
        total += x[i] * y[i]
    return total


@njit(cache=True, fastmath=True)
def _blocked_update(g, xty, yty, prior, rate0, std_gamma, normals, beta):
    """tot_prec | beta, then beta in blocks of BLOCK_SIZE given the rest; beta updated in place.

    Keeps g_beta = G beta up to date so each block costs O(b * block) beyond its Cholesky.
    """
    b = beta.shape[0]
    g_beta = np.empty(b)
    for p in range(b):
        g_beta[p] = _dot(g[p], beta)
    quad = yty - 2.0 * _dot(beta, xty) + _dot(beta, g_beta)
    for p in range(b):
        quad += prior[p] * beta[p] * beta[p]
    tau = std_gamma / (rate0 + 0.5 * max(quad, 0.0))
    sd = 1.0 / np.sqrt(tau)
    prec = np.empty((BLOCK_SIZE, BLOCK_SIZE))
    rhs = np.empty(BLOCK_SIZE)
    change = np.empty(BLOCK_SIZE)
    for start in range(0, b, BLOCK_SIZE):
        m = min(BLOCK_SIZE, b - start)
        for p in range(m):
            row = g[start + p]
            own = 0.0
            for q in range(m):
                prec[p, q] = row[start + q]
                own += row[start + q] * beta[start + q]
            prec[p, p] += prior[start + p]
            rhs[p] = xty[start + p] - g_beta[start + p] + own
        low = cholesky_lower(prec[:m, :m])
        v = solve_lower(low, rhs[:m])
        new = solve_upper_t(low, v + normals[start:start + m] * sd)
        for q in range(m):
            change[q] = new[q] - beta[start + q]
            beta[start + q] = new[q]
        for p in range(b):
            row = g[p]
            total = 0.0
            for q in range(m):
                total += row[start + q] * change[q]
            g_beta[p] += total
    return tau


def grouped_normal_equations(x_rot, y_rot, weights, grid_index):
    """Per used grid point: Gram X*' W X*, and per column X*' W y*_j and y*_j' W y*_j.

    x_rot: (n, b); y_rot: (n, c); weights: (G, n); grid_index: (c,).
    Returns gram (u, b, b), grid_of_col (c,), xty (c, b), yty (c,).
    """
    used, grid_of_col = np.unique(grid_index, return_inverse=True)
    b, c = x_rot.shape[1], y_rot.shape[1]
    gram = np.empty((used.size, b, b))
    xty = np.empty((c, b))
    yty = np.empty(c)
    for u, g in enumerate(used):
        cols = np.flatnonzero(grid_of_col == u)
        wx = x_rot * weights[g][:, None]
        gram[u] = x_rot.T @ wx
        y_sub = y_rot[:, cols] if cols.size < c else y_rot
        xty[cols] = y_sub.T @ wx
        yty[cols] = weights[g] @ (y_sub * y_sub)
    return gram, grid_of_col.astype(np.int64), xty, yty
