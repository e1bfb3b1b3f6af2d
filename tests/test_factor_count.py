"""The fixed-k diagnostic: the share of the genetic and residual variance carried by the last
factors (issue: `model.factors`, whether k looks large enough)."""

import numpy as np
import pandas as pd

from megalmm_cli.chain import Plan, run_chain
from megalmm_cli.covariance import Draws, ranked_factor_shares, tail_size
from megalmm_cli.report import factors_verdict
from megalmm_cli.simulate import simulate_data
from megalmm_cli.storage import MemoryChain
from megalmm_cli.summarize import ChainSummary, factor_table

from .conftest import model_from_simulation


def test_ranked_shares_equal_a_direct_computation():
    rng = np.random.default_rng(2)
    s, k, t = 5, 4, 6
    d = Draws.from_arrays(rng.normal(size=(s, k, t)) * rng.uniform(0.1, 2, size=(1, k, 1)),
                          rng.uniform(size=(s, k)), rng.uniform(size=(s, t)),
                          rng.uniform(1, 2, size=(s, t)))
    g_share, r_share = ranked_factor_shares(d)
    for i in range(s):
        size = [sum(d.lam[i, f, j] ** 2 for j in range(t)) for f in range(k)]
        order = sorted(range(k), key=lambda f: -size[f])
        g_total = sum(size[f] * d.f_h2[i, f] for f in range(k)) + sum(d.resid_h2[i] / d.tot_eta_prec[i])
        r_total = (sum(size[f] * (1 - d.f_h2[i, f]) for f in range(k))
                   + sum((1 - d.resid_h2[i]) / d.tot_eta_prec[i]))
        for rank, f in enumerate(order):
            assert np.isclose(g_share[i, rank], size[f] * d.f_h2[i, f] / g_total, rtol=1e-12)
            assert np.isclose(r_share[i, rank], size[f] * (1 - d.f_h2[i, f]) / r_total, rtol=1e-12)
    assert tail_size(1) == 1 and tail_size(10) == 1 and tail_size(11) == 2 and tail_size(166) == 17


def _table(g, r):
    g, r = np.asarray(g, float), np.asarray(r, float)
    summary = ChainSummary(factor_g=g, factor_r=r)
    return factor_table([summary], 1)


def test_verdict_reads_the_last_tenth_of_the_factors():
    table = _table([0.5, 0.2, 0.05, 0.004], [0.3, 0.1, 0.05, 0.002])
    np.testing.assert_allclose(table.genetic_share_from_here, [0.754, 0.254, 0.054, 0.004])
    ok, sentence = factors_verdict(table)
    assert ok and "k looks large enough" in sentence and "0.4% of the genetic" in sentence
    ok, sentence = factors_verdict(_table([0.5, 0.2, 0.05, 0.03], [0.3, 0.1, 0.05, 0.002]))
    assert not ok and "k may be too small" in sentence and "model.factors" in sentence
    assert "(for example 8)" in sentence
    ok, _ = factors_verdict(_table([0.5] + [0.01] * 10 + [0.004, 0.004], [0.3] * 13))
    assert not ok  # residual variance in the tail counts too


def _fitted_table(sim, k) -> pd.DataFrame:
    model = model_from_simulation(sim, k=k, max_groups=1)
    store = MemoryChain()
    run_chain(model, store, Plan(burn_in=300, samples=200, thin=2, reorder_every=20,
                                 checkpoint_every=500),
              ("Lambda", "f_h2", "resid_h2", "tot_eta_prec"), (), seed=4, chain=1)
    d = Draws.from_arrays(*(store.samples[n] for n in ("Lambda", "f_h2", "resid_h2", "tot_eta_prec")))
    g_share, r_share = ranked_factor_shares(d)
    return factor_table([ChainSummary(factor_g=g_share.sum(axis=0), factor_r=r_share.sum(axis=0))],
                        len(g_share))


def test_diagnostic_flags_too_few_factors_and_passes_enough():
    """Data with 6 strong factors: with k = 3 every factor carries a large share and the
    verdict says k may be too small; with k = 14 the shrinkage prior empties the last ones."""
    sim = simulate_data(150, 30, 6, missing=0.0, seed=11, n_markers=300)
    ok, sentence = factors_verdict(_fitted_table(sim, 3))
    assert not ok, sentence
    enough = _fitted_table(sim, 14)
    ok, sentence = factors_verdict(enough)
    assert ok, sentence
    assert enough.genetic_share_from_here.iloc[-2] < 0.01
