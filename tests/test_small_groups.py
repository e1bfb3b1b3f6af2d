"""Steps 2-4 of small missing-data groups in one kernel (gibbs/small_groups.py) against the
per-group path (sampler._sample_group): the same random numbers, so the same draws up to
rounding, for every group packed, some packed, none packed."""

import copy

import numpy as np
import pytest

from megalmm_cli import sampler
from megalmm_cli.gibbs.small_groups import SmallGroups, qualifies
from megalmm_cli.simulate import simulate_data
from megalmm_cli.state import initial_state

from .conftest import model_from_simulation


@pytest.fixture(scope="module")
def model():
    sim = simulate_data(60, 9, 2, missing=0.3, seed=12, n_markers=300)
    sim.observed[sim.X1[:, 1] == 1, 8] = False  # trait 8 on one population: its group drops "pop"
    return model_from_simulation(sim, k=3, max_groups=5)


def trait_side(model, state, members):
    """State after steps 2-4 with the given groups on the one-kernel path."""
    state = copy.deepcopy(state)
    model.__dict__["small_groups"] = SmallGroups.pack(model.groups, members) if members else None
    f_rot = model.factor_rot.vectors.T @ state.F
    sampler.sample_trait_side(model, state, f_rot)
    return state


def test_the_fixture_has_groups_of_several_sizes(model):
    sizes = {(g.rows.size, g.cols.size) for g in model.groups}
    assert len(model.groups) >= 3 and len(sizes) == len(model.groups)
    assert any(g.cols.size > 1 for g in model.groups)
    assert any(not g.x1_keep.all() for g in model.groups)
    assert any(g.miss_rows.size for g in model.groups)
    assert all(qualifies(g, g.x1_rot.shape[1] + model.k) for g in model.groups)
    assert model.small_groups is not None  # the default packs every qualifying group


@pytest.mark.parametrize("which", ["all", "odd", "first", "last"])
def test_kernel_equals_the_per_group_path(model, which):
    state = initial_state(model, np.random.default_rng(3), np.random.default_rng(4))
    for _ in range(3):  # away from the initial values
        sampler.gibbs_iteration(model, state)
    every = list(range(len(model.groups)))
    members = {"all": every, "odd": every[1::2], "last": every[-1:], "first": every[:1]}[which]
    expected = trait_side(model, state, [])
    got = trait_side(model, state, members)
    np.testing.assert_array_equal(got.resid_h2_index, expected.resid_h2_index)
    assert not np.array_equal(got.resid_h2_index, state.resid_h2_index)  # h2 moved
    for name in ("tot_eta_prec", "B1", "Lambda"):
        np.testing.assert_allclose(getattr(got, name), getattr(expected, name), rtol=1e-9,
                                   atol=1e-12, err_msg=name)
    for gi in every:
        np.testing.assert_allclose(got.U_R_rot[gi], expected.U_R_rot[gi], rtol=1e-9, atol=1e-12)
    # the chain's Generator is left where the per-group path leaves it
    assert got.rng.random() == expected.rng.random()
    del model.__dict__["small_groups"]


@pytest.mark.parametrize("which", ["all", "odd"])
def test_score_terms_equal_the_per_group_loop(model, which):
    """Step 6 with the small groups' right-hand side and precisions from one kernel."""
    state = initial_state(model, np.random.default_rng(5), np.random.default_rng(6))
    for _ in range(3):
        sampler.gibbs_iteration(model, state)
    every = list(range(len(model.groups)))
    assert not sampler.scores_collapsed(model)

    def scores(members):
        new = copy.deepcopy(state)
        model.__dict__["small_groups"] = SmallGroups.pack(model.groups, members) if members else None
        sampler.sample_scores(model, new)
        return new

    expected = scores([])
    got = scores({"all": every, "odd": every[1::2]}[which])
    assert model.small_groups.vectors is not None
    np.testing.assert_allclose(got.F, expected.F, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(got.U_F_rot, expected.U_F_rot, rtol=1e-9, atol=1e-12)
    assert not np.allclose(got.F, state.F)
    del model.__dict__["small_groups"]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_projections_equal_the_per_group_path(model, dtype):
    """Each stored draw's U_R on every individual (posterior.random_effects) with the small
    groups' projections from one kernel: the same prediction-stream normals, the same values."""
    from megalmm_cli.posterior import random_effects

    state = initial_state(model, np.random.default_rng(7), np.random.default_rng(8))
    for _ in range(3):
        sampler.gibbs_iteration(model, state)

    def effects(members):
        new = copy.deepcopy(state)
        model.__dict__["small_groups"] = SmallGroups.pack(model.groups, members) if members else None
        return random_effects(model, new, dtype), new.pred_rng.random()

    (u_f0, u_r0), next0 = effects([])
    (u_f1, u_r1), next1 = effects(list(range(len(model.groups))))
    assert model.small_groups.projections is not None
    assert any(g.projection.other_rows.size for g in model.groups)
    assert u_r1.dtype == dtype and next1 == next0
    np.testing.assert_array_equal(u_f1, u_f0)
    tol = 1e-5 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(u_r1, u_r0, rtol=tol, atol=tol * np.abs(u_r0).max())
    del model.__dict__["small_groups"]


def test_chain_does_not_depend_on_the_thread_count(model, monkeypatch):
    """The kernels give each group to one thread: one thread or two, the same bits (with
    every kernel allowed its threads, however small the work)."""
    from megalmm_cli.gibbs import threads

    from .conftest import numba_threads

    monkeypatch.setattr(threads, "PARALLEL_MIN_WORK", 0)
    assert model.small_groups is not None

    def run(threads):
        state = initial_state(model, np.random.default_rng(9), np.random.default_rng(10))
        with numba_threads(threads):
            for _ in range(4):
                sampler.gibbs_iteration(model, state)
        return state

    one, two = run(1), run(2)
    for name in ("Lambda", "B1", "tot_eta_prec", "resid_h2_index", "F"):
        np.testing.assert_array_equal(getattr(one, name), getattr(two, name), err_msg=name)
    for a, b in zip(one.U_R_rot, two.U_R_rot):
        np.testing.assert_array_equal(a, b)


def _four_group_model(two_effects: bool):
    """60 x 12: each block of 3 traits unmeasured on its own 15 lines (four groups), none on
    the one-kernel path; two effects (id + Block) take the general path of steps 2-4."""
    from megalmm_cli.model import build_model

    from .conftest import DEFAULT_PRIORS
    from .test_random_effects import block_kinship_from_labels

    sim = simulate_data(60, 12, 2, missing=0.0, seed=21, n_markers=200, n_blocks=5)
    values = sim.Y.copy()
    for block in range(4):
        values[15 * block:15 * (block + 1), 3 * block:3 * (block + 1)] = np.nan
    kinships = [sim.kinship, block_kinship_from_labels(sim.blocks)] if two_effects else sim.kinship
    model = build_model(sim.ids, sim.traits, values, kinships, sim.X1, ["Intercept", "pop", "x"],
                        np.zeros((sim.n, 0)), 3, 5, DEFAULT_PRIORS, max_groups=4,
                        effect_names=("id", "Block") if two_effects else ("id",))
    model.__dict__["small_groups"] = None
    return model


@pytest.mark.parametrize("two_effects", [False, True])
def test_groups_side_by_side_equal_groups_one_after_another(two_effects, monkeypatch):
    """threads.side_by_side in the sampler: the groups' steps 2-4 and their terms of step 6
    on the group pool's threads, one group per thread, give the same bits as one group after
    another (each group's random numbers are drawn first, in the chain's order; step 6's
    terms are summed in the groups' order)."""
    from .conftest import numba_threads

    model = _four_group_model(two_effects)
    assert len(model.groups) >= 3 and model.small_groups is None
    assert (model.groups[0].cache is not None) == two_effects
    from megalmm_cli.gibbs import threads

    monkeypatch.setattr(threads, "PARALLEL_MIN_WORK", 0)  # these groups are small: allow it
    calls = []
    pool = sampler.each_on_own_thread
    monkeypatch.setattr(sampler, "each_on_own_thread",
                        lambda fn, *args: calls.append(len(args[0])) or pool(fn, *args))

    def run(side_by_side):
        if not side_by_side:
            monkeypatch.setattr(sampler, "side_by_side", lambda work: False)
        state = initial_state(model, np.random.default_rng(3), np.random.default_rng(4))
        with numba_threads(2):
            for _ in range(4):
                sampler.gibbs_iteration(model, state)
        return state

    concurrent = run(True)
    assert calls and set(calls) == {len(model.groups)}  # the pool ran every group, in both steps
    assert len(calls) >= 2 * 3
    sequential = run(False)
    for name in ("Lambda", "B1", "tot_eta_prec", "resid_h2_index", "F", "delta"):
        np.testing.assert_array_equal(getattr(concurrent, name), getattr(sequential, name),
                                      err_msg=name)
    for a, b in zip(concurrent.U_R_rot, sequential.U_R_rot):
        np.testing.assert_array_equal(a, b)


def test_projections_side_by_side_equal_one_after_another(monkeypatch):
    """posterior.random_effects projects each group's U_R to every individual on the group
    pool's threads (its normals drawn first, in the groups' order): the same bits as one
    group after another."""
    from megalmm_cli import posterior
    from megalmm_cli.gibbs import threads

    from .conftest import numba_threads

    model = _four_group_model(two_effects=False)
    assert all(g.projection.other_rows.size for g in model.groups)
    monkeypatch.setattr(threads, "PARALLEL_MIN_WORK", 0)
    state = initial_state(model, np.random.default_rng(5), np.random.default_rng(6))
    with numba_threads(2):
        for _ in range(3):
            sampler.gibbs_iteration(model, state)
        calls = []
        pool = posterior.each_on_own_thread
        monkeypatch.setattr(posterior, "each_on_own_thread",
                            lambda fn, items: calls.append(len(items)) or pool(fn, items))
        together = posterior.random_effects(model, copy.deepcopy(state))
        assert calls == [len(model.groups)]
        monkeypatch.setattr(posterior, "side_by_side", lambda work: False)
        apart = posterior.random_effects(model, copy.deepcopy(state))
    for a, b in zip(together, apart):
        np.testing.assert_array_equal(a, b)
