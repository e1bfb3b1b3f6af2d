"""Small dense linear algebra: numba kernels for one column's m x m system at a time (they
write into preallocated buffers, so that kernels looping over thousands of columns allocate
nothing per column), and weighted Gram matrices of a few columns.
"""

import numpy as np
from numba import njit


def weighted_grams(x, weights):
    """(u, b, b) X' diag(w) X for every row w of weights (u, n), x (n, b): one product
    (u, n) @ (n, b * b) for all of them."""
    n, b = x.shape
    outer = (x[:, :, None] * x[:, None, :]).reshape(n, b * b)
    return (weights @ outer).reshape(weights.shape[0], b, b)


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
