"""Small dense linear algebra for numba kernels (one trait's k x k system at a time)."""

import numpy as np
from numba import njit


@njit(cache=True, fastmath=True)
def cholesky_lower(a):
    """Lower Cholesky factor L of a symmetric positive definite (b, b) matrix."""
    b = a.shape[0]
    low = np.zeros((b, b))
    for j in range(b):
        s = a[j, j]
        for p in range(j):
            s -= low[j, p] * low[j, p]
        if s <= 0.0:
            s = 1e-300  # only reached for a numerically singular system
        d = np.sqrt(s)
        low[j, j] = d
        for i in range(j + 1, b):
            s = a[i, j]
            for p in range(j):
                s -= low[i, p] * low[j, p]
            low[i, j] = s / d
    return low


@njit(cache=True, fastmath=True)
def solve_lower(low, rhs):
    """Solve L x = rhs for lower-triangular L; rhs (b,)."""
    b = rhs.shape[0]
    x = np.empty(b)
    for i in range(b):
        s = rhs[i]
        for p in range(i):
            s -= low[i, p] * x[p]
        x[i] = s / low[i, i]
    return x


@njit(cache=True, fastmath=True)
def solve_upper_t(low, rhs):
    """Solve L' x = rhs for lower-triangular L; rhs (b,)."""
    b = rhs.shape[0]
    x = np.empty(b)
    for i in range(b - 1, -1, -1):
        s = rhs[i]
        for p in range(i + 1, b):
            s -= low[p, i] * x[p]
        x[i] = s / low[i, i]
    return x


@njit(cache=True, fastmath=True)
def cholesky_into(prec, low):
    """Lower Cholesky factor of prec (m x m) written into the preallocated low."""
    m = prec.shape[0]
    for j in range(m):
        s = prec[j, j]
        for p in range(j):
            s -= low[j, p] * low[j, p]
        d = np.sqrt(s if s > 0.0 else 1e-300)
        low[j, j] = d
        for i in range(j + 1, m):
            s = prec[i, j]
            for p in range(j):
                s -= low[i, p] * low[j, p]
            low[i, j] = s / d


@njit(cache=True, fastmath=True)
def draw_with_factor(low, rhs, noise, work, out):
    """out = P^-1 rhs + L'^-1 noise for P = L L'; work: (m,) scratch."""
    m = rhs.shape[0]
    for i in range(m):  # L v = rhs
        s = rhs[i]
        for p in range(i):
            s -= low[i, p] * work[p]
        work[i] = s / low[i, i]
    for i in range(m):
        work[i] += noise[i]
    for i in range(m - 1, -1, -1):  # L' out = v + noise
        s = work[i]
        for p in range(i + 1, m):
            s -= low[p, i] * out[p]
        out[i] = s / low[i, i]


@njit(cache=True, fastmath=True)
def gaussian_draw_into(prec, rhs, noise, low, work, out):
    """out = P^-1 rhs + L'^-1 noise for P = prec = L L' (m x m); buffers preallocated."""
    cholesky_into(prec, low)
    draw_with_factor(low, rhs, noise, work, out)
