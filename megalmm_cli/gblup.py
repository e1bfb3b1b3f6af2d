"""Single-trait GBLUP: the baseline that multi-trait predictions are compared with.

Each trait is fitted alone on its observed rows: y = X b + u + e, u ~ N(0, h2 s2 K),
e ~ N(0, (1 - h2) s2 I), with h2 chosen on a fine grid by restricted maximum likelihood
(b and s2 profiled out) in the eigenbasis of K on those rows.
"""

import numpy as np

from .design import independent_columns


def gblup(values: np.ndarray, kinship: np.ndarray, design: np.ndarray, divisions: int = 100):
    """Genetic values for every individual and trait from one-trait-at-a-time GBLUP.

    values: (N, t) with NaN for missing; kinship: (N, N); design: (N, b).
    Returns (genetic (N, t), fitted (N, t) = X b + genetic, h2 (t,)).
    Traits with the same observed rows share one eigendecomposition.
    """
    n_all, t = values.shape
    genetic = np.full((n_all, t), np.nan)
    fitted = np.full((n_all, t), np.nan)
    h2_out = np.full(t, np.nan)
    grid = np.arange(divisions) / divisions
    observed = ~np.isnan(values)
    patterns, which = np.unique(observed.T, axis=0, return_inverse=True)
    for p, rows_mask in enumerate(patterns):
        rows = np.flatnonzero(rows_mask)
        cols = np.flatnonzero(which.ravel() == p)
        x = design[rows][:, independent_columns(design[rows])]
        s, q = np.linalg.eigh(kinship[np.ix_(rows, rows)])
        s = np.clip(s, 0, None)
        y_rot = q.T @ values[np.ix_(rows, cols)]
        x_rot = q.T @ x
        best = np.full(cols.size, -np.inf)
        for h2 in grid:
            w = 1.0 / (h2 * s + 1.0 - h2)
            xtwx = x_rot.T @ (x_rot * w[:, None])
            beta = np.linalg.solve(xtwx, x_rot.T @ (w[:, None] * y_rot))
            resid = y_rot - x_rot @ beta
            dof = rows.size - x.shape[1]
            sigma2 = (w[:, None] * resid**2).sum(axis=0) / dof
            reml = 0.5 * (np.log(w).sum() - np.linalg.slogdet(xtwx)[1] - dof * np.log(sigma2))
            better = reml > best
            best[better] = reml[better]
            h2_out[cols[better]] = h2
        for j_local, j in enumerate(cols):
            h2 = h2_out[j]
            w = 1.0 / (h2 * s + 1.0 - h2)
            xtwx = x_rot.T @ (x_rot * w[:, None])
            beta = np.linalg.solve(xtwx, x_rot.T @ (w * y_rot[:, j_local]))
            resid_rot = y_rot[:, j_local] - x_rot @ beta
            u = kinship[:, rows] @ (q @ (h2 * w * resid_rot))
            genetic[:, j] = u
            full_x = design[:, independent_columns(design[rows])]
            fitted[:, j] = full_x @ beta + u
    return genetic, fitted, h2_out
