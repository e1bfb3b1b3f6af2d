"""Step 1: impute the missing cells that lie inside a trait group's rows.

Each imputed cell is drawn from N(eta_hat_ij, 1 / resid_prec_j) with
eta_hat = X1 B1 + F Lambda + u_R, where u_R = Q u_R* is needed only at those cells. The
rotated data y* = Q' y is then updated in place for the changed cells (O(n_g) per cell).
"""

import numba
import numpy as np
from numba import njit, prange

from .linalg import dot


COLUMN_BLOCK = 64  # columns whose rotated data are copied together into contiguous rows


def impute_cells(col_ptr, row_idx, x1, b1, scores, loadings, rotation, u_rot, resid_sd, normals,
                 y, y_rot):
    """Redraw the missing cells of one trait group, in place.

    Cells of local column c are rows row_idx[col_ptr[c]:col_ptr[c+1]] (local rows, ascending).
    x1: (n_g, b1) and b1: (b1, c) fixed effects; scores: (n_g, k) F and loadings: (k, c)
    Lambda on the group's rows and traits; rotation: (n_g, n_g) Q;
    u_rot: (n_g, c) u_R*; resid_sd: (c,); normals: (n_cells,); y, y_rot: (n_g, c) updated.

    Columns are handled at most COLUMN_BLOCK at a time: their u_R*, y* and loadings are
    copied into contiguous rows first (a column of a C-ordered array is strided), and the
    block's cells are visited row by row, so that each row of Q is read once per block and
    serves all of that row's cells there (cell by cell in column order, Q would be streamed
    from memory once per column). Each column still sees its cells in ascending row order,
    so every sum is formed in the same order as a column-by-column pass: the result does not
    depend on the blocks, which are as many as the threads can share evenly.
    """
    n_blocks, width = column_blocks(col_ptr.size - 1, numba.get_num_threads())
    _impute_blocks(col_ptr, row_idx, x1, b1, scores, loadings, rotation, u_rot, resid_sd, normals,
                   y, y_rot, n_blocks, width)


@njit(parallel=True, cache=True)
def _impute_blocks(col_ptr, row_idx, x1, b1, scores, loadings, rotation, u_rot, resid_sd,
                   normals, y, y_rot, n_blocks, block_width):
    n_cols = col_ptr.size - 1
    n_rows = rotation.shape[0]
    n_factors = scores.shape[1]
    for blk in prange(n_blocks):
        c0 = blk * block_width
        c1 = min(n_cols, c0 + block_width)
        n_cells = col_ptr[c1] - col_ptr[c0]
        if n_cells == 0:
            continue
        width = c1 - c0
        # the block's cells by row (a counting sort; columns ascending within a row)
        row_start = np.zeros(n_rows + 1, dtype=np.int64)
        for pos in range(col_ptr[c0], col_ptr[c1]):
            row_start[row_idx[pos] + 1] += 1
        for a in range(n_rows):
            row_start[a + 1] += row_start[a]
        fill = row_start[:n_rows].copy()
        cell_pos = np.empty(n_cells, dtype=np.int64)
        cell_col = np.empty(n_cells, dtype=np.int64)
        for c in range(c0, c1):
            for pos in range(col_ptr[c], col_ptr[c + 1]):
                i = row_idx[pos]
                cell_pos[fill[i]] = pos
                cell_col[fill[i]] = c
                fill[i] += 1
        u_cols = np.empty((width, n_rows))
        y_cols = np.empty((width, n_rows))
        for a in range(n_rows):
            for j in range(width):
                u_cols[j, a] = u_rot[a, c0 + j]
                y_cols[j, a] = y_rot[a, c0 + j]
        lam_cols = np.empty((width, n_factors))
        for p in range(n_factors):
            for j in range(width):
                lam_cols[j, p] = loadings[p, c0 + j]
        for i in range(n_rows):
            for q in range(row_start[i], row_start[i + 1]):
                pos = cell_pos[q]
                c = cell_col[q]
                j = c - c0
                u = dot(rotation[i], u_cols[j])  # eta_hat of the cell: u_R, then X1 B1 and F Lambda
                for p in range(x1.shape[1]):
                    u += x1[i, p] * b1[p, c]
                u += dot(scores[i], lam_cols[j])
                new = u + resid_sd[c] * normals[pos]
                delta = new - y[i, c]
                y[i, c] = new
                for a in range(n_rows):
                    y_cols[j, a] += rotation[i, a] * delta
        for a in range(n_rows):
            for j in range(width):
                y_rot[a, c0 + j] = y_cols[j, a]


def column_blocks(n_cols: int, n_threads: int) -> tuple:
    """(number, width) of equal blocks of at most COLUMN_BLOCK columns, the number a multiple
    of n_threads where there are enough columns (prange gives each thread an equal run of
    blocks: 200 columns in 64-wide blocks would leave one thread 128 and the other 72)."""
    if n_cols == 0:
        return 0, 1
    n_blocks = (n_cols + COLUMN_BLOCK - 1) // COLUMN_BLOCK
    if n_cols >= n_threads > 1:
        n_blocks = (n_blocks + n_threads - 1) // n_threads * n_threads
    n_blocks = min(n_blocks, n_cols)
    width = (n_cols + n_blocks - 1) // n_blocks
    return (n_cols + width - 1) // width, width


def missing_cells_csr(observed_block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column-compressed positions of the missing cells of a (n_g, t_g) observed mask."""
    missing = ~observed_block
    counts = missing.sum(axis=0)
    col_ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    _, row_idx = np.nonzero(missing.T)  # cells ordered by column, then row
    return col_ptr, row_idx.astype(np.int64)
