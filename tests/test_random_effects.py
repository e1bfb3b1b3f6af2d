"""Several random effects: the Grid-LMM slice cache and the general sampler path.

Each check compares with a dense computation on a tiny case: the grid log-likelihood against
the multivariate normal density, the random-effect draws against their closed-form
conditional moments, and the one-effect model run through the general cache against the
eigen-basis path.
"""

import numpy as np
import pytest
from scipy.stats import multivariate_normal

from megalmm_cli.gibbs.coefficients import (draw_by_slice, grouped_normal_equations,
                                             sample_coefficients)
from megalmm_cli.gibbs.variance import (general_loglik, sample_h2_index, sample_random_effects,
                                        sample_random_effects_general)
from megalmm_cli.gridcache import (WhitenedData, build_cache, cache_bytes, grid_slices,
                                   slice_count)
from megalmm_cli.gridlmm import grid_loglik, h2_grid, rotation
from megalmm_cli.model import build_model, effect_blocks
from megalmm_cli.sampler import gibbs_iteration
from megalmm_cli.simulate import simulate_data
from megalmm_cli.state import initial_state

from .conftest import DEFAULT_PRIORS


def random_kinship(rng, n, rank=None):
    a = rng.standard_normal((n, rank or n))
    k = a @ a.T / (rank or n)
    return k / np.mean(np.diag(k))


def block_kinship(rng, n, levels):
    return block_kinship_from_labels(rng.integers(0, levels, size=n))


def dense_cov(kinships, h):
    n = kinships[0].shape[0]
    return sum(hr * k for hr, k in zip(h, kinships)) + (1.0 - sum(h)) * np.eye(n)


@pytest.mark.parametrize("m", [2, 3])
def test_grid_loglik_matches_dense_normal_density(m):
    rng = np.random.default_rng(m)
    n, c, divisions = 9, 3, 4
    kinships = [random_kinship(rng, n), block_kinship(rng, n, 3), random_kinship(rng, n, rank=4)][:m]
    rot = rotation(kinships[0], np.arange(n))
    grid = h2_grid(m, divisions)
    cache = build_cache(effect_blocks(kinships, rot), grid)
    assert cache.n_slices == slice_count(m, divisions) < grid.shape[0]
    resid = rng.standard_normal((n, c))
    tau = rng.uniform(0.5, 2.0, size=c)
    log_prior = np.log(rng.dirichlet(np.ones(grid.shape[0])))
    loglik = general_loglik(rot.vectors.T @ resid, cache, tau, log_prior)
    dense = np.array([[multivariate_normal(np.zeros(n), dense_cov(kinships, h) / tau[j]).logpdf(resid[:, j])
                       for j in range(c)] for h in grid]) + log_prior[:, None]
    # equal up to a constant per column (-n/2 log 2 pi + n/2 log tau)
    np.testing.assert_allclose(loglik - loglik[0], dense - dense[0], atol=1e-9)
    assert np.ptp(dense - loglik, axis=0).max() < 1e-9


def test_slices_share_all_but_the_last_component():
    grid = h2_grid(3, 5)
    slice_of_point, rests = grid_slices(grid)
    np.testing.assert_array_equal(grid[:, :2], rests[slice_of_point])
    assert len(rests) == slice_count(3, 5) == 15
    assert cache_bytes(10, 3, 5) == 8 * (15 * 100 + 3 * 100 + 15 * 11) + 15


def affine_draws(draw, shapes):
    """Mean and covariance of a draw that is affine in its standard normals: the draw at zero
    noise, and J J' with J from unit noise vectors."""
    sizes = [int(np.prod(s)) for s in shapes]
    zero = draw(*[np.zeros(s) for s in shapes])
    columns = []
    for which, size in enumerate(sizes):
        for i in range(size):
            noise = [np.zeros(s) for s in shapes]
            noise[which].flat[i] = 1.0
            columns.append((draw(*noise) - zero).ravel())
    jac = np.array(columns).T
    return zero.ravel(), jac @ jac.T


@pytest.mark.parametrize("h", [(0.3, 0.4), (0.0, 0.5), (0.6, 0.0)])
def test_effect_draws_match_closed_form_conditional(h):
    rng = np.random.default_rng(7)
    n, divisions = 7, 10
    kinships = [random_kinship(rng, n), block_kinship(rng, n, 3)]
    rot = rotation(kinships[0], np.arange(n))
    blocks = effect_blocks(kinships, rot)
    grid = h2_grid(2, divisions)
    cache = build_cache(blocks, grid)
    index = int(np.flatnonzero(np.all(np.isclose(grid, h), axis=1))[0])
    tau = 1.7
    e = rng.standard_normal((n, 1))
    r = cache.roots.shape[2]

    def draw(z_effects, z_resid):
        return sample_random_effects_general(e, grid[[index]], np.array([tau]), np.array([index]),
                                             cache, z_effects.reshape(2, r, 1),
                                             z_resid.reshape(n, 1), by_effect=True)

    mean, cov = affine_draws(draw, [(2 * r,), (n,)])
    # closed form in the rotated basis: u_r | e ~ N(h_r B_r V^-1 e, (h_r B_r d_rs - h_r B_r V^-1 B_s h_s) / tau)
    v_inv = np.linalg.inv(dense_cov(blocks, h))
    want_mean = np.concatenate([h[i] * blocks[i] @ v_inv @ e[:, 0] for i in range(2)])
    want_cov = np.block([[(h[i] * blocks[i] * (i == j) - h[i] * blocks[i] @ v_inv @ blocks[j] * h[j]) / tau
                          for j in range(2)] for i in range(2)])
    np.testing.assert_allclose(mean, want_mean, atol=1e-10)
    np.testing.assert_allclose(cov, want_cov, atol=1e-10)
    for i in range(2):
        if h[i] == 0:  # an effect at zero share is exactly zero
            assert np.all(draw(rng.standard_normal(2 * r), rng.standard_normal(n))[i] == 0)
    # the sum (what the chain keeps) is the sum of the effects
    total = sample_random_effects_general(e, grid[[index]], np.array([tau]), np.array([index]), cache,
                                          np.zeros((2, r, 1)), np.zeros((n, 1)))
    np.testing.assert_allclose(total[:, 0], want_mean[:n] + want_mean[n:], atol=1e-10)


@pytest.fixture(scope="module")
def one_effect_pair():
    """The same one-effect model built on the eigen path and through the general cache."""
    sim = simulate_data(40, 8, 2, missing=0.2, seed=11, n_markers=200, n_new=3)
    values = np.where(sim.observed, sim.Y, np.nan)
    args = (sim.ids, sim.traits, values, sim.kinship, sim.X1, ["Intercept", "pop", "x"],
            np.zeros((sim.n, 0)), 3, 10, DEFAULT_PRIORS)
    return build_model(*args, max_groups=2), build_model(*args, max_groups=2, general_cache=True)


def test_one_effect_general_cache_equals_eigen_path(one_effect_pair):
    eigen, general = one_effect_pair
    assert general.groups[0].cache is not None and eigen.groups[0].cache is None
    rng = np.random.default_rng(3)
    for ge, gg in zip(eigen.groups, general.groups):
        n_g, c = ge.rows.size, ge.cols.size
        resid = rng.standard_normal((n_g, c))
        tau = rng.uniform(0.5, 2, size=c)
        want = grid_loglik(resid ** 2, ge.weights, tau, eigen.resid_log_prior, ge.half_logdet)
        got = general_loglik(resid, gg.cache, tau, general.resid_log_prior)
        np.testing.assert_allclose(got, want, atol=1e-9)
        # step 2 with the same random numbers: identical precisions and coefficients
        x_rot = np.hstack([ge.x1_rot, rng.standard_normal((n_g, 3))])
        b = x_rot.shape[1]
        index = rng.integers(0, 10, size=c)
        prior = np.hstack([np.zeros((c, ge.x1_rot.shape[1])), rng.uniform(0.5, 2, size=(c, 3))])
        gam, noise = rng.gamma(3.0, size=c), rng.standard_normal((c, b))
        coefs_e, coefs_g = np.zeros((c, b)), np.zeros((c, b))
        gram, grid_of_col, xty, yty = grouped_normal_equations(x_rot, resid, ge.weights, index)
        tau_e = sample_coefficients(gram, grid_of_col, xty, yty, prior, np.ones(c), gam, noise, coefs_e)
        tau_g = draw_by_slice(gg.cache, x_rot, resid, index, prior, np.ones(c), gam, noise, coefs_g)
        np.testing.assert_allclose(tau_g, tau_e, rtol=1e-9)
        np.testing.assert_allclose(coefs_g, coefs_e, atol=1e-9)
        # random effects: the same conditional mean and variance per coordinate
        h = general.grid[index]
        u_e = sample_random_effects(resid, ge.rot.values, h[:, 0], tau, np.zeros((n_g, c)))
        u_g = sample_random_effects_general(resid, h, tau, index, gg.cache,
                                            np.zeros((1, gg.cache.roots.shape[2], c)),
                                            np.zeros((n_g, c)))
        np.testing.assert_allclose(u_g, u_e, atol=1e-9)


def test_one_effect_chains_agree_in_distribution(one_effect_pair):
    """Both paths sample the same posterior: long-run means of h2 and precisions agree."""
    means = []
    for model in one_effect_pair:
        state = initial_state(model, np.random.default_rng(1), np.random.default_rng(2))
        h2, prec = [], []
        for it in range(1500):
            gibbs_iteration(model, state)
            if it >= 300:
                h2.append(model.grid_total[state.resid_h2_index])
                prec.append(np.log(state.tot_eta_prec))
        means.append((np.mean(h2), np.mean(prec)))
    (h2_e, prec_e), (h2_g, prec_g) = means
    assert abs(h2_e - h2_g) < 0.06
    assert abs(prec_e - prec_g) < 0.1


@pytest.mark.parametrize("m", [2, 3])
def test_chain_with_several_effects_runs_and_keeps_sum_of_effects(m):
    sim = simulate_data(60, 6, 2, missing=0.2, seed=4, n_markers=200, n_new=4, n_blocks=6)
    values = np.where(sim.observed, sim.Y, np.nan)
    kinships = [sim.kinship, block_kinship_from_labels(sim.blocks),
                block_kinship_from_labels(sim.populations)][:m]
    model = build_model(sim.ids, sim.traits, values, kinships, sim.X1, ["Intercept", "pop", "x"],
                        np.zeros((sim.n, 0)), 3, 5, DEFAULT_PRIORS, max_groups=2,
                        effect_names=("id", "Block", "Population")[:m])
    assert model.grid.shape == ({2: 15, 3: 35}[m], m) and model.n_effects == m
    state = initial_state(model, np.random.default_rng(1), np.random.default_rng(2))
    for _ in range(30):
        gibbs_iteration(model, state)
    assert np.all(np.isfinite(state.Lambda)) and np.all(state.tot_eta_prec > 0)
    from megalmm_cli.posterior import draw, param_shape, random_effects
    u_f, u_r = random_effects(model, state)
    assert u_r.shape == (len(model.ids), model.t) and np.all(np.isfinite(u_r))
    out = draw(model, state, ["resid_h2", "f_h2", "G", "h2"])
    assert out["resid_h2"].shape == param_shape(model, "resid_h2") == (m, model.t)
    assert out["f_h2"].shape == (m, model.k)
    assert np.all(out["resid_h2"].sum(axis=0) < 1)


def test_whitened_data_follow_every_change_of_the_data():
    """WhitenedData returns T_s y for every slice after any change of y, whitening again only
    the batches with a changed column, and each column's values do not depend on the history
    (a fresh cache gives the same bits: a resumed chain repeats an uninterrupted one); the grid
    log-likelihood and step 2 from it equal the direct products."""
    rng = np.random.default_rng(5)
    n, c, b = 60, 7, 3
    kinships = [random_kinship(rng, n), block_kinship(rng, n, 4)]
    rot = rotation(kinships[0], np.arange(n))
    grid = h2_grid(2, 5)
    cache = build_cache(effect_blocks(kinships, rot), grid)
    batches = [np.arange(4), np.arange(4, 7)]
    whitened = WhitenedData(cache, batches)
    y = rng.standard_normal((n, c))
    calls = []
    original = cache.transform

    def counted(s):
        calls.append(s)
        return original(s)

    object.__setattr__(cache, "transform", counted)
    for step, batches_whitened in enumerate([2, 2, 1, 0]):
        if step == 1:
            y[:, [1, 4]] += rng.standard_normal((n, 2))
        if step == 2:
            y[3, 6] = 0.5
        calls.clear()
        white = whitened.update(y.copy())
        assert len(calls) == batches_whitened * cache.n_slices
        for s in range(cache.n_slices):
            np.testing.assert_allclose(white[s], original(s) @ y, rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(white, WhitenedData(cache, batches).update(y.copy()))

    x = rng.standard_normal((n, b))
    coefs = rng.standard_normal((b, c))
    resid = y - x @ coefs
    tau = rng.uniform(0.5, 2.0, size=c)
    log_prior = np.full(grid.shape[0], -np.log(grid.shape[0]))
    got = general_loglik(resid, cache, tau, log_prior,
                         lambda s: whitened.white[s] - (original(s) @ x) @ coefs)
    np.testing.assert_allclose(got, general_loglik(resid, cache, tau, log_prior), rtol=1e-10)
    index = rng.integers(0, grid.shape[0], size=c)
    prior = rng.uniform(0.5, 2.0, size=(c, b))
    gam, noise = rng.gamma(3.0, size=c), rng.standard_normal((c, b))
    coefs_direct, coefs_cached = np.zeros((c, b)), np.zeros((c, b))
    tau_direct = draw_by_slice(cache, x, y, index, prior, np.ones(c), gam, noise, coefs_direct)
    tau_cached = draw_by_slice(cache, x, y, index, prior, np.ones(c), gam, noise, coefs_cached,
                               whitened.white)
    np.testing.assert_allclose(tau_cached, tau_direct, rtol=1e-10)
    np.testing.assert_allclose(coefs_cached, coefs_direct, rtol=1e-10, atol=1e-12)


def test_root_parts_drop_padding_and_keep_each_effect():
    """The first effect's root is diagonal in its own basis and used as a vector; a low-rank
    effect keeps only its nonzero columns; each part still squares to its block."""
    rng = np.random.default_rng(6)
    n = 10
    kinships = [random_kinship(rng, n), block_kinship(rng, n, 3)]
    rot = rotation(kinships[0], np.arange(n))
    blocks = effect_blocks(kinships, rot)
    cache = build_cache(blocks, h2_grid(2, 4))
    (kind0, root0), (kind1, root1) = cache.root_parts
    assert kind0 == "diag" and root0.shape == (n,)
    assert kind1 == "dense" and root1.shape[1] <= 3
    np.testing.assert_allclose(np.diag(root0 ** 2), blocks[0], atol=1e-10)
    np.testing.assert_allclose(root1 @ root1.T, blocks[1], atol=1e-10)


def small_two_effect_model(missing: float):
    """40 individuals x 5 traits, id kinship + Block (5 levels), 3 factors, two groups."""
    sim = simulate_data(40, 5, 2, missing=missing, seed=8, n_markers=150, n_new=0, n_blocks=5)
    values = np.where(sim.observed, sim.Y, np.nan)
    return build_model(sim.ids, sim.traits, values,
                       [sim.kinship, block_kinship_from_labels(sim.blocks)], sim.X1,
                       ["Intercept", "pop", "x"], np.zeros((sim.n, 0)), 3, 5, DEFAULT_PRIORS,
                       max_groups=2, effect_names=("id", "Block"))


def test_chain_with_whitened_data_equals_direct_products():
    """The same two-effect chain (missing cells, so some columns change every iteration) with
    and without WhitenedData: the same draws, up to rounding, over several iterations."""
    states = []
    for use in (True, False):
        model = small_two_effect_model(missing=0.15)
        for g in model.groups:
            if not use:
                g.__dict__["whitened"] = None
            assert (g.whitened is not None) == use
        assert any(g.miss_ptr[-1] > 0 for g in model.groups)
        state = initial_state(model, np.random.default_rng(1), np.random.default_rng(2))
        for _ in range(5):
            gibbs_iteration(model, state)
        states.append(state)
    cached, direct = states
    np.testing.assert_array_equal(cached.resid_h2_index, direct.resid_h2_index)
    np.testing.assert_allclose(cached.Lambda, direct.Lambda, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(cached.tot_eta_prec, direct.tot_eta_prec, rtol=1e-7)


def test_two_effect_chain_resumed_on_a_fresh_model_repeats_the_uninterrupted_one():
    """A checkpointed state continued on a freshly built model (a new process: empty
    WhitenedData) gives the uninterrupted chain bit for bit, with columns both with and
    without imputed cells (those are whitened in different batches)."""
    import copy

    model = small_two_effect_model(missing=0.02)
    imputed = np.concatenate([np.diff(g.miss_ptr) > 0 for g in model.groups])
    assert imputed.any() and not imputed.all()
    assert all(g.whitened is not None for g in model.groups)
    state = initial_state(model, np.random.default_rng(1), np.random.default_rng(2))
    for _ in range(3):
        gibbs_iteration(model, state)
    resumed = copy.deepcopy(state)  # the checkpoint
    for _ in range(5):
        gibbs_iteration(model, state)
    other = small_two_effect_model(missing=0.02)
    for _ in range(5):
        gibbs_iteration(other, resumed)
    for name in ("Lambda", "B1", "tot_eta_prec", "resid_h2_index", "F", "U_F_rot"):
        np.testing.assert_array_equal(getattr(resumed, name), getattr(state, name), err_msg=name)
    for a, b in zip(resumed.U_R_rot, state.U_R_rot):
        np.testing.assert_array_equal(a, b)


def block_kinship_from_labels(labels):
    z = (labels[:, None] == np.unique(labels)[None, :]).astype(float)
    return z @ z.T


# ----------------------------------------------------------------------------- command line


def two_effect_config(directory, chains=1):
    """Simulate 50 individuals x 6 traits with a Block effect; short chains. Returns config."""
    import yaml
    from click.testing import CliRunner

    from megalmm_cli.cli import main

    made = CliRunner().invoke(main, ["simulate", str(directory), "--n", "50", "--t", "6", "--k", "2",
                                     "--markers", "200", "--n-new", "4", "--blocks", "5"])
    assert made.exit_code == 0, made.output
    config = directory / "config.yaml"
    raw = yaml.safe_load(config.read_text())
    assert raw["model"]["random"] == ["id", "Block"]
    raw["model"]["h2_divisions"] = 6
    raw["mcmc"] = {"burn_in": 10, "samples": 20, "thin": 2, "checkpoint_every": 10,
                   "reorder_every": 5, "chains": chains}
    config.write_text(yaml.safe_dump(raw))
    return config


def test_two_effect_pipeline(tmp_path):
    import pandas as pd
    from click.testing import CliRunner

    from megalmm_cli.cli import main

    config = two_effect_config(tmp_path)
    # two of the four individuals to predict lose their Block value: no block effect for them
    covariates = tmp_path / "covariates.csv"
    lines = covariates.read_text().splitlines()
    for n in (-1, -2):
        fields = lines[n].split(",")
        fields[2] = "NA"
        lines[n] = ",".join(fields)
    covariates.write_text("\n".join(lines) + "\n")
    without = [lines[-1].split(",")[0], lines[-2].split(",")[0]]
    runner = CliRunner()
    for command in ("prepare", "sample", "predict", "summarize"):
        result = runner.invoke(main, [command, str(config)])
        assert result.exit_code == 0, (command, result.output, result.stderr)
        if command == "prepare":
            assert "Grid-LMM cache: 2 random effects, 21 grid points in 6 slices" in result.output
    run = tmp_path / "run"
    assert (run / "grid_cache.h5").exists()
    u = pd.read_csv(run / "predictions" / "U.csv", index_col=0)
    assert u.shape == (50, 6) and np.isfinite(u.to_numpy()).all()
    # each effect's genetic values, which sum to U draw by draw
    u_id = pd.read_csv(run / "predictions" / "U_id.csv", index_col=0)
    u_block = pd.read_csv(run / "predictions" / "U_Block.csv", index_col=0)
    np.testing.assert_allclose(u_id.to_numpy() + u_block.to_numpy(), u.to_numpy(), rtol=1e-4, atol=1e-5)
    block_sd = pd.read_csv(run / "predictions" / "U_Block_sd.csv", index_col=0)
    assert (block_sd.drop(index=without).to_numpy() > 0).all()
    # individuals to predict without a Block value get nothing from that effect
    assert (u_block.loc[without].to_numpy() == 0).all()
    assert (u_block.drop(index=without).to_numpy() != 0).all()
    # Z maps rows to levels: every individual of a block (phenotyped or not) has its value
    all_blocks = pd.read_csv(covariates, index_col=0)["Block"].dropna()
    b = u_block.loc[all_blocks.index].groupby(all_blocks.to_numpy())
    assert b.std().to_numpy().max() < 1e-5 * np.abs(u_block.to_numpy()).max()
    assert b.mean().std().to_numpy().min() > 0
    shares = pd.read_csv(run / "summary" / "h2_by_effect.csv")
    assert list(shares.effect.unique()) == ["id", "Block"] and len(shares) == 12
    assert ((shares.hpd_low <= shares.h2_mean) & (shares.h2_mean <= shares.hpd_high)).all()
    diag = pd.read_csv(run / "summary" / "diagnostics.csv")
    assert {"h2_id[trait001]", "h2_Block[trait006]"} <= set(diag.param)
    report = (run / "summary" / "report.md").read_text()
    assert "## Random effects" in report and "| Block |" in report
    # a second prepare does nothing
    again = runner.invoke(main, ["prepare", str(config)])
    assert "up to date" in again.output


def test_interrupted_cache_build_resumes_where_it_stopped(tmp_path, monkeypatch):
    import h5py

    from megalmm_cli import gridcache
    from megalmm_cli.config import load_config
    from megalmm_cli.prepare import run_prepare

    config = load_config(two_effect_config(tmp_path))
    built = []
    real = gridcache.slice_transform

    def counting(blocks, rest):
        if len(built) == 4:
            raise KeyboardInterrupt  # killed while building the 5th slice
        built.append(tuple(rest))
        return real(blocks, rest)

    monkeypatch.setattr(gridcache, "slice_transform", counting)
    with pytest.raises(KeyboardInterrupt):
        run_prepare(config, echo=lambda *a: None)
    run = tmp_path / "run"
    assert not (run / "prepared.h5").exists()
    with h5py.File(run / "grid_cache.h5", "r") as h5:
        assert h5["factors/done"][()].sum() == 4
    built.clear()
    monkeypatch.setattr(gridcache, "slice_transform",
                        lambda blocks, rest: (built.append(tuple(rest)), real(blocks, rest))[1])
    run_prepare(config, echo=lambda *a: None)
    with h5py.File(run / "grid_cache.h5", "r") as h5:
        n_caches = len(h5)       # the factors' and one per missing-data group
        resumed = h5["factors/transforms"][()]
        assert all(h5[key]["complete"][0] and h5[key]["done"][()].all() for key in h5)
    assert n_caches > 1
    assert len(built) == 6 * n_caches - 4  # only the slices not written before
    assert [r[0] for r in built[:2]] == pytest.approx([4 / 6, 5 / 6])  # the factors' last two
    built.clear()
    run_prepare(config, force=True, echo=lambda *a: None)  # same inputs: every slice reused
    assert built == []
    (run / "grid_cache.h5").unlink()
    run_prepare(config, force=True, echo=lambda *a: None)  # from scratch
    with h5py.File(run / "grid_cache.h5", "r") as h5:
        np.testing.assert_array_equal(h5["factors/transforms"][()], resumed)


def test_cache_size_refusal_names_the_keys(tmp_path):
    from megalmm_cli.config import load_config
    from megalmm_cli.errors import UserError
    from megalmm_cli.prepare import cache_size, check_cache_size

    config = load_config(two_effect_config(tmp_path))
    size = cache_size(1000, [1000, 800], 2, 20)
    assert size == (8 * (20 * 1000**2 + 2 * 1000**2 + 20 * 1001) + 20
                    + 8 * (20 * 800**2 + 2 * 800**2 + 20 * 801) + 20)
    with pytest.raises(UserError, match=r"needs 275\.54 MiB but the memory limit is 100\.00 MiB; "
                                        r"lower model\.h2_divisions .* missing_data\.max_groups"):
        check_cache_size(config, size, 100 * 2**20, tmp_path, [1000, 800], 2, lambda *a: None)


def test_two_effect_resume_is_bit_identical_with_cache_on_disk_or_in_memory(tmp_path):
    import signal

    from click.testing import CliRunner

    from megalmm_cli.cli import main
    from megalmm_cli.config import load_config
    from megalmm_cli.posterior import param_shape
    from megalmm_cli.prepare import load_model
    from megalmm_cli.storage import ChainFile, MemoryChain

    from .test_chain import SAMPLES, assert_same_chain, run

    path = two_effect_config(tmp_path)
    assert CliRunner().invoke(main, ["prepare", str(path)]).exit_code == 0
    config = load_config(path)
    in_memory = load_model(config, cache_in_memory=True)
    on_disk = load_model(config, cache_in_memory=False)
    assert isinstance(in_memory.factor_cache.transforms, np.ndarray)
    assert not isinstance(on_disk.factor_cache.transforms, np.ndarray)
    whole = MemoryChain()
    run(in_memory, whole)
    pieces = ChainFile(tmp_path / "chain_1.h5")
    pieces.create({"config_hash": "x"}, {name: param_shape(on_disk, name) for name in SAMPLES}, 20)
    first = run(on_disk, pieces, stop_after=17)
    assert first.interrupted_by == signal.SIGTERM
    run(on_disk, pieces)
    samples = {name: pieces.read_samples(name) for name in SAMPLES}
    assert samples["resid_h2"].shape[1:] == (2, 6)
    assert_same_chain(whole.samples, whole.load(), samples, pieces.load())


def test_missing_cache_makes_prepare_rebuild_it(tmp_path):
    from click.testing import CliRunner

    from megalmm_cli.cli import main
    from megalmm_cli.config import load_config
    from megalmm_cli.prepare import is_up_to_date

    path = two_effect_config(tmp_path)
    runner = CliRunner()
    assert runner.invoke(main, ["prepare", str(path)]).exit_code == 0
    config = load_config(path)
    assert is_up_to_date(config)
    (tmp_path / "run" / "grid_cache.h5").unlink()
    assert not is_up_to_date(config)
    again = runner.invoke(main, ["prepare", str(path)])
    assert again.exit_code == 0 and "Grid-LMM cache" in again.output and is_up_to_date(config)


def test_numeric_level_names_match_a_level_kinship_exactly(tmp_path):
    """Levels '01', '2', '10' stay text (not 1.0, 2.0, 10.0): Z K Z' from a file keyed by them."""
    import yaml

    from megalmm_cli.config import load_config
    from megalmm_cli.prepare import load_inputs

    rng = np.random.default_rng(1)
    ids = [f"P{i}" for i in range(12)]
    fields = ["01", "2", "10"]
    field_of = [fields[i % 3] for i in range(12)]
    rows = ["id,Field,a,b"] + [f"{i},{f},{rng.normal():.4f},{rng.normal():.4f}"
                               for i, f in zip(ids, field_of)]
    (tmp_path / "y.csv").write_text("\n".join(rows) + "\n")
    k_ids = np.array(ids)
    a = rng.standard_normal((12, 30))
    k = a @ a.T / 30
    (tmp_path / "K.csv").write_text("\n".join(["id," + ",".join(ids)] + [
        f"{i}," + ",".join(f"{v:.6f}" for v in row) for i, row in zip(k_ids, k)]) + "\n")
    level_k = np.array([[1.0, 0.3, 0.1], [0.3, 1.0, 0.2], [0.1, 0.2, 1.0]])
    # the level file lists an extra level and a different order: both are fine
    order = ["10", "99", "01", "2"]
    full = {("01", "01"): 1.0, ("2", "2"): 1.0, ("10", "10"): 1.0, ("01", "2"): 0.3,
            ("01", "10"): 0.1, ("2", "10"): 0.2}
    value = lambda p, q: 1.0 if p == q else full.get((p, q), full.get((q, p), 0.0))
    (tmp_path / "KF.csv").write_text("\n".join(["Field," + ",".join(order)] + [
        f"{p}," + ",".join(str(value(p, q)) for q in order) for p in order]) + "\n")
    (tmp_path / "run.yaml").write_text(yaml.safe_dump({
        "data": {"phenotypes": {"file": "y.csv", "id": "id", "covariate_columns": ["Field"]},
                 "kinships": {"id": {"file": "K.csv"}, "Field": {"file": "KF.csv"}}},
        "model": {"random": ["id", "Field"], "factors": 1}}))
    inputs = load_inputs(load_config(tmp_path / "run.yaml"))
    assert inputs.effect_names == ("id", "Field")
    index = [fields.index(f) for f in field_of]
    np.testing.assert_allclose(inputs.kinships[1], level_k[np.ix_(index, index)])


def test_prepare_killed_while_rebuilding_a_changed_cache_is_not_up_to_date(tmp_path, monkeypatch):
    """Data change, then prepare --force killed after the factors' cache: some groups new, some
    old. Nothing may take that mixed cache for complete; the next prepare finishes it."""
    from click.testing import CliRunner

    from megalmm_cli import gridcache
    from megalmm_cli.cli import main
    from megalmm_cli.config import load_config
    from megalmm_cli.prepare import is_up_to_date, load_model, run_prepare

    path = two_effect_config(tmp_path)
    assert CliRunner().invoke(main, ["prepare", str(path)]).exit_code == 0
    pheno = tmp_path / "phenotypes.csv"
    pheno.write_text("".join(pheno.read_text().splitlines(keepends=True)[:-1]))  # drop a row
    config = load_config(path)
    real, built = gridcache.slice_transform, []

    def killed_after_factors(blocks, rest):
        if len(built) == 6:
            raise KeyboardInterrupt
        built.append(1)
        return real(blocks, rest)

    monkeypatch.setattr(gridcache, "slice_transform", killed_after_factors)
    with pytest.raises(KeyboardInterrupt):
        run_prepare(config, force=True, echo=lambda *a: None)
    monkeypatch.setattr(gridcache, "slice_transform", real)
    assert not is_up_to_date(config)
    with pytest.raises(Exception, match="run `megalmm prepare"):
        load_model(config)
    result = CliRunner().invoke(main, ["sample", str(path)])  # prepares first, then samples
    assert result.exit_code == 0, (result.output, result.stderr)
    assert "running prepare first" in result.output and is_up_to_date(config)
    assert load_model(config).n == 45
