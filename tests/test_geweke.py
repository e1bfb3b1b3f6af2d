"""Geweke (2004) joint-distribution test of the Gibbs sampler.

Two ways of drawing from the joint distribution p(theta, Y) of a tiny model:

- marginal-conditional: theta ~ prior, then Y ~ p(Y | theta), many independent draws;
- successive-conditional: a chain that alternates one `gibbs_iteration` (theta | Y) with a
  fresh Y ~ p(Y | theta), started from a prior draw.

If every conditional update leaves p(theta | Y) invariant, the chain's stationary law is
p(theta, Y) as well, so the mean of any statistic g(theta, Y) must agree between the two
(a z-test, with batch-means standard errors for the autocorrelated chain). A sampler that
targets a wrong conditional shows up as a disagreement (see the negative control).

The model: n = 8 individuals, t = 3 traits, k = 2 factors, one random effect with a fixed random
kinship, 5 grid points (h2 = 0 included), no fixed effects (B1's prior is flat, so there
would be no proper joint; test_geweke_groups.py covers X1 under a proper prior on B1), no
factor covariates, no missing cells, ARD prior on Lambda
with 5 delta sweeps. The sampler reads the data only from state.Y[0] and state.Y_rot[0]
(= Q' Y), so a new Y is put there between iterations (model.y_std serves initial_state only).

Priors. The tot_eta_prec, tot_F_prec and delta_2 priors are the package defaults; the ARD
prior is made lighter-tailed than the default (df = 10 instead of 3, delta_1 ~ Gamma(5, 2.5)
instead of Gamma(2, 1)). With the defaults, E[1/phi^2] and E[1/delta_1^2] are infinite, so
Lambda^2 has infinite variance, and the Geweke chain explores the scale of the loadings
(large |Lambda| <-> large Y <-> large |Lambda|) by a slow random walk: batch-means
variance-inflation factors keep growing past 12,500 iterations, the first 15,000 iterations
of a chain under-visit large loadings (|z| up to ~7 on Lambda statistics, on different
statistics for different seeds), and the same chain run to 100,000 iterations agrees with the
prior (max |z| 2.85 over 66 statistics). With the lighter-tailed ARD prior the inflation
factors level off at ~4 (thinned by 5) within a few hundred iterations. The code paths are the
same (including the delta_h >= 1 truncation, which delta_2 ~ Gamma(3, 1) keeps active).
The default ARD prior is tested in CI by test_geweke_shrinkage.py (step 7 alone, with Lambda
as its data, a chain that mixes at once), and here by an opt-in 100,000-iteration chain of the
whole sampler (MEGALMM_LONG_TESTS=1),
the horseshoe prior on Lambda by an opt-in 600,000-iteration chain (its prior draws: local and
global half-Cauchy scales with their inverse-gamma auxiliaries, delta_1 = 1) and, in CI, by its
negative control.

Statistics. Squares of loadings and data are compared as x / (1 + x) and log x: even with
this prior, raw Lambda^2 and Y^2 are heavy-tailed enough that a 20,000-iteration chain
under-samples their upper tail (seed 35: z = -4.48 on raw Lambda_11^2 after 20,000
iterations, z = +0.23 after 200,000 iterations of the same chain), which would make the test
flaky without detecting anything more.
"""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np
import pytest
import scipy.special as sc

import megalmm_cli.sampler as sampler_mod
from megalmm_cli.model import Priors, build_model
from megalmm_cli.sampler import gibbs_iteration
from megalmm_cli.state import State

from .conftest import numba_threads

N, T, K, DIVISIONS = 8, 3, 2, 5
MC_DRAWS = 50_000         # marginal-conditional draws (vectorised, about a second)
SC_ITERATIONS = 20_000    # successive-conditional iterations
SC_THIN = 5
N_BATCHES = 40            # batch means for the chain's standard errors (500 iterations each)
# ~70 statistics: two-sided p = 6.8e-6 per statistic at |z| = 4.5, family-wise ~5e-4
# under normality (batch-means standard errors are themselves noisy, hence the margin).
Z_MAX = 4.5
NEGATIVE_ITERATIONS = 3_000

PRIORS = Priors(
    tot_eta_shape=5.0 - 1.0, tot_eta_rate=5.0 * 0.5,     # nu = 5, V = 0.5 (default)
    tot_f_shape=20.0 - 1.0, tot_f_rate=20.0 * 0.9,       # nu = 20, V = 0.9 (default)
    lambda_type="ARD", lambda_df=10.0, delta_1=(5.0, 2.5), delta_2=(3.0, 1.0),
    delta_iterations=5, lambda_prop_0=0.1, b2_type="ridge", b2_prop_0=0.1, b2_ridge_prec=1.0,
)


def make_model(seed: int = 20240, priors: Priors = PRIORS, two_effects: bool = False):
    """The tiny model: a random full-rank kinship; the data (no NaN) are replaced later.
    two_effects adds a second effect: 3 independent levels (Z Z'), through the Grid-LMM cache."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((N, 2 * N))
    kinship = a @ a.T / (2 * N)
    values = rng.standard_normal((N, T))
    if two_effects:
        z = np.eye(3)[np.arange(N) % 3]
        kinship = [kinship, z @ z.T]
    ids = [f"i{i}" for i in range(N)]
    traits = [f"t{j}" for j in range(T)]
    return build_model(
        ids, traits, values, kinship, np.zeros((N, 0)), [], np.zeros((N, 0)), K, DIVISIONS,
        priors, max_groups=1, scale_y=False,
    )


# ---------------------------------------------------------------------------------------------
# Draws from the prior and from p(Y | theta)


def truncated_gamma_above_one(shape, rate, rng, size):
    """Gamma(shape, rate) truncated to [1, inf), by inversion of the upper tail."""
    tail = sc.gammaincc(shape, rate)
    u = rng.random(size)
    return np.maximum(1.0, sc.gammainccinv(shape, tail * (1.0 - u)) / rate)


def prior_draws(model, rng, m: int) -> dict:
    """m independent draws of every parameter from the prior (leading axis m), with Y."""
    p = model.priors
    grid = model.grid[:, 0]
    q, s = model.factor_rot.vectors, model.factor_rot.values
    tot_eta_prec = rng.gamma(p.tot_eta_shape, 1.0 / p.tot_eta_rate, size=(m, T))
    resid_h2_index = rng.integers(0, grid.size, size=(m, T))
    f_h2_index = rng.integers(0, grid.size, size=(m, K))
    tot_f_prec = rng.gamma(p.tot_f_shape, 1.0 / p.tot_f_rate, size=(m, K))
    shrinkage = shrinkage_prior(model, rng, m)
    lambda_prec = shrinkage["lambda_prec"]
    lam = rng.standard_normal((m, K, T)) / np.sqrt(tot_eta_prec[:, None, :] * lambda_prec)
    if model.n_effects > 1:
        u_f_rot, f_h2 = effects_prior(model.factor_cache.roots, model.grid[f_h2_index], tot_f_prec, rng)
        e_f = rng.standard_normal((m, N, K)) * np.sqrt((1.0 - f_h2) / tot_f_prec)[:, None, :]
        u_r_rot, _ = effects_prior(model.groups[0].cache.roots, model.grid[resid_h2_index],
                                   tot_eta_prec, rng)
        f = q @ u_f_rot + e_f
        return finish_prior_draw(model, rng, locals())
    # U_F[:, l] ~ N(0, f_h2_l / tot_f_prec_l K), drawn in the eigenbasis K = Q diag(s) Q'
    f_h2 = grid[f_h2_index]
    u_f_rot = (rng.standard_normal((m, N, K)) * np.sqrt(s)[None, :, None]
               * np.sqrt(f_h2 / tot_f_prec)[:, None, :])
    e_f = rng.standard_normal((m, N, K)) * np.sqrt((1.0 - f_h2) / tot_f_prec)[:, None, :]
    f = q @ u_f_rot + e_f
    resid_h2 = grid[resid_h2_index]
    u_r_rot = (rng.standard_normal((m, N, T)) * np.sqrt(s)[None, :, None]
               * np.sqrt(resid_h2 / tot_eta_prec)[:, None, :])
    return finish_prior_draw(model, rng, locals())


def inverse_gamma(shape, scale, rng, size):
    return scale / rng.gamma(shape, 1.0, size=size)


def shrinkage_prior(model, rng, m: int) -> dict:
    """Lambda's prior precision and the variables it is made of, m draws.

    ARD: phi_lj ~ Gamma(df/2, rate df/2), delta_1 ~ Gamma(delta_1), delta_h>1 ~ Gamma(delta_2)
    truncated to [1, inf); lambda_prec = phi * cumprod(delta).
    Horseshoe (gibbs/shrinkage.py): local2_lj | nu ~ IG(1/2, 1/nu), nu ~ IG(1/2, 1) (half-Cauchy
    local scales); global2 | xi ~ IG(1/2, 1/xi), xi ~ IG(1/2, 1/A^2), A = prop_0 / (1 - prop_0)
    / sqrt(n); delta_1 = 1, delta_h>1 ~ Gamma(delta_2) untruncated;
    lambda_prec = cumprod(delta) / (global2 local2)."""
    p = model.priors
    if p.lambda_type == "ARD":
        phi = rng.gamma(p.lambda_df / 2.0, 2.0 / p.lambda_df, size=(m, K, T))
        delta = np.concatenate([
            rng.gamma(p.delta_1[0], 1.0 / p.delta_1[1], size=(m, 1)),
            truncated_gamma_above_one(p.delta_2[0], p.delta_2[1], rng, (m, K - 1)),
        ], axis=1)
        return dict(phi=phi, delta=delta, nu=np.ones((m, K, T)), lambda_global=np.ones((m, 2)),
                    lambda_prec=phi * np.cumprod(delta, axis=1)[:, :, None])
    scale = p.lambda_prop_0 / (1.0 - p.lambda_prop_0) / np.sqrt(N)
    nu = inverse_gamma(0.5, 1.0, rng, (m, K, T))
    local2 = inverse_gamma(0.5, 1.0 / nu, rng, (m, K, T))
    xi = inverse_gamma(0.5, 1.0 / scale**2, rng, m)
    global2 = inverse_gamma(0.5, 1.0 / xi, rng, m)
    delta = np.concatenate([np.ones((m, 1)),
                            rng.gamma(p.delta_2[0], 1.0 / p.delta_2[1], size=(m, K - 1))], axis=1)
    lambda_prec = np.cumprod(delta, axis=1)[:, :, None] / (global2[:, None, None] * local2)
    return dict(phi=local2, delta=delta, nu=nu, lambda_global=np.stack([global2, xi], axis=1),
                lambda_prec=lambda_prec)


def effects_prior(roots, h, tot_prec, rng):
    """Sum over effects of u_e ~ N(0, h_e B_e / tot_prec) in the rotated basis, for a batch:
    roots (E, N, r); h (m, c, E); tot_prec (m, c). Returns ((m, N, c), total h (m, c))."""
    m, c, n_eff = h.shape
    total = np.zeros((m, N, c))
    for e in range(n_eff):
        z = rng.standard_normal((m, roots.shape[2], c)) * np.sqrt(h[:, :, e] / tot_prec)[:, None, :]
        total += roots[e] @ z
    return total, h.sum(axis=2)


def finish_prior_draw(model, rng, v: dict) -> dict:
    """The prior draw's dict (and its Y) from prior_draws' local variables."""
    draw = dict(
        tot_eta_prec=v["tot_eta_prec"], resid_h2_index=v["resid_h2_index"],
        f_h2_index=v["f_h2_index"], tot_f_prec=v["tot_f_prec"],
        lambda_phi=v["shrinkage"]["phi"], lambda_nu=v["shrinkage"]["nu"],
        lambda_global=v["shrinkage"]["lambda_global"], delta=v["shrinkage"]["delta"],
        lambda_prec=v["lambda_prec"], Lambda=v["lam"], U_F_rot=v["u_f_rot"],
        F=v["f"], U_R_rot=v["u_r_rot"],
    )
    draw["Y"] = draw_y(model, draw, rng)
    return draw


def draw_y(model, par: dict, rng) -> np.ndarray:
    """Y | theta = F Lambda + Q U_R* + N(0, (1 - resid_h2) / tot_eta_prec), batched or not."""
    q = model.groups[0].rot.vectors
    resid_h2 = model.grid_total[par["resid_h2_index"]]
    sd = np.sqrt((1.0 - resid_h2) / par["tot_eta_prec"])
    noise = rng.standard_normal(np.shape(par["F"])[:-1] + (T,)) * sd[..., None, :]
    return par["F"] @ par["Lambda"] + q @ par["U_R_rot"] + noise


def state_from_draw(model, draw: dict, rng) -> State:
    """A State holding one prior draw, every field consistent with it."""
    q = model.groups[0].rot.vectors
    y = np.ascontiguousarray(draw["Y"])
    return State(
        iteration=0, rng=rng, pred_rng=np.random.default_rng(0),
        B1=np.zeros((0, T)), Lambda=draw["Lambda"].copy(), tot_eta_prec=draw["tot_eta_prec"].copy(),
        resid_h2_index=draw["resid_h2_index"].astype(np.int64),
        F=draw["F"].copy(), tot_f_prec=draw["tot_f_prec"].copy(),
        f_h2_index=draw["f_h2_index"].astype(np.int64), U_F_rot=draw["U_F_rot"].copy(),
        B2F=np.zeros((0, K)), B2F_prec=np.zeros((0, K)), b2_local2=np.zeros((0, K)),
        b2_local_nu=np.zeros((0, K)), b2_global2=np.ones(K), b2_global_xi=np.ones(K),
        lambda_prec=draw["lambda_prec"].copy(), lambda_phi=draw["lambda_phi"].copy(),
        lambda_nu=draw["lambda_nu"].copy(), delta=draw["delta"].copy(),
        lambda_global=draw["lambda_global"].copy(),
        Y=[y], Y_rot=[np.ascontiguousarray(q.T @ y)], U_R_rot=[draw["U_R_rot"].copy()],
    )


def state_params(state: State) -> dict:
    keys = ("tot_eta_prec", "resid_h2_index", "f_h2_index", "tot_f_prec", "lambda_phi", "delta",
            "lambda_prec", "Lambda", "U_F_rot", "F", "lambda_nu", "lambda_global")
    par = {key: np.array(getattr(state, key), copy=True) for key in keys}
    par["U_R_rot"] = state.U_R_rot[0].copy()
    par["Y"] = state.Y[0].copy()
    return par


# ---------------------------------------------------------------------------------------------
# Statistics and the comparison


def bounded(x):
    """x / (1 + x): the squares of loadings and data, compared without their heavy tails."""
    return x / (1.0 + x)


def statistics(model, par: dict) -> tuple[list[str], np.ndarray]:
    """Named statistics g(theta, Y) of a batch of draws (leading axis m).

    Returns (names, (m, s)).
    """
    q = model.groups[0].rot.vectors
    grid = model.grid_total
    tep, tfp = par["tot_eta_prec"], par["tot_f_prec"]
    rh2, fh2 = grid[par["resid_h2_index"]], grid[par["f_h2_index"]]
    lam, f, y = par["Lambda"], par["F"], par["Y"]
    u_r = q @ par["U_R_rot"]
    u_f = model.factor_rot.vectors @ par["U_F_rot"]
    fit = f @ lam
    cols: dict[str, np.ndarray] = {}

    def add(name, values):  # values: (m, ...) -> one statistic per trailing element
        values = np.asarray(values).reshape(values.shape[0], -1)
        for c in range(values.shape[1]):
            cols[f"{name}[{c}]" if values.shape[1] > 1 else name] = values[:, c]

    def corr(a, b):  # per column, over rows; 0 when one side is identically 0 (h2 = 0)
        num = (a * b).sum(axis=1)
        den = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
        return np.divide(num, den, out=np.zeros_like(num), where=den > 0)

    add("tot_eta_prec", tep)
    add("tot_eta_prec^2", tep ** 2)
    if model.n_effects > 1:  # each effect's share, and the effects' product
        share_r, share_f = model.grid[par["resid_h2_index"]], model.grid[par["f_h2_index"]]
        for e in range(model.n_effects):
            add(f"resid_h2_{e + 1}", share_r[..., e])
            add(f"f_h2_{e + 1}", share_f[..., e])
        add("resid_h2_1 resid_h2_2", share_r[..., 0] * share_r[..., 1])
    add("resid_h2", rh2)
    add("resid_h2^2", rh2 ** 2)
    add("f_h2", fh2)
    add("f_h2^2", fh2 ** 2)
    add("tot_f_prec", tfp)
    add("tot_f_prec^2", tfp ** 2)
    if model.priors.lambda_type == "ARD":
        add("delta_1", par["delta"][:, 0])
        add("delta_1^2", par["delta"][:, 0] ** 2)
        add("mean_j phi", par["lambda_phi"].mean(axis=2))
    else:  # horseshoe: delta_1 = 1; half-Cauchy scales, compared bounded and on the log scale
        add("b(global2 / A^2)", bounded(par["lambda_global"][:, 0] / horseshoe_scale(model) ** 2))
        add("log global2", np.log(par["lambda_global"][:, 0]))
        add("log xi", np.log(par["lambda_global"][:, 1]))
        add("mean_j b(local2)", bounded(par["lambda_phi"]).mean(axis=2))
        add("mean_j log nu", np.log(par["lambda_nu"]).mean(axis=2))
    add("delta_2", par["delta"][:, 1])
    add("mean_j log phi", np.log(par["lambda_phi"]).mean(axis=2))
    # Lambda[l * T + j] is Lambda_lj
    add("b(Lambda^2)", bounded(lam ** 2))
    add("log Lambda^2", np.log(lam ** 2))
    chi2_1 = lam ** 2 * tep[:, None, :] * par["lambda_prec"]  # chi-square(1) under the joint
    add("Lambda^2 tot_eta_prec lambda_prec", chi2_1)
    add("mean_i F^2", (f ** 2).mean(axis=1))
    add("mean_i F^4", (f ** 4).mean(axis=1))
    add("mean_i b(Y^2)", bounded(y ** 2).mean(axis=1))
    add("mean_i log Y^2", np.log(y ** 2).mean(axis=1))
    # standardised residuals: chi2_n / n under the joint
    add("resid chi2/n", ((y - fit - u_r) ** 2).mean(axis=1) * tep / (1.0 - rh2))
    add("factor resid chi2/n", ((f - u_f) ** 2).mean(axis=1) * tfp / (1.0 - fh2))
    # dependence between data and parameters, bounded
    add("corr(Y, F Lambda)", corr(y, fit))
    add("corr(Y - F Lambda, U_R)", corr(y - fit, u_r))
    add("corr(F, U_F)", corr(f, u_f))
    names = list(cols)
    return names, np.column_stack([cols[name] for name in names])


def horseshoe_scale(model) -> float:
    p = model.priors
    return p.lambda_prop_0 / (1.0 - p.lambda_prop_0) / np.sqrt(N)


def marginal_conditional(model, m: int, seed: int) -> tuple[list[str], np.ndarray]:
    return statistics(model, prior_draws(model, np.random.default_rng(seed), m))


def successive_conditional(model, iterations: int, thin: int, seed: int, step=gibbs_iteration):
    """The Geweke chain: step(model, state) for theta | Y, then a new Y | theta.

    Returns (names, (iterations // thin, s)) statistics of the thinned chain.
    """
    rng = np.random.default_rng(seed)
    start = {key: value[0] for key, value in prior_draws(model, rng, 1).items()}
    state = state_from_draw(model, start, rng)
    q = model.groups[0].rot.vectors
    kept = []
    for it in range(iterations):
        step(model, state)
        y = draw_y(model, dict(F=state.F, Lambda=state.Lambda, U_R_rot=state.U_R_rot[0],
                               resid_h2_index=state.resid_h2_index,
                               tot_eta_prec=state.tot_eta_prec), rng)
        state.Y[0] = np.ascontiguousarray(y)
        state.Y_rot[0] = np.ascontiguousarray(q.T @ y)
        if (it + 1) % thin == 0:
            kept.append(state_params(state))
    stacked = {key: np.stack([par[key] for par in kept]) for key in kept[0]}
    return statistics(model, stacked)


def batch_means_se(x: np.ndarray, n_batches: int) -> np.ndarray:
    """Standard error of the mean of each column of an autocorrelated series x: (m, s)."""
    m = x.shape[0] // n_batches * n_batches
    batches = x[:m].reshape(n_batches, -1, x.shape[1]).mean(axis=1)
    return batches.std(axis=0, ddof=1) / np.sqrt(n_batches)


def geweke_z(mc: np.ndarray, chain: np.ndarray, n_batches: int = N_BATCHES) -> np.ndarray:
    """z of (chain mean - independent-draws mean) per statistic."""
    se_mc = mc.std(axis=0, ddof=1) / np.sqrt(mc.shape[0])
    se_chain = batch_means_se(chain, n_batches)
    return (chain.mean(axis=0) - mc.mean(axis=0)) / np.sqrt(se_mc ** 2 + se_chain ** 2)


def geweke_chain_z(model, mc, iterations: int, seed: int, label: str, top=None) -> np.ndarray:
    """Run a Geweke chain on one numba thread and print its z against the independent draws."""
    names, _ = mc
    start = time.perf_counter()
    with numba_threads(1):
        names_sc, chain = successive_conditional(model, iterations, SC_THIN, seed=seed)
    assert names == names_sc
    z = geweke_z(mc[1], chain)
    print(f"\n{label}: {iterations} iterations in {time.perf_counter() - start:.1f} s; "
          f"{len(names)} statistics, max |z| = {np.abs(z).max():.2f}\n{report(names, z, top)}")
    return z


def report(names, z, top: int | None = None) -> str:
    order = np.argsort(-np.abs(z))[:top]
    return "\n".join(f"{names[i]:>36s}: z = {z[i]:+.2f}" for i in order)


# ---------------------------------------------------------------------------------------------
# Tests


@pytest.fixture(scope="module")
def model():
    return make_model()


@pytest.fixture(scope="module")
def mc_stats(model):
    return marginal_conditional(model, MC_DRAWS, seed=1)


def test_prior_draws_match_their_definition(model):
    """The marginal-conditional side itself: moments known in closed form."""
    names, mc = marginal_conditional(model, MC_DRAWS, seed=3)
    mean = dict(zip(names, mc.mean(axis=0)))
    p = model.priors
    se = 5.0 / np.sqrt(MC_DRAWS)
    assert abs(mean["tot_eta_prec[0]"] - p.tot_eta_shape / p.tot_eta_rate) < 3 * se
    assert abs(mean["resid_h2[1]"] - model.grid[:, 0].mean()) < se
    assert abs(mean["delta_1"] - p.delta_1[0] / p.delta_1[1]) < 3 * se
    shape2, rate2 = p.delta_2  # E[X | X >= 1] for X ~ Gamma(shape2, rate2)
    truncated_mean = shape2 / rate2 * sc.gammaincc(shape2 + 1, rate2) / sc.gammaincc(shape2, rate2)
    assert abs(mean["delta_2"] - truncated_mean) < 3 * se
    assert abs(mean["Lambda^2 tot_eta_prec lambda_prec[4]"] - 1.0) < 5 * se
    assert abs(mean["resid chi2/n[2]"] - 1.0) < 2 * se
    assert abs(mean["factor resid chi2/n[1]"] - 1.0) < 2 * se


@pytest.mark.slow
def test_geweke_joint_distribution(model, mc_stats):
    names, _ = mc_stats
    z = geweke_chain_z(model, mc_stats, SC_ITERATIONS, seed=2, label="Geweke chain")
    assert np.all(np.isfinite(z))
    assert np.max(np.abs(z)) < Z_MAX, report(names, z, 15)


@pytest.mark.slow
def test_geweke_negative_control(model, mc_stats, monkeypatch):
    """A wrong tot_eta_prec / tot_f_prec conditional (Gamma shape + 2) must be flagged."""
    names, _ = mc_stats
    original = sampler_mod.gamma_shape
    monkeypatch.setattr(sampler_mod, "gamma_shape", lambda *args: original(*args) + 2.0)
    z = geweke_chain_z(model, mc_stats, NEGATIVE_ITERATIONS, seed=4, label="negative control", top=10)
    flagged = {names[i] for i in np.flatnonzero(np.abs(z) >= Z_MAX)}
    expected = {f"tot_eta_prec[{j}]" for j in range(T)}
    assert expected <= flagged, report(names, z, 15)
    assert all(z[names.index(f"tot_eta_prec[{j}]")] > 0 for j in range(T))  # precision too high



@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("MEGALMM_LONG_TESTS") != "1",
                    reason="default ARD prior mixes slowly in a Geweke chain: 100,000 iterations "
                           "(1-5 min); set MEGALMM_LONG_TESTS=1 to run")
def test_geweke_joint_distribution_default_ard_prior():
    """The same test with the package's default ARD prior (df = 3, delta_1 ~ Gamma(2, 1))."""
    default = make_model(priors=dataclasses.replace(PRIORS, lambda_df=3.0, delta_1=(2.0, 1.0)))
    mc = marginal_conditional(default, 4 * MC_DRAWS, seed=1)
    names = mc[0]
    z = geweke_chain_z(default, mc, 100_000, seed=8, label="default ARD prior", top=10)
    assert np.max(np.abs(z)) < Z_MAX, report(names, z, 15)


# ---------------------------------------------------------------------------------------------
# Two random effects: the general (Grid-LMM cache) path of steps 2-5


@pytest.fixture(scope="module")
def two_effect_model():
    return make_model(two_effects=True)


@pytest.fixture(scope="module")
def two_effect_mc(two_effect_model):
    return marginal_conditional(two_effect_model, MC_DRAWS, seed=1)


@pytest.mark.slow
def test_geweke_joint_distribution_two_effects(two_effect_model, two_effect_mc):
    names, _ = two_effect_mc
    assert two_effect_model.groups[0].cache is not None and "resid_h2_2[0]" in names
    z = geweke_chain_z(two_effect_model, two_effect_mc, SC_ITERATIONS, seed=2, label="two effects",
                       top=10)
    assert np.all(np.isfinite(z))
    assert np.max(np.abs(z)) < Z_MAX, report(names, z, 15)


@pytest.mark.slow
def test_geweke_two_effects_negative_control(two_effect_model, two_effect_mc, monkeypatch):
    """A grid log-likelihood without the log|A_s| term of each slice must be flagged."""
    names, _ = two_effect_mc
    from megalmm_cli.gibbs import variance

    def wrong(resid, cache, tot_prec, log_prior, white=None):
        out = variance.general_loglik(resid, cache, tot_prec, log_prior, white)
        logdet_a = 2.0 * (0.5 * np.log(cache.weights).sum(axis=1) - cache.half_logdet)
        return out + 0.5 * logdet_a[:, None]

    monkeypatch.setattr(sampler_mod, "general_loglik", wrong)
    z = geweke_chain_z(two_effect_model, two_effect_mc, 3 * NEGATIVE_ITERATIONS, seed=4,
                       label="two effects, negative control", top=10)
    flagged = {names[i] for i in np.flatnonzero(np.abs(z) >= Z_MAX)}
    assert any(name.startswith(("resid_h2", "f_h2")) for name in flagged), report(names, z, 15)


@pytest.mark.slow
def test_geweke_negative_control_collapsed_scores(model, mc_stats, monkeypatch):
    """F drawn with U_F integrated out (one group, one effect: the path of this model) but with
    its prior precision doubled must be flagged."""
    names, _ = mc_stats
    assert sampler_mod.scores_collapsed(model)
    original = sampler_mod.sample_rotated_scores

    def wrong(rhs, precision, prior_prec, normals):
        return original(rhs, precision, 2.0 * prior_prec, normals)

    monkeypatch.setattr(sampler_mod, "sample_rotated_scores", wrong)
    z = geweke_chain_z(model, mc_stats, NEGATIVE_ITERATIONS, seed=4, label="collapsed scores, negative control", top=10)
    assert np.max(np.abs(z)) >= Z_MAX, report(names, z, 15)


@pytest.mark.slow
def test_geweke_negative_control_rotation(model, mc_stats, monkeypatch):
    """The rotation move of the factor pair without Lambda's prior (only F's) must be flagged."""
    names, _ = mc_stats
    original = sampler_mod.sample_pair_rotations

    def wrong(blocks, pairs, rng):
        return original(blocks[:1], pairs, rng)

    monkeypatch.setattr(sampler_mod, "sample_pair_rotations", wrong)
    z = geweke_chain_z(model, mc_stats, 3 * NEGATIVE_ITERATIONS, seed=4,
                       label="rotation, negative control", top=10)
    assert np.max(np.abs(z)) >= Z_MAX, report(names, z, 15)


# ---------------------------------------------------------------------------------------------
# The horseshoe prior on Lambda (half-Cauchy local and global scales, Makalic-Schmidt
# auxiliaries, column-ordered delta): its own updates inside the whole sampler


@pytest.fixture(scope="module")
def horseshoe_model():
    return make_model(priors=dataclasses.replace(PRIORS, lambda_type="horseshoe"))


@pytest.fixture(scope="module")
def horseshoe_mc(horseshoe_model):
    return marginal_conditional(horseshoe_model, MC_DRAWS, seed=1)


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("MEGALMM_LONG_TESTS") != "1",
                    reason="the horseshoe's half-Cauchy scales mix slowly in a Geweke chain: "
                           "600,000 iterations (about 8 min); set MEGALMM_LONG_TESTS=1 to run")
def test_geweke_joint_distribution_horseshoe(horseshoe_model):
    """The whole sampler with the horseshoe on Lambda. Its Cauchy-tailed loadings are explored
    slowly (large |Lambda| <-> large Y, as with the default ARD prior, only heavier): chains
    of 20,000 iterations under-visit large loadings (max |z| 3.8-8.6 over four seeds, always
    on Lambda^2 and Y^2 statistics, always negative). Seed 7 gave 5.8 at 100,000 iterations
    and 3.86 at 250,000; after changes that moved only the chain's rounding (2026-12-03) the
    same seed gave 5.66 at 250,000 and 3.92 at 600,000, and seed 11 gave 4.20 at 250,000,
    each time on the same statistics with the same sign. The bias shrinking with the length
    is slow mixing, not a wrong conditional, which the negative control below (run in CI)
    shows would be flagged at once."""
    mc = marginal_conditional(horseshoe_model, 4 * MC_DRAWS, seed=1)
    names = mc[0]
    assert "log global2" in names and "delta_1" not in names
    z = geweke_chain_z(horseshoe_model, mc, 600_000, seed=7, label="horseshoe", top=10)
    assert np.all(np.isfinite(z))
    assert np.max(np.abs(z)) < Z_MAX, report(names, z, 15)


@pytest.mark.slow
def test_geweke_horseshoe_negative_control(horseshoe_model, horseshoe_mc, monkeypatch):
    """Horseshoe scales updated as if every loading were sqrt(2) times larger must be flagged."""
    names, _ = horseshoe_mc
    original = sampler_mod.sample_horseshoe_lambda

    def wrong(lam, tot_eta_prec, *args):
        return original(lam, 2.0 * tot_eta_prec, *args)

    monkeypatch.setattr(sampler_mod, "sample_horseshoe_lambda", wrong)
    z = geweke_chain_z(horseshoe_model, horseshoe_mc, NEGATIVE_ITERATIONS, seed=4,
                       label="horseshoe, negative control", top=10)
    assert np.max(np.abs(z)) >= Z_MAX, report(names, z, 15)
