"""Small dense linear algebra: numba kernels for one column's m x m system at a time (they
write into preallocated buffers, so that kernels looping over thousands of columns allocate
nothing per column), and weighted Gram matrices of a few columns.
"""

import numpy as np
from numba import njit, prange


GRAMS_KERNEL_MIN = 1e6  # multiply-adds below which one numpy product beats waking threads


def weighted_grams(x, weights):
    """(u, b, b) X' diag(w) X for every row w of weights (u, n), x (n, b)."""
    n, b = x.shape
    u = weights.shape[0]
    if u * n * b * b < GRAMS_KERNEL_MIN:  # small: numpy
        if u <= 4:
            grams = np.stack([x.T @ (x * w[:, None]) for w in weights])
            upper = np.triu_indices(b, 1)
            grams[:, upper[0], upper[1]] = grams[:, upper[1], upper[0]]  # exactly symmetric
            return grams
        outer = (x[:, :, None] * x[:, None, :]).reshape(n, b * b)  # all in one product
        return (weights @ outer).reshape(u, b, b)
    return _weighted_grams(np.ascontiguousarray(x, dtype=np.float64),
                           np.ascontiguousarray(weights, dtype=np.float64))


@njit(parallel=True, cache=True)
def _weighted_grams(x, weights):
    """One Gram matrix per thread at a time: (W X)' X by BLAS, its lower triangle mirrored
    (exactly symmetric; the same result on any thread count)."""
    u = weights.shape[0]
    n, b = x.shape
    out = np.empty((u, b, b))
    x_t = np.ascontiguousarray(x.T)
    for g in prange(u):
        weighted_t = np.empty((b, n))
        for p in range(b):
            for i in range(n):
                weighted_t[p, i] = weights[g, i] * x_t[p, i]
        gram = np.dot(weighted_t, x)
        for p in range(b):
            for r in range(p):
                gram[r, p] = gram[p, r]
        out[g] = gram
    return out


@njit(cache=True, fastmath={"reassoc", "contract"})
def dot(a, b):
    """sum_i a[i] b[i] for 1-D arrays, vectorised (reassociation allowed: the summation order
    is fixed by the length and the machine's vector width, so a run on one machine always
    gives the same result). Called, not inlined: inlined, it would take the caller's flags."""
    s = 0.0
    for i in range(a.shape[0]):
        s += a[i] * b[i]
    return s


@njit(cache=True, fastmath=True)
def cholesky_into(prec, low):
    """Lower Cholesky factor of a symmetric positive definite prec (m x m), written into low."""
    m = prec.shape[0]
    for j in range(m):
        s = prec[j, j]
        for p in range(j):
            s -= low[j, p] * low[j, p]
        d = np.sqrt(s if s > 0.0 else 1e-300)  # <= 0 only for a numerically singular system
        low[j, j] = d
        for i in range(j + 1, m):
            s = prec[i, j]
            for p in range(j):
                s -= low[i, p] * low[j, p]
            low[i, j] = s / d


@njit(cache=True, fastmath=True)
def solve_lower_into(low, rhs, out):
    """Solve L out = rhs."""
    for i in range(rhs.shape[0]):
        s = rhs[i]
        for p in range(i):
            s -= low[i, p] * out[p]
        out[i] = s / low[i, i]


@njit(cache=True, fastmath=True)
def solve_upper_t_into(low, rhs, out):
    """Solve L' out = rhs."""
    for i in range(rhs.shape[0] - 1, -1, -1):
        s = rhs[i]
        for p in range(i + 1, rhs.shape[0]):
            s -= low[p, i] * out[p]
        out[i] = s / low[i, i]


@njit(cache=True, fastmath=True)
def draw_with_factor(low, rhs, noise, work, out):
    """out = P^-1 rhs + L'^-1 noise for P = L L', i.e. a draw from N(P^-1 rhs, P^-1) when
    noise is standard normal. work: (m,) scratch."""
    solve_lower_into(low, rhs, work)
    for i in range(rhs.shape[0]):
        work[i] += noise[i]
    solve_upper_t_into(low, work, out)


@njit(cache=True, fastmath={"contract"})
def draw_four_with_factors(low, inv_diag, rhs, noise, out, m):
    """Four independent m x m draws at once, out[:, k] = P_k^-1 rhs[:, k] + L_k'^-1 noise[:, k]
    for k = 0..3 (as draw_with_factor after cholesky_into, for each k).

    low: (>= m, >= m, 4) holds each P_k's lower triangle on entry and L_k on return;
    inv_diag: (>= m, 4) scratch; rhs: (>= m, 4) overwritten; noise, out: (>= m, 4).
    One 16 x 16 system is a chain of dependent operations (each row of the factor and of the
    solves waits for the last); four chains interleaved keep the core busy, 1.6x faster.
    """
    for jj in range(m):
        s0 = low[jj, jj, 0]
        s1 = low[jj, jj, 1]
        s2 = low[jj, jj, 2]
        s3 = low[jj, jj, 3]
        for p in range(jj):
            s0 -= low[jj, p, 0] * low[jj, p, 0]
            s1 -= low[jj, p, 1] * low[jj, p, 1]
            s2 -= low[jj, p, 2] * low[jj, p, 2]
            s3 -= low[jj, p, 3] * low[jj, p, 3]
        d0 = np.sqrt(s0 if s0 > 0.0 else 1e-300)  # <= 0 only for a numerically singular system
        d1 = np.sqrt(s1 if s1 > 0.0 else 1e-300)
        d2 = np.sqrt(s2 if s2 > 0.0 else 1e-300)
        d3 = np.sqrt(s3 if s3 > 0.0 else 1e-300)
        low[jj, jj, 0] = d0
        low[jj, jj, 1] = d1
        low[jj, jj, 2] = d2
        low[jj, jj, 3] = d3
        i0 = 1.0 / d0
        i1 = 1.0 / d1
        i2 = 1.0 / d2
        i3 = 1.0 / d3
        inv_diag[jj, 0] = i0
        inv_diag[jj, 1] = i1
        inv_diag[jj, 2] = i2
        inv_diag[jj, 3] = i3
        for i in range(jj + 1, m):
            s0 = low[i, jj, 0]
            s1 = low[i, jj, 1]
            s2 = low[i, jj, 2]
            s3 = low[i, jj, 3]
            for p in range(jj):
                s0 -= low[i, p, 0] * low[jj, p, 0]
                s1 -= low[i, p, 1] * low[jj, p, 1]
                s2 -= low[i, p, 2] * low[jj, p, 2]
                s3 -= low[i, p, 3] * low[jj, p, 3]
            low[i, jj, 0] = s0 * i0
            low[i, jj, 1] = s1 * i1
            low[i, jj, 2] = s2 * i2
            low[i, jj, 3] = s3 * i3
    for i in range(m):  # L w = rhs (w in rhs), then w += noise
        s0 = rhs[i, 0]
        s1 = rhs[i, 1]
        s2 = rhs[i, 2]
        s3 = rhs[i, 3]
        for p in range(i):
            s0 -= low[i, p, 0] * rhs[p, 0]
            s1 -= low[i, p, 1] * rhs[p, 1]
            s2 -= low[i, p, 2] * rhs[p, 2]
            s3 -= low[i, p, 3] * rhs[p, 3]
        rhs[i, 0] = s0 * inv_diag[i, 0]
        rhs[i, 1] = s1 * inv_diag[i, 1]
        rhs[i, 2] = s2 * inv_diag[i, 2]
        rhs[i, 3] = s3 * inv_diag[i, 3]
    for i in range(m):
        for k in range(4):
            rhs[i, k] += noise[i, k]
    for i in range(m - 1, -1, -1):  # L' out = w
        s0 = rhs[i, 0]
        s1 = rhs[i, 1]
        s2 = rhs[i, 2]
        s3 = rhs[i, 3]
        for p in range(i + 1, m):
            s0 -= low[p, i, 0] * out[p, 0]
            s1 -= low[p, i, 1] * out[p, 1]
            s2 -= low[p, i, 2] * out[p, 2]
            s3 -= low[p, i, 3] * out[p, 3]
        out[i, 0] = s0 * inv_diag[i, 0]
        out[i, 1] = s1 * inv_diag[i, 1]
        out[i, 2] = s2 * inv_diag[i, 2]
        out[i, 3] = s3 * inv_diag[i, 3]
