"""Running posterior moments of the genetic values U and the expected phenotypes eta_hat,
updated from one draw in a single pass (numba, parallel over individuals).

The draw arrives in parts, so that no (N, t) matrix is formed only to be added up:
U = (u_f Lambda + u_r) * sd and eta_hat = (scores Lambda + u_r + X1 B1) * sd + centre, with
top = u_f Lambda and bottom = (scores - u_f) Lambda (one matrix product of the stacked
factor parts); sd and centre undo the standardisation of the traits.
"""

import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True)
def add_draw(top, bottom, u_r, x1, b1, sd, centre, count, u_mean, u_m2, eta_mean):
    """Add draw number `count` (1-based) to the running moments, in place.

    top, bottom, u_r: (N, t); x1: (N, b1); b1: (b1, t); sd, centre: (t,).
    u_mean, u_m2: (N, t) Welford mean and sum of squared deviations of U, or (0, 0) arrays to
    skip U; eta_mean: (N, t) running mean of eta_hat, or a (0, 0) array to skip it.
    """
    n_rows, t = u_r.shape
    with_u = u_mean.shape[0] > 0
    with_eta = eta_mean.shape[0] > 0
    for i in prange(n_rows):
        for j in range(t):
            genetic = top[i, j] + u_r[i, j]
            if with_u:
                value = genetic * sd[j]
                delta = value - u_mean[i, j]
                u_mean[i, j] += delta / count
                u_m2[i, j] += delta * (value - u_mean[i, j])
            if with_eta:
                fixed = 0.0
                for p in range(x1.shape[1]):
                    fixed += x1[i, p] * b1[p, j]
                value = (genetic + bottom[i, j] + fixed) * sd[j] + centre[j]
                eta_mean[i, j] += (value - eta_mean[i, j]) / count


EMPTY = np.zeros((0, 0))
