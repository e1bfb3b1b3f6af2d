"""Step 6: factor scores F, row by row.

Row i of F has precision C = Lambda_C diag(resid_prec_C) Lambda_C' + diag(f_e_prec), where C
is the set of traits that row i contributes (the union of the trait groups whose rows
include i). Rows with the same set of groups share C; one k x k Cholesky per such pattern.
"""

import numpy as np
import scipy.linalg


def sample_factor_scores(rhs, group_precisions, pattern_of_row, pattern_groups, f_e_prec, normals):
    """Draw F: (n, k).

    rhs: (n, k) sum over groups of Lambda_g diag(resid_prec_g) (y - x1 B1 - u_R)_i' plus
    f_e_prec * f_mean_i; group_precisions: list of (k, k) Lambda_g diag(resid_prec_g) Lambda_g';
    pattern_of_row: (n,) pattern id per row; pattern_groups: list of group-index arrays;
    f_e_prec: (k,); normals: (n, k).
    """
    n, k = rhs.shape
    scores = np.empty((n, k))
    for p, groups in enumerate(pattern_groups):
        rows = np.flatnonzero(pattern_of_row == p)
        if rows.size == 0:
            continue
        prec = np.diag(f_e_prec)
        for g in groups:
            prec = prec + group_precisions[g]
        low = np.linalg.cholesky(prec)
        mean = scipy.linalg.cho_solve((low, True), rhs[rows].T)
        noise = scipy.linalg.solve_triangular(low, normals[rows].T, lower=True, trans="T")
        scores[rows] = (mean + noise).T
    return scores
