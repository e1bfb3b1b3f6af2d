"""The prior and design options run and still fit: horseshoe on Lambda, factor covariates X2,
more than 64 coefficients per trait (blocked update)."""

import dataclasses

import numpy as np

from megalmm_cli.chain import Plan, run_chain
from megalmm_cli.model import build_model
from megalmm_cli.posterior import covariances
from megalmm_cli.simulate import simulate_data
from megalmm_cli.storage import MemoryChain

from .conftest import DEFAULT_PRIORS


def fit(sim, k, priors=DEFAULT_PRIORS, x2=None, iterations=(150, 150)):
    values = np.where(sim.observed, sim.Y, np.nan)
    x2 = np.zeros((sim.n, 0)) if x2 is None else x2
    model = build_model(sim.ids, sim.traits, values, sim.kinship, sim.X1, ["Intercept", "pop", "x"],
                        x2, k, 10, priors, max_groups=1)
    store = MemoryChain()
    run_chain(model, store, Plan(iterations[0], iterations[1], 2, 50, 1000),
              ("Lambda", "f_h2", "resid_h2", "tot_eta_prec", "B2F"), ("U",), seed=2, chain=1)
    return model, store


def g_correlation(sim, store):
    s = store.samples
    g = np.mean([covariances(s["Lambda"][i], s["f_h2"][i], s["resid_h2"][i], s["tot_eta_prec"][i])["G"]
                 for i in range(s["Lambda"].shape[0])], axis=0)
    upper = np.triu_indices(sim.t, 1)
    return np.corrcoef(g[upper], sim.G[upper])[0, 1]


SIM = simulate_data(150, 40, 4, missing=0.1, seed=8, n_markers=400)


def test_horseshoe_prior_fits():
    priors = dataclasses.replace(DEFAULT_PRIORS, lambda_type="horseshoe")
    _, store = fit(SIM, 8, priors)
    assert np.all(np.isfinite(store.samples["Lambda"]))
    assert g_correlation(SIM, store) > 0.7


def test_factor_covariates_with_shrinkage_fit():
    x2 = np.random.default_rng(0).standard_normal((SIM.n, 3))
    for b2_type in ("horseshoe", "ridge"):
        priors = dataclasses.replace(DEFAULT_PRIORS, b2_type=b2_type)
        _, store = fit(SIM, 8, priors, x2=x2)
        b2 = store.samples["B2F"]
        assert b2.shape[1:] == (3, 8) and np.all(np.isfinite(b2))
        if b2_type == "horseshoe":
            # X2 is pure noise: on the factors that carry the traits its effects shrink to ~0
            size = (store.samples["Lambda"] ** 2).mean(axis=0).sum(axis=1)
            loaded = np.argsort(-size)[:4]
            assert np.abs(b2.mean(axis=0)[:, loaded]).max() < 0.3
        assert g_correlation(SIM, store) > 0.7


def test_blocked_update_with_many_factors_fits():
    _, store = fit(SIM, 70)  # 3 fixed effects + 70 factors > 64: blocked coefficient draws
    assert np.all(np.isfinite(store.samples["Lambda"]))
    assert g_correlation(SIM, store) > 0.7
