"""Step 1: impute the missing cells that lie inside a trait group's rows.

Each imputed cell is drawn from N(eta_hat_ij, 1 / resid_prec_j) with
eta_hat = X1 B1 + F Lambda + u_R, where u_R = Q u_R* is needed only at those cells. The
rotated data y* = Q' y is then updated in place for the changed cells (O(n_g) per cell).
"""

import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True)
def impute_cells(col_ptr, row_idx, x1, b1, scores, loadings, rotation, u_rot, resid_sd, normals,
                 y, y_rot):
    """Redraw the missing cells of one trait group, in place.

    Cells of local column c are rows row_idx[col_ptr[c]:col_ptr[c+1]] (local rows).
    x1: (n_g, b1) and b1: (b1, c) fixed effects; scores: (n_g, k) F and loadings: (k, c)
    Lambda on the group's rows and traits; rotation: (n_g, n_g) Q;
    u_rot: (n_g, c) u_R*; resid_sd: (c,); normals: (n_cells,); y, y_rot: (n_g, c) updated.
    """
    n_cols = col_ptr.size - 1
    n_rows = rotation.shape[0]
    for c in prange(n_cols):
        for pos in range(col_ptr[c], col_ptr[c + 1]):
            i = row_idx[pos]
            u = 0.0  # eta_hat of the cell
            for a in range(n_rows):
                u += rotation[i, a] * u_rot[a, c]
            for p in range(x1.shape[1]):
                u += x1[i, p] * b1[p, c]
            for p in range(scores.shape[1]):
                u += scores[i, p] * loadings[p, c]
            new = u + resid_sd[c] * normals[pos]
            delta = new - y[i, c]
            y[i, c] = new
            for a in range(n_rows):
                y_rot[a, c] += rotation[i, a] * delta


def missing_cells_csr(observed_block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column-compressed positions of the missing cells of a (n_g, t_g) observed mask."""
    missing = ~observed_block
    counts = missing.sum(axis=0)
    col_ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    _, row_idx = np.nonzero(missing.T)  # cells ordered by column, then row
    return col_ptr, row_idx.astype(np.int64)
