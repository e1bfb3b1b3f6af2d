"""Steps 3-4 (and 5 for factors): variance proportions on the grid, then random effects.

With one random effect everything is in its rotated basis, where column j has variance
(h2_j s_i + 1 - h2_j) / tot_prec_j on row i. With several, the general functions at the end
whiten through the slice transforms of the Grid-LMM cache (gridcache.py).
"""

import numpy as np
from numba import njit, prange

from ..gridlmm import draw_grid_index, grid_loglik, grid_loglik_of_sums
from .blas import matmul, square_sums


def sample_h2_index(resid_rot, weights, tot_prec, log_prior, uniforms, half_logdet=None):
    """Grid index of h2 for every column, random effect integrated out.

    resid_rot: (n, c) rotated residuals; weights: (G, n); tot_prec: (c,); log_prior: (G,);
    uniforms: (c,). Returns (c,) int.
    """
    quad = square_sums(weights, resid_rot)  # (G, c) sum_i w_gi e_ij^2
    loglik = grid_loglik_of_sums(quad, weights, tot_prec, log_prior, half_logdet)
    return draw_grid_index(loglik, uniforms)


def sample_random_effects(resid_rot, eigenvalues, h2, tot_prec, normals):
    """Rotated random effects u* given h2: independent normals per coordinate.

    resid_rot: (n, c); eigenvalues: (n,); h2: (c,); tot_prec: (c,); normals: (n, c).
    mean_i = h2 s_i / (h2 s_i + 1 - h2) e*_i, var_i = h2 s_i (1 - h2) / (h2 s_i + 1 - h2) / tot_prec.
    Columns with h2 = 0 (and coordinates with s_i = 0) get exactly 0. Returns (n, c).
    """
    # h2 takes few values (grid points): shrinkage and sd per (row, value) from a small table,
    # so that no division or square root is left per cell
    levels, which = np.unique(h2, return_inverse=True)
    genetic = eigenvalues[:, None] * levels[None, :]                      # (n, L)
    shrink = genetic / (genetic + 1.0 - levels[None, :])
    sd = np.sqrt(shrink * (1.0 - levels[None, :]))
    out = np.empty_like(resid_rot)
    _random_effects_kernel(resid_rot, np.ascontiguousarray(shrink), np.ascontiguousarray(sd),
                           which.astype(np.int64), 1.0 / np.sqrt(tot_prec), normals, out)
    return out


@njit(parallel=True, cache=True)
def _random_effects_kernel(resid_rot, shrink, sd, which, inv_sd, normals, out):
    """out[i, j] = shrink[i, which[j]] resid_rot[i, j] + sd[i, which[j]] inv_sd[j] normals[i, j]."""
    n, c = resid_rot.shape
    for i in prange(n):
        for j in range(c):
            level = which[j]
            out[i, j] = (shrink[i, level] * resid_rot[i, j]
                         + sd[i, level] * inv_sd[j] * normals[i, j])


# ----------------------------------------------------------------------------- several effects
# The general path (DESIGN.md section 3, last paragraph): columns are whitened through the
# slice transforms of a gridcache.GridCache instead of one diagonal weight vector.


def general_loglik(resid, cache, tot_prec, log_prior, white=None):
    """(G, c) grid log posterior of every column, random effects integrated out.

    resid: (n, c) residuals in the group's basis; cache: GridCache; tot_prec: (c,);
    log_prior: (G,). One (n, n) x (n, c) product per slice, or none when white(s) gives
    T_s resid (see WhitenedData).
    """
    out = np.empty((cache.weights.shape[0], resid.shape[1]))
    for s, points in enumerate(cache.points_of_slice):
        w = matmul(cache.transform(s), resid) if white is None else white(s)
        out[points] = grid_loglik(w * w, cache.weights[points], tot_prec, log_prior[points],
                                  cache.half_logdet[points])
    return out


def apply_inverse(cache, index, values):
    """V(h_j)^-1 values[:, j] for every column j at grid point index[j]: T_s' W T_s. (n, c)."""
    out = np.empty_like(values)
    for s, cols in cache.columns_by_slice(index):
        transform = cache.transform(s)
        white = matmul(transform, values[:, cols]) * cache.weights[index[cols]].T
        out[:, cols] = matmul(transform.T, white)
    return out


def _root_width(part) -> int:
    """Columns of one of cache.root_parts: the rows of values that _root_times reads."""
    kind, root = part
    return root.shape[0] if kind == "diag" else root.shape[1]


def _root_times(part, values):
    """root @ values for one of cache.root_parts, values (_root_width(part), c) (a diagonal
    root costs no product)."""
    kind, root = part
    if kind == "diag":
        return root[:, None] * values
    return matmul(root, values)


def _root_t_times(part, values):
    """root.T @ values for one of cache.root_parts."""
    kind, root = part
    if kind == "diag":
        return root[:, None] * values
    return matmul(root.T, values)


def sample_random_effects_general(resid, h, tot_prec, index, cache, effect_normals,
                                  resid_normals, by_effect=False):
    """Random effects given the grid point, by conditioning prior draws (Matheron's rule).

    resid: (n, c) e = sum_r u_r + eps in the group's basis; h: (c, m) variance proportions;
    tot_prec: (c,); index: (c,) grid points; effect_normals: (m, r, c) and resid_normals
    (n, c) standard normals (effect r uses the first rows, as many as its root has columns).
    With u_r0 ~ N(0, h_r B_r / tot_prec), eps0 ~ N(0, (1 - sum h) / tot_prec) and
    v = V(h)^-1 (e - sum_r u_r0 - eps0):
        u_r = u_r0 + h_r B_r v        (exact draw from u_r | e),
        sum_r u_r = e - eps0 - (1 - sum h) v.
    Returns the sum (n, c), or every effect (m, n, c) when by_effect. Effects with h_r = 0 are 0.
    """
    sd = 1.0 / np.sqrt(tot_prec)
    share_e = 1.0 - h.sum(axis=1)
    parts = cache.root_parts
    prior = [_root_times(parts[e], effect_normals[e][:_root_width(parts[e])]
                         * (np.sqrt(h[:, e]) * sd)[None, :]) for e in range(h.shape[1])]
    eps0 = resid_normals * (np.sqrt(share_e) * sd)[None, :]
    v = apply_inverse(cache, index, resid - sum(prior) - eps0)
    if not by_effect:
        return resid - eps0 - v * share_e[None, :]
    return np.stack([prior[e] + h[:, e][None, :] * _root_times(parts[e], _root_t_times(parts[e], v))
                     for e in range(h.shape[1])])
