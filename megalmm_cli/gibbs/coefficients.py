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

With several random effects (draw_by_slice) the columns are first whitened by the Grid-LMM
cache's slice transform of their grid point, which makes the covariance diagonal again.
"""

import numpy as np
from numba import njit, prange

from .blas import matmul
from .linalg import (cholesky_into, draw_four_with_factors, draw_with_factor, solve_lower_into,
                     weighted_grams)

JOINT_MAX = 64
BLOCK_SIZE = 16


def is_collapsed(n_coefs: int) -> bool:
    return n_coefs <= JOINT_MAX


def gamma_shape(shape0: float, n_rows: int, n_flat: int, n_coefs: int) -> float:
    """Shape of tot_prec's conditional: collapsed over all coefficients, or given them."""
    if is_collapsed(n_coefs):
        return shape0 + 0.5 * (n_rows - n_flat)
    return shape0 + 0.5 * (n_rows + n_coefs - n_flat)


def sample_coefficients(gram, grid_of_col, xty, yty, prior_prec, rate0, std_gamma, normals, coefs):
    """Draw (tot_prec_j, beta_j) for every column j.

    Per-column arrays are row-major by column (one contiguous row per column).
    gram: (u, b, b) X*' W X* per used grid point; grid_of_col: (c,) index into gram;
    xty: (c, b) X*' W_j y*_j; yty: (c,) y*_j' W_j y*_j; prior_prec: (c, b), 0 = flat;
    rate0: (c,) prior Gamma rates; std_gamma: (c,) Gamma(shape, 1) draws with the shape from
    gamma_shape(); normals: (c, b) standard normals; coefs: (c, b) current values (used by
    the blocked update), overwritten with the draw. Returns tot_prec: (c,).
    """
    if xty.shape[1] <= JOINT_MAX:
        return _joint_draws(gram, grid_of_col, xty, yty, prior_prec, rate0, std_gamma, normals, coefs)
    return _blocked_draws(gram, grid_of_col, xty, yty, prior_prec, rate0, std_gamma, normals, coefs)


@njit(parallel=True, cache=True)
def _joint_draws(gram, grid_of_col, xty, yty, prior_prec, rate0, std_gamma, normals, coefs):
    """tot_prec_j with beta_j integrated out, then beta_j jointly: one Cholesky per column."""
    c, b = xty.shape
    tot_prec = np.empty(c)
    for j in prange(c):
        prec = gram[grid_of_col[j]].copy()
        for p in range(b):
            prec[p, p] += prior_prec[j, p]
        low = np.zeros((b, b))
        cholesky_into(prec, low)
        v = np.empty(b)
        solve_lower_into(low, xty[j], v)
        quad = yty[j] - np.dot(v, v)  # y'Wy - m'Cm: the quadratic form with beta integrated out
        tau = std_gamma[j] / (rate0[j] + 0.5 * max(quad, 0.0))
        tot_prec[j] = tau
        # beta = C^-1 xty + L'^-1 z / sqrt(tau), written as the draw for rhs = L v
        draw_with_factor(low, xty[j], normals[j] / np.sqrt(tau), v, coefs[j])
    return tot_prec


def _blocked_draws(gram, grid_of_col, xty, yty, prior_prec, rate0, std_gamma, normals, coefs):
    """tot_prec_j given beta_j, then beta_j in blocks of BLOCK_SIZE given the rest."""
    rows = np.ascontiguousarray(coefs)  # one contiguous row per column (a copy if strided)
    tot_prec = _blocked_sweep(gram, grid_of_col.astype(np.int64), np.ascontiguousarray(xty), yty,
                              np.ascontiguousarray(prior_prec), rate0, std_gamma,
                              np.ascontiguousarray(normals), rows, BLOCK_SIZE)
    if rows is not coefs:
        coefs[...] = rows
    return tot_prec


# Columns with the same grid point are drawn in batches of up to BATCH: their products with
# the shared Gram matrix are then matrix-matrix products (BLAS, called from the kernel), about
# 3x faster than one column's matrix-vector products. Fixed, so that the batches (and hence
# the draws) do not depend on the thread count.
BATCH = 64


@njit(cache=True)
def _batch_starts(grid_of_col, order):
    """Start of each batch in order: runs of at most BATCH columns with the same grid point
    (ends with len(order))."""
    c = order.shape[0]
    starts = np.empty(c + 1, dtype=np.int64)
    n_batches = 0
    q = 0
    while q < c:
        starts[n_batches] = q
        n_batches += 1
        point = grid_of_col[order[q]]
        end = q + 1
        while end < c and end - q < BATCH and grid_of_col[order[end]] == point:
            end += 1
        q = end
    starts[n_batches] = c
    return starts[:n_batches + 1]


@njit(parallel=True, cache=True)
def _blocked_sweep(gram, grid_of_col, xty, yty, prior_prec, rate0, std_gamma, normals, coefs,
                   block_size):
    """The blocked update of every column in one kernel (arguments as sample_coefficients).

    Per batch of columns that share the Gram matrix g: beta g (a matrix product: g is
    symmetric), tot_prec given beta, then for each block of m coefficients, per column, the
    m x m system g[blk, blk] + diag(prior) with right-hand side xty - g beta + g[blk, blk]
    beta[blk] (four columns' systems factorised and solved interleaved); after each block the
    batch's change times g's block rows brings beta g up to date (one matrix product).
    """
    c, b = xty.shape
    tot_prec = np.empty(c)
    order = np.argsort(grid_of_col, kind="mergesort")
    starts = _batch_starts(grid_of_col, order)
    n_batches = starts.shape[0] - 1
    for batch in prange(n_batches):
        first = starts[batch]
        used = starts[batch + 1] - first
        g = gram[grid_of_col[order[first]]]
        beta = np.empty((used, b))
        for i in range(used):
            beta[i] = coefs[order[first + i]]
        g_beta = np.dot(beta, g)
        sd = np.empty(used)
        for i in range(used):
            j = order[first + i]
            quad = yty[j]
            for p in range(b):
                quad += beta[i, p] * (g_beta[i, p] - 2.0 * xty[j, p] + prior_prec[j, p] * beta[i, p])
            tau = std_gamma[j] / (rate0[j] + 0.5 * max(quad, 0.0))
            tot_prec[j] = tau
            sd[i] = 1.0 / np.sqrt(tau)
        low = np.zeros((block_size, block_size, 4))  # four columns' systems, lane last
        inv_diag = np.empty((block_size, 4))
        rhs = np.empty((block_size, 4))
        noise = np.empty((block_size, 4))
        new = np.empty((block_size, 4))
        change = np.empty((used, block_size))
        for start in range(0, b, block_size):
            m = min(block_size, b - start)
            for i0 in range(0, used, 4):
                for k in range(4):  # lanes past the batch's end repeat its last column
                    i = min(i0 + k, used - 1)
                    j = order[first + i]
                    for p in range(m):
                        row = start + p
                        total = xty[j, row] - g_beta[i, row]
                        for r in range(m):
                            total += g[row, start + r] * beta[i, start + r]
                        for r in range(p):
                            low[p, r, k] = g[row, start + r]
                        low[p, p, k] = g[row, row] + prior_prec[j, row]
                        rhs[p, k] = total
                        noise[p, k] = normals[j, row] * sd[i]
                draw_four_with_factors(low, inv_diag, rhs, noise, new, m)
                for k in range(min(4, used - i0)):
                    i = i0 + k
                    for r in range(m):
                        change[i, r] = new[r, k] - beta[i, start + r]
                        beta[i, start + r] = new[r, k]
            g_beta += np.dot(np.ascontiguousarray(change[:, :m]), g[start:start + m])
        for i in range(used):
            coefs[order[first + i]] = beta[i]
    return tot_prec


def grouped_normal_equations(x_rot, y_rot, weights, grid_index):
    """Per used grid point: Gram X*' W X*, and per column X*' W y*_j and y*_j' W y*_j.

    x_rot: (n, b); y_rot: (n, c); weights: (G, n); grid_index: (c,).
    Returns gram (u, b, b), grid_of_col (c,), xty (c, b), yty (c,).
    """
    if grid_index.size == 1:  # a single column (common with many small groups)
        used, grid_of_col = grid_index.copy(), np.zeros(1, dtype=np.int64)
    else:
        used, grid_of_col = np.unique(grid_index, return_inverse=True)
    gram = weighted_grams(x_rot, weights[used])
    weighted = np.empty_like(y_rot)
    yty = _weight_columns(y_rot, weights, grid_index.astype(np.int64), weighted)
    xty = matmul(weighted.T, x_rot)
    return gram, grid_of_col.astype(np.int64), xty, yty


@njit(parallel=True, cache=True)
def _weight_columns(y_rot, weights, grid_index, out):
    """out[i, j] = weights[grid_index[j], i] * y_rot[i, j]; returns yty[j] = sum_i out[i, j]
    y_rot[i, j] (c,), summed over fixed row blocks (the same result on any thread count)."""
    n, c = y_rot.shape
    n_blocks = min(n, 16)
    partial = np.zeros((n_blocks, c))
    for blk in prange(n_blocks):
        for i in range(blk * n // n_blocks, (blk + 1) * n // n_blocks):
            for j in range(c):
                value = weights[grid_index[j], i] * y_rot[i, j]
                out[i, j] = value
                partial[blk, j] += value * y_rot[i, j]
    yty = np.zeros(c)
    for blk in range(n_blocks):
        for j in range(c):
            yty[j] += partial[blk, j]
    return yty


def draw_by_slice(cache, x_rot, y_rot, index, prior_prec, rate0, std_gamma, noise, coefs_t,
                  white_y=None, white_x=None):
    """Step 2 (or its factor analogue) on the general path: columns grouped by the slice of
    their grid point, whitened by its transform, then the usual per-grid-point draws.

    x_rot: (n, b); y_rot: (n, c); index: (c,); prior_prec, noise, coefs_t: (c, b) (coefs_t is
    overwritten with the draw); rate0, std_gamma: (c,). white_y (S, n, c), when given, holds
    T_s y_rot already; white_x(s), when given, returns T_s x_rot. Returns tot_prec (c,).
    """
    tau = np.empty(y_rot.shape[1])
    for s, cols in cache.columns_by_slice(index):
        if white_x is None or white_y is None:
            transform = cache.transform(s)
        wx = matmul(transform, x_rot) if white_x is None else white_x(s)
        wy = matmul(transform, y_rot[:, cols]) if white_y is None else white_y[s][:, cols]
        gram, grid_of_col, xty, yty = grouped_normal_equations(wx, wy, cache.weights, index[cols])
        sub = np.ascontiguousarray(coefs_t[cols])
        tau[cols] = sample_coefficients(gram, grid_of_col, xty, yty,
                                        np.ascontiguousarray(prior_prec[cols]), rate0[cols],
                                        std_gamma[cols], np.ascontiguousarray(noise[cols]), sub)
        coefs_t[cols] = sub
    return tau
