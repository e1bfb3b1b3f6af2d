"""Step 6: factor scores F, row by row.

Row i of F has precision C = Lambda_C diag(resid_prec_C) Lambda_C' + diag(f_e_prec), where C
is the set of traits that row i contributes (the union of the trait groups whose rows
include i). Rows with the same set of groups share C; one k x k Cholesky per such pattern.
"""

import numpy as np
from numba import njit, prange

from .linalg import cholesky_into, draw_four_with_factors, draw_with_factor, weighted_grams


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


# ------------------------------------------------------------------ U_F integrated out
# When every missing-data group covers all training rows and there is one random effect, the
# eigenbasis Q of K makes the rows of F* = Q'F independent a priori given (B2F, f_h2,
# tot_f_prec): F*_iq ~ N((X2* B2F)_iq, (h2_q s_i + 1 - h2_q) / tot_f_prec_q), and Q leaves
# the iid residuals of Y iid. So (F, U_F) can be drawn jointly: F* row by row with U_F
# integrated out, then U_F* given F*. This removes the slow direction of drawing F given U_F
# and U_F given F (the split of a factor between its genetic and residual parts).


def sample_rotated_scores(rhs, precision, prior_prec, normals):
    """Draw F* = Q'F with U_F integrated out: (n, k).

    rhs: (n, k) rotated right-hand sides (prior_prec * prior mean + Lambda Psi resid*);
    precision: (k, k) Lambda Psi Lambda' (the same for every rotated row);
    prior_prec: (n, k) prior precision of each rotated score; normals: (n, k).
    Row i: N(P_i^-1 rhs_i, P_i^-1) with P_i = precision + diag(prior_prec_i).
    """
    return _draw_rows_plus_diagonal(np.ascontiguousarray(rhs), np.ascontiguousarray(precision),
                                    np.ascontiguousarray(prior_prec), np.ascontiguousarray(normals))


SCALAR_CHOLESKY_MAX = 64  # k up to which rows drawn four at a time beat LAPACK (equal at k = 80)


@njit(parallel=True, cache=True)
def _draw_rows_plus_diagonal(rhs, precision, prior_prec, normals):
    n, k = rhs.shape
    scores = np.empty((n, k))
    if k > SCALAR_CHOLESKY_MAX:  # LAPACK: blocked, faster than scalar loops for large k
        for i in prange(n):
            system = precision.copy()
            for q in range(k):
                system[q, q] += prior_prec[i, q]
            low = np.linalg.cholesky(system)
            work = np.empty(k)
            draw_with_factor(low, rhs[i], normals[i], work, scores[i])
        return scores
    # small k: LAPACK's call costs more than the factorisation; rows four at a time, their
    # factorisations interleaved (one alone is a chain of dependent operations), in fixed
    # chunks of rows (the same draws on any thread count)
    n_quads = (n + 3) // 4
    chunks = min(n_quads, 64)
    for ch in prange(chunks):
        low = np.empty((k, k, 4))
        inv_diag = np.empty((k, 4))
        right = np.empty((k, 4))
        noise = np.empty((k, 4))
        out = np.empty((k, 4))
        for quad in range(ch * n_quads // chunks, (ch + 1) * n_quads // chunks):
            for lane in range(4):  # lanes past the last row repeat it
                i = min(4 * quad + lane, n - 1)
                for p in range(k):
                    for q in range(p):
                        low[p, q, lane] = precision[p, q]
                    low[p, p, lane] = precision[p, p] + prior_prec[i, p]
                    right[p, lane] = rhs[i, p]
                    noise[p, lane] = normals[i, p]
            draw_four_with_factors(low, inv_diag, right, noise, out, k)
            for lane in range(min(4, n - 4 * quad)):
                for p in range(k):
                    scores[4 * quad + lane, p] = out[p, lane]
    return scores


# ------------------------------------------------------------------ translation move
# The likelihood depends on (F, B1) only through X1 B1 + F Lambda, and B1's prior is flat, so
# the move F -> F + X1 A, B1 -> B1 - A Lambda (A: b x k) changes only the prior density of F.
# Drawing A from p(F + X1 A) (a group move with Lebesgue Haar measure and unit Jacobian: Liu
# and Sabatti 2000) leaves the posterior invariant and re-centres each factor's scores on their
# prior mean at every iteration, the direction Gibbs steps of B1 given F and F given B1 travel
# only slowly (B1 bulk ESS of a few in a thousand draws without it).


def sample_translation(x, resid, weights, normals):
    """Draw A: (b, k) from the density of A proportional to p_F(F + X A).

    x: (n, b) the fixed-effect columns (in the basis of resid); resid: (n, k) F minus its prior
    mean; weights: (n, k) prior precision of each entry of F (independent entries in this basis);
    normals: (b, k). Column q: a_q ~ N(-(X' W_q X)^-1 X' W_q r_q, (X' W_q X)^-1).
    """
    gram = weighted_grams(x, weights.T)                        # (k, b, b): X' W_q X
    rhs = (weights * resid).T @ x                              # (k, b)
    low = np.linalg.cholesky(gram)
    mean = -np.linalg.solve(gram, rhs[:, :, None])[:, :, 0]
    noise = np.linalg.solve(np.swapaxes(low, 1, 2), normals.T[:, :, None])[:, :, 0]
    return (mean + noise).T


# ------------------------------------------------------------------ rotation move
# The likelihood depends on (F, Lambda) only through F Lambda, so rotating a pair of factors
# (a, b) by an angle theta, F -> F R, Lambda -> R' Lambda, B2F -> B2F R (R orthogonal, so the
# Jacobian is 1 and uniform theta is SO(2)'s Haar measure), changes only the Gaussian prior
# densities of F (U_F integrated out), Lambda and B2F. Each is a quadratic form in (cos theta,
# sin theta), so the density along the orbit is exp(kappa cos(2 theta - mu)): an exact von Mises
# draw of 2 theta. Without the move, the Gibbs steps of Lambda given F and F given Lambda turn
# the leading factors into each other only slowly (their loadings had bulk ESS 3 in 10,000
# iterations of the shipped example).


def factor_pairs(rng: np.random.Generator, k: int) -> np.ndarray:
    """(k // 2, 2) a random perfect matching of the k factors (disjoint pairs)."""
    order = rng.permutation(k)
    return order[: 2 * (k // 2)].reshape(-1, 2)


def sample_pair_rotations(blocks, pairs, rng: np.random.Generator):
    """Draw the rotation (cos, sin) of every pair from its exact conditional along the orbit.

    blocks: list of (values, weights, axis): arrays of one shape with the factors along `axis`
    (F* minus its prior mean with its prior precisions, (n, k), axis 1; Lambda with
    tot_eta_prec * lambda_prec, (k, t), axis 0; B2F with its prior precisions, (b2, k), axis 1);
    pairs: (p, 2) disjoint. Returns cos, sin: (p,) each.
    """
    p_coef = np.zeros(len(pairs))
    s_coef = np.zeros(len(pairs))
    for values, weights, axis in blocks:
        if axis == 0:  # a transposed view: the kernel then walks Lambda's rows in memory order
            values, weights = values.T, weights.T
        p_add, s_add = _orbit_coefficients(values, np.asarray(weights), pairs)
        p_coef += p_add
        s_coef += s_add
    # -log density along the orbit, up to a constant: (p cos 2 theta + s sin 2 theta) / 2
    kappa = 0.5 * np.hypot(p_coef, s_coef)
    mu = np.arctan2(-s_coef, -p_coef)
    theta = 0.5 * vonmises(rng, mu, kappa)
    # theta + pi (both factors' signs flipped) with probability 1/2, by exact negation: adding
    # a rounded pi would leave sin(pi) = 1.2e-16 and leak loadings into a factor whose prior
    # precision can be 1e60 (an ARD factor far down the order)
    flip = np.where(rng.random(len(pairs)) < 0.5, -1.0, 1.0)
    return flip * np.cos(theta), flip * np.sin(theta)


VONMISES_REJECTION_FROM = 1e4  # numpy's sampler is exact up to kappa = 1e6 (then a wrapped normal)


def vonmises(rng: np.random.Generator, mu, kappa) -> np.ndarray:
    """Exact von Mises draws, density proportional to exp(kappa cos(x - mu)).

    numpy's Best-Fisher sampler for kappa below VONMISES_REJECTION_FROM (it is exact there; it
    treats kappa < 1e-8 as uniform, an error below 1e-8). Above, rejection from the normal
    envelope: 1 - cos x >= 2 x^2 / pi^2 on [-pi, pi], so exp(kappa (cos x - 1)) <=
    exp(-2 kappa x^2 / pi^2), a N(0, pi^2 / (4 kappa)) density up to a constant; acceptance
    about 2 / pi whatever kappa. (numpy replaces the von Mises by a wrapped normal above 1e6,
    and the orbit's kappa reaches that on real data.)
    """
    mu, kappa = (np.array(a, dtype=np.float64) for a in np.broadcast_arrays(mu, kappa))
    out = np.empty(mu.shape)
    low = kappa < VONMISES_REJECTION_FROM
    if low.any():
        out[low] = rng.vonmises(mu[low], kappa[low])
    todo = np.flatnonzero(~low)
    while todo.size:
        k = kappa[todo]
        x = rng.standard_normal(todo.size) * (np.pi / (2.0 * np.sqrt(k)))
        log_u = np.log(rng.random(todo.size))
        # log of target / envelope: kappa (cos x - 1) + 2 kappa x^2 / pi^2 <= 0, with
        # cos x - 1 = -2 sin^2(x / 2) (no cancellation for small x)
        log_ratio = k * (2.0 * x * x / np.pi ** 2 - 2.0 * np.sin(0.5 * x) ** 2)
        accepted = (np.abs(x) <= np.pi) & (log_u < log_ratio)
        out[todo[accepted]] = mu[todo[accepted]] + x[accepted]
        todo = todo[~accepted]
    return out


@njit(cache=True)
def _orbit_coefficients(values, weights, pairs):
    """For each pair: P = sum (w_a - w_b)(x_a^2 - x_b^2) / 2, S = sum (w_a - w_b) x_a x_b."""
    m = values.shape[0]
    p_coef = np.zeros(pairs.shape[0])
    s_coef = np.zeros(pairs.shape[0])
    for r in range(pairs.shape[0]):
        a, b = pairs[r, 0], pairs[r, 1]
        p_sum = 0.0
        s_sum = 0.0
        for i in range(m):
            dw = weights[i, a] - weights[i, b]
            xa, xb = values[i, a], values[i, b]
            p_sum += dw * (xa * xa - xb * xb)
            s_sum += dw * xa * xb
        p_coef[r] = 0.5 * p_sum
        s_coef[r] = s_sum
    return p_coef, s_coef


def rotate_pairs(x, pairs, cos, sin, axis: int = 1) -> None:
    """In place: for each pair (a, b) along `axis`, x_a <- c x_a + s x_b, x_b <- -s x_a + c x_b."""
    a, b = pairs[:, 0], pairs[:, 1]
    if axis == 0:
        xa, xb = x[a], x[b]  # copies (fancy indexing), rows contiguous
        x[a] = cos[:, None] * xa + sin[:, None] * xb
        x[b] = -sin[:, None] * xa + cos[:, None] * xb
        return
    xa, xb = x[:, a], x[:, b]
    x[:, a] = cos * xa + sin * xb
    x[:, b] = -sin * xa + cos * xb
