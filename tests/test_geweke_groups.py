"""Geweke joint-distribution test with two missing-data groups, imputed cells, rows a group
drops, fixed effects (X1 B1) and a factor covariate (B2F), with negative controls.

The model: 10 individuals x 4 traits, 2 factors, one random effect, two fixed-effect columns
(an intercept and a covariate) and one factor covariate with the ridge prior. B1 has a proper
prior here, B1_bj ~ N(0, 1 / (tot_eta_prec_j B1_PREC)) (Priors.b1_prec; runs use the flat
prior, under which there is no joint distribution to draw from), which also turns off the
translation move of step 6 (exact only under the flat prior; test_factor_moves.py checks it
against its conditional). Traits 0-1 are observed on every row but two cells (imputed); traits 2-3 on
rows 0-6 only (rows 7-9 are dropped by their group: not in the model) with one more imputed
cell. So the sampler runs the path of several groups: each group in its own eigenbasis,
imputation, F row by row with rows in different sets of groups, and U_F given F. Steps 2-4
take both paths of the sampler in every chain: the first group the one-kernel path of small
groups (gibbs/small_groups.py), the second the per-group path (sampler._sample_group).

The joint p(theta, Y) has the imputed cells inside theta (they are latent data): the
independent draws draw them with the observed cells from p(Y | theta); the Geweke chain keeps
them in its state and redraws only the observed cells between iterations.
See test_geweke.py for the method and the choice of statistics and priors.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import megalmm_cli.sampler as sampler_mod
from megalmm_cli.gibbs.small_groups import SmallGroups, qualifies
from megalmm_cli.model import build_model
from megalmm_cli.sampler import gibbs_iteration
from megalmm_cli.state import State

from .conftest import numba_threads
from .test_geweke import (NEGATIVE_ITERATIONS, PRIORS, SC_ITERATIONS, SC_THIN, Z_MAX, bounded,
                          geweke_z, report, truncated_gamma_above_one)

N, T, K, DIVISIONS = 10, 4, 2, 5
MC_DRAWS = 50_000
MISSING = [(2, 0), (5, 1), (3, 2)]     # imputed cells
DROPPED_ROWS, DROPPED_TRAITS = [7, 8, 9], [2, 3]
RIDGE = 1.0
B1_PREC = 1.0


def make_model():
    rng = np.random.default_rng(31)
    a = rng.standard_normal((N, 2 * N))
    kinship = a @ a.T / (2 * N)
    values = rng.standard_normal((N, T))
    for i, j in MISSING:
        values[i, j] = np.nan
    values[np.ix_(DROPPED_ROWS, DROPPED_TRAITS)] = np.nan
    x2 = rng.standard_normal((N, 1))
    x1 = np.column_stack([np.ones(N), rng.standard_normal(N)])
    priors = dataclasses.replace(PRIORS, b2_type="ridge", b2_ridge_prec=RIDGE, b1_prec=B1_PREC)
    model = build_model([f"i{i}" for i in range(N)], [f"t{j}" for j in range(T)], values, kinship,
                        x1, ["Intercept", "x"], x2, K, DIVISIONS, priors, max_groups=2,
                        scale_y=False)
    # both groups qualify for the one-kernel path: pack only the first, so that the second
    # takes the per-group path (Model.small_groups is a cached property: this sets its value)
    first = min(range(len(model.groups)), key=lambda i: model.groups[i].cols[0])
    model.__dict__["small_groups"] = SmallGroups.pack(model.groups, [first])
    return model


def group_layout(model):
    by_cols = {tuple(g.cols): g for g in model.groups}
    return by_cols


def prior_draws(model, rng, m: int) -> dict:
    """m independent draws of theta (imputed cells included) and of the observed cells."""
    p = model.priors
    grid = model.grid[:, 0]
    tot_eta_prec = rng.gamma(p.tot_eta_shape, 1.0 / p.tot_eta_rate, size=(m, T))
    resid_h2_index = rng.integers(0, grid.size, size=(m, T))
    f_h2_index = rng.integers(0, grid.size, size=(m, K))
    tot_f_prec = rng.gamma(p.tot_f_shape, 1.0 / p.tot_f_rate, size=(m, K))
    phi = rng.gamma(p.lambda_df / 2.0, 2.0 / p.lambda_df, size=(m, K, T))
    delta = np.concatenate([rng.gamma(p.delta_1[0], 1.0 / p.delta_1[1], size=(m, 1)),
                            truncated_gamma_above_one(p.delta_2[0], p.delta_2[1], rng, (m, K - 1))],
                           axis=1)
    lambda_prec = phi * np.cumprod(delta, axis=1)[:, :, None]
    lam = rng.standard_normal((m, K, T)) / np.sqrt(tot_eta_prec[:, None, :] * lambda_prec)
    b2f = rng.standard_normal((m, 1, K)) / np.sqrt(RIDGE * tot_f_prec)[:, None, :]
    b1 = rng.standard_normal((m, 2, T)) / np.sqrt(B1_PREC * tot_eta_prec)[:, None, :]
    f_h2 = grid[f_h2_index]
    s = model.factor_rot.values
    u_f_rot = (rng.standard_normal((m, N, K)) * np.sqrt(s)[None, :, None]
               * np.sqrt(f_h2 / tot_f_prec)[:, None, :])
    e_f = rng.standard_normal((m, N, K)) * np.sqrt((1.0 - f_h2) / tot_f_prec)[:, None, :]
    f = model.x2 @ b2f + model.factor_rot.vectors @ u_f_rot + e_f
    draw = dict(tot_eta_prec=tot_eta_prec, resid_h2_index=resid_h2_index, f_h2_index=f_h2_index,
                tot_f_prec=tot_f_prec, lambda_phi=phi, delta=delta, lambda_prec=lambda_prec,
                Lambda=lam, B1=b1, B2F=b2f, U_F_rot=u_f_rot, F=f)
    resid_h2 = grid[resid_h2_index]
    for gi, g in enumerate(model.groups):
        s_g = g.rot.values
        c = g.cols
        draw[f"U_R_rot{gi}"] = (rng.standard_normal((m, g.rows.size, c.size)) * np.sqrt(s_g)[None, :, None]
                                * np.sqrt(resid_h2[:, c] / tot_eta_prec[:, c])[:, None, :])
    for gi in range(len(model.groups)):
        draw[f"Y{gi}"] = draw_y(model, draw, gi, rng)
    return draw


def draw_y(model, par: dict, gi: int, rng) -> np.ndarray:
    """Y_g | theta on the group's rows and traits (every cell, imputed ones included)."""
    g = model.groups[gi]
    c = g.cols
    resid_h2 = model.grid_total[par["resid_h2_index"]][..., c]
    sd = np.sqrt((1.0 - resid_h2) / par["tot_eta_prec"][..., c])
    f = par["F"][..., g.rows, :]
    noise = rng.standard_normal(f.shape[:-1] + (c.size,)) * sd[..., None, :]
    return (model.x1[g.rows] @ par["B1"][..., c] + f @ par["Lambda"][..., c]
            + g.rot.vectors @ par[f"U_R_rot{gi}"] + noise)


def state_from_draw(model, d: dict, rng) -> State:
    ys = [np.ascontiguousarray(d[f"Y{gi}"]) for gi in range(len(model.groups))]
    return State(
        iteration=0, rng=rng, pred_rng=np.random.default_rng(0),
        B1=d["B1"].copy(), Lambda=d["Lambda"].copy(), tot_eta_prec=d["tot_eta_prec"].copy(),
        resid_h2_index=d["resid_h2_index"].astype(np.int64),
        F=d["F"].copy(), tot_f_prec=d["tot_f_prec"].copy(),
        f_h2_index=d["f_h2_index"].astype(np.int64), U_F_rot=d["U_F_rot"].copy(),
        B2F=d["B2F"].copy(), B2F_prec=np.full((1, K), RIDGE), b2_local2=np.ones((1, K)),
        b2_local_nu=np.ones((1, K)), b2_global2=np.ones(K), b2_global_xi=np.ones(K),
        lambda_prec=d["lambda_prec"].copy(), lambda_phi=d["lambda_phi"].copy(),
        lambda_nu=np.ones((K, T)), delta=d["delta"].copy(), lambda_global=np.ones(2),
        Y=ys, Y_rot=[np.ascontiguousarray(g.rot.vectors.T @ y) for g, y in zip(model.groups, ys)],
        U_R_rot=[d[f"U_R_rot{gi}"].copy() for gi in range(len(model.groups))],
    )


def state_params(model, state: State) -> dict:
    keys = ("tot_eta_prec", "resid_h2_index", "f_h2_index", "tot_f_prec", "lambda_phi", "delta",
            "lambda_prec", "Lambda", "B1", "B2F", "U_F_rot", "F")
    par = {key: np.array(getattr(state, key), copy=True) for key in keys}
    for gi in range(len(model.groups)):
        par[f"U_R_rot{gi}"] = state.U_R_rot[gi].copy()
        par[f"Y{gi}"] = state.Y[gi].copy()
    return par


def statistics(model, par: dict) -> tuple[list[str], np.ndarray]:
    grid = model.grid_total
    tep, tfp = par["tot_eta_prec"], par["tot_f_prec"]
    rh2, fh2 = grid[par["resid_h2_index"]], grid[par["f_h2_index"]]
    lam, f = par["Lambda"], par["F"]
    cols: dict[str, np.ndarray] = {}

    def add(name, values):
        values = np.asarray(values).reshape(values.shape[0], -1)
        for c in range(values.shape[1]):
            cols[f"{name}[{c}]" if values.shape[1] > 1 else name] = values[:, c]

    add("tot_eta_prec", tep)
    add("resid_h2", rh2)
    add("resid_h2^2", rh2 ** 2)
    add("f_h2", fh2)
    add("tot_f_prec", tfp)
    add("delta_1", par["delta"][:, 0])
    add("mean_j log phi", np.log(par["lambda_phi"]).mean(axis=2))
    add("b(Lambda^2)", bounded(lam ** 2))
    add("Lambda^2 tot_eta_prec lambda_prec", lam ** 2 * tep[:, None, :] * par["lambda_prec"])
    add("B1", par["B1"])
    add("B1^2 tot_eta_prec", par["B1"] ** 2 * tep[:, None, :])
    add("B2F", par["B2F"][:, 0, :])
    add("B2F^2 tot_f_prec", par["B2F"][:, 0, :] ** 2 * tfp)
    add("mean_i F^2", (f ** 2).mean(axis=1))
    u_f = model.factor_rot.vectors @ par["U_F_rot"]
    mean_f = model.x2 @ par["B2F"]
    add("factor resid chi2/n", ((f - mean_f - u_f) ** 2).mean(axis=1) * tfp / (1.0 - fh2))
    add("corr(F, X2 B2F)", ((f - f.mean(axis=1, keepdims=True)) * (mean_f - mean_f.mean(axis=1, keepdims=True))).mean(axis=1))
    for gi, g in enumerate(model.groups):
        c = g.cols
        y = par[f"Y{gi}"]
        u_r = g.rot.vectors @ par[f"U_R_rot{gi}"]
        fit = model.x1[g.rows] @ par["B1"][..., c] + f[:, g.rows] @ lam[..., c]
        add(f"g{gi} mean_i b(Y^2)", bounded(y ** 2).mean(axis=1))
        add(f"g{gi} resid chi2/n", ((y - fit - u_r) ** 2).mean(axis=1) * tep[:, c] / (1.0 - rh2[:, c]))
        add(f"g{gi} Y F Lambda", bounded((y * fit).mean(axis=1) ** 2))
        rows, cols_ = np.nonzero(~g.observed)
        for r, j in zip(rows, cols_):  # each imputed cell, and its fit
            add(f"g{gi} imputed[{r},{j}]", y[:, r, j])
            add(f"g{gi} imputed^2[{r},{j}]", bounded(y[:, r, j] ** 2))
            add(f"g{gi} imputed resid^2[{r},{j}]", bounded((y[:, r, j] - fit[:, r, j] - u_r[:, r, j]) ** 2))
    names = list(cols)
    return names, np.column_stack([cols[name] for name in names])


def successive_conditional(model, iterations: int, thin: int, seed: int):
    rng = np.random.default_rng(seed)
    start = {key: value[0] for key, value in prior_draws(model, rng, 1).items()}
    state = state_from_draw(model, start, rng)
    kept = []
    for it in range(iterations):
        gibbs_iteration(model, state)
        par = state_params(model, state)
        for gi, g in enumerate(model.groups):  # new observed cells; imputed cells stay theta's
            fresh = draw_y(model, par, gi, rng)
            y = np.where(g.observed, fresh, state.Y[gi])
            state.Y[gi] = np.ascontiguousarray(y)
            state.Y_rot[gi] = np.ascontiguousarray(g.rot.vectors.T @ y)
        if (it + 1) % thin == 0:
            kept.append(state_params(model, state))
    stacked = {key: np.stack([p[key] for p in kept]) for key in kept[0]}
    return statistics(model, stacked)


def chain_z(model, mc, iterations, seed, label):
    names, values = mc
    with numba_threads(1):
        names_sc, chain = successive_conditional(model, iterations, SC_THIN, seed)
    assert names == names_sc
    z = geweke_z(values, chain)
    print(f"\n{label}: {len(names)} statistics, max |z| = {np.abs(z).max():.2f}\n{report(names, z, 10)}")
    return z


@pytest.fixture(scope="module")
def model():
    return make_model()


@pytest.fixture(scope="module")
def mc(model):
    return statistics(model, prior_draws(model, np.random.default_rng(1), MC_DRAWS))


def test_the_model_has_the_intended_groups(model):
    layout = group_layout(model)
    assert set(layout) == {(0, 1), (2, 3)}
    assert layout[(0, 1)].rows.size == N and layout[(2, 3)].rows.size == N - len(DROPPED_ROWS)
    assert sum(int((~g.observed).sum()) for g in model.groups) == len(MISSING)
    assert not sampler_mod.scores_collapsed(model)
    assert all(g.x1_keep.all() for g in model.groups)  # both fixed effects in both groups
    assert not sampler_mod.common_fixed_columns(model).any()  # no translation move
    assert all(qualifies(g, 2 + K) for g in model.groups)
    assert [tuple(model.groups[i].cols) for i in model.small_groups.members] == [(0, 1)]


@pytest.mark.slow
def test_geweke_two_groups_imputed_cells_factor_covariate(model, mc):
    z = chain_z(model, mc, SC_ITERATIONS, seed=2, label="two groups")
    assert np.all(np.isfinite(z))
    assert np.max(np.abs(z)) < Z_MAX, report(mc[0], z, 15)


@pytest.mark.slow
def test_geweke_two_groups_negative_control(model, mc, monkeypatch):
    """Imputed cells drawn with twice their residual variance must be flagged."""
    from megalmm_cli.gibbs import missing

    original = missing.impute_cells

    def wrong(*args):
        args = list(args)
        args[9] = args[9] * np.sqrt(2.0)  # resid_sd
        return original(*args)

    monkeypatch.setattr(sampler_mod, "impute_cells", wrong)
    z = chain_z(model, mc, 2 * NEGATIVE_ITERATIONS, seed=4, label="two groups, negative control")
    names = mc[0]
    flagged = {names[i] for i in np.flatnonzero(np.abs(z) >= Z_MAX)}
    assert any("imputed" in name for name in flagged), report(names, z, 15)


@pytest.mark.slow
def test_geweke_two_groups_fixed_effects_negative_control(model, mc, monkeypatch):
    """Fixed effects drawn in step 2 as under the flat prior (no prior precision on B1, and
    tot_eta_prec's shape without B1's prior) must be flagged on B1."""
    flat = dataclasses.replace(model, priors=dataclasses.replace(model.priors, b1_prec=0.0))
    flat.__dict__["small_groups"] = model.small_groups  # both paths, as in the model
    original = sampler_mod.sample_trait_side

    def wrong(model_, state, f_rot=None):
        return original(flat, state, f_rot)

    monkeypatch.setattr(sampler_mod, "sample_trait_side", wrong)
    z = chain_z(model, mc, 2 * NEGATIVE_ITERATIONS, seed=10, label="two groups, flat B1 control")
    names = mc[0]
    flagged = {names[i] for i in np.flatnonzero(np.abs(z) >= Z_MAX)}
    assert any(name.startswith("B1") for name in flagged), report(names, z, 15)


@pytest.mark.slow
def test_geweke_two_groups_blocked_coefficients(model, mc, monkeypatch):
    """The update used with more than JOINT_MAX coefficients per trait (tot_eta_prec given the
    coefficients, then the coefficients in blocks given the others), forced here on the tiny
    model with blocks of one coefficient."""
    from megalmm_cli.gibbs import coefficients

    monkeypatch.setattr(coefficients, "JOINT_MAX", 1)
    # the small-groups kernel draws collapsed only: the model was packed with the usual JOINT_MAX
    monkeypatch.setitem(model.__dict__, "small_groups", None)
    monkeypatch.setattr(coefficients, "BLOCK_SIZE", 1)
    assert not coefficients.is_collapsed(2)
    z = chain_z(model, mc, SC_ITERATIONS, seed=6, label="two groups, blocked coefficients")
    assert np.all(np.isfinite(z))
    assert np.max(np.abs(z)) < Z_MAX, report(mc[0], z, 15)


@pytest.mark.slow
def test_geweke_two_groups_rotation_negative_control(model, mc, monkeypatch):
    """The rotation move given U_F without Lambda's prior in the orbit density must be flagged.
    (Leaving out E_F's or U_F's prior instead moves the statistics of this tiny model too little
    to be seen in 9,000 iterations: max |z| 3.3 and 1.9.)"""
    original = sampler_mod.sample_pair_rotations

    def wrong(blocks, pairs, rng):
        return original([b for i, b in enumerate(blocks) if i != 2], pairs, rng)

    monkeypatch.setattr(sampler_mod, "sample_pair_rotations", wrong)
    z = chain_z(model, mc, 3 * NEGATIVE_ITERATIONS, seed=8, label="two groups, rotation negative control")
    assert np.max(np.abs(z)) >= Z_MAX, report(mc[0], z, 15)
