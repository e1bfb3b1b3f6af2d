"""Genotyped-only individuals (in the kinship, no phenotype): their conditional draws of U and
the U_sd accumulated from them, against the closed-form conditional distribution.

Given one state, U of the other individuals given the training rows' random effects is
Gaussian with mean K_no K_oo^-1 U_o and, per trait j, covariance
S g_j, S = K_nn - K_no K_oo^-1 K_on, g_j = sum_l Lambda_lj^2 f_h2_l / tot_f_prec_l
+ resid_h2_j / tot_eta_prec_j (the genetic variance of trait j in the state's units).
"""

import numpy as np
import pytest

from megalmm_cli.accumulate import EMPTY, add_draw
from megalmm_cli.posterior import factor_parts, random_effects
from megalmm_cli.sampler import gibbs_iteration
from megalmm_cli.simulate import simulate_data
from megalmm_cli.state import initial_state

from .conftest import model_from_simulation
from .test_conditionals import assert_gaussian_cov_close, assert_mean_close

DRAWS = 20_000


@pytest.fixture(scope="module")
def problem():
    sim = simulate_data(60, 8, 3, missing=0.2, seed=8, n_markers=300, n_new=6)
    model = model_from_simulation(sim, k=4, max_groups=1)
    state = initial_state(model, np.random.default_rng(1), np.random.default_rng(2))
    for _ in range(30):
        gibbs_iteration(model, state)
    order = [sim.ids.index(i) for i in model.ids]
    kinship = sim.kinship[np.ix_(order, order)]
    n, total = model.n, len(model.ids)
    train, new = np.arange(n), np.arange(n, total)
    k_oo_inv = np.linalg.pinv(kinship[np.ix_(train, train)])
    cross = kinship[np.ix_(new, train)] @ k_oo_inv
    schur = kinship[np.ix_(new, new)] - cross @ kinship[np.ix_(train, new)]
    f_h2 = model.grid[state.f_h2_index, 0]
    resid_h2 = model.grid[state.resid_h2_index, 0]
    genetic = ((state.Lambda ** 2) * (f_h2 / state.tot_f_prec)[:, None]).sum(axis=0) \
        + resid_h2 / state.tot_eta_prec
    u_train = (model.factor_rot.vectors @ state.U_F_rot) @ state.Lambda \
        + model.groups[0].rot.vectors @ state.U_R_rot[0]
    assert len(model.groups) == 1 and np.array_equal(model.groups[0].rows, train)
    return model, state, new, cross @ u_train, schur, genetic


def test_conditional_draws_of_genotyped_only_individuals(problem):
    model, state, new, mean, schur, genetic = problem
    draws = np.empty((DRAWS, new.size, model.t))
    for d in range(DRAWS):
        u_f, u_r = random_effects(model, state)
        draws[d] = (u_f[new] @ state.Lambda + u_r[new])
    for j in (0, 3, 7):
        cov = schur * genetic[j]
        assert_mean_close(draws[:, :, j], mean[:, j], cov, f"trait {j}")
        assert_gaussian_cov_close(draws[:, :, j], cov, f"trait {j}")
    # across traits: Cov(U_ij, U_ij') = S_ii (sum_l Lambda_lj Lambda_lj' f_h2_l / tot_f_prec_l)
    f_h2 = model.grid[state.f_h2_index, 0]
    lam = state.Lambda * np.sqrt(f_h2 / state.tot_f_prec)[:, None]
    cross_cov = schur[0, 0] * (lam[:, 1] @ lam[:, 2])
    pair = draws[:, 0, [1, 2]]
    cov = np.array([[schur[0, 0] * genetic[1], cross_cov], [cross_cov, schur[0, 0] * genetic[2]]])
    assert_gaussian_cov_close(pair, cov, "traits 1, 2 of one individual")


def test_u_sd_of_genotyped_only_individuals_is_the_conditional_sd(problem):
    """The running moments predict keeps (accumulate.add_draw on posterior.factor_parts), with
    the state held fixed, give U_sd^2 = S_ii g_j sd_j^2 for genotyped-only individuals and
    U_sd = 0 for phenotyped ones (their U is fixed by the state)."""
    model, state, new, mean, schur, genetic = problem
    total = len(model.ids)
    u_mean, u_m2 = np.zeros((total, model.t)), np.zeros((total, model.t))
    sd, centre = model.trait_sd, model.trait_mean
    for count in range(1, DRAWS + 1):
        u_f, u_r = random_effects(model, state)
        top, bottom = factor_parts(model, state, u_f)
        add_draw(top, bottom, u_r, model.x1_all, state.B1, sd, centre, count, u_mean, u_m2, EMPTY)
    u_sd = np.sqrt(u_m2 / (DRAWS - 1))
    expected = np.sqrt(np.outer(np.diag(schur), genetic)) * sd[None, :]
    # the sd of 20,000 Gaussian draws: relative standard error 1 / sqrt(2 * 20,000) = 0.5%
    np.testing.assert_allclose(u_sd[new], expected, rtol=0.03)
    np.testing.assert_allclose(u_mean[new], mean * sd[None, :], atol=5 * expected.max() / np.sqrt(DRAWS))
    assert np.abs(u_sd[: model.n]).max() < 1e-9 * np.abs(u_mean[: model.n]).max()
