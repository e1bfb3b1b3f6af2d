"""Step 6's two exact additions, against dense closed-form answers on tiny problems:

- F drawn with U_F integrated out, row by row in the eigenbasis of K (sample_rotated_scores);
- the translation move F -> F + X1 A, B1 -> B1 - A Lambda (sample_translation), which must
  leave the joint conditional of (F, B1) invariant: exact draws of (F, B1) stay exact draws
  after the move, and a move with the wrong spread (the bug of a forgotten precision) does not.
"""

from __future__ import annotations

import numpy as np
import pytest

from megalmm_cli.gibbs.factors import sample_rotated_scores, sample_translation
from megalmm_cli.gridlmm import rotation

from .test_conditionals import assert_gaussian_cov_close, assert_mean_close, random_kinship

N, K, T, B = 7, 2, 4, 2


def prior_covariances(kinship, h2, tot_f_prec):
    """Per factor q: the prior covariance of F's column q with U_F integrated out, (K, n, n)."""
    eye = np.eye(kinship.shape[0])
    return np.stack([(h * kinship + (1.0 - h) * eye) / tau for h, tau in zip(h2, tot_f_prec)])


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(606)
    kinship = random_kinship(rng, N)
    return dict(
        kinship=kinship,
        rot=rotation(kinship, np.arange(N)),
        lam=rng.standard_normal((K, T)),
        resid_prec=rng.uniform(0.5, 3.0, T),
        h2=np.array([0.3, 0.8]),
        tot_f_prec=np.array([1.4, 0.7]),
        prior_mean=rng.standard_normal((N, K)) * 0.5,   # X2 B2F
        x1=np.column_stack([np.ones(N), rng.standard_normal(N)]),
        data=rng.standard_normal((N, T)) * 2.0,          # Y - U_R
    )


def dense_score_conditional(d, data):
    """Mean (n, k) and covariance (n k, n k) of vec(F) (column-major) given data = F Lambda + E."""
    cov = prior_covariances(d["kinship"], d["h2"], d["tot_f_prec"])
    prior_prec = np.zeros((N * K, N * K))
    for q in range(K):
        prior_prec[q * N:(q + 1) * N, q * N:(q + 1) * N] = np.linalg.inv(cov[q])
    lam_psi = d["lam"] * d["resid_prec"]
    prec = np.kron(lam_psi @ d["lam"].T, np.eye(N)) + prior_prec
    rhs = (data @ lam_psi.T).T.ravel() + prior_prec @ d["prior_mean"].T.ravel()
    post_cov = np.linalg.inv(prec)
    return (post_cov @ rhs).reshape(K, N).T, post_cov


def rotated_inputs(d, data):
    q, s = d["rot"].vectors, d["rot"].values
    prior_prec = d["tot_f_prec"] / (d["h2"] * s[:, None] + 1.0 - d["h2"])
    lam_psi = d["lam"] * d["resid_prec"]
    rhs = prior_prec * (q.T @ d["prior_mean"]) + (q.T @ data) @ lam_psi.T
    return rhs, lam_psi @ d["lam"].T, prior_prec


def test_rotated_scores_exact_mean_and_covariance(problem):
    d = problem
    rhs, precision, prior_prec = rotated_inputs(d, d["data"])
    q = d["rot"].vectors
    mean_rot = sample_rotated_scores(rhs, precision, prior_prec, np.zeros((N, K)))
    mean, cov = dense_score_conditional(d, d["data"])
    np.testing.assert_allclose(q @ mean_rot, mean, atol=1e-10)
    # column j of every row's root: the draw with the unit normal e_j in every row
    roots = [sample_rotated_scores(rhs, precision, prior_prec, np.tile(np.eye(K)[j], (N, 1)))
             - mean_rot for j in range(K)]
    row_cov = sum(np.einsum("iq,ir->iqr", r, r) for r in roots)           # (n, k, k)
    got = np.einsum("ai,iqr,bi->qarb", q, row_cov, q).reshape(K * N, K * N)
    np.testing.assert_allclose(got, cov, atol=1e-10)


def joint_conditional(d):
    """Mean and covariance of theta = (vec F, vec B1) given Y - U_R = X1 B1 + F Lambda + E,
    with B1's flat prior and F's prior with U_F integrated out."""
    lam, x1 = d["lam"], d["x1"]
    design = np.hstack([np.kron(lam.T, np.eye(N)), np.kron(np.eye(T), x1)])   # vec(Y) columns
    weights = np.repeat(d["resid_prec"], N)
    cov_f = prior_covariances(d["kinship"], d["h2"], d["tot_f_prec"])
    prior_prec = np.zeros((N * K + B * T,) * 2)
    for q in range(K):
        prior_prec[q * N:(q + 1) * N, q * N:(q + 1) * N] = np.linalg.inv(cov_f[q])
    prior_mean = np.concatenate([d["prior_mean"].T.ravel(), np.zeros(B * T)])
    prec = design.T @ (weights[:, None] * design) + prior_prec
    rhs = design.T @ (weights * d["data"].T.ravel()) + prior_prec @ prior_mean
    cov = np.linalg.inv(prec)
    return cov @ rhs, cov


def unpack(theta):
    return theta[:N * K].reshape(K, N).T, theta[N * K:].reshape(T, B).T


def moved_draws(d, draws, rng, weight_scale=1.0):
    """Apply the collapsed path's move (in the eigenbasis of K) to each exact draw."""
    q, s = d["rot"].vectors, d["rot"].values
    prior_prec = d["tot_f_prec"] / (d["h2"] * s[:, None] + 1.0 - d["h2"])
    x_rot = q.T @ d["x1"]
    mean_rot = q.T @ d["prior_mean"]
    out = np.empty_like(draws)
    for m, theta in enumerate(draws):
        f, b1 = unpack(theta)
        f_rot = q.T @ f
        shift = sample_translation(x_rot, f_rot - mean_rot, prior_prec * weight_scale,
                                   rng.standard_normal((B, K)))
        f_new = q @ (f_rot + x_rot @ shift)
        b1_new = b1 - shift @ d["lam"]
        out[m] = np.concatenate([f_new.T.ravel(), b1_new.T.ravel()])
    return out


@pytest.fixture(scope="module")
def exact_draws(problem):
    mean, cov = joint_conditional(problem)
    rng = np.random.default_rng(7)
    return mean, cov, rng.multivariate_normal(mean, cov, size=20_000)


def test_translation_keeps_the_linear_predictor(problem, exact_draws):
    d = problem
    _, _, draws = exact_draws
    moved = moved_draws(d, draws[:50], np.random.default_rng(1))
    for before, after in zip(draws[:50], moved):
        f0, b0 = unpack(before)
        f1, b1 = unpack(after)
        np.testing.assert_allclose(d["x1"] @ b1 + f1 @ d["lam"], d["x1"] @ b0 + f0 @ d["lam"],
                                   atol=1e-10)
        assert np.abs(f1 - f0).max() > 1e-3  # it did move


def test_translation_leaves_the_conditional_invariant(problem, exact_draws):
    d = problem
    mean, cov, draws = exact_draws
    moved = moved_draws(d, draws, np.random.default_rng(2))
    assert_mean_close(moved, mean, cov, "after the move")
    assert_gaussian_cov_close(moved, cov, "after the move")
    # the move forgets where the factors' means were: the intercept direction decorrelates
    f_sum_before = draws[:, :N * K].reshape(-1, K, N).sum(axis=2)
    f_sum_after = moved[:, :N * K].reshape(-1, K, N).sum(axis=2)
    for q in range(K):
        assert abs(np.corrcoef(f_sum_before[:, q], f_sum_after[:, q])[0, 1]) < 0.2


def test_translation_negative_control_wrong_spread(problem, exact_draws):
    """A move that draws A with 4x its variance (a forgotten precision) is detected."""
    d = problem
    mean, cov, draws = exact_draws
    moved = moved_draws(d, draws, np.random.default_rng(3), weight_scale=0.25)
    with pytest.raises(AssertionError):
        assert_gaussian_cov_close(moved, cov, "wrong spread")


def test_translation_given_u_f_leaves_the_conditional_invariant(problem):
    """The path with several groups or effects: U_F held fixed, F's entries independent."""
    d = problem
    rng = np.random.default_rng(11)
    u_f = rng.standard_normal((N, K)) * 0.4
    e_prec = d["tot_f_prec"] / (1.0 - d["h2"])
    # the same dense algebra with V_q = I (1 - h2_q) / tot_f_prec_q around X2 B2F + U_F
    local = dict(d, kinship=np.zeros((N, N)), prior_mean=d["prior_mean"] + u_f,
                 tot_f_prec=e_prec, h2=np.zeros(K))
    mean, cov = joint_conditional(local)
    draws = rng.multivariate_normal(mean, cov, size=20_000)
    moved = np.empty_like(draws)
    for m, theta in enumerate(draws):
        f, b1 = unpack(theta)
        shift = sample_translation(d["x1"], f - local["prior_mean"],
                                   np.broadcast_to(e_prec, (N, K)), rng.standard_normal((B, K)))
        moved[m] = np.concatenate([(f + d["x1"] @ shift).T.ravel(),
                                   (b1 - shift @ d["lam"]).T.ravel()])
    assert_mean_close(moved, mean, cov, "given U_F")
    assert_gaussian_cov_close(moved, cov, "given U_F")


# ------------------------------------------------------------------ rotation move


def log_prior_along_orbit(theta, blocks, a, b):
    """Brute force: the Gaussian log densities of every block after rotating pair (a, b)."""
    c, s = np.cos(theta), np.sin(theta)
    total = 0.0
    for values, weights in blocks:
        new = values.copy()
        new[:, a] = c * values[:, a] + s * values[:, b]
        new[:, b] = -s * values[:, a] + c * values[:, b]
        total += -0.5 * np.sum(weights * new**2)
    return total


def test_rotation_conditional_is_the_orbit_density():
    """The von Mises draw of each pair's angle has the brute-force density along the orbit:
    its log density differs from the direct one by a constant, and a large sample of angles
    has the right circular moments."""
    from megalmm_cli.gibbs.factors import _orbit_coefficients, sample_pair_rotations

    rng = np.random.default_rng(99)
    k = 4
    blocks = [(rng.standard_normal((9, k)), rng.uniform(0.2, 3.0, (9, k))),
              (rng.standard_normal((5, k)) * 0.7, rng.uniform(0.5, 4.0, (5, k)))]
    pairs = np.array([[2, 0], [1, 3]])
    p_coef = sum(_orbit_coefficients(v, w, pairs)[0] for v, w in blocks)
    s_coef = sum(_orbit_coefficients(v, w, pairs)[1] for v, w in blocks)
    # blocks with the factors along axis 0 (Lambda's layout) give the same coefficients
    from megalmm_cli.gibbs.factors import sample_pair_rotations as draw
    one = draw([(v, w, 1) for v, w in blocks], pairs, np.random.default_rng(3))
    other = draw([(np.ascontiguousarray(v.T), np.ascontiguousarray(w.T), 0) for v, w in blocks],
                 pairs, np.random.default_rng(3))
    np.testing.assert_allclose(one, other, rtol=1e-12)
    grid = np.linspace(0.0, 2.0 * np.pi, 73)
    for r, (a, b) in enumerate(pairs):
        direct = np.array([log_prior_along_orbit(th, blocks, a, b) for th in grid])
        formula = -0.5 * (p_coef[r] * np.cos(2 * grid) + s_coef[r] * np.sin(2 * grid))
        np.testing.assert_allclose(direct - direct[0], formula - formula[0], atol=1e-10)
    # Monte Carlo: E[cos theta'], E[sin theta'] of the drawn angle against quadrature
    draws = 100_000
    cos, sin = sample_pair_rotations([(v, w, 1) for v, w in blocks], np.tile(pairs, (draws, 1)),
                                     rng)
    fine = np.linspace(0.0, 2.0 * np.pi, 20_001)[:-1]
    for r, (a, b) in enumerate(pairs):
        logd = np.array([log_prior_along_orbit(th, blocks, a, b) for th in fine])
        dens = np.exp(logd - logd.max())
        dens /= dens.sum()
        for stat, values in (("cos 2theta", np.cos(2 * fine)), ("sin 2theta", np.sin(2 * fine)),
                             ("cos theta", np.cos(fine))):
            drawn = {"cos 2theta": cos[r::2] ** 2 - sin[r::2] ** 2,
                     "sin 2theta": 2 * cos[r::2] * sin[r::2], "cos theta": cos[r::2]}[stat]
            expected = np.sum(dens * values)
            se = np.sqrt(max(np.sum(dens * values**2) - expected**2, 1e-12) / draws)
            assert abs(drawn.mean() - expected) < 5 * se, (r, stat, drawn.mean(), expected)


def test_rotation_keeps_the_product_of_scores_and_loadings():
    from megalmm_cli.gibbs.factors import rotate_pairs

    rng = np.random.default_rng(5)
    f, lam = rng.standard_normal((6, 5)), rng.standard_normal((5, 3))
    product = f @ lam
    pairs = np.array([[4, 1], [0, 2]])
    theta = rng.uniform(0, 2 * np.pi, 2)
    rotate_pairs(f, pairs, np.cos(theta), np.sin(theta))
    rotate_pairs(lam, pairs, np.cos(theta), np.sin(theta), axis=0)
    np.testing.assert_allclose(f @ lam, product, atol=1e-12)


# ------------------------------------------------- the rotation against the full log joint


def _small_model(groups, lambda_type):
    from megalmm_cli.model import Priors, build_model

    priors = Priors(tot_eta_shape=4.0, tot_eta_rate=2.5, tot_f_shape=19.0, tot_f_rate=18.0,
                    lambda_type=lambda_type, lambda_df=3.0, delta_1=(2.0, 1.0),
                    delta_2=(3.0, 1.0), delta_iterations=5, lambda_prop_0=0.1,
                    b2_type="horseshoe", b2_prop_0=0.1, b2_ridge_prec=1.0)
    rng = np.random.default_rng(0)
    n, t = 14, 5
    a = rng.standard_normal((n, 2 * n))
    kinship = a @ a.T / (2 * n)
    values = rng.standard_normal((n, t))
    x1 = np.column_stack([np.ones(n), rng.standard_normal(n), (np.arange(n) >= n - 4).astype(float)])
    if groups > 1:  # traits 3-4 dropped on the last 4 rows: their group drops column 2
        values[n - 4:, 3:] = np.nan
        values[1, 0] = np.nan
    model = build_model([f"i{i}" for i in range(n)], [f"t{j}" for j in range(t)], values, kinship,
                        x1, ["a", "b", "c"], rng.standard_normal((n, 1)), 4, 5,
                        priors, max_groups=groups, scale_y=False)
    return model, kinship


def _log_joint(model, kinship, state, f, lam, b2f, u_f_rot, collapsed):
    """Every term of the log posterior that the rotation can change, written densely."""
    out = 0.0
    resid_prec = state.tot_eta_prec / (1.0 - model.grid_total[state.resid_h2_index])
    for gi, g in enumerate(model.groups):
        c = g.cols
        r = (state.Y[gi] - model.x1[g.rows] @ state.B1[:, c] - f[g.rows] @ lam[:, c]
             - g.rot.vectors @ state.U_R_rot[gi])
        out -= 0.5 * np.sum(resid_prec[c] * r ** 2)
    out -= 0.5 * np.sum(state.tot_eta_prec[None, :] * state.lambda_prec * lam ** 2)
    out -= 0.5 * np.sum(state.tot_f_prec[None, :] * state.B2F_prec * b2f ** 2)
    h2 = model.grid[state.f_h2_index, 0]
    n = model.n
    mean = model.x2 @ b2f
    if collapsed:
        for q in range(model.k):
            cov = (h2[q] * kinship[:n, :n] + (1 - h2[q]) * np.eye(n)) / state.tot_f_prec[q]
            d = f[:, q] - mean[:, q]
            out -= 0.5 * d @ np.linalg.solve(cov, d)
        return out
    u_f = model.factor_rot.vectors @ u_f_rot
    out -= 0.5 * np.sum(state.tot_f_prec / (1 - h2) * (f - mean - u_f) ** 2)
    for q in range(model.k):
        if h2[q] > 0:
            out -= 0.5 * u_f[:, q] @ np.linalg.solve(h2[q] * kinship[:n, :n] / state.tot_f_prec[q], u_f[:, q])
    return out


@pytest.mark.parametrize("groups", [1, 2], ids=["collapsed", "given-U_F"])
@pytest.mark.parametrize("lambda_type", ["ARD", "horseshoe"])
def test_rotation_orbit_density_is_the_full_log_joint(groups, lambda_type, monkeypatch):
    """In the sampler's own step 6 (one group: F with U_F integrated out; two groups, one of
    which drops rows and a fixed-effect column: F given U_F), the von Mises parameters of each
    pair equal the brute-force log joint along the pair's orbit, with a factor covariate and
    both Lambda priors. (A check written in review.)"""
    import megalmm_cli.sampler as sampler
    from megalmm_cli.gibbs.factors import rotate_pairs
    from megalmm_cli.state import initial_state

    model, kinship = _small_model(groups, lambda_type)
    collapsed = groups == 1
    assert sampler.scores_collapsed(model) == collapsed
    state = initial_state(model, np.random.default_rng(1), np.random.default_rng(2))
    for _ in range(30):
        sampler.gibbs_iteration(model, state)
    state.B2F = state.B2F + 0.5
    seen = {}
    original = sampler.sample_pair_rotations

    def recording(blocks, pairs, rng):
        f = (model.factor_rot.vectors @ (blocks[0][0] + model.x2_rot @ state.B2F) if collapsed
             else state.F.copy())
        seen.update(f=f, lam=state.Lambda.copy(), b2f=state.B2F.copy(), u_f=state.U_F_rot.copy(),
                    pairs=pairs.copy(), blocks=[(v.copy(), np.array(w), ax) for v, w, ax in blocks])
        return original(blocks, pairs, rng)

    monkeypatch.setattr(sampler, "sample_pair_rotations", recording)
    for _ in range(5):  # a few tries: with two groups a pair with a factor at h2 = 0 is skipped
        sampler.sample_scores(model, state)
        if seen:
            break
    assert seen, "no pair was rotated"
    from megalmm_cli.gibbs.factors import _orbit_coefficients

    grid = np.linspace(0.0, 2.0 * np.pi, 25)
    for r, (a, b) in enumerate(seen["pairs"]):
        p_coef = s_coef = 0.0
        for v, w, ax in seen["blocks"]:
            vv, ww = (v, w) if ax == 1 else (v.T, w.T)
            p_add, s_add = _orbit_coefficients(vv, ww, seen["pairs"][r:r + 1])
            p_coef, s_coef = p_coef + p_add[0], s_coef + s_add[0]
        direct = []
        for th in grid:
            pair, c, s = np.array([[a, b]]), np.array([np.cos(th)]), np.array([np.sin(th)])
            f, lam, b2f, u_f = (seen[key].copy() for key in ("f", "lam", "b2f", "u_f"))
            rotate_pairs(f, pair, c, s)
            rotate_pairs(lam, pair, c, s, axis=0)
            rotate_pairs(b2f, pair, c, s)
            if not collapsed:
                rotate_pairs(u_f, pair, c, s)
            direct.append(_log_joint(model, kinship, state, f, lam, b2f, u_f, collapsed))
        direct = np.array(direct)
        formula = -0.5 * (p_coef * np.cos(2 * grid) + s_coef * np.sin(2 * grid))
        scale = max(1.0, np.ptp(direct))
        np.testing.assert_allclose(direct - direct[0], formula - formula[0], atol=1e-8 * scale)


@pytest.mark.parametrize("kappa", [0.7, 6.0, 80.0])
def test_vonmises_rejection_sampler_is_exact(kappa, monkeypatch):
    """The rejection sampler used for large kappa (where numpy's vonmises becomes a wrapped
    normal) is exact for every kappa: at moderate kappa, where the von Mises is far from
    normal, its circular moments E cos(x - mu), E cos 2(x - mu) = I_1/I_0, I_2/I_0 and its KS
    distance to numpy's exact sampler agree."""
    import scipy.special as sc
    from scipy import stats

    from megalmm_cli.gibbs import factors

    rng = np.random.default_rng(int(kappa * 10))
    mu = 0.4
    monkeypatch.setattr(factors, "VONMISES_REJECTION_FROM", 0.0)  # rejection for every kappa
    draws = factors.vonmises(rng, np.full(200_000, mu), np.full(200_000, kappa))
    for order in (1, 2):
        values = np.cos(order * (draws - mu))
        expected = sc.ive(order, kappa) / sc.ive(0, kappa)
        se = values.std() / np.sqrt(values.size)
        assert abs(values.mean() - expected) < 5 * se, (order, values.mean(), expected)
    wrapped = np.angle(np.exp(1j * (draws - mu)))
    reference = np.angle(np.exp(1j * (rng.vonmises(mu, kappa, 200_000) - mu)))
    assert stats.ks_2samp(wrapped, reference).pvalue > 1e-4
    big = factors.vonmises(rng, np.zeros(1000), np.full(1000, 5e7))
    assert np.isfinite(big).all() and abs(big.std() * np.sqrt(5e7) - 1.0) < 0.1


def test_sign_flip_leaks_nothing_into_a_heavily_shrunk_factor():
    """A pair of a strong factor and one whose prior precision is 1e68 (ARD far down the order):
    the angle is ~1e-36, and the sign flip (theta + pi, half the draws) must be exact. Adding a
    rounded pi gave sin = 1.2e-16, which put loadings of 1e-17 into the shrunk factor, a prior
    penalty of 1e20: found at the paper's scale (665 x 20,843, k 166), where it broke ARD."""
    from megalmm_cli.gibbs.factors import sample_pair_rotations

    rng = np.random.default_rng(12)
    t = 2000
    lam = np.vstack([rng.standard_normal(t) * 0.3, rng.standard_normal(t) * 1e-34])
    weights = np.vstack([np.ones(t), np.full(t, 1e68)])
    pairs = np.tile(np.array([[0, 1]]), (400, 1))
    cos, sin = sample_pair_rotations([(lam, weights, 0)], pairs, rng)
    assert np.abs(sin).max() < 1e-30
    assert 100 < (cos < 0).sum() < 300  # the flip happens, exactly
    np.testing.assert_array_equal(np.abs(cos), 1.0)


@pytest.mark.parametrize("k", [5, 120])  # rows four at a time, and LAPACK above 64
def test_rotated_scores_do_not_depend_on_memory_placement_or_threads(k):
    """The same inputs at other addresses (8-byte offsets) and on one or two threads give
    bitwise the same scores, or a resumed chain would not repeat an uninterrupted one."""
    from megalmm_cli.gibbs import factors as factors_mod

    from .conftest import numba_threads

    assert (k <= factors_mod.SCALAR_CHOLESKY_MAX) == (k == 5)
    rng = np.random.default_rng(k)
    n = 40
    a = rng.standard_normal((k, 2 * k))
    arrays = {"rhs": rng.standard_normal((n, k)), "precision": a @ a.T,
              "prior_prec": rng.uniform(0.5, 2.0, (n, k)), "normals": rng.standard_normal((n, k))}
    results = set()
    for offset in range(4):
        placed = {}
        for name, value in arrays.items():
            buffer = np.empty(value.size + 8)
            placed[name] = buffer[offset:offset + value.size].reshape(value.shape)
            placed[name][...] = value
        for threads in (1, 2):
            with numba_threads(threads):
                results.add(sample_rotated_scores(**placed).tobytes())
    assert len(results) == 1
