"""Joint-distribution (Geweke) test of Lambda's shrinkage step under the package's default
ARD prior, in CI.

The whole-sampler Geweke chains (test_geweke.py) use a lighter-tailed ARD prior: under the
default one (df = 3, delta_1 ~ Gamma(2, 1)) Lambda^2 has infinite variance and the chain
explores the loadings' scale through the data (large |Lambda| <-> large Y) so slowly that it
needs 100,000 iterations (opt-in there). Here the data are Lambda itself: the chain alternates
Lambda ~ N(0, 1 / (tot_eta_prec lambda_prec)) with the sampler's own step 7
(`sampler.sample_shrinkage`: phi | Lambda, delta, then the package's 100 sweeps of delta |
phi, with delta_h >= 1 for h > 1). Its stationary law is the prior p(Lambda, phi, delta) when
and only when step 7 leaves p(phi, delta | Lambda) invariant, and with Lambda drawn fresh at
every iteration it mixes in a few iterations, heavy tails and all.

Statistics: log and bounded forms of phi, delta and Lambda^2, and the chi-square(1)
statistic tot_eta_prec lambda_prec Lambda^2 (each finite in variance under the default prior).
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.special as sc

import megalmm_cli.gibbs.shrinkage as shrinkage_mod
from megalmm_cli.config_schema import LambdaPrior
from megalmm_cli.model import Priors
from megalmm_cli.sampler import sample_shrinkage

from .test_geweke import Z_MAX, bounded, geweke_z, report, truncated_gamma_above_one

K, T = 4, 5
MC_DRAWS = 200_000
ITERATIONS = 40_000
NEGATIVE_ITERATIONS = 10_000
DEFAULT = LambdaPrior()
PRIORS = Priors(
    tot_eta_shape=4.0, tot_eta_rate=2.5, tot_f_shape=19.0, tot_f_rate=18.0,
    lambda_type="ARD", lambda_df=DEFAULT.df,
    delta_1=(DEFAULT.delta_1.shape, DEFAULT.delta_1.rate),
    delta_2=(DEFAULT.delta_2.shape, DEFAULT.delta_2.rate),
    delta_iterations=DEFAULT.delta_iterations_factor, lambda_prop_0=DEFAULT.prop_0,
    b2_type="ridge", b2_prop_0=0.1, b2_ridge_prec=1.0,
)
# the traits' total precisions: fixed, unequal (Lambda's prior scale is relative to them)
TOT_ETA_PREC = np.array([0.4, 1.0, 2.5, 0.8, 6.0])


def test_the_prior_is_the_package_default():
    assert (PRIORS.lambda_df, PRIORS.delta_1, PRIORS.delta_2) == (3.0, (2.0, 1.0), (3.0, 1.0))
    assert PRIORS.delta_iterations == 100


def prior_draws(rng, m: int) -> dict:
    """m independent draws of (phi, delta, Lambda) from the ARD prior."""
    p = PRIORS
    phi = rng.gamma(p.lambda_df / 2.0, 2.0 / p.lambda_df, size=(m, K, T))
    delta = np.concatenate([rng.gamma(p.delta_1[0], 1.0 / p.delta_1[1], size=(m, 1)),
                            truncated_gamma_above_one(p.delta_2[0], p.delta_2[1], rng, (m, K - 1))],
                           axis=1)
    lambda_prec = phi * np.cumprod(delta, axis=1)[:, :, None]
    lam = rng.standard_normal((m, K, T)) / np.sqrt(TOT_ETA_PREC * lambda_prec)
    return dict(phi=phi, delta=delta, lambda_prec=lambda_prec, Lambda=lam)


def statistics(par: dict) -> tuple[list[str], np.ndarray]:
    """Named statistics of a batch of draws (leading axis m): (names, (m, s))."""
    cols: dict[str, np.ndarray] = {}

    def add(name, values):
        values = np.asarray(values).reshape(values.shape[0], -1)
        for c in range(values.shape[1]):
            cols[f"{name}[{c}]"] = values[:, c]

    lam2 = par["Lambda"] ** 2
    add("log delta", np.log(par["delta"]))
    add("b(delta)", bounded(par["delta"]))
    add("log phi", np.log(par["phi"]))
    add("b(phi)", bounded(par["phi"]))
    add("log Lambda^2", np.log(lam2))
    add("b(Lambda^2)", bounded(lam2))
    add("b(Lambda^2 tot_eta_prec lambda_prec)", bounded(lam2 * TOT_ETA_PREC * par["lambda_prec"]))
    add("Lambda^2 tot_eta_prec lambda_prec", lam2 * TOT_ETA_PREC * par["lambda_prec"])
    add("mean_j log phi", np.log(par["phi"]).mean(axis=2))
    names = list(cols)
    return names, np.column_stack([cols[name] for name in names])


def geweke_chain(iterations: int, seed: int) -> tuple[list[str], np.ndarray]:
    """Alternate Lambda | phi, delta (exact) with the sampler's step 7; every iteration kept."""
    rng = np.random.default_rng(seed)
    start = {key: value[0] for key, value in prior_draws(rng, 1).items()}
    model = SimpleNamespace(priors=PRIORS, n=20)
    state = SimpleNamespace(rng=rng, Lambda=start["Lambda"], tot_eta_prec=TOT_ETA_PREC.copy(),
                            delta=start["delta"], lambda_phi=start["phi"],
                            lambda_prec=start["lambda_prec"], B2F=np.zeros((0, K)))
    kept = {key: np.empty((iterations,) + np.shape(start[key])) for key in start}
    for it in range(iterations):
        sample_shrinkage(model, state)
        state.Lambda = rng.standard_normal((K, T)) / np.sqrt(TOT_ETA_PREC * state.lambda_prec)
        for key, attr in (("phi", "lambda_phi"), ("delta", "delta"),
                          ("lambda_prec", "lambda_prec"), ("Lambda", "Lambda")):
            kept[key][it] = getattr(state, attr)
    return statistics(kept)


@pytest.fixture(scope="module")
def mc_stats():
    return statistics(prior_draws(np.random.default_rng(1), MC_DRAWS))


def chain_z(mc_stats, iterations: int, seed: int, label: str) -> np.ndarray:
    names, mc = mc_stats
    start = time.perf_counter()
    names_sc, chain = geweke_chain(iterations, seed)
    assert names == names_sc
    z = geweke_z(mc, chain)
    print(f"\n{label}: {iterations} iterations in {time.perf_counter() - start:.1f} s; "
          f"{len(names)} statistics, max |z| = {np.abs(z).max():.2f}\n{report(names, z, 8)}")
    return z


def test_prior_draws_match_their_definition(mc_stats):
    """The independent side: the chi-square(1) statistic has mean 1 (variance 2); log phi
    and log delta_1 have the mean and variance of a log-gamma variable (digamma, trigamma)."""
    names, mc = mc_stats
    mean = dict(zip(names, mc.mean(axis=0)))
    se = 1.0 / np.sqrt(MC_DRAWS)
    for i in range(K * T):
        assert abs(mean[f"Lambda^2 tot_eta_prec lambda_prec[{i}]"] - 1.0) < 5 * np.sqrt(2) * se
    half_df = PRIORS.lambda_df / 2.0  # phi ~ Gamma(df/2, rate df/2)
    expected = sc.digamma(half_df) - np.log(half_df)
    for i in range(K * T):
        assert abs(mean[f"log phi[{i}]"] - expected) < 5 * np.sqrt(sc.polygamma(1, half_df)) * se
    shape, rate = PRIORS.delta_1
    expected = sc.digamma(shape) - np.log(rate)
    assert abs(mean["log delta[0]"] - expected) < 5 * np.sqrt(sc.polygamma(1, shape)) * se


@pytest.mark.slow
def test_geweke_shrinkage_default_ard_prior(mc_stats):
    names, _ = mc_stats
    z = chain_z(mc_stats, ITERATIONS, seed=2, label="default ARD prior, step 7")
    assert np.all(np.isfinite(z))
    assert np.max(np.abs(z)) < Z_MAX, report(names, z, 15)


@pytest.mark.slow
def test_geweke_shrinkage_negative_control_phi(mc_stats, monkeypatch):
    """phi | Lambda, delta drawn with its Gamma shape 0.1 too large must be flagged."""
    names, _ = mc_stats
    original = shrinkage_mod.standard_gammas
    monkeypatch.setattr(shrinkage_mod, "standard_gammas",
                        lambda rng, shape, size: original(rng, shape + 0.1, size))
    z = chain_z(mc_stats, NEGATIVE_ITERATIONS, seed=4, label="negative control, phi")
    assert np.max(np.abs(z)) >= Z_MAX, report(names, z, 15)


@pytest.mark.slow
def test_geweke_shrinkage_negative_control_delta(mc_stats, monkeypatch):
    """The sweeps over delta with the later deltas' prior rate 10% too large must be flagged."""
    names, _ = mc_stats
    original = shrinkage_mod._delta_sweeps

    def wrong(delta, half_ss, shapes, rates0, std_gammas, uniforms):
        rates0 = rates0.copy()
        rates0[1:] *= 1.1
        original(delta, half_ss, shapes, rates0, std_gammas, uniforms)

    monkeypatch.setattr(shrinkage_mod, "_delta_sweeps", wrong)
    z = chain_z(mc_stats, NEGATIVE_ITERATIONS, seed=4, label="negative control, delta")
    flagged = [names[i] for i in np.flatnonzero(np.abs(z) >= Z_MAX)]
    assert any(name.startswith(("log delta", "b(delta)")) for name in flagged), report(names, z, 15)
