"""Step 1: impute the missing cells that lie inside a trait group's rows.

Each imputed cell is drawn from N(eta_hat_ij, 1 / resid_prec_j) with
eta_hat = X1 B1 + F Lambda + u_R, where u_R = Q u_R* is needed only at those cells. The
rotated data y* = Q' y is then updated in place for the changed cells (O(n_g) per cell).
"""

import numpy as np
from numba import njit, prange


COLUMN_BLOCK = 16  # columns whose rotated data are copied together into contiguous rows


@njit(cache=True, inline="always")
def _dot(a, b, n):
    """sum_i a[i] b[i] with eight running sums (a fixed order: the same result every run)."""
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
    m = n - n % 8
    for i in range(0, m, 8):
        s0 += a[i] * b[i]
        s1 += a[i + 1] * b[i + 1]
        s2 += a[i + 2] * b[i + 2]
        s3 += a[i + 3] * b[i + 3]
        s4 += a[i + 4] * b[i + 4]
        s5 += a[i + 5] * b[i + 5]
        s6 += a[i + 6] * b[i + 6]
        s7 += a[i + 7] * b[i + 7]
    for i in range(m, n):
        s0 += a[i] * b[i]
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))


@njit(parallel=True, cache=True)
def impute_cells(col_ptr, row_idx, x1, b1, scores, loadings, rotation, u_rot, resid_sd, normals,
                 y, y_rot):
    """Redraw the missing cells of one trait group, in place.

    Cells of local column c are rows row_idx[col_ptr[c]:col_ptr[c+1]] (local rows).
    x1: (n_g, b1) and b1: (b1, c) fixed effects; scores: (n_g, k) F and loadings: (k, c)
    Lambda on the group's rows and traits; rotation: (n_g, n_g) Q;
    u_rot: (n_g, c) u_R*; resid_sd: (c,); normals: (n_cells,); y, y_rot: (n_g, c) updated.

    Columns are handled COLUMN_BLOCK at a time: their u_R* and y* are copied into contiguous
    (columns, n_g) rows first (a column of a C-ordered (n_g, c) array is strided, which costs
    a cache miss per element), updated there cell by cell, and copied back.
    """
    n_cols = col_ptr.size - 1
    n_rows = rotation.shape[0]
    n_blocks = (n_cols + COLUMN_BLOCK - 1) // COLUMN_BLOCK
    for blk in prange(n_blocks):
        c0 = blk * COLUMN_BLOCK
        c1 = min(n_cols, c0 + COLUMN_BLOCK)
        if col_ptr[c1] == col_ptr[c0]:
            continue
        width = c1 - c0
        u_cols = np.empty((width, n_rows))
        y_cols = np.empty((width, n_rows))
        for a in range(n_rows):
            for j in range(width):
                u_cols[j, a] = u_rot[a, c0 + j]
                y_cols[j, a] = y_rot[a, c0 + j]
        for j in range(width):
            c = c0 + j
            for pos in range(col_ptr[c], col_ptr[c + 1]):
                i = row_idx[pos]
                u = _dot(rotation[i], u_cols[j], n_rows)  # eta_hat of the cell
                for p in range(x1.shape[1]):
                    u += x1[i, p] * b1[p, c]
                for p in range(scores.shape[1]):
                    u += scores[i, p] * loadings[p, c]
                new = u + resid_sd[c] * normals[pos]
                delta = new - y[i, c]
                y[i, c] = new
                for a in range(n_rows):
                    y_cols[j, a] += rotation[i, a] * delta
        for a in range(n_rows):
            for j in range(width):
                y_rot[a, c0 + j] = y_cols[j, a]


def missing_cells_csr(observed_block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column-compressed positions of the missing cells of a (n_g, t_g) observed mask."""
    missing = ~observed_block
    counts = missing.sum(axis=0)
    col_ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    _, row_idx = np.nonzero(missing.T)  # cells ordered by column, then row
    return col_ptr, row_idx.astype(np.int64)
