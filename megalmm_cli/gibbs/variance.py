"""Steps 3-4 (and 5 for factors): variance proportions on the grid, then random effects.

Everything is in the rotated basis of one random effect, where column j has variance
(h2_j s_i + 1 - h2_j) / tot_prec_j on row i.
"""

import numpy as np
from numba import njit, prange

from ..gridlmm import draw_grid_index, grid_loglik


def sample_h2_index(resid_rot, weights, tot_prec, log_prior, uniforms, half_logdet=None):
    """Grid index of h2 for every column, random effect integrated out.

    resid_rot: (n, c) rotated residuals; weights: (G, n); tot_prec: (c,); log_prior: (G,);
    uniforms: (c,). Returns (c,) int.
    """
    loglik = grid_loglik(resid_rot * resid_rot, weights, tot_prec, log_prior, half_logdet)
    return draw_grid_index(loglik, uniforms)


def sample_random_effects(resid_rot, eigenvalues, h2, tot_prec, normals):
    """Rotated random effects u* given h2: independent normals per coordinate.

    resid_rot: (n, c); eigenvalues: (n,); h2: (c,); tot_prec: (c,); normals: (n, c).
    mean_i = h2 s_i / (h2 s_i + 1 - h2) e*_i, var_i = h2 s_i (1 - h2) / (h2 s_i + 1 - h2) / tot_prec.
    Columns with h2 = 0 (and coordinates with s_i = 0) get exactly 0. Returns (n, c).
    """
    out = np.empty_like(resid_rot)
    _random_effects_kernel(resid_rot, eigenvalues, h2, tot_prec, normals, out)
    return out


@njit(parallel=True, cache=True)
def _random_effects_kernel(resid_rot, eigenvalues, h2, tot_prec, normals, out):
    n, c = resid_rot.shape
    for i in prange(n):
        s = eigenvalues[i]
        for j in range(c):
            genetic = h2[j] * s
            shrink = genetic / (genetic + 1.0 - h2[j])
            var = shrink * (1.0 - h2[j]) / tot_prec[j]
            out[i, j] = shrink * resid_rot[i, j] + np.sqrt(var) * normals[i, j]
