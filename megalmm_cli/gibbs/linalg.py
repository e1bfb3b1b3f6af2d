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
