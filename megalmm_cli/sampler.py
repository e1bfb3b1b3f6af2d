"""One Gibbs iteration (DESIGN.md section 3) and the burn-in factor reordering."""

from dataclasses import dataclass
from functools import partial

import numpy as np

from .gibbs.blas import difference_product, matmul, residual
from .gibbs.coefficients import (draw_by_slice, gamma_shape, grouped_normal_equations,
                                 sample_coefficients)
from .gibbs.factors import (factor_pairs, rotate_pairs, sample_factor_scores,
                            sample_pair_rotations, sample_rotated_scores, sample_translation)
from .gibbs.missing import impute_cells
from .gibbs.random import normals
from .gibbs.threads import each_on_own_thread, side_by_side, threads_for
from .gibbs.small_groups import RandomNumbers, sample_small_groups, score_terms
from .gibbs.shrinkage import (loading_precision, sample_ard, sample_horseshoe_columns,
                              sample_horseshoe_lambda)
from .gibbs.variance import (general_loglik, sample_h2_index, sample_random_effects,
                             sample_random_effects_general)
from .gridcache import SliceProducts
from .gridlmm import draw_grid_index
from .model import Model
from .state import State


def impute_missing(model: Model, state: State) -> None:
    """Step 1: redraw imputed cells inside each group's rows."""
    resid_h2 = model.grid_total[state.resid_h2_index]
    resid_sd = np.sqrt((1.0 - resid_h2) / state.tot_eta_prec)
    for gi, g in enumerate(model.groups):
        if g.miss_rows.size == 0:
            continue
        noise = normals(state.rng, g.miss_rows.size)
        with threads_for(g.miss_rows.size * g.rows.size):
            cols = g.col_index
            impute_cells(
                g.miss_ptr, g.miss_rows, model.x1[g.rows], np.ascontiguousarray(state.B1[:, cols]),
                state.F[g.rows], np.ascontiguousarray(state.Lambda[:, cols]), g.rot.vectors,
                state.U_R_rot[gi], resid_sd[cols], noise, state.Y[gi], state.Y_rot[gi],
            )


def sample_trait_side(model: Model, state: State, f_rot_all=None) -> None:
    """Steps 2-4 per group: (tot_eta_prec, B1, Lambda), then resid_h2, then U_R.

    Small groups with one random effect (model.small_groups) are updated together in one
    kernel after the others; their random numbers are drawn in the groups' order, so the
    chain's stream is the same as with every group on its own.
    f_rot_all: (n, k) F in the factor rotation, reused by groups that share it (optional).
    """
    # each group's rotation of F (n_g^2 k) is often its largest product: on two threads first
    f_rots = [f_rot_all if f_rot_all is not None and g.rot is model.factor_rot
              else matmul(g.rot.vectors.T, state.F[g.rows]) for g in model.groups]
    small = model.small_groups
    members = set() if small is None else set(small.members.tolist())
    draws = RandomNumbers.empty()
    group_draws = {}
    for gi, g in enumerate(model.groups):  # every group's random numbers, in the chain's order
        if gi in members:
            _draw_small_group(model, state, g, draws)
        else:
            group_draws[gi] = _group_draws(model, state, g)
    largest = max(g.rows.size * g.cols.size for g in model.groups)
    if concurrent_groups(model, list(group_draws)):
        each_on_own_thread(partial(_sample_group, model, state), list(group_draws),
                           [model.groups[gi] for gi in group_draws],
                           [f_rots[gi] for gi in group_draws], list(group_draws.values()))
    else:
        with threads_for(largest):  # all groups small: one switch to a single thread for all
            for gi, numbers in group_draws.items():
                g = model.groups[gi]
                with threads_for(g.rows.size * g.cols.size):
                    _sample_group(model, state, gi, g, f_rots[gi], numbers)
    if small is not None:
        p = model.priors
        work = sum(model.groups[gi].rows.size * model.groups[gi].cols.size for gi in members)
        with threads_for(work * (model.k + 1)):
            u_rots = sample_small_groups(
                small, [f_rots[gi] for gi in small.members],
                [state.Y_rot[gi] for gi in small.members], draws, state.resid_h2_index,
                state.lambda_prec, p.b1_prec, p.tot_eta_rate, model.resid_log_prior,
                model.grid[:, 0], state.Lambda, state.B1, state.tot_eta_prec)
        for gi, u_rot in zip(small.members, u_rots):
            state.U_R_rot[gi] = u_rot


def _draw_small_group(model: Model, state: State, g, draws: RandomNumbers) -> None:
    """The random numbers of _sample_group for a group of the one-kernel path, in its order."""
    numbers = _group_draws(model, state, g)  # one random effect: no slice noise
    draws.std_gamma.append(numbers.std_gamma)
    draws.coef_noise.append(numbers.coef_noise)
    draws.uniforms.append(numbers.uniforms)
    draws.effect_noise.append(numbers.effect_noise)


@dataclass
class GroupDraws:
    """The random numbers of one group's steps 2-4, in the order the chain draws them:
    std_gamma, uniforms (t_g,); coef_noise (t_g, b_g); slice_noise (effects, r, t_g), several
    random effects only; effect_noise (n_g, t_g)."""

    std_gamma: np.ndarray
    coef_noise: np.ndarray
    uniforms: np.ndarray
    slice_noise: np.ndarray | None
    effect_noise: np.ndarray


def _group_draws(model: Model, state: State, g) -> GroupDraws:
    p = model.priors
    rng = state.rng
    n_g, t_g = g.rows.size, g.cols.size
    b1g = g.x1_rot.shape[1]
    shape = gamma_shape(p.tot_eta_shape, n_g, b1g if p.b1_prec == 0 else 0, b1g + model.k)
    std_gamma = rng.standard_gamma(shape, size=t_g)
    coef_noise = normals(rng, (t_g, b1g + model.k))
    uniforms = rng.random(t_g)
    slice_noise = (None if g.cache is None else
                   normals(rng, (model.n_effects, g.cache.roots.shape[2], t_g)))
    return GroupDraws(std_gamma, coef_noise, uniforms, slice_noise, normals(rng, (n_g, t_g)))


def concurrent_groups(model: Model, groups: list) -> bool:
    """Whether these groups' steps 2-4 run side by side (threads.side_by_side on their
    sizes); the results are the same either way."""
    return side_by_side([model.groups[gi].rows.size * model.groups[gi].cols.size
                         for gi in groups])


def _sample_group(model: Model, state: State, gi: int, g, f_rot, numbers: GroupDraws) -> None:
    """Steps 2-4 for one missing-data group; f_rot: (n_g, k) its rotated F; numbers: its
    random numbers (_group_draws). Writes only the group's own traits and U_R_rot[gi].

    One random effect: diagonal weights in the group's eigenbasis. Several: whitening through
    the slice transforms of the group's Grid-LMM cache (g.cache).
    """
    p = model.priors
    cols, cache = g.col_index, g.cache
    x_rot = np.hstack([g.x1_rot, f_rot])
    b1g = g.x1_rot.shape[1]
    n_g, t_g = state.Y_rot[gi].shape
    index = state.resid_h2_index[cols]
    prior_prec = _rows_per_column(np.full((b1g, t_g), p.b1_prec), state.lambda_prec[:, cols])
    coefs_t = _rows_per_column(state.B1[g.x1_keep][:, cols], state.Lambda[:, cols])
    std_gamma = numbers.std_gamma
    rate0 = np.full(t_g, p.tot_eta_rate)
    if cache is None:
        gram, grid_of_col, xty, yty = grouped_normal_equations(x_rot, state.Y_rot[gi], g.weights, index)
        tau = sample_coefficients(gram, grid_of_col, xty, yty, prior_prec, rate0, std_gamma,
                                  numbers.coef_noise, coefs_t)
    else:
        # T_s y* kept from the last iteration where the data did not change (gridcache.py),
        # and T_s X* computed once for steps 2 and 3
        white_y = None if g.whitened is None else g.whitened.update(state.Y_rot[gi])
        white_x = None if white_y is None else SliceProducts(cache, x_rot)
        tau = draw_by_slice(cache, x_rot, state.Y_rot[gi], index, prior_prec, rate0, std_gamma,
                            numbers.coef_noise, coefs_t, white_y, white_x)
    coefs = coefs_t.T
    state.tot_eta_prec[cols] = tau
    b1_block = np.zeros((state.B1.shape[0], t_g))
    b1_block[g.x1_keep] = coefs[:b1g]
    state.B1[:, cols] = b1_block
    state.Lambda[:, cols] = coefs[b1g:]

    resid_rot = residual(state.Y_rot[gi], x_rot, coefs)  # coefs: Fortran-ordered, as BLAS takes it
    if cache is None:
        index = sample_h2_index(resid_rot, g.weights, tau, model.resid_log_prior,
                                numbers.uniforms, g.half_logdet)
        state.U_R_rot[gi] = sample_random_effects(
            resid_rot, g.rot.values, model.grid[index, 0], tau, numbers.effect_noise)
    else:
        white = None if white_y is None else (  # T_s (y* - X b) = T_s y* - (T_s X) b
            lambda s: white_y[s] - matmul(white_x(s), coefs))
        loglik = general_loglik(resid_rot, cache, tau, model.resid_log_prior, white)
        index = draw_grid_index(loglik, numbers.uniforms)
        state.U_R_rot[gi] = sample_random_effects_general(
            resid_rot, model.grid[index], tau, index, cache, numbers.slice_noise,
            numbers.effect_noise)
    state.resid_h2_index[cols] = index


def _rows_per_column(top, bottom) -> np.ndarray:
    """The stacked (top; bottom) transposed into a C-ordered (columns, b) array: one
    contiguous row per trait, as the coefficient kernels read them."""
    out = np.empty((top.shape[1], top.shape[0] + bottom.shape[0]))
    out[:, :top.shape[0]] = top.T
    out[:, top.shape[0]:] = bottom.T
    return out


def scores_collapsed(model: Model) -> bool:
    """Whether step 6 draws (F, U_F) jointly with U_F integrated out: one random effect and
    every missing-data group on all training rows (then the factor rotation makes the rows of
    Q'F independent; see gibbs/factors.py)."""
    return model.factor_cache is None and all(g.rot is model.factor_rot for g in model.groups)


def sample_factor_side(model: Model, state: State, f_rot=None) -> None:
    """Step 5: (tot_f_prec, B2F), f_h2, then U_F for the factors as data.

    U_F is left to step 6 when that step draws it jointly with F (scores_collapsed).
    f_rot: (n, k) F in the factor rotation when already computed this iteration.
    """
    if f_rot is None:
        f_rot = model.factor_rot.vectors.T @ state.F
    with threads_for(model.n * model.k):
        _sample_factor_side(model, state, f_rot, not scores_collapsed(model))


def _sample_factor_side(model: Model, state: State, f_rot, draw_effects: bool) -> None:
    p = model.priors
    rng = state.rng
    k, cache = model.k, model.factor_cache
    b2 = model.x2_rot.shape[1]
    shape = gamma_shape(p.tot_f_shape, model.n, 0, b2)
    coefs_t = np.ascontiguousarray(state.B2F.T)
    prior_prec = np.ascontiguousarray(state.B2F_prec.T)
    rate0 = np.full(k, p.tot_f_rate)
    if cache is None:
        gram, grid_of_col, xty, yty = grouped_normal_equations(
            model.x2_rot, f_rot, model.factor_weights, state.f_h2_index)
        tau = sample_coefficients(gram, grid_of_col, xty, yty, prior_prec, rate0,
                                  rng.standard_gamma(shape, size=k), rng.standard_normal((k, b2)),
                                  coefs_t)
    else:
        tau = draw_by_slice(cache, model.x2_rot, f_rot, state.f_h2_index, prior_prec, rate0,
                            rng.standard_gamma(shape, size=k), rng.standard_normal((k, b2)), coefs_t)
    coefs = coefs_t.T
    state.tot_f_prec = tau
    state.B2F = np.ascontiguousarray(coefs)
    resid_rot = f_rot - model.x2_rot @ coefs
    if cache is None:
        index = sample_h2_index(resid_rot, model.factor_weights, tau, model.factor_log_prior,
                                rng.random(k), model.factor_half_logdet)
        if draw_effects:
            state.U_F_rot = sample_random_effects(resid_rot, model.factor_rot.values,
                                                  model.grid[index, 0], tau,
                                                  rng.standard_normal((model.n, k)))
    else:
        loglik = general_loglik(resid_rot, cache, tau, model.factor_log_prior)
        index = draw_grid_index(loglik, rng.random(k))
        state.U_F_rot = sample_random_effects_general(
            resid_rot, model.grid[index], tau, index, cache,
            rng.standard_normal((model.n_effects, cache.roots.shape[2], k)),
            rng.standard_normal((model.n, k)))
    state.f_h2_index = index


def sample_scores(model: Model, state: State) -> None:
    """Step 6: F row by row given everything else; (F, U_F) jointly where scores_collapsed."""
    if scores_collapsed(model):
        sample_scores_and_factor_effects(model, state)
        return
    resid_prec = state.tot_eta_prec / (1.0 - model.grid_total[state.resid_h2_index])
    f_e_prec = state.tot_f_prec / (1.0 - model.grid_total[state.f_h2_index])
    # rhs = f_e_prec * (X2 B2F + U_F) + sum_g Lambda_g Psi_g (y - X1 B1 - U_R)_g; terms held in
    # the factor rotation are summed there first and rotated back once (n x k)
    rhs = (model.x2 @ state.B2F) * f_e_prec[None, :]
    in_factor_basis = state.U_F_rot * f_e_prec[None, :]
    precisions = [None] * len(model.groups)
    small = model.small_groups
    if small is not None and (small.vectors is None or any(
            model.groups[gi].rot is model.factor_rot for gi in small.members)):
        small = None  # (their eigenvectors too large to copy, or one in the factor rotation)
    if small is not None:  # the small groups' terms from one kernel
        fused = score_terms(small, [state.Y[gi] for gi in small.members],
                            [state.U_R_rot[gi] for gi in small.members], model.x1, state.B1,
                            state.Lambda, resid_prec, rhs)
        for position, gi in enumerate(small.members):
            precisions[gi] = fused[position]
    todo = [gi for gi in range(len(model.groups)) if precisions[gi] is None]
    terms = partial(_score_terms, model, state, resid_prec)
    if side_by_side([model.groups[gi].rows.size ** 2 * model.k for gi in todo]):
        parts = each_on_own_thread(terms, todo)
    else:
        parts = [terms(gi) for gi in todo]
    for gi, (contrib, in_basis, precision) in zip(todo, parts):  # summed in the groups' order
        if in_basis is not None:
            in_factor_basis -= in_basis
        rhs[model.groups[gi].rows] += contrib
        precisions[gi] = precision
    common = common_fixed_columns(model)
    k = model.k
    turn = model.factor_cache is None and k > 1  # the rotation move (one random effect)
    # one product rotates both the rotated part of rhs and U_F (for the moves)
    rotated = matmul(model.factor_rot.vectors, np.hstack([in_factor_basis, state.U_F_rot])
                     if common.any() or turn else in_factor_basis)
    rhs += rotated[:, :k]
    with threads_for(model.n * model.k):
        state.F = sample_factor_scores(rhs, precisions, model.pattern_of_row, model.pattern_groups,
                                       f_e_prec, normals(state.rng, (model.n, model.k)))
    if common.any():  # the translation move, given U_F: F's entries are independent a priori
        f_mean = model.x2 @ state.B2F + rotated[:, k:]
        translate_factor_means(state, common, model.x1[:, common], state.F, f_mean,
                               np.broadcast_to(f_e_prec, state.F.shape))
    if turn:
        rotate_factor_pairs_given_effects(model, state, f_e_prec, rotated[:, k:])


def _score_terms(model: Model, state: State, resid_prec, gi: int) -> tuple:
    """Group gi's terms of step 6: its part of rhs on its rows (n_g, k), its part held in the
    factor rotation (n, k; None unless the group is in that rotation) and Lambda_g Psi_g
    Lambda_g' (k, k)."""
    g = model.groups[gi]
    cols = g.col_index
    scaled = state.Lambda[:, cols] * resid_prec[None, cols]  # (k, t_g)
    contrib = matmul(state.Y[gi], scaled.T)
    contrib -= model.x1[g.rows] @ (state.B1[:, cols] @ scaled.T)
    in_basis = None
    if g.rot is model.factor_rot:
        in_basis = matmul(state.U_R_rot[gi], scaled.T)
    elif g.cols.size < model.k:  # rotate the group's U_R back first: n_g^2 t_g < n_g^2 k
        contrib -= matmul(matmul(g.rot.vectors, state.U_R_rot[gi], split_min=1e6), scaled.T)
    else:
        contrib -= matmul(g.rot.vectors, matmul(state.U_R_rot[gi], scaled.T))
    return contrib, in_basis, matmul(scaled, state.Lambda[:, cols].T)


def rotate_factor_pairs_given_effects(model: Model, state: State, f_e_prec, u_f) -> None:
    """The rotation move where F is drawn given U_F (one random effect): F, U_F, Lambda and
    B2F turn together, so F = X2 B2F + U_F + E_F keeps its form; the priors that change are
    those of E_F (iid, precision f_e_prec), of U_F* (independent in the eigenbasis, precision
    tot_f_prec / (h2 s_i)), of Lambda and of B2F. Pairs with a factor at h2 = 0 (U_F = 0 there)
    are left as they are; h2 does not change in the move, so the choice keeps it exact.

    u_f: (n, k) U_F in the original basis (Q U_F*)."""
    pairs = factor_pairs(state.rng, model.k)
    h2 = model.grid[state.f_h2_index, 0]
    pairs = pairs[(h2[pairs[:, 0]] > 0) & (h2[pairs[:, 1]] > 0)]
    if not pairs.size:
        return
    values = model.factor_rot.values
    positive = values > 0  # coordinates with s_i = 0 hold U_F* = 0 in every factor
    safe_h2 = np.where(h2 > 0, h2, 1.0)
    blocks = [(state.F - model.x2 @ state.B2F - u_f, np.broadcast_to(f_e_prec, state.F.shape), 1),
              (state.U_F_rot[positive],
               state.tot_f_prec[None, :] / (safe_h2[None, :] * values[positive, None]), 1)]
    _turn_pairs(state, pairs, blocks, (state.F, state.U_F_rot))


def rotate_factor_pairs(state: State, f_rot, prior_mean, prior_prec) -> None:
    """The rotation move on a random matching of factor pairs; updates f_rot, prior_mean,
    Lambda and B2F in place (gibbs/factors.py)."""
    pairs = factor_pairs(state.rng, state.Lambda.shape[0])
    _turn_pairs(state, pairs, [(f_rot - prior_mean, prior_prec, 1)], (f_rot, prior_mean))


def _turn_pairs(state: State, pairs, score_blocks: list, score_arrays: tuple) -> None:
    """Draw each pair's angle from the orbit density of score_blocks plus the priors of Lambda
    and B2F, then turn score_arrays ((., k) each), Lambda and B2F in place."""
    blocks = score_blocks + [(state.Lambda, state.tot_eta_prec[None, :] * state.lambda_prec, 0)]
    if state.B2F.shape[0]:
        blocks.append((state.B2F, state.tot_f_prec[None, :] * state.B2F_prec, 1))
    cos, sin = sample_pair_rotations(blocks, pairs, state.rng)
    for array in score_arrays:
        rotate_pairs(array, pairs, cos, sin)
    rotate_pairs(state.Lambda, pairs, cos, sin, axis=0)
    if state.B2F.shape[0]:
        rotate_pairs(state.B2F, pairs, cos, sin)


def translate_factor_means(state: State, common, x, scores, prior_mean, prior_prec) -> None:
    """The translation move: scores (n, k) -> scores + x A and B1[common] -> B1[common] - A
    Lambda in place, A (b, k) from its exact conditional (gibbs/factors.py). x: (n, b) the
    common fixed-effect columns in the basis of scores; prior_mean, prior_prec: (n, k)."""
    shift = sample_translation(x, scores - prior_mean, prior_prec,
                               state.rng.standard_normal((x.shape[1], scores.shape[1])))
    scores += x @ shift
    state.B1[common] -= shift @ state.Lambda


def common_fixed_columns(model: Model) -> np.ndarray:
    """(b1,) bool: fixed-effect columns estimated in every missing-data group, those the
    translation move may shift (a column dropped by a group keeps B1 = 0 there). No column
    under a proper prior on B1 (priors.b1_prec > 0), where the move would change B1's prior
    density."""
    common = np.full(model.x1.shape[1], model.priors.b1_prec == 0)
    for g in model.groups:
        common &= g.x1_keep
    return common


def sample_scores_and_factor_effects(model: Model, state: State) -> None:
    """Step 6 with U_F integrated out: F* = Q'F row by row, the translation move of F and B1,
    the rotation move of factor pairs, then U_F* given F* (all exact)."""
    resid_prec = state.tot_eta_prec / (1.0 - model.grid_total[state.resid_h2_index])
    h2 = model.grid[state.f_h2_index, 0]
    values = model.factor_rot.values
    prior_prec = state.tot_f_prec[None, :] / (h2[None, :] * values[:, None] + (1.0 - h2)[None, :])
    prior_mean = model.x2_rot @ state.B2F
    rhs = prior_prec * prior_mean
    precision = np.zeros((model.k, model.k))
    for gi, g in enumerate(model.groups):
        cols = g.col_index
        scaled = state.Lambda[:, cols] * resid_prec[None, cols]  # (k, t_g)
        # (y* - u_R*) Lambda' Psi in one product: the difference costs a pass, a product n_g t_g k
        rhs += difference_product(state.Y_rot[gi], state.U_R_rot[gi], scaled.T)
        rhs -= g.x1_rot @ (state.B1[g.x1_keep][:, cols] @ scaled.T)
        precision += matmul(scaled, state.Lambda[:, cols].T)
    with threads_for(model.n * model.k * model.k):  # n systems of k x k (k^3 / 6 each)
        f_rot = sample_rotated_scores(rhs, precision, prior_prec,
                                      normals(state.rng, (model.n, model.k)))
        common = common_fixed_columns(model)
        if common.any():
            first = model.groups[0]  # every group is on all training rows here
            x_rot = (first.x1_rot if np.array_equal(first.x1_keep, common)
                     else matmul(model.factor_rot.vectors.T, model.x1[:, common]))
            translate_factor_means(state, common, x_rot, f_rot, prior_mean, prior_prec)
        if model.k > 1:
            rotate_factor_pairs(state, f_rot, prior_mean, prior_prec)
        state.F = matmul(model.factor_rot.vectors, f_rot)
        state.U_F_rot = sample_random_effects(f_rot - prior_mean, values, h2, state.tot_f_prec,
                                              normals(state.rng, (model.n, model.k)))


def sample_shrinkage(model: Model, state: State) -> None:
    """Steps 7-8: prior precisions of Lambda and B2F."""
    p = model.priors
    if p.lambda_type == "ARD":
        state.lambda_phi, state.delta, state.lambda_prec = sample_ard(
            state.Lambda, state.tot_eta_prec, state.delta, state.rng, p.lambda_df,
            p.delta_1, p.delta_2, p.delta_iterations)
    else:
        global_scale = p.lambda_prop_0 / (1.0 - p.lambda_prop_0) / np.sqrt(model.n)
        (state.lambda_phi, state.lambda_nu, g2, xi, state.delta,
         state.lambda_prec) = sample_horseshoe_lambda(
            state.Lambda, state.tot_eta_prec, state.lambda_phi, state.lambda_nu,
            state.lambda_global[0], state.lambda_global[1], state.delta, state.rng, global_scale,
            p.delta_2, p.delta_iterations)
        state.lambda_global = np.array([g2, xi])
    if state.B2F.shape[0] and p.b2_type == "horseshoe":
        global_scale = p.b2_prop_0 / (1.0 - p.b2_prop_0) / np.sqrt(model.n)
        (state.b2_local2, state.b2_local_nu, state.b2_global2, state.b2_global_xi,
         state.B2F_prec) = sample_horseshoe_columns(
            state.B2F, state.tot_f_prec, state.b2_local2, state.b2_local_nu, state.b2_global2,
            state.b2_global_xi, state.rng, global_scale)


def gibbs_iteration(model: Model, state: State) -> None:
    """One full sweep, in the order of DESIGN.md section 3."""
    impute_missing(model, state)
    f_rot = matmul(model.factor_rot.vectors.T, state.F)  # F is unchanged until step 6
    sample_trait_side(model, state, f_rot)
    sample_factor_side(model, state, f_rot)
    sample_scores(model, state)
    sample_shrinkage(model, state)
    state.iteration += 1


def reorder_factors(model: Model, state: State) -> np.ndarray:
    """Burn-in only: order factors by decreasing size sum_j Lambda_lj^2 * mean(F_l^2).

    Permutes every factor-indexed parameter; the column-ordered shrinkage (delta) stays with
    the position, so lambda_prec is rebuilt from the permuted local terms. Returns the order.
    """
    size = (state.Lambda ** 2).sum(axis=1) * (state.F ** 2).mean(axis=0)
    order = np.argsort(-size, kind="stable")
    if np.array_equal(order, np.arange(model.k)):
        return order
    state.take_factors(order)
    state.lambda_prec = loading_precision(model.priors.lambda_type, state.lambda_phi,
                                          state.delta, state.lambda_global[0])
    return order
