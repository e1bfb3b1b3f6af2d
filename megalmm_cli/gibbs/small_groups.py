"""Steps 2-4 of many small missing-data groups in one kernel (one random effect).

Real data often form many groups of a few traits each (G2F: 15 groups, most of them one
trait). Each group's update is then a few thousand multiply-adds wrapped in some forty numpy
and numba calls, and the calls cost more than the arithmetic. Here the same update runs for
all such groups in one numba kernel, the groups shared among the threads:

    per trait j of group g, with X* = [Q_g' X1_g, Q_g' F_g] and W = diag(w(h2_j)):
    tot_prec_j with beta_j integrated out, then beta_j          (gibbs/coefficients.py)
    h2_j on the grid given e*_j = y*_j - X* beta_j               (gridlmm.py)
    u*_j given h2_j: shrink_i e*_ij + sd_i / sqrt(tot_prec_j) z_ij  (gibbs/variance.py)

Step 6 takes each group's part of the factor scores' right-hand side and precision,
Lambda_g Psi_g (y - X1 B1 - U_R)_g and Lambda_g Psi_g Lambda_g', from one kernel too
(`score_terms`), and each stored draw their U_R on every individual (`project_small_groups`),
where copies of their eigenvectors and projection maps fit in PACKED_MAX_BYTES.

The random numbers are those of sampler._sample_group, drawn from the chain's Generator in
the same order (sampler.sample_trait_side draws them group by group before the kernel runs),
so a chain is the same as through the per-group path up to rounding.
"""

from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from . import coefficients
from .linalg import cholesky_into, dot, draw_with_factor, solve_lower_into

SMALL_MAX_TRAITS = 16        # groups of at most this many traits (and few cells) qualify:
SMALL_MAX_CELLS = 200_000    # larger ones spend their time in products, not in calls
PACKED_MAX_BYTES = 64 << 20  # copies of the packed groups' eigenvectors (for step 6) and
                             # projection maps (for the per-draw random effects)


def is_small(n_rows: int, n_traits: int) -> bool:
    """Whether a group of this shape is small enough for the kernels (prepare's estimate too)."""
    return n_traits <= SMALL_MAX_TRAITS and n_rows * n_traits < SMALL_MAX_CELLS


def qualifies(g, n_coefs: int) -> bool:
    """Whether group g takes the one-kernel path with n_coefs = b1_g + k coefficients."""
    return (g.cache is None and is_small(g.rows.size, g.cols.size)
            and coefficients.is_collapsed(n_coefs))


def _offsets(sizes) -> np.ndarray:
    """(m + 1,) int64 start of each of m consecutive parts of the given sizes."""
    return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


def _flat(arrays) -> np.ndarray:
    """The arrays raveled one after another (an empty float array for none)."""
    return np.concatenate(arrays, axis=None) if len(arrays) else np.zeros(0)


@dataclass(frozen=True)
class SmallGroups:
    """The fixed inputs of a set of groups, packed into flat arrays (offsets per group).

    members: (m,) indices into model.groups; row_ptr, col_ptr: (m + 1,) offsets of each
    group's rows and traits; cols: (sum t_g,) trait indices; eigen: (sum n_g,) eigenvalues of
    K on the group's rows; weights: (sum G n_g,) each group's (G, n_g) grid weights;
    half_logdet: (m, G); x1: (sum n_g b1_g,) each group's (n_g, b1_g) Q' X1; x1_ptr: (m + 1,);
    keep: (sum b1_g,) the B1 rows of each group's fixed-effect columns, keep_ptr: (m + 1,);
    rows: (sum n_g,) each group's training rows; vectors: (sum n_g^2,) each group's (n_g, n_g)
    eigenvectors Q, or None above PACKED_MAX_BYTES, vec_ptr: (m + 1,) their offsets;
    projections: a ProjectionPack of the groups' maps to the other individuals, or None when
    they and the vectors exceed it.
    """

    members: np.ndarray
    row_ptr: np.ndarray
    col_ptr: np.ndarray
    cols: np.ndarray
    eigen: np.ndarray
    weights: np.ndarray
    half_logdet: np.ndarray
    x1: np.ndarray
    x1_ptr: np.ndarray
    keep: np.ndarray
    keep_ptr: np.ndarray
    rows: np.ndarray
    vectors: np.ndarray | None
    vec_ptr: np.ndarray
    projections: "ProjectionPack | None"

    @classmethod
    def pack(cls, groups, members) -> "SmallGroups":
        chosen = [groups[i] for i in members]
        vector_size = sum(g.rows.size ** 2 for g in chosen)
        map_size = sum(g.projection.mean_map.size + g.projection.chol.size for g in chosen)

        return cls(
            members=np.asarray(members, dtype=np.int64),
            row_ptr=_offsets([g.rows.size for g in chosen]),
            col_ptr=_offsets([g.cols.size for g in chosen]),
            cols=_flat([g.cols for g in chosen]).astype(np.int64),
            eigen=_flat([g.rot.values for g in chosen]).astype(np.float64),
            weights=_flat([g.weights for g in chosen]).astype(np.float64),
            half_logdet=np.array([g.half_logdet for g in chosen], dtype=np.float64),
            x1=_flat([g.x1_rot for g in chosen]).astype(np.float64),
            x1_ptr=_offsets([g.x1_rot.size for g in chosen]),
            keep=_flat([np.flatnonzero(g.x1_keep) for g in chosen]).astype(np.int64),
            keep_ptr=_offsets([int(g.x1_keep.sum()) for g in chosen]),
            rows=_flat([g.rows for g in chosen]).astype(np.int64),
            vectors=(_flat([g.rot.vectors for g in chosen]).astype(np.float64)
                     if 8 * vector_size <= PACKED_MAX_BYTES else None),
            vec_ptr=_offsets([g.rows.size ** 2 for g in chosen]),
            projections=(ProjectionPack.pack(chosen)
                         if 8 * (vector_size + map_size) <= PACKED_MAX_BYTES else None),
        )


@dataclass(frozen=True)
class ProjectionPack:
    """Each packed group's conditional draw of u on the other individuals (model.Projection),
    flat: others (sum n_o,) their indices into all N, other_ptr (m + 1,); maps (sum n_o n_g,)
    the (n_o, n_g) mean maps, map_ptr; chols (sum n_o^2,) the (n_o, n_o) factors, chol_ptr."""

    others: np.ndarray
    other_ptr: np.ndarray
    maps: np.ndarray
    map_ptr: np.ndarray
    chols: np.ndarray
    chol_ptr: np.ndarray

    @classmethod
    def pack(cls, chosen) -> "ProjectionPack":
        return cls(others=_flat([g.projection.other_rows for g in chosen]).astype(np.int64),
                   other_ptr=_offsets([g.projection.other_rows.size for g in chosen]),
                   maps=_flat([g.projection.mean_map for g in chosen]).astype(np.float64),
                   map_ptr=_offsets([g.projection.mean_map.size for g in chosen]),
                   chols=_flat([g.projection.chol for g in chosen]).astype(np.float64),
                   chol_ptr=_offsets([g.projection.chol.size for g in chosen]))


@dataclass
class RandomNumbers:
    """The random numbers of the packed groups, flat, in the per-group path's shapes:
    std_gamma and uniforms (sum t_g,), coef_noise (sum t_g b_g,) with (t_g, b_g) per group,
    effect_noise (sum n_g t_g,) with (n_g, t_g) per group."""

    std_gamma: list
    coef_noise: list
    uniforms: list
    effect_noise: list

    @classmethod
    def empty(cls) -> "RandomNumbers":
        return cls([], [], [], [])

    def flat(self):
        return tuple(_flat(parts)
                     for parts in (self.std_gamma, self.coef_noise, self.uniforms,
                                   self.effect_noise))


def sample_small_groups(packed: SmallGroups, f_rots, y_rots, draws: RandomNumbers, resid_h2_index,
                        lambda_prec, b1_prec, tot_eta_rate, log_prior, grid_h2,
                        lambda_out, b1_out, tot_prec_out):
    """Steps 2-4 for every packed group; updates resid_h2_index (t,), lambda_out (k, t),
    b1_out (b1, t) and tot_prec_out (t,) in place on the groups' traits.

    f_rots, y_rots: per packed group its (n_g, k) Q' F and (n_g, t_g) y*.
    Returns the groups' new u* (n_g, t_g), as a list.
    """
    k = lambda_out.shape[0]
    y_ptr = _offsets([y.size for y in y_rots])
    coef_ptr = _offsets([a.size for a in draws.coef_noise])
    std_gamma, coef_noise, uniforms, effect_noise = draws.flat()
    u_flat = np.empty(int(y_ptr[-1]))
    _kernel(packed.row_ptr, packed.col_ptr, packed.cols, packed.eigen, packed.weights,
            packed.half_logdet, packed.x1, packed.x1_ptr, packed.keep, packed.keep_ptr,
            _flat(f_rots), y_ptr, _flat(y_rots), k, lambda_prec, float(b1_prec),
            float(tot_eta_rate), log_prior, grid_h2, std_gamma, coef_ptr, coef_noise, uniforms,
            effect_noise, resid_h2_index, lambda_out, b1_out, tot_prec_out, u_flat)
    return [u_flat[y_ptr[i]:y_ptr[i + 1]].reshape(y.shape) for i, y in enumerate(y_rots)]


@njit(parallel=True, cache=True)
def _kernel(row_ptr, col_ptr, cols, eigen, weights, half_logdet, x1, x1_ptr, keep, keep_ptr,
            f_flat, y_ptr, y_flat, k, lambda_prec, b1_prec, rate0, log_prior, grid_h2,
            std_gamma, coef_ptr, coef_noise, uniforms, effect_noise, resid_h2_index, lambda_out,
            b1_out, tot_prec_out, u_out):
    """Steps 2-4 of every packed group (arguments as sample_small_groups, flat); a group's
    traits are visited in order, each group by one thread."""
    n_groups = row_ptr.size - 1
    n_grid = log_prior.size
    for g in prange(n_groups):
        n = row_ptr[g + 1] - row_ptr[g]
        c0, c = col_ptr[g], col_ptr[g + 1] - col_ptr[g]
        b1 = keep_ptr[g + 1] - keep_ptr[g]
        b = b1 + k
        # X*' = [Q' X1, Q' F]' (b, n): rows of X*' are contiguous for the sums over rows
        xt = np.empty((b, n))
        x1_g = x1[x1_ptr[g]:x1_ptr[g + 1]].reshape((n, b1))
        f_g = f_flat[row_ptr[g] * k:row_ptr[g + 1] * k].reshape((n, k))
        for i in range(n):
            for p in range(b1):
                xt[p, i] = x1_g[i, p]
            for p in range(k):
                xt[b1 + p, i] = f_g[i, p]
        w_all = weights[n_grid * row_ptr[g]:n_grid * row_ptr[g + 1]].reshape((n_grid, n))
        s_g = eigen[row_ptr[g]:row_ptr[g + 1]]
        y_g = y_flat[y_ptr[g]:y_ptr[g + 1]].reshape((n, c))
        u_g = u_out[y_ptr[g]:y_ptr[g + 1]].reshape((n, c))
        z_g = effect_noise[y_ptr[g]:y_ptr[g + 1]].reshape((n, c))
        # the Gram matrix X*' W X* of each grid point the group's traits use
        grams = np.empty((n_grid, b, b))
        done = np.zeros(n_grid, dtype=np.bool_)
        wx = np.empty(n)
        for j in range(c):
            h = resid_h2_index[cols[c0 + j]]
            if done[h]:
                continue
            done[h] = True
            for p in range(b):
                for i in range(n):
                    wx[i] = w_all[h, i] * xt[p, i]
                for q in range(p + 1):
                    total = dot(wx, xt[q])
                    grams[h, p, q] = total
                    grams[h, q, p] = total
        prec = np.empty((b, b))
        low = np.zeros((b, b))
        xty = np.empty(b)
        v = np.empty(b)
        noise = np.empty(b)
        beta = np.empty(b)
        y = np.empty(n)
        wy = np.empty(n)
        e = np.empty(n)
        e2 = np.empty(n)
        loglik = np.empty(n_grid)
        for j in range(c):
            col = cols[c0 + j]
            h = resid_h2_index[col]
            w = w_all[h]
            for i in range(n):
                y[i] = y_g[i, j]
                wy[i] = w[i] * y[i]
            yty = dot(wy, y)
            for p in range(b):
                xty[p] = dot(xt[p], wy)
            for p in range(b):
                for q in range(b):
                    prec[p, q] = grams[h, p, q]
            for p in range(b1):
                prec[p, p] += b1_prec
            for p in range(k):
                prec[b1 + p, b1 + p] += lambda_prec[p, col]
            cholesky_into(prec, low)
            solve_lower_into(low, xty, v)
            quad = yty - dot(v, v)
            position = c0 + j  # this trait's place among the packed traits
            tau = std_gamma[position] / (rate0 + 0.5 * max(quad, 0.0))
            inv_root = 1.0 / np.sqrt(tau)
            start = coef_ptr[g] + j * b
            for p in range(b):
                noise[p] = coef_noise[start + p] * inv_root
            draw_with_factor(low, xty, noise, v, beta)
            tot_prec_out[col] = tau
            for p in range(b1_out.shape[0]):
                b1_out[p, col] = 0.0
            for p in range(b1):
                b1_out[keep[keep_ptr[g] + p], col] = beta[p]
            for p in range(k):
                lambda_out[p, col] = beta[b1 + p]
            # h2 on the grid given the residuals, then u* given h2
            for i in range(n):
                e[i] = y[i]
            for p in range(b):
                for i in range(n):
                    e[i] -= beta[p] * xt[p, i]
            for i in range(n):
                e2[i] = e[i] * e[i]
            best = -np.inf
            for a in range(n_grid):
                loglik[a] = half_logdet[g, a] - 0.5 * dot(w_all[a], e2) * tau + log_prior[a]
                best = max(best, loglik[a])
            total = 0.0
            for a in range(n_grid):
                loglik[a] = np.exp(loglik[a] - best)
                total += loglik[a]
            chosen, cum = 0, 0.0
            for a in range(n_grid):
                cum += loglik[a]
                if cum / total < uniforms[position]:
                    chosen += 1
            chosen = min(chosen, n_grid - 1)
            resid_h2_index[col] = chosen
            h2 = grid_h2[chosen]
            for i in range(n):
                genetic = s_g[i] * h2
                shrink = genetic / (genetic + 1.0 - h2)
                sd = np.sqrt(shrink * (1.0 - h2))
                u_g[i, j] = shrink * e[i] + sd * inv_root * z_g[i, j]


def score_terms(packed: SmallGroups, y, u_rot, x1, b1, lam, resid_prec, rhs) -> np.ndarray:
    """Step 6's terms of the packed groups (packed.vectors must be set): adds
    Lambda_g Psi_g (y - X1 B1 - Q u*)_g' to rhs (n, k) on each group's rows and returns the
    (m, k, k) precisions Lambda_g Psi_g Lambda_g'.

    y, u_rot: per packed group its (n_g, t_g) data (original basis) and u*; x1: (n, b1)
    training rows' fixed-effect design; b1: (b1, t); lam: (k, t); resid_prec: (t,).
    """
    y_ptr = _offsets([a.size for a in y])
    precisions = np.zeros((packed.members.size, lam.shape[0], lam.shape[0]))
    _score_kernel(packed.row_ptr, packed.col_ptr, packed.rows, packed.cols, packed.vectors,
                  packed.vec_ptr, y_ptr, _flat(y), _flat(u_rot), x1, b1, lam, resid_prec, rhs,
                  precisions)
    return precisions


@njit(cache=True)
def _score_kernel(row_ptr, col_ptr, rows, cols, vectors, vec_ptr, y_ptr, y_flat, u_flat, x1,
                  b1, lam, resid_prec, rhs, precisions):
    """One thread: groups share rows, so their terms add into the same rows of rhs."""
    k = lam.shape[0]
    for g in range(row_ptr.size - 1):
        n = row_ptr[g + 1] - row_ptr[g]
        c0, c = col_ptr[g], col_ptr[g + 1] - col_ptr[g]
        q = vectors[vec_ptr[g]:vec_ptr[g + 1]].reshape((n, n))
        y_g = y_flat[y_ptr[g]:y_ptr[g + 1]].reshape((n, c))
        u_g = u_flat[y_ptr[g]:y_ptr[g + 1]].reshape((n, c))
        rows_g = rows[row_ptr[g]:row_ptr[g + 1]]
        u_col = np.empty(n)
        scaled = np.empty(k)
        for j in range(c):
            col = cols[c0 + j]
            for p in range(k):
                scaled[p] = lam[p, col] * resid_prec[col]
                for r in range(k):
                    precisions[g, p, r] += scaled[p] * lam[r, col]
            for i in range(n):
                u_col[i] = u_g[i, j]
            for i in range(n):
                row = rows_g[i]
                resid = y_g[i, j] - dot(q[i], u_col)
                for p in range(b1.shape[0]):
                    resid -= x1[row, p] * b1[p, col]
                for p in range(k):
                    rhs[row, p] += resid * scaled[p]


def project_small_groups(packed: SmallGroups, u_rots, sds, normals, out) -> None:
    """U_R of the packed groups on every individual (posterior.random_effects' per-group
    _project, for all packed groups in one kernel): rows of group g from Q u*, the others
    from mean_map u* + sd chol z. u_rots: per group (n_g, t_g); sds: per group (t_g,) the
    prior sd scale; normals: per group its (n_o, t_g) z, or an empty array when n_o = 0;
    out: (N, t) written on the groups' traits (any float dtype)."""
    proj = packed.projections
    u_ptr = _offsets([u.size for u in u_rots])
    z_ptr = _offsets([z.size for z in normals])
    _project_kernel(packed.row_ptr, packed.col_ptr, packed.rows, packed.cols, packed.vectors,
                    packed.vec_ptr, proj.others, proj.other_ptr, proj.maps, proj.map_ptr,
                    proj.chols, proj.chol_ptr, u_ptr, _flat(u_rots), _flat(sds), z_ptr,
                    _flat(normals), out)


@njit(parallel=True, cache=True)
def _project_kernel(row_ptr, col_ptr, rows, cols, vectors, vec_ptr, others, other_ptr, maps,
                    map_ptr, chols, chol_ptr, u_ptr, u_flat, sd_flat, z_ptr, z_flat, out):
    """Groups in parallel: they write disjoint columns of out."""
    for g in prange(row_ptr.size - 1):
        n = row_ptr[g + 1] - row_ptr[g]
        n_o = other_ptr[g + 1] - other_ptr[g]
        c0, c = col_ptr[g], col_ptr[g + 1] - col_ptr[g]
        q = vectors[vec_ptr[g]:vec_ptr[g + 1]].reshape((n, n))
        mean_map = maps[map_ptr[g]:map_ptr[g + 1]].reshape((n_o, n))
        chol = chols[chol_ptr[g]:chol_ptr[g + 1]].reshape((n_o, n_o))
        u_g = u_flat[u_ptr[g]:u_ptr[g + 1]].reshape((n, c))
        z_g = z_flat[z_ptr[g]:z_ptr[g + 1]].reshape((n_o, c))
        u_col = np.empty(n)
        z_col = np.empty(n_o)
        for j in range(c):
            col = cols[c0 + j]
            for a in range(n):
                u_col[a] = u_g[a, j]
            for i in range(n):
                out[rows[row_ptr[g] + i], col] = dot(q[i], u_col)
            if n_o == 0:
                continue
            for b in range(n_o):
                z_col[b] = z_g[b, j]
            sd = sd_flat[c0 + j]
            for o in range(n_o):
                out[others[other_ptr[g] + o], col] = (dot(mean_map[o], u_col)
                                                      + sd * dot(chol[o], z_col))
