"""`model.factors: auto`: the number of factors chosen during burn-in (factor_count.py).

The adaptation itself is checked step by step (the shares it decides on, what dropping and
adding do to every factor-indexed parameter, the prior of an added factor); then on simulated
data with 5, 15 (and, opt-in, 40) true factors from a small and a large start, the final k and
the accuracy against fixed k; then a CLI chain killed during adaptation, which must end equal
byte for byte to an uninterrupted one.
"""

import os
import signal
from copy import deepcopy
from dataclasses import fields

import numpy as np
import pytest
import yaml

from megalmm_cli.chain import Plan, chain_generators, run_chain
from megalmm_cli.config import load_config
from megalmm_cli.config_schema import FactorAdaptation
from megalmm_cli.errors import UserError
from megalmm_cli.factor_count import (SPARE, AdaptationRule, add_factors, adapt_factors,
                                      drop_factors, factor_range, factor_shares)
from megalmm_cli.posterior import param_shape
from megalmm_cli.sampler import gibbs_iteration
from megalmm_cli.simulate import simulate_data, write_simulation
from megalmm_cli.state import initial_state
from megalmm_cli.storage import ChainFile, MemoryChain

from .conftest import DEFAULT_PRIORS, finish, model_from_simulation
from .factor_fit import auto, fit
from .test_crash import assert_same_datasets

LONG = bool(os.environ.get("MEGALMM_LONG_TESTS"))

# (k,)- and (k, .)-shaped parameters: the factor axis of each
FACTOR_AXIS = {"Lambda": 0, "lambda_phi": 0, "lambda_nu": 0, "lambda_prec": 0, "delta": 0,
               "tot_f_prec": 0, "f_h2_index": 0, "b2_global2": 0, "b2_global_xi": 0,
               "factor_share": 0, "F": 1, "U_F_rot": 1, "B2F": 1, "B2F_prec": 1,
               "b2_local2": 1, "b2_local_nu": 1}


def _state(model, seed=1):
    rng, pred = chain_generators(seed, 1)
    state = initial_state(model, rng, pred)
    for _ in range(3):
        gibbs_iteration(model, state)
    return state


def _assert_factor_shapes(state, k):
    for name, axis in FACTOR_AXIS.items():
        assert getattr(state, name).shape[axis] == k, name
    others = {f.name for f in fields(state)} - set(FACTOR_AXIS)
    assert others == {"iteration", "rng", "pred_rng", "B1", "tot_eta_prec", "resid_h2_index",
                      "lambda_global", "Y", "Y_rot", "U_R_rot", "factor_path"}


def test_config_forms_of_factors(tmp_path):
    sim_dir = tmp_path / "sim"
    write_simulation(simulate_data(30, 5, 2, seed=1, n_markers=100), sim_dir)
    raw = yaml.safe_load((sim_dir / "config.yaml").read_text())

    def load(value):
        raw["model"]["factors"] = value
        path = sim_dir / "c.yaml"
        path.write_text(yaml.safe_dump(raw))
        return load_config(path).model.factors

    assert load(7) == 7
    assert load("auto") == FactorAdaptation()
    assert load({"start": 3, "max": 5}) == FactorAdaptation(3, 5)
    assert load({"epsilon": 0.01}) == FactorAdaptation(epsilon=0.01)
    assert factor_range(FactorAdaptation(), 5) == (5, 5)
    assert factor_range(FactorAdaptation(), 300) == (20, 200)
    assert factor_range(FactorAdaptation(start=4), 300) == (4, 40)
    assert factor_range(FactorAdaptation(max=5), 300) == (5, 5)  # max alone bounds the start
    for bad, words in [("many", "model.factors: must be an integer >= 1, `auto`, or a mapping"),
                       ({"start": 5, "max": 3}, "model.factors.max: must be >= start (5)"),
                       ({"strat": 5}, "did you mean 'start'"),
                       ({"epsilon": 2}, "model.factors.epsilon: must be a number")]:
        with pytest.raises(UserError) as err:
            load(bad)
        assert words in str(err.value)


def test_shares_equal_a_direct_computation(small_model):
    state = _state(small_model)
    k, t = state.Lambda.shape
    shares = factor_shares(state)
    for l in range(k):
        f2 = [np.mean(state.F[:, m] ** 2) for m in range(k)]
        direct = np.mean([state.Lambda[l, j] ** 2 * f2[l]
                          / (sum(state.Lambda[m, j] ** 2 * f2[m] for m in range(k))
                             + 1 / state.tot_eta_prec[j]) for j in range(t)])
        assert np.isclose(shares[l], direct, rtol=1e-12)


@pytest.mark.parametrize("lambda_type", ["ARD", "horseshoe"])
def test_dropping_and_adding_keep_every_factor_parameter_aligned(small_model, lambda_type):
    model = model_from_simulation(simulate_data(60, 12, 3, missing=0.2, seed=5, n_markers=300),
                                  k=4, max_groups=1,
                                  priors=DEFAULT_PRIORS.__class__(**{**DEFAULT_PRIORS.__dict__,
                                                                   "lambda_type": lambda_type}))
    state = _state(model)
    before = deepcopy(state)
    drop_factors(model, state, np.array([True, False, True, True]))
    _assert_factor_shapes(state, 3)
    np.testing.assert_array_equal(state.Lambda, before.Lambda[[0, 2, 3]])
    np.testing.assert_array_equal(state.F, before.F[:, [0, 2, 3]])
    assert state.delta[0] == before.delta[0]
    cum = np.cumprod(state.delta)[:, None]
    expected = (state.lambda_phi * cum if lambda_type == "ARD"
                else cum / (state.lambda_global[0] * state.lambda_phi))
    np.testing.assert_allclose(state.lambda_prec, expected, rtol=1e-14)
    add_factors(model, state, 2)
    _assert_factor_shapes(state, 5)
    assert state.delta[-1] == 1.0 and np.isnan(state.factor_share[-1])
    np.testing.assert_array_equal(state.U_F_rot[:, 3:], 0.0)
    model5 = model.with_factors(5)
    for _ in range(3):  # the sampler runs on (and keeps) the new shapes
        gibbs_iteration(model5, state)
    _assert_factor_shapes(state, 5)
    assert np.isfinite(state.Lambda).all() and np.isfinite(state.F).all()


@pytest.mark.parametrize("lambda_type", ["ARD", "horseshoe"])
def test_added_loadings_follow_their_prior(small_model, lambda_type):
    """Loadings scaled by their prior sd are N(0, 1); ARD local precisions Gamma(df/2, df/2)
    (mean 1, variance 2/df); horseshoe local scales half-Cauchy(0, 1) (median 1). A loading
    drawn at a wrong scale (a missing tot_eta_prec, a swapped phi) fails the bounds."""
    priors = DEFAULT_PRIORS.__class__(**{**DEFAULT_PRIORS.__dict__, "lambda_type": lambda_type})
    model = model_from_simulation(simulate_data(60, 12, 3, seed=5, n_markers=300), k=2,
                                  max_groups=1, priors=priors)
    base = _state(model)
    base.tot_eta_prec = np.linspace(0.5, 4.0, model.t)
    z, phi = [], []
    for rep in range(400):
        state = deepcopy(base)
        state.rng = np.random.default_rng(rep)
        add_factors(model, state, 1)
        z.append(state.Lambda[-1] * np.sqrt(state.tot_eta_prec * state.lambda_prec[-1]))
        phi.append(state.lambda_phi[-1])
    z, phi = np.concatenate(z), np.concatenate(phi)
    assert abs(z.mean()) < 0.05 and abs(z.var() - 1.0) < 0.06
    if lambda_type == "ARD":
        assert abs(phi.mean() - 1.0) < 0.05 and abs(phi.var() - 2.0 / priors.lambda_df) < 0.12
    else:
        assert abs(np.median(np.sqrt(phi)) - 1.0) < 0.06


def test_the_rule_drops_all_but_the_spares_and_adds_when_short(small_model):
    model = small_model.with_factors(4)
    state = _state(model)
    rule = AdaptationRule(max_factors=6, epsilon=0.5, last_iteration=10**6)
    state.factor_share = np.array([0.9, 0.01, 0.3, 0.02])  # three under 0.5
    state.rng = np.random.default_rng(0)
    state.iteration = 1
    model2 = model
    while model2 is model:  # adapt when the coin says so
        saved = state.factor_share.copy()
        model2 = adapt_factors(model, state, rule)
        if model2 is model:
            state.factor_share = saved
    assert model2.k == 1 + SPARE == state.Lambda.shape[0]
    assert state.factor_path[-1, 1] == 3


@pytest.fixture(scope="module")
def fits15():
    sim = simulate_data(200, 60, 15, missing=0.2, seed=3, n_markers=500, loading_decay=0.9)
    runs = {"auto 10": auto(10), "auto 30": auto(30), "k 15": 15}
    return {name: fit(sim, factors, burn_in=500, samples=800) for name, factors in runs.items()}


def test_auto_with_15_true_factors(fits15):
    """From 10 and from 30 factors: 15 <= final k <= 22; U on masked cells and G within 0.01
    of the fixed k = 15 run (the best fixed k in benchmarks/bench_factors.py's 5-15-40 table
    for this case, against 22 and 30)."""
    best_u, best_g = fits15["k 15"].u_accuracy, fits15["k 15"].g_recovery
    for name in ("auto 10", "auto 30"):
        f = fits15[name]
        assert 15 <= f.final_k <= 22, (name, f.path.tolist())
        assert f.u_accuracy >= best_u - 0.01, (name, f.u_accuracy, best_u)
        assert f.g_recovery >= best_g - 0.01, (name, f.g_recovery, best_g)


def test_auto_with_5_true_factors():
    sim = simulate_data(200, 60, 5, missing=0.2, seed=3, n_markers=500, loading_decay=0.9)
    f = fit(sim, auto(10), burn_in=600, samples=100)
    assert 5 <= f.final_k <= 10, f.path.tolist()
    assert f.path[-1, 0] <= 480  # frozen after 80% of burn-in


@pytest.mark.skipif(not LONG, reason="about 15 minutes: set MEGALMM_LONG_TESTS=1")
def test_auto_with_40_true_factors():
    """The 40-factor case of benchmarks/bench_factors.py, each setting over two chains: with
    40 factors among 120 traits, G recovery moves by about 0.01 from one chain to the next
    (fixed k = 80: 0.937, 0.924, 0.919 over three seeds), so one chain per setting cannot
    rank settings 0.01 apart."""
    sim = simulate_data(400, 120, 40, missing=0.2, seed=3, n_markers=500, loading_decay=0.99)

    def mean_fit(factors):
        fits = [fit(sim, factors, burn_in=600, samples=3000, seed=seed) for seed in (4, 5)]
        return fits, np.mean([f.u_accuracy for f in fits]), np.mean([f.g_recovery for f in fits])

    fixed = [mean_fit(k) for k in (40, 80)]
    best_u, best_g = max(u for _, u, _ in fixed), max(g for _, _, g in fixed)
    for start in (10, 80):
        fits, u, g = mean_fit(auto(start))
        for f in fits:
            assert 40 <= f.final_k <= 60, (start, f.path.tolist())
        assert u >= best_u - 0.01 and g >= best_g - 0.01, (start, u, g, best_u, best_g)


def test_storage_and_moments_take_the_final_k(small_model):
    """The draws and the factor-indexed means have the final k; the chain file's datasets
    are reshaped before the first draw."""
    model = small_model.with_factors(3)
    store = MemoryChain()
    rule = AdaptationRule(max_factors=10, epsilon=1e-3, last_iteration=40)
    run_chain(model, store, Plan(50, 20, 2, 10, 25), ("Lambda", "f_h2", "F"), ("U", "U_F", "F"),
              seed=3, chain=1, adaptation=rule)
    cp = store.checkpoint
    k = cp.arrays["Lambda"].shape[0]
    assert len(cp.arrays["factor_path"]) > 1 and cp.arrays["factor_path"][-1, 1] == k
    assert store.samples["Lambda"].shape == (10, k, model.t)
    assert store.samples["F"].shape == (10, model.n, k)
    assert cp.means["U_F.mean"].shape == (len(model.ids), k) and int(cp.means["U_F.count"]) == 10
    assert cp.means["F.mean"].shape == (model.n, k)
    assert param_shape(model.with_factors(k), "Lambda") == (k, model.t)


def test_chain_file_reshapes_its_draws_before_the_first(tmp_path):
    chain = ChainFile(tmp_path / "chain_1.h5")
    chain.create({"chain": 1}, {"Lambda": (4, 6), "h2": (6,)}, capacity=5, target=10)
    chain.fit_samples({"Lambda": (4, 6), "h2": (6,)})  # unchanged: no rewrite
    inode = os.stat(chain.path).st_ino
    chain.fit_samples({"Lambda": (7, 6), "h2": (6,)})
    assert os.stat(chain.path).st_ino != inode
    layout = chain.layout()
    assert layout.shapes["samples/Lambda"] == (5, 7, 6) and layout.shapes["samples/h2"] == (5, 6)
    assert chain.progress().target == 10


@pytest.fixture(scope="module")
def auto_sim(tmp_path_factory):
    out = tmp_path_factory.mktemp("auto_sim")
    write_simulation(simulate_data(60, 10, 3, missing=0.2, seed=21, n_markers=200), out)
    return out


def _auto_config(directory, name, sim_dir):
    cfg = yaml.safe_load((sim_dir / "config.yaml").read_text())
    cfg["run"] = {"name": name, "output_dir": str(directory / name), "seed": 5}
    cfg["mcmc"] = {"burn_in": 60, "reorder_every": 10, "samples": 40, "thin": 2,
                   "checkpoint_every": 5, "chains": 1}
    cfg["model"]["factors"] = {"start": 2, "max": 10}
    cfg["posterior"] = {"samples": ["Lambda", "f_h2", "resid_h2", "tot_eta_prec", "F"],
                        "means": ["U", "U_F"]}
    path = sim_dir / f"{directory.name}_{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_auto_chain_killed_during_adaptation_resumes_bit_identically(forkserver, auto_sim,
                                                                     tmp_path):
    whole = _auto_config(tmp_path, "whole", auto_sim)
    killed = _auto_config(tmp_path, "killed", auto_sim)
    assert finish(forkserver, ["sample", str(whole)]) == 0
    reference = tmp_path / "whole" / "chains" / "chain_1.h5"
    path = ChainFile(reference).read_state_array("factor_path")
    assert len(path) > 2, path  # k changed during burn-in
    # killed after iterations inside the window (k changes there), in the rewrites that
    # k's changes cause (new checkpoint shapes; the draws' shapes at the first draw) and
    # after the first draws
    points = ["sample:iteration:7", "rewrite:before_rename:2", "sample:iteration:13",
              "commit:state_written:2", "rewrite:before_rename:3", "sample:iteration:20",
              "rewrite:before_rename:4", "sample:iteration:30", "append:draw_written:2"]
    for point in points:  # every run is killed after 12 iterations at the latest
        code = finish(forkserver, ["sample", str(killed)],
                      {"MEGALMM_TEST_KILL_AT": f"{point},sample:iteration:12"})
        assert code == -signal.SIGKILL, (point, code)
    assert ChainFile(tmp_path / "killed" / "chains" / "chain_1.h5").progress().iteration < 100
    assert finish(forkserver, ["sample", str(killed)]) == 0
    chain = tmp_path / "killed" / "chains" / "chain_1.h5"
    assert_same_datasets(reference, chain, ignore=("/header",))
