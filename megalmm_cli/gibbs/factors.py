"""Step 6: factor scores F, row by row.

Row i of F has precision C = Lambda_C diag(resid_prec_C) Lambda_C' + diag(f_e_prec), where C
is the set of traits that row i contributes (the union of the trait groups whose rows
include i). Rows with the same set of groups share C; one k x k Cholesky per such pattern.
"""

import numpy as np
from numba import njit, prange

from .linalg import cholesky_into, draw_with_factor


def sample_factor_scores(rhs, group_precisions, pattern_of_row, pattern_groups, f_e_prec, normals):
    """Draw F: (n, k).

    rhs: (n, k) sum over groups of Lambda_g diag(resid_prec_g) (y - x1 B1 - u_R)_i' plus
    f_e_prec * f_mean_i; group_precisions: list of (k, k) Lambda_g diag(resid_prec_g) Lambda_g';
    pattern_of_row: (n,) pattern id per row; pattern_groups: list of group-index arrays;
    f_e_prec: (k,); normals: (n, k).
    """
    n, k = rhs.shape
    membership = np.zeros((len(pattern_groups), len(group_precisions)), dtype=np.bool_)
    for p, groups in enumerate(pattern_groups):
        membership[p, groups] = True
    order = np.argsort(pattern_of_row, kind="stable")
    ptr = np.searchsorted(pattern_of_row[order], np.arange(len(pattern_groups) + 1))
    stacked = np.stack(group_precisions) if group_precisions else np.zeros((0, k, k))
    return _draw_by_pattern(np.ascontiguousarray(rhs), stacked, membership, order.astype(np.int64),
                            ptr.astype(np.int64), f_e_prec, np.ascontiguousarray(normals))


@njit(parallel=True, cache=True)
def _draw_by_pattern(rhs, group_precisions, membership, order, ptr, f_e_prec, normals):
    n, k = rhs.shape
    scores = np.empty((n, k))
    for p in prange(membership.shape[0]):
        if ptr[p + 1] == ptr[p]:
            continue
        base = np.zeros((k, k))
        for q in range(k):
            base[q, q] = f_e_prec[q]
        for g in range(membership.shape[1]):
            if membership[p, g]:
                base += group_precisions[g]
        low = np.zeros((k, k))
        work = np.empty(k)
        cholesky_into(base, low)
        for pos in range(ptr[p], ptr[p + 1]):
            i = order[pos]
            draw_with_factor(low, rhs[i], normals[i], work, scores[i])
    return scores
