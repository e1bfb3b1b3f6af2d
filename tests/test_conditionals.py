"""Each Gibbs kernel's full conditional against a brute-force or closed-form answer.

Tiny problems, written densely in the original (unrotated) basis, give the exact conditional;
the kernels work in the rotated basis. Stochastic checks use fixed seeds and a tolerance of
Z_TOL Monte-Carlo standard errors per statistic (or a KS / chi-square p-value above P_MIN), so
a real bug fails and a correct kernel passes every time. Negative controls show that the same
statistics do reject a plausible mistake.
"""

from __future__ import annotations


import numba
import numpy as np
import pytest
import scipy.special as sc
from scipy import stats

from megalmm_cli.gibbs.coefficients import (
    BATCH,
    BLOCK_SIZE,
    JOINT_MAX,
    gamma_shape,
    grouped_normal_equations,
    is_collapsed,
    sample_coefficients,
)
from megalmm_cli.gibbs.factors import sample_factor_scores
from megalmm_cli.gibbs.missing import impute_cells, missing_cells_csr
from megalmm_cli.gibbs.shrinkage import (
    sample_ard,
    sample_horseshoe_columns,
    sample_horseshoe_lambda,
    truncated_gamma_above_one,
)
from megalmm_cli.gibbs.variance import sample_h2_index, sample_random_effects
from megalmm_cli.gridlmm import draw_grid_index, grid_loglik, grid_weights, h2_grid, rotation

from .conftest import numba_threads

Z_TOL = 5.0  # standard errors allowed per Monte-Carlo statistic
P_MIN = 1e-4  # smallest accepted p-value of a goodness-of-fit test


# ----------------------------------------------------------------------------- helpers


def random_kinship(rng, n, rank=None):
    """A random PSD kinship of the given rank, scaled to mean diagonal 1."""
    a = rng.standard_normal((n, n if rank is None else rank))
    k = a @ a.T
    return k / np.mean(np.diag(k))


def assert_mean_close(draws, mean, cov, label=""):
    """draws: (N, p) iid; the sample mean within Z_TOL standard errors of `mean`."""
    n = draws.shape[0]
    se = np.sqrt(np.maximum(np.diag(cov), 0.0) / n)
    err = np.abs(draws.mean(axis=0) - mean)
    assert np.all(err <= Z_TOL * se + 1e-12), f"{label} mean: z = {err / np.maximum(se, 1e-300)}"


def assert_gaussian_cov_close(draws, cov, label=""):
    """draws: (N, p) iid Gaussian; each sample covariance entry within Z_TOL standard errors
    (Var S_ij = (S_ii S_jj + S_ij^2) / N for a Gaussian)."""
    n = draws.shape[0]
    sample = np.cov(draws, rowvar=False)
    d = np.diag(cov)
    se = np.sqrt((np.outer(d, d) + cov**2) / n)
    err = np.abs(sample - cov)
    assert np.all(err <= Z_TOL * se + 1e-12), f"{label} cov: z = {err / np.maximum(se, 1e-300)}"


def z_score(estimate, truth, se):
    return (estimate - truth) / se


def normal_gamma_posterior(x, y, v, prior_prec, shape0, rate0):
    """Closed-form posterior of the dense problem y ~ N(x beta, v / tau),
    beta | tau ~ N(0, (tau diag(prior_prec))^-1) (0 = flat), tau ~ Gamma(shape0, rate0).

    Returns a dict: tau ~ Gamma(shape, rate); beta | tau ~ N(mean, prec^-1 / tau);
    marginally beta is multivariate t with covariance prec^-1 rate / (shape - 1).
    """
    v_inv = np.linalg.inv(v)
    prec = x.T @ v_inv @ x + np.diag(prior_prec)
    mean = np.linalg.solve(prec, x.T @ v_inv @ y)
    quad = y @ v_inv @ y - mean @ prec @ mean
    n_flat = np.sum(prior_prec == 0)
    shape = shape0 + 0.5 * (y.size - n_flat)
    rate = rate0 + 0.5 * quad
    prec_inv = np.linalg.inv(prec)
    return dict(shape=shape, rate=rate, mean=mean, prec_inv=prec_inv,
                e_tau=shape / rate, var_tau=shape / rate**2,
                cov_beta=prec_inv * rate / (shape - 1.0),
                shape_given_beta=shape0 + 0.5 * (y.size + prior_prec.size - n_flat))


def truncated_gamma_cdf(x, shape, rate):
    """CDF of Gamma(shape, rate) truncated to [1, inf), from upper tails (accurate far out)."""
    x = np.asarray(x, dtype=float)
    out = 1.0 - sc.gammaincc(shape, rate * np.maximum(x, 1.0)) / sc.gammaincc(shape, rate)
    return np.where(x < 1.0, 0.0, out)


def batch_means_se(chains, n_batches):
    """chains: (T, c) draws of c independent chains; the pooled mean and its standard error
    from batch means (n_batches batches per chain)."""
    t, c = chains.shape
    length = t // n_batches
    batches = chains[: length * n_batches].reshape(n_batches, length, c).mean(axis=1).ravel()
    return batches.mean(), batches.std(ddof=1) / np.sqrt(batches.size)


# ----------------------------------------------------------- 1. grid log-likelihood of h2


@pytest.fixture(scope="module")
def grid_problem():
    rng = np.random.default_rng(101)
    n = 6
    kin = random_kinship(rng, n, rank=4)  # rank-deficient: zero eigenvalues are clipped
    rot = rotation(kin, np.arange(n))
    h2 = h2_grid(1, 10)[:, 0]
    resid = rng.standard_normal((n, 3)) * np.array([0.7, 1.5, 3.0])
    tot_prec = np.array([0.6, 1.3, 0.2])
    log_prior = np.log(rng.dirichlet(np.full(h2.size, 2.0)))
    return dict(n=n, kin=kin, rot=rot, h2=h2, resid=resid, tot_prec=tot_prec, log_prior=log_prior)


def test_rotation_reconstructs_kinship(grid_problem):
    p = grid_problem
    q, s = p["rot"].vectors, p["rot"].values
    np.testing.assert_allclose(q @ np.diag(s) @ q.T, p["kin"], atol=1e-10)
    np.testing.assert_allclose(q.T @ q, np.eye(p["n"]), atol=1e-12)
    assert np.sum(s == 0) == 2


def test_grid_loglik_matches_dense_mvn(grid_problem):
    p = grid_problem
    q, s, h2, kin, n = p["rot"].vectors, p["rot"].values, p["h2"], p["kin"], p["n"]
    resid_rot = q.T @ p["resid"]
    ll = grid_loglik(resid_rot**2, grid_weights(h2, s), p["tot_prec"], p["log_prior"])
    assert ll.shape == (h2.size, 3)
    dense = np.array([
        [stats.multivariate_normal(np.zeros(n), (h * kin + (1 - h) * np.eye(n)) / tp)
         .logpdf(p["resid"][:, j]) for j, tp in enumerate(p["tot_prec"])]
        for h in h2
    ]) + p["log_prior"][:, None]
    # equal up to a per-column constant
    np.testing.assert_allclose(ll - ll[0], dense - dense[0], atol=1e-9)


def test_grid_weights_formula(grid_problem):
    p = grid_problem
    w = grid_weights(p["h2"], p["rot"].values)
    expected = 1.0 / (p["h2"][:, None] * p["rot"].values[None, :] + 1.0 - p["h2"][:, None])
    np.testing.assert_allclose(w, expected, rtol=1e-14)


def test_sample_h2_index_is_grid_loglik_then_draw(grid_problem):
    p = grid_problem
    resid_rot = p["rot"].vectors.T @ p["resid"]
    w = grid_weights(p["h2"], p["rot"].values)
    u = np.array([0.1, 0.5, 0.93])
    got = sample_h2_index(resid_rot, w, p["tot_prec"], p["log_prior"], u)
    want = draw_grid_index(grid_loglik(resid_rot**2, w, p["tot_prec"], p["log_prior"]), u)
    np.testing.assert_array_equal(got, want)


def test_draw_grid_index_frequencies(grid_problem):
    p = grid_problem
    resid_rot = p["rot"].vectors.T @ p["resid"]
    prior = p["log_prior"].copy()
    prior[[0, -1]] = -np.inf  # user prior weights of zero at both ends of the grid
    w = grid_weights(p["h2"], p["rot"].values)
    ll = grid_loglik(resid_rot[:, :1] ** 2, w, p["tot_prec"][:1], prior)[:, 0]
    ll = ll - 1e5  # far from 0: the draw must normalise stably
    prob = np.exp(ll - ll.max())
    prob /= prob.sum()
    assert prob[1:-1].min() > 1e-3 and prob.max() < 0.9  # a non-trivial distribution
    n_draws = 200_000
    rng = np.random.default_rng(7)
    index = draw_grid_index(np.repeat(ll[:, None], n_draws, axis=1), rng.random(n_draws))
    counts = np.bincount(index, minlength=prob.size)
    assert counts.size == prob.size
    assert counts[0] == 0 and counts[-1] == 0
    inner = slice(1, -1)
    chi2 = stats.chisquare(counts[inner], n_draws * prob[inner])
    assert chi2.pvalue > P_MIN
    freq = counts / n_draws
    assert np.all(np.abs(freq - prob) <= Z_TOL * np.sqrt(prob * (1 - prob) / n_draws) + 1e-12)
    # negative control: the frequencies reject probabilities off by 5% at the mode
    wrong = prob.copy()
    wrong[np.argmax(prob)] *= 1.05
    wrong /= wrong.sum()
    assert stats.chisquare(counts[inner], n_draws * wrong[inner]).pvalue < P_MIN


# ------------------------------------------------------------- 2. random effects given h2


@pytest.fixture(scope="module")
def re_problem():
    rng = np.random.default_rng(202)
    n = 6
    kin = random_kinship(rng, n, rank=5)
    rot = rotation(kin, np.arange(n))
    resid = rng.standard_normal(n) * 1.4
    h2, tau = 0.4, 2.5
    v = h2 * kin + (1 - h2) * np.eye(n)
    kvi = kin @ np.linalg.inv(v)
    mean = h2 * kvi @ resid
    cov = (h2 / tau) * (kin - h2 * kvi @ kin)
    return dict(n=n, kin=kin, rot=rot, resid=resid, h2=h2, tau=tau, mean=mean, cov=cov)


def test_random_effects_exact_mean_and_covariance(re_problem):
    """Draws are mean + (linear map) normals: check both pieces to rounding."""
    p = re_problem
    q, s, n = p["rot"].vectors, p["rot"].values, p["n"]
    resid_rot = np.repeat((q.T @ p["resid"])[:, None], n + 1, axis=1)
    normals = np.hstack([np.zeros((n, 1)), np.eye(n)])
    u_rot = sample_random_effects(resid_rot, s, np.full(n + 1, p["h2"]), np.full(n + 1, p["tau"]),
                                  normals)
    u = q @ u_rot
    np.testing.assert_allclose(u[:, 0], p["mean"], atol=1e-10)
    root = u[:, 1:] - u[:, :1]  # Cov = root root'
    np.testing.assert_allclose(root @ root.T, p["cov"], atol=1e-10)


def test_random_effects_monte_carlo(re_problem):
    p = re_problem
    q, s, n = p["rot"].vectors, p["rot"].values, p["n"]
    n_draws = 100_000
    rng = np.random.default_rng(21)
    resid_rot = np.repeat((q.T @ p["resid"])[:, None], n_draws, axis=1)
    u_rot = sample_random_effects(resid_rot, s, np.full(n_draws, p["h2"]),
                                  np.full(n_draws, p["tau"]), rng.standard_normal((n, n_draws)))
    draws = (q @ u_rot).T
    assert_mean_close(draws, p["mean"], p["cov"], "u")
    assert_gaussian_cov_close(draws, p["cov"], "u")


def test_random_effects_zero_h2_and_zero_eigenvalues():
    rng = np.random.default_rng(23)
    n, c = 6, 4
    kin = random_kinship(rng, n, rank=3)
    rot = rotation(kin, np.arange(n))
    assert np.sum(rot.values == 0) == 3
    h2 = np.array([0.0, 0.3, 0.0, 0.9])
    out = sample_random_effects(rng.standard_normal((n, c)) * 5, rot.values, h2,
                                np.array([1.0, 2.0, 0.5, 3.0]), rng.standard_normal((n, c)))
    assert np.all(out[:, h2 == 0] == 0.0)  # exactly zero
    assert np.all(out[rot.values == 0] == 0.0)
    assert np.all(out[np.ix_(rot.values > 0, h2 > 0)] != 0.0)


# ------------------------------------------------- 3-4. coefficients and total precision


def regression_problem(seed, n, b, n_flat, h2_values, divisions=10, correlated=0.0):
    """A dense regression y = X beta + e, e ~ N(0, V(h2)/tau), and its rotation."""
    rng = np.random.default_rng(seed)
    kin = random_kinship(rng, n)
    rot = rotation(kin, np.arange(n))
    x = rng.standard_normal((n, b)) + correlated * rng.standard_normal((n, 1))
    x[:, 0] = 1.0
    beta = rng.standard_normal(b)
    y = x @ beta + rng.standard_normal(n) * 1.3
    prior_prec = np.concatenate([np.zeros(n_flat), rng.uniform(0.5, 5.0, b - n_flat)])
    grid = h2_grid(1, divisions)[:, 0]
    grid_index = [int(round(h * divisions)) for h in h2_values]
    weights = grid_weights(grid, rot.values)
    return dict(rng=rng, n=n, b=b, n_flat=n_flat, kin=kin, rot=rot, x=x, y=y,
                prior_prec=prior_prec, grid=grid, grid_index=grid_index, weights=weights,
                x_rot=rot.vectors.T @ x, y_rot=rot.vectors.T @ y)


def dense_v(p, grid_point):
    h = p["grid"][grid_point]
    return h * p["kin"] + (1 - h) * np.eye(p["n"])


SHAPE0, RATE0 = 4.0, 2.5


@pytest.fixture(scope="module")
def collapsed_draws():
    """20000 copies of one small regression (one flat and three shrunk coefficients), half of
    them at grid point h2 = 0.2 and half at h2 = 0.7: one iid posterior draw per column."""
    p = regression_problem(303, n=12, b=4, n_flat=1, h2_values=[0.2, 0.7])
    assert is_collapsed(p["b"])
    c = 20_000
    grid_index = np.where(np.arange(c) % 2 == 0, p["grid_index"][0], p["grid_index"][1])
    y_rot = np.repeat(p["y_rot"][:, None], c, axis=1)
    gram, grid_of_col, xty, yty = grouped_normal_equations(p["x_rot"], y_rot, p["weights"],
                                                           grid_index)
    shape = gamma_shape(SHAPE0, p["n"], p["n_flat"], p["b"])
    rng = np.random.default_rng(31)

    def draw(shape_used):
        coefs = np.zeros((c, p["b"]))
        tau = sample_coefficients(gram, grid_of_col, xty, yty, np.tile(p["prior_prec"], (c, 1)),
                                  np.full(c, RATE0), rng.standard_gamma(shape_used, size=c),
                                  rng.standard_normal((c, p["b"])), coefs)
        return tau, coefs

    tau, coefs = draw(shape)
    posts = [normal_gamma_posterior(p["x"], p["y"], dense_v(p, g), p["prior_prec"], SHAPE0, RATE0)
             for g in p["grid_index"]]
    groups = [grid_index == g for g in p["grid_index"]]
    return dict(p=p, c=c, grid_index=grid_index, gram=gram, grid_of_col=grid_of_col, xty=xty,
                yty=yty, shape=shape, tau=tau, coefs=coefs, posts=posts, groups=groups, draw=draw)


def test_grouped_normal_equations_match_dense(collapsed_draws):
    d = collapsed_draws
    p = d["p"]
    for g, group in zip(p["grid_index"], d["groups"]):
        v_inv = np.linalg.inv(dense_v(p, g))
        cols = np.flatnonzero(group)
        gram = d["gram"][d["grid_of_col"][cols]]
        np.testing.assert_allclose(gram, np.broadcast_to(p["x"].T @ v_inv @ p["x"], gram.shape),
                                   atol=1e-10)
        np.testing.assert_allclose(d["xty"][cols],
                                   np.tile(p["x"].T @ v_inv @ p["y"], (cols.size, 1)), atol=1e-10)
        np.testing.assert_allclose(d["yty"][cols], p["y"] @ v_inv @ p["y"], atol=1e-10)
    assert d["gram"].shape[0] == 2


def test_gamma_shape_formulas():
    assert gamma_shape(4.0, 12, 1, 4) == 4.0 + 0.5 * 11
    assert gamma_shape(4.0, 150, 2, JOINT_MAX + 6) == 4.0 + 0.5 * (150 + JOINT_MAX + 6 - 2)
    assert is_collapsed(JOINT_MAX) and not is_collapsed(JOINT_MAX + 1)


def test_collapsed_matches_normal_gamma_posterior(collapsed_draws):
    d = collapsed_draws
    for post, group in zip(d["posts"], d["groups"]):
        assert d["shape"] == pytest.approx(post["shape"])
        tau, coefs = d["tau"][group], d["coefs"][group]
        n = tau.size
        # E[tau], Var[tau] (Var of a sample variance ~ sigma^4 (2 + kurtosis excess 6 / a) / N)
        assert abs(z_score(tau.mean(), post["e_tau"], np.sqrt(post["var_tau"] / n))) < Z_TOL
        se_var = post["var_tau"] * np.sqrt((2.0 + 6.0 / post["shape"]) / n)
        assert abs(z_score(tau.var(ddof=1), post["var_tau"], se_var)) < Z_TOL
        # E[beta], Cov[beta] (multivariate t: the SE of each covariance entry is estimated
        # from the draws themselves)
        assert_mean_close(coefs, post["mean"], post["cov_beta"], "beta")
        centred = coefs - post["mean"]
        products = centred[:, :, None] * centred[:, None, :]
        se_cov = products.std(axis=0, ddof=1) / np.sqrt(n)
        err = np.abs(products.mean(axis=0) - post["cov_beta"])
        assert np.all(err <= Z_TOL * se_cov), err / se_cov
        # beta | tau is N(mean, prec^-1 / tau): the whitened draws have unit variance
        low = np.linalg.cholesky(np.linalg.inv(post["prec_inv"]))
        white = (centred @ low) * np.sqrt(tau)[:, None]
        assert np.all(np.abs(white.var(axis=0, ddof=1) - 1.0) < Z_TOL * np.sqrt(2.0 / n))
        assert np.all(np.abs(white.mean(axis=0)) < Z_TOL / np.sqrt(n))


def test_collapsed_negative_control_wrong_shape(collapsed_draws):
    """The E[tau] statistic rejects a Gamma shape that forgets the flat coefficient (n / 2
    instead of (n - n_flat) / 2) and the blocked path's shape."""
    d = collapsed_draws
    p = d["p"]
    for wrong in (SHAPE0 + 0.5 * p["n"], gamma_shape(SHAPE0, p["n"], p["n_flat"], JOINT_MAX + 1)
                  + 0.5 * (p["b"] - JOINT_MAX - 1)):
        tau, _ = d["draw"](wrong)
        post, group = d["posts"][0], d["groups"][0]
        z = z_score(tau[group].mean(), post["e_tau"], np.sqrt(post["var_tau"] / group.sum()))
        assert abs(z) > Z_TOL


@pytest.fixture(scope="module")
def blocked_chain():
    """b = 70 > JOINT_MAX: tot_prec | beta, then beta in blocks. 8 independent chains (columns
    with the same data) from a poor start."""
    p = regression_problem(404, n=150, b=70, n_flat=2, h2_values=[0.5], correlated=0.8)
    assert not is_collapsed(p["b"]) and p["b"] > 2 * BLOCK_SIZE
    c, n_iter, burn = 8, 6000, 500
    grid_index = np.full(c, p["grid_index"][0])
    gram, grid_of_col, xty, yty = grouped_normal_equations(
        p["x_rot"], np.repeat(p["y_rot"][:, None], c, axis=1), p["weights"], grid_index)
    post = normal_gamma_posterior(p["x"], p["y"], dense_v(p, p["grid_index"][0]), p["prior_prec"],
                                  SHAPE0, RATE0)
    prior_prec = np.tile(p["prior_prec"], (c, 1))
    rate0 = np.full(c, RATE0)

    def run(shape, iterations):
        rng = np.random.default_rng(41)
        coefs = np.zeros((c, p["b"]))
        taus = np.empty((iterations, c))
        betas = np.empty((iterations, c, p["b"]))
        with numba_threads(1):
            for it in range(iterations):
                taus[it] = sample_coefficients(gram, grid_of_col, xty, yty, prior_prec, rate0,
                                               rng.standard_gamma(shape, size=c),
                                               rng.standard_normal((c, p["b"])), coefs)
                betas[it] = coefs
        return taus[burn:], betas[burn:]

    shape = gamma_shape(SHAPE0, p["n"], p["n_flat"], p["b"])
    taus, betas = run(shape, n_iter)
    return dict(p=p, post=post, shape=shape, taus=taus, betas=betas, run=run, burn=burn)


def test_blocked_shape_is_given_beta(blocked_chain):
    d = blocked_chain
    assert d["shape"] == pytest.approx(d["post"]["shape_given_beta"])


def test_blocked_chain_matches_normal_gamma_posterior(blocked_chain):
    d = blocked_chain
    post, taus, betas = d["post"], d["taus"], d["betas"]
    n_batches = 25  # batches of 220 iterations per chain
    mean, se = batch_means_se(taus, n_batches)
    assert abs(z_score(mean, post["e_tau"], se)) < Z_TOL
    # the batch-means SE is not wildly off the iid one (i.e. the chain mixes)
    assert se < 10 * np.sqrt(post["var_tau"] / taus.size)
    sq_mean, sq_se = batch_means_se((taus - post["e_tau"]) ** 2, n_batches)
    assert abs(z_score(sq_mean, post["var_tau"], sq_se)) < Z_TOL
    cov_diag = np.diag(post["cov_beta"])
    for p_ in range(d["p"]["b"]):
        m, s = batch_means_se(betas[:, :, p_], n_batches)
        assert abs(z_score(m, post["mean"][p_], s)) < Z_TOL, p_
        v, vs = batch_means_se((betas[:, :, p_] - post["mean"][p_]) ** 2, n_batches)
        assert abs(z_score(v, cov_diag[p_], vs)) < Z_TOL, p_


def test_blocked_negative_control_collapsed_shape(blocked_chain):
    """Running the blocked update with the collapsed path's Gamma shape biases E[tau]."""
    d = blocked_chain
    p = d["p"]
    wrong = SHAPE0 + 0.5 * (p["n"] - p["n_flat"])
    taus, _ = d["run"](wrong, d["burn"] + 1500)
    mean, se = batch_means_se(taus, 15)
    assert abs(z_score(mean, d["post"]["e_tau"], se)) > Z_TOL


def _reference_blocked_sweep(gram, grid_of_col, xty, yty, prior_prec, rate0, std_gamma, normals,
                             coefs, block_size):
    """One blocked sweep written plainly, column by column, in numpy: tot_prec given beta,
    then each block's N(P^-1 r, P^-1) with P = g[blk, blk] + diag(prior) and
    r = xty[blk] - g[blk, rest] beta[rest], drawn as P^-1 r + L'^-1 z / sqrt(tot_prec)."""
    coefs = coefs.copy()
    tau = np.empty(len(coefs))
    for j, beta in enumerate(coefs):
        g = gram[grid_of_col[j]]
        quad = yty[j] - 2 * beta @ xty[j] + beta @ g @ beta + beta @ (prior_prec[j] * beta)
        tau[j] = std_gamma[j] / (rate0[j] + 0.5 * quad)
        for start in range(0, len(beta), block_size):
            blk = slice(start, start + block_size)
            prec = g[blk, blk] + np.diag(prior_prec[j, blk])
            rhs = xty[j, blk] - g[blk] @ beta + g[blk, blk] @ beta[blk]
            low = np.linalg.cholesky(prec)
            beta[blk] = (np.linalg.solve(prec, rhs)
                         + np.linalg.solve(low.T, normals[j, blk]) / np.sqrt(tau[j]))
    return tau, coefs


def test_blocked_sweep_equals_plain_reference():
    """The blocked kernel (columns batched per grid point, matrix products for g beta, four
    columns' block systems interleaved) gives a plain column-by-column sweep's numbers: 150
    columns on 3 grid points (one with more than two batches of 64, partial batches, lanes
    left over), b = 69 (four blocks of 16 and one of 5), any thread count."""
    rng = np.random.default_rng(8)
    n, b, c = 90, 69, 150
    x = rng.standard_normal((n, b)) + 0.5 * rng.standard_normal((n, 1))
    weights = rng.uniform(0.3, 3.0, size=(5, n))
    y = rng.standard_normal((n, c))
    grid_index = rng.choice([0, 2, 4], size=c, p=[0.9, 0.03, 0.07])
    assert np.bincount(grid_index).max() > 2 * BATCH
    eqs = grouped_normal_equations(x, y, weights, grid_index)
    prior_prec = rng.uniform(0.1, 5.0, size=(c, b))
    prior_prec[:, :2] = 0.0  # flat fixed effects
    args = (prior_prec, rng.uniform(0.5, 2.0, c), rng.gamma(30.0, size=c),
            rng.standard_normal((c, b)))
    start = 0.3 * rng.standard_normal((c, b))
    assert not is_collapsed(b) and b % BLOCK_SIZE
    want_tau, want = _reference_blocked_sweep(*eqs, *args, start, BLOCK_SIZE)
    for threads in (1, numba.config.NUMBA_NUM_THREADS):
        coefs = start.copy()
        with numba_threads(threads):
            tau = sample_coefficients(*eqs, *args, coefs)
        np.testing.assert_allclose(tau, want_tau, rtol=1e-10)
        np.testing.assert_allclose(coefs, want, rtol=1e-8, atol=1e-10)


def _many_columns(p, n_cols, rng):
    """The problem p widened to n_cols columns: (normal equations, the other inputs of
    sample_coefficients, starting coefficients)."""
    y_rot = p["y_rot"][:, None] + 0.3 * rng.standard_normal((p["n"], n_cols))
    grid_index = np.resize(np.array(p["grid_index"] + [3]), n_cols)
    eqs = grouped_normal_equations(p["x_rot"], y_rot, p["weights"], grid_index)
    args = (np.tile(p["prior_prec"], (n_cols, 1)), np.full(n_cols, RATE0),
            rng.standard_gamma(50.0, size=n_cols), rng.standard_normal((n_cols, p["b"])))
    return eqs, args, rng.standard_normal((n_cols, p["b"]))


def test_coefficients_parallel_equals_serial(blocked_chain, collapsed_draws):
    """The prange over columns is race-free: one and several threads give identical draws."""
    for d, n_cols in ((blocked_chain, 8), (collapsed_draws, 64)):
        eqs, args, start = _many_columns(d["p"], n_cols, np.random.default_rng(42))
        out = []
        for threads in (1, numba.config.NUMBA_NUM_THREADS):
            coefs = start.copy()
            with numba_threads(threads):
                tau = sample_coefficients(*eqs, *args, coefs)
            out.append((tau, coefs))
        np.testing.assert_array_equal(out[0][0], out[1][0])
        np.testing.assert_array_equal(out[0][1], out[1][1])


def test_coefficient_draws_do_not_depend_on_memory_placement(blocked_chain):
    """The same inputs at other addresses (8-byte offsets, which change their alignment) give
    bitwise the same draws: no summation order may depend on where an array lies, or a
    resumed chain would not repeat an uninterrupted one. (A kernel compiled with reassociation
    throughout did depend on it.)"""
    eqs, args, start = _many_columns(blocked_chain["p"], 8, np.random.default_rng(7))
    results = set()
    for offset in range(4):
        buffer = np.empty(start.size + 8)
        coefs = buffer[offset:offset + start.size].reshape(start.shape)
        coefs[...] = start
        tau = sample_coefficients(*eqs, *args, coefs)
        results.add(tau.tobytes() + coefs.tobytes())
    assert len(results) == 1


# -------------------------------------------------------------------- 5. factor scores


def factor_conditional(lam, resid_prec, y, f_mean, f_e_prec):
    """Posterior of f given y by Gaussian conditioning on the joint of (f, y):
    f ~ N(f_mean, diag(1/f_e_prec)), y | f ~ N(lam' f, diag(1/resid_prec))."""
    s_ff = np.diag(1.0 / f_e_prec)
    if lam.shape[1] == 0:
        return f_mean, s_ff
    s_yf = lam.T @ s_ff
    s_yy = lam.T @ s_ff @ lam + np.diag(1.0 / resid_prec)
    gain = np.linalg.solve(s_yy, s_yf).T
    return f_mean + gain @ (y - lam.T @ f_mean), s_ff - gain @ s_yf


@pytest.fixture(scope="module")
def factor_problem():
    rng = np.random.default_rng(505)
    k, t = 3, 5
    lam = rng.standard_normal((k, t)) * 0.8
    resid_prec = rng.uniform(0.5, 3.0, t)
    f_e_prec = rng.uniform(0.5, 2.0, k)
    groups = [np.arange(0, 3), np.arange(3, 5)]  # two trait groups
    # pattern 0: both groups; pattern 1: only group 0; pattern 2: no phenotype at all
    patterns = [np.array([0, 1]), np.array([0]), np.array([], dtype=int)]
    y = [rng.standard_normal(t) * 2 for _ in patterns]
    f_mean = [rng.standard_normal(k) for _ in patterns]
    group_precisions = [(lam[:, g] * resid_prec[g]) @ lam[:, g].T for g in groups]

    def rhs_of(pattern):
        out = f_e_prec * f_mean[pattern]
        for g in patterns[pattern]:
            cols = groups[g]
            out = out + (lam[:, cols] * resid_prec[cols]) @ y[pattern][cols]
        return out

    def truth(pattern):
        cols = np.concatenate([groups[g] for g in patterns[pattern]] + [[]]).astype(int)
        return factor_conditional(lam[:, cols], resid_prec[cols], y[pattern][cols],
                                  f_mean[pattern], f_e_prec)

    return dict(k=k, patterns=patterns, group_precisions=group_precisions, f_e_prec=f_e_prec,
                rhs_of=rhs_of, truth=truth)


def test_factor_scores_exact_mean_and_covariance(factor_problem):
    d = factor_problem
    k = d["k"]
    for pat in range(len(d["patterns"])):
        pattern_of_row = np.full(k + 1, pat)
        rhs = np.tile(d["rhs_of"](pat), (k + 1, 1))
        normals = np.vstack([np.zeros(k), np.eye(k)])
        scores = sample_factor_scores(rhs, d["group_precisions"], pattern_of_row, d["patterns"],
                                      d["f_e_prec"], normals)
        mean, cov = d["truth"](pat)
        np.testing.assert_allclose(scores[0], mean, atol=1e-10)
        root = scores[1:] - scores[0]
        np.testing.assert_allclose(root.T @ root, cov, atol=1e-10)


@pytest.mark.parametrize("used_patterns", [[0], [0, 1], [0, 1, 2]],
                         ids=["one-pattern", "two-patterns", "plus-unobserved-row"])
def test_factor_scores_monte_carlo(factor_problem, used_patterns):
    d = factor_problem
    per_pattern = 40_000
    rng = np.random.default_rng(51 + len(used_patterns))
    pattern_of_row = np.tile(np.array(used_patterns), per_pattern)  # patterns interleaved
    rhs = np.array([d["rhs_of"](p) for p in pattern_of_row])
    scores = sample_factor_scores(rhs, d["group_precisions"], pattern_of_row, d["patterns"],
                                  d["f_e_prec"], rng.standard_normal(rhs.shape))
    for pat in used_patterns:
        mean, cov = d["truth"](pat)
        draws = scores[pattern_of_row == pat]
        assert_mean_close(draws, mean, cov, f"pattern {pat}")
        assert_gaussian_cov_close(draws, cov, f"pattern {pat}")


# --------------------------------------------------------------------- 6. missing cells


def test_missing_cells_csr_layout():
    observed = np.ones((7, 3), dtype=bool)
    observed[[1, 4], 0] = False
    observed[[6, 0, 1], 2] = False
    col_ptr, row_idx = missing_cells_csr(observed)
    np.testing.assert_array_equal(col_ptr, [0, 2, 2, 5])
    np.testing.assert_array_equal(row_idx, [1, 4, 0, 1, 6])
    assert col_ptr.dtype == np.int64 and row_idx.dtype == np.int64


@pytest.fixture(scope="module")
def impute_problem():
    rng = np.random.default_rng(606)
    n, c, b1, k = 7, 3, 2, 2
    rot = rotation(random_kinship(rng, n), np.arange(n))
    q = rot.vectors
    observed = np.ones((n, c), dtype=bool)
    observed[[1, 4], 0] = False
    observed[[0, 1, 6], 2] = False
    col_ptr, row_idx = missing_cells_csr(observed)
    x1 = rng.standard_normal((n, b1))
    coef1 = rng.standard_normal((b1, c))
    scores = rng.standard_normal((n, k))
    loadings = rng.standard_normal((k, c))
    u_rot = rng.standard_normal((n, c))
    resid_sd = np.array([0.5, 1.0, 2.0])
    eta_hat = x1 @ coef1 + scores @ loadings + q @ u_rot
    y = rng.standard_normal((n, c))
    y[~observed] = 100.0  # whatever the previous imputation was
    return dict(n=n, q=q, observed=observed, col_ptr=col_ptr, row_idx=row_idx, x1=x1,
                coef1=coef1, scores=scores, loadings=loadings, u_rot=u_rot, resid_sd=resid_sd,
                eta_hat=eta_hat, y=y)


def call_impute(d, y, y_rot, normals):
    impute_cells(d["col_ptr"], d["row_idx"], d["x1"], d["coef1"], d["scores"], d["loadings"],
                 d["q"], d["u_rot"], d["resid_sd"], normals, y, y_rot)


def test_impute_cells_exact_update(impute_problem):
    d = impute_problem
    y = d["y"].copy()
    y_rot = d["q"].T @ y
    normals = np.random.default_rng(61).standard_normal(d["row_idx"].size)
    call_impute(d, y, y_rot, normals)
    miss = ~d["observed"]
    np.testing.assert_array_equal(y[d["observed"]], d["y"][d["observed"]])  # untouched
    cols = np.repeat(np.arange(3), np.diff(d["col_ptr"]))
    expected = d["eta_hat"][d["row_idx"], cols] + d["resid_sd"][cols] * normals
    np.testing.assert_allclose(y[d["row_idx"], cols], expected, atol=1e-12)
    assert np.all(y[miss] != 100.0)
    np.testing.assert_allclose(y_rot, d["q"].T @ y, atol=1e-10)


def test_impute_cells_monte_carlo(impute_problem):
    d = impute_problem
    y = d["y"].copy()
    y_rot = d["q"].T @ y
    rng = np.random.default_rng(62)
    repeats = 20_000
    cols = np.repeat(np.arange(3), np.diff(d["col_ptr"]))
    cells = np.empty((repeats, d["row_idx"].size))
    with numba_threads(1):
        for r in range(repeats):
            call_impute(d, y, y_rot, rng.standard_normal(d["row_idx"].size))
            cells[r] = y[d["row_idx"], cols]
    np.testing.assert_array_equal(y[d["observed"]], d["y"][d["observed"]])
    np.testing.assert_allclose(y_rot, d["q"].T @ y, atol=1e-10)  # after 20000 in-place updates
    sd = d["resid_sd"][cols]
    mean_err = np.abs(cells.mean(axis=0) - d["eta_hat"][d["row_idx"], cols])
    assert np.all(mean_err < Z_TOL * sd / np.sqrt(repeats))
    var_err = np.abs(cells.var(axis=0, ddof=1) - sd**2)
    assert np.all(var_err < Z_TOL * sd**2 * np.sqrt(2.0 / repeats))
    # independent draws across cells and repeats
    corr = np.corrcoef(cells, rowvar=False)
    assert np.all(np.abs(corr - np.eye(corr.shape[0])) < Z_TOL / np.sqrt(repeats))


# ------------------------------------------------------------------------ 7. shrinkage


@pytest.mark.parametrize("shape, rate", [
    (3.0, 1.0),    # P(X >= 1) = 0.92: truncation barely matters
    (2.0, 5.0),    # P(X >= 1) = 0.04
    (4.5, 30.0),   # P(X >= 1) ~ 1e-9: almost all mass below 1
    (3.0, 300.0),  # P(X >= 1) ~ 1e-126: far tail, ~ 1 + Exp(298)
])
def test_truncated_gamma_above_one(shape, rate):
    rng = np.random.default_rng(71)
    n = 4000
    draws = np.array([truncated_gamma_above_one(shape, rate, u) for u in rng.random(n)])
    assert np.all(draws >= 1.0)
    ks = stats.kstest(draws, lambda x: truncated_gamma_cdf(x, shape, rate))
    assert ks.pvalue > P_MIN
    # quantiles of scipy.stats.gamma truncated at 1 (inverse survival function of the tail)
    quant = np.array([0.1, 0.5, 0.9])
    dist = stats.gamma(shape, scale=1.0 / rate)
    expected = dist.isf((1.0 - quant) * dist.sf(1.0))
    se = np.sqrt(quant * (1 - quant) / n) / stats.gamma.pdf(expected, shape, scale=1.0 / rate) \
        * dist.sf(1.0)  # SE of a sample quantile: sqrt(q (1 - q) / n) / density
    assert np.all(np.abs(np.quantile(draws, quant) - expected) < Z_TOL * se)
    # the inverse-CDF map itself is exact
    for u in (0.0, 0.25, 0.999):
        x = truncated_gamma_above_one(shape, rate, u)
        assert truncated_gamma_cdf(x, shape, rate) == pytest.approx(u, abs=1e-9)


def test_ard_phi_conditional_moments():
    rng = np.random.default_rng(72)
    k, t0, copies = 3, 4, 5000
    lam0 = rng.standard_normal((k, t0)) * np.array([[1.0], [0.5], [0.1]])
    prec0 = rng.uniform(0.5, 2.0, t0)
    lam, prec = np.tile(lam0, (1, copies)), np.tile(prec0, copies)
    delta_in = np.array([1.5, 2.0, 3.0])
    df = 3.0
    phi, delta, lambda_prec = sample_ard(lam, prec, delta_in, rng, df, (2.0, 1.0), (3.0, 1.0), 5)
    tau_in = np.cumprod(delta_in)
    shape = (df + 1.0) / 2.0
    rate = 0.5 * (df + tau_in[:, None] * prec0[None, :] * lam0**2)  # (k, t0)
    draws = phi.reshape(k, copies, t0)
    mean_err = np.abs(draws.mean(axis=1) - shape / rate)
    assert np.all(mean_err < Z_TOL * np.sqrt(shape) / rate / np.sqrt(copies))
    var = shape / rate**2
    var_err = np.abs(draws.var(axis=1, ddof=1) - var)
    assert np.all(var_err < Z_TOL * var * np.sqrt((2.0 + 6.0 / shape) / copies))
    np.testing.assert_allclose(lambda_prec, phi * np.cumprod(delta)[:, None], rtol=1e-14)
    assert np.all(delta[1:] >= 1.0)


def ard_k2_problem():
    """k = 2 loadings on t = 3 traits, sized so that delta_2's truncation at 1 is active on a
    good share of its draws."""
    lam = np.array([[0.3, -0.2, 0.25], [2.7, 3.3, -2.1]])
    prec = np.array([1.2, 0.8, 1.5])
    return lam, prec, np.array([1.3, 1.1]), 3.0, (2.0, 1.0), (3.0, 1.0)


def ard_half_ss(phi, lam, prec):
    return 0.5 * (phi * prec[None, :] * lam**2).sum(axis=1)


def test_ard_delta_one_sweep_is_exact():
    """With one sweep: delta_1 | phi, delta_2(input) is Gamma, then delta_2 | phi, delta_1(new)
    is Gamma truncated to [1, inf). Probability-integral transforms must be uniform."""
    lam, prec, delta_in, df, d1, d2 = ard_k2_problem()
    t = lam.shape[1]
    rng = np.random.default_rng(73)
    reps = 3000
    u1, u2, below = np.empty(reps), np.empty(reps), 0
    for r in range(reps):
        phi, delta, _ = sample_ard(lam, prec, delta_in, rng, df, d1, d2, 1)
        s = ard_half_ss(phi, lam, prec)
        rate1 = d1[1] + s[0] + delta_in[1] * s[1]
        u1[r] = stats.gamma.cdf(delta[0], d1[0] + t, scale=1.0 / rate1)
        rate2 = d2[1] + delta[0] * s[1]
        u2[r] = truncated_gamma_cdf(delta[1], d2[0] + 0.5 * t, rate2)
        below += sc.gammainc(d2[0] + 0.5 * t, rate2) > 0.3
    assert below > 0.2 * reps  # the truncated branch is exercised
    assert stats.kstest(u1, "uniform").pvalue > P_MIN
    assert stats.kstest(u2, "uniform").pvalue > P_MIN


def ard_delta1_marginal_cdf(x, s, t, d1, d2, truncated=True):
    """CDF of delta_1 | phi under the joint conditional of (delta_1, delta_2) (k = 2), by
    numerical integration of delta_1^(A1-1) exp(-(b1 + s0) delta_1) Q(A2, r2) r2^-A2,
    r2 = b2 + delta_1 s1 (delta_2 integrated out analytically over [1, inf); over (0, inf),
    i.e. Q = 1, with truncated=False)."""
    a1, a2 = d1[0] + t, d2[0] + 0.5 * t
    r1 = d1[1] + s[0]
    upper = (a1 + 40.0 * np.sqrt(a1)) / r1
    grid = np.linspace(0.0, upper, 20001)[1:]
    r2 = d2[1] + grid * s[1]
    logf = (a1 - 1) * np.log(grid) - r1 * grid - a2 * np.log(r2)
    if truncated:
        with np.errstate(divide="ignore"):  # the tail underflows far out: density 0 there
            logf += np.log(sc.gammaincc(a2, r2))
    f = np.exp(logf - logf.max())
    cdf = np.concatenate([[0.0], np.cumsum((f[1:] + f[:-1]) / 2)])
    cdf /= cdf[-1]
    return np.interp(x, grid, cdf)


def test_ard_delta_many_sweeps_reach_joint_conditional():
    """After many sweeps (delta_1, delta_2) is a draw from their joint conditional given phi:
    delta_1's marginal CDF (numerical) and delta_2 | delta_1 (truncated Gamma) both give
    uniform probability-integral transforms."""
    lam, prec, delta_in, df, d1, d2 = ard_k2_problem()
    t = lam.shape[1]
    rng = np.random.default_rng(74)
    reps = 1500
    u1, u2, wrong_u1, wrong_u2 = (np.empty(reps) for _ in range(4))
    start = delta_in
    for r in range(reps):
        phi, delta, _ = sample_ard(lam, prec, start, rng, df, d1, d2, 60)
        # phi was drawn with tau from `start`; delta | phi is what the sweeps target
        s = ard_half_ss(phi, lam, prec)
        u1[r] = ard_delta1_marginal_cdf(delta[0], s, t, d1, d2)
        wrong_u1[r] = ard_delta1_marginal_cdf(delta[0], s, t, d1, d2, truncated=False)
        u2[r] = truncated_gamma_cdf(delta[1], d2[0] + 0.5 * t, d2[1] + delta[0] * s[1])
        wrong_u2[r] = sc.gammainc(d2[0] + 0.5 * t, (d2[1] + delta[0] * s[1]) * delta[1])
    assert stats.kstest(u1, "uniform").pvalue > P_MIN
    assert stats.kstest(u2, "uniform").pvalue > P_MIN
    # negative controls: the same statistics reject targets that ignore delta_2's truncation,
    # and delta_1 after a single sweep
    assert stats.kstest(wrong_u1, "uniform").pvalue < P_MIN
    assert stats.kstest(wrong_u2, "uniform").pvalue < P_MIN
    u_one = np.empty(reps // 3)
    for r in range(u_one.size):
        phi, delta, _ = sample_ard(lam, prec, start, rng, df, d1, d2, 1)
        u_one[r] = ard_delta1_marginal_cdf(delta[0], ard_half_ss(phi, lam, prec), t, d1, d2)
    assert stats.kstest(u_one, "uniform").pvalue < P_MIN  # one sweep is not enough


# ---------------------------------------------------------------- horseshoe conditionals


def inv_gamma_cdf(x, shape, rate):
    return sc.gammaincc(shape, rate / x)


def test_horseshoe_columns_conditionals():
    """Column-wise horseshoe: every variable is an inverse-Gamma draw given the ones before it
    (order: local2, local_nu, global_xi, global2); PITs are uniform across many columns."""
    rng = np.random.default_rng(81)
    b2, k = 3, 20_000
    coef = rng.standard_normal((b2, k)) * 0.5
    col_prec = rng.uniform(0.5, 2.0, k)
    local2_in = rng.uniform(0.2, 2.0, (b2, k))
    nu_in = rng.uniform(0.2, 2.0, (b2, k))
    g2_in = rng.uniform(0.2, 2.0, k)
    xi_in = rng.uniform(0.2, 2.0, k)
    scale = 0.3
    local2, nu, g2, xi, prior_prec = sample_horseshoe_columns(
        coef, col_prec, local2_in, nu_in, g2_in, xi_in, rng, scale)
    ss = 0.5 * col_prec[None, :] * coef**2
    pits = [
        inv_gamma_cdf(local2, 1.0, 1.0 / nu_in + ss / g2_in[None, :]).ravel(),
        inv_gamma_cdf(nu, 1.0, 1.0 + 1.0 / local2).ravel(),
        inv_gamma_cdf(xi, 1.0, 1.0 / scale**2 + 1.0 / g2_in),
        inv_gamma_cdf(g2, 0.5 * (b2 + 1), 1.0 / xi + (ss / local2).sum(axis=0)),
    ]
    for u in pits:
        assert stats.kstest(u, "uniform").pvalue > P_MIN
    np.testing.assert_allclose(prior_prec, 1.0 / (g2[None, :] * local2), rtol=1e-14)


def test_horseshoe_lambda_conditionals():
    """Horseshoe on loadings (k = 2, one sweep): local2, local_nu per loading; then global2,
    global_xi and delta_2 in turn; PITs uniform over loadings and over repeated calls."""
    rng = np.random.default_rng(82)
    k, t = 2, 4
    lam = rng.standard_normal((k, t)) * np.array([[1.0], [0.3]])
    prec = rng.uniform(0.5, 2.0, t)
    local2_in = rng.uniform(0.5, 2.0, (k, t))
    nu_in = rng.uniform(0.5, 2.0, (k, t))
    g2_in, xi_in, delta_in = 0.5, 0.7, np.array([1.0, 2.0])
    scale, d2 = 0.2, (3.0, 1.0)
    reps = 3000
    ss = 0.5 * prec[None, :] * lam**2
    cum_in = np.cumprod(delta_in)
    pits = np.empty((5, reps, k * t))
    for r in range(reps):
        local2, nu, g2, xi, delta, lp = sample_horseshoe_lambda(
            lam, prec, local2_in, nu_in, g2_in, xi_in, delta_in, rng, scale, d2, 1)
        per_factor = (ss / local2).sum(axis=1)
        pits[0, r] = inv_gamma_cdf(local2, 1.0, 1.0 / nu_in + ss * cum_in[:, None] / g2_in).ravel()
        pits[1, r] = inv_gamma_cdf(nu, 1.0, 1.0 + 1.0 / local2).ravel()
        pits[2, r] = inv_gamma_cdf(g2, 0.5 * (k * t + 1), 1.0 / xi_in + cum_in @ per_factor)
        pits[3, r] = inv_gamma_cdf(xi, 1.0, 1.0 / scale**2 + 1.0 / g2)
        pits[4, r] = stats.gamma.cdf(delta[1], d2[0] + 0.5 * t,
                                     scale=1.0 / (d2[1] + delta[0] * per_factor[1] / g2))
        np.testing.assert_allclose(lp, np.cumprod(delta)[:, None] / (g2 * local2), rtol=1e-14)
    assert delta_in[0] == 1.0
    for i in range(2):
        assert stats.kstest(pits[i].ravel(), "uniform").pvalue > P_MIN
    for i in range(2, 5):
        assert stats.kstest(pits[i, :, 0], "uniform").pvalue > P_MIN


def _prior_chain_quantiles(step, draw_values, iterations, thin=5):
    """Alternate values | scales from their Gaussian prior with the horseshoe step: the chain's
    stationary law is the prior, so each scale keeps its half-Cauchy marginal."""
    kept = []
    for it in range(iterations):
        scales = step(draw_values())
        if it % thin == 0:
            kept.append(scales)
    return np.array(kept)


@pytest.mark.parametrize("which", ["lambda", "columns"])
def test_horseshoe_keeps_its_half_cauchy_prior(which):
    """An independent derivation of the horseshoe (Carvalho, Polson & Scott 2010): local scales
    ~ half-Cauchy(0, 1), the global scale ~ half-Cauchy(0, A). The auxiliary inverse-gamma
    updates (Makalic & Schmidt 2016) must preserve these marginals: a chain that alternates
    coefficients ~ N(0, global2 local2 / prec) with the update has P(local scale < 1) = 1/2,
    P(local < tan(pi/8)) = 1/4 and P(global scale < A) = 1/2; a slab (regularised horseshoe)
    or a wrong shape would move them."""
    rng = np.random.default_rng(90 if which == "lambda" else 91)
    k, t, scale = 2, 3, 0.4
    prec = np.ones(t) if which == "lambda" else np.ones(k)
    state = {"local2": np.ones((k, t)), "nu": np.ones((k, t)), "g2": 1.0 if which == "lambda" else np.ones(t),
             "xi": 1.0 if which == "lambda" else np.ones(t), "delta": np.array([1.0, 1.5])}

    def draw_values():
        if which == "lambda":
            cum = np.cumprod(state["delta"])[:, None]
            return rng.standard_normal((k, t)) * np.sqrt(state["g2"] * state["local2"] / cum)
        return rng.standard_normal((k, t)) * np.sqrt(state["g2"][None, :] * state["local2"])

    def step(values):
        if which == "lambda":
            (state["local2"], state["nu"], state["g2"], state["xi"], state["delta"],
             _) = sample_horseshoe_lambda(values, prec, state["local2"], state["nu"], state["g2"],
                                          state["xi"], state["delta"], rng, scale, (3.0, 1.0), 1)
            return np.concatenate([np.sqrt(state["local2"]).ravel(), [np.sqrt(state["g2"])]])
        (state["local2"], state["nu"], state["g2"], state["xi"],
         _) = sample_horseshoe_columns(values, np.ones(t), state["local2"], state["nu"], state["g2"],
                                       state["xi"], rng, scale)
        return np.concatenate([np.sqrt(state["local2"]).ravel(), np.sqrt(state["g2"])])

    kept = _prior_chain_quantiles(step, draw_values, 60_000)
    local, global_ = kept[:, : k * t], kept[:, k * t:]
    for label, series, cut, prob in (("local < 1", local, 1.0, 0.5),
                                     ("local < tan(pi/8)", local, np.tan(np.pi / 8), 0.25),
                                     ("global < A", global_, scale, 0.5)):
        hits = (series < cut).astype(float)
        m = hits.shape[0] // 40 * 40  # batch means over 40 batches: the chain is autocorrelated
        batches = hits[:m].reshape(40, -1, hits.shape[1]).mean(axis=1).mean(axis=1)
        se = batches.std(ddof=1) / np.sqrt(40)
        assert abs(hits.mean() - prob) < 5 * se + 0.01, (label, hits.mean(), prob, se)
