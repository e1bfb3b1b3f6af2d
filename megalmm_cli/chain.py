"""Runs one chain: burn-in with factor reordering, thinned draws, checkpoints and resume.

The driver owns iteration counts, thinning, checkpoints and storage; the Gibbs steps
(sampler.py) only see the model and the state. Randomness comes from two Generators derived
from (run seed, chain number) and saved in every checkpoint, so a resumed chain continues
exactly as an uninterrupted one would.
"""

import time
from dataclasses import dataclass

import numpy as np

from .factor_count import AdaptationRule, adapt_factors
from .faults import kill_point, pause_point
from .gibbs.shrinkage import loading_precision
from .model import Model
from .accumulate import EMPTY, add_draw
from .posterior import (RunningMoments, draw, factor_parts, model_u_cells, param_shape,
                        random_effects, random_effects_by_effect)
from .sampler import gibbs_iteration, reorder_factors
from .signals import StopRequested
from .state import State, initial_state
from .storage import Checkpoint

EFFECT_PARAMS = {"U", "eta_hat", "U_F", "U_R"}
DERIVED_SAMPLES = ("U_cells",)  # recorded from the means' by-products, not from draw()


def recorded_samples(sample_names, mean_names) -> tuple:
    """The sampled parameters to record (and to create chain datasets for): the configured
    ones, plus "U_cells" (U at a fixed set of cells, posterior.u_cell_indices) when "U" is
    among the posterior means. Pass the result to run_chain as its sample_names."""
    names = tuple(sample_names)
    if "U" in mean_names and "U_cells" not in names:
        names += ("U_cells",)
    return names


def _storable(storage, names) -> tuple:
    """`names` less the derived samples the storage has no dataset for (a chain file created
    for posterior.samples only, or an older chain being resumed). MemoryChain keeps anything."""
    if not any(n in DERIVED_SAMPLES for n in names) or not hasattr(storage, "sample_names"):
        return tuple(names)
    present = set(storage.sample_names())
    return tuple(n for n in names if n not in DERIVED_SAMPLES or n in present)


@dataclass(frozen=True)
class Plan:
    burn_in: int
    samples: int            # iterations after burn-in
    thin: int
    reorder_every: int
    checkpoint_every: int

    @property
    def total(self) -> int:
        return self.burn_in + self.samples

    def draws(self, iterations: int) -> int:
        """Number of draws recorded after `iterations` iterations."""
        return max(0, iterations - self.burn_in) // self.thin


def chain_generators(seed: int, chain: int) -> tuple[np.random.Generator, np.random.Generator]:
    """The chain's Generator and its prediction-noise Generator, from (seed, chain)."""
    chain_seq, pred_seq = np.random.SeedSequence([seed, chain]).spawn(2)
    return np.random.Generator(np.random.PCG64(chain_seq)), np.random.Generator(np.random.PCG64(pred_seq))


def _imputing(model: Model) -> list[bool]:
    return [g.miss_rows.size > 0 for g in model.groups]


def _imputed_cells(g):
    """(rows, cols) of a group's imputed cells, in the order of g.miss_rows."""
    return g.miss_rows, np.repeat(np.arange(g.cols.size), np.diff(g.miss_ptr))


def to_checkpoint(model: Model, state: State, moments: dict, n_draws: int, elapsed: float,
                  first_seconds: float = 0.0, runs: int = 0) -> Checkpoint:
    """Checkpoint of a state, without what can be rebuilt exactly: of a group's data only its
    imputed cells (the observed ones are the model's), nothing of groups without imputed
    cells (their Y and U_R are not carried from one iteration to the next), and with the ARD
    prior neither lambda_nu (always 1) nor lambda_prec (= lambda_phi * cumprod(delta))."""
    arrays = state.array_fields()
    imputing = _imputing(model)
    arrays["Y"] = [y[_imputed_cells(g)] if imp else np.zeros(0)
                   for g, y, imp in zip(model.groups, state.Y, imputing)]
    arrays["U_R_rot"] = [u if imp else np.zeros(0) for u, imp in zip(state.U_R_rot, imputing)]
    if model.priors.lambda_type == "ARD":
        arrays["lambda_nu"] = arrays["lambda_prec"] = np.zeros(0)
    means = {}
    for name, mom in moments.items():
        means[f"{name}.mean"] = mom.mean
        if mom.m2 is not None:
            means[f"{name}.m2"] = mom.m2
        means[f"{name}.count"] = np.array(mom.count)
    rng_states = {"rng": state.rng.bit_generator.state, "pred_rng": state.pred_rng.bit_generator.state}
    return Checkpoint(state.iteration, n_draws, arrays, rng_states, means, elapsed, first_seconds, runs)


def checkpoint_bytes(model: Model, mean_names) -> int:
    """Bytes of one checkpoint of the state (as to_checkpoint makes it) with running means
    of `mean_names` (float64 throughout; the Generator states are not counted)."""
    n, t, k, N = model.n, model.t, model.k, len(model.ids)
    b1, b2 = model.x1_all.shape[1], model.x2_all.shape[1]
    per_loading = 2 if model.priors.lambda_type == "ARD" else 4  # Lambda, phi (, prec, nu)
    per_trait = b1 * t + per_loading * k * t + 2 * t              # B1; loadings; prec, h2
    per_factor = 2 * n * k + 3 * k + 4 * b2 * k + 2 * k + 2   # F, U_F_rot; ...; lambda_global
    per_factor += k + 2                     # factor_share; factor_path before any change of k
    groups = sum(g.rows.size * g.cols.size * (2 if g.miss_rows.size else 1) + g.miss_rows.size
                 for g in model.groups)                    # Y_rot (, U_R_rot), imputed cells
    means = 0
    for name in mean_names:
        width = k if name in ("U_F", "F") else t
        rows = n if name == "F" else N
        means += (1 if name == "eta_hat" else 2) * rows * width + 1
    if model.n_effects > 1 and "U" in mean_names:
        means += 2 * model.n_effects * N * t + 1
    return 8 * (per_trait + per_factor + groups + means)


def chain_file_bytes(model: Model, sample_shapes: dict, capacity: int, dtype, mean_names) -> int:
    """Size of a chain file: `capacity` draws of each sampled parameter in `dtype`, and two
    checkpoint buffers of the state."""
    itemsize = np.dtype(dtype).itemsize
    draws = sum(int(np.prod(shape)) for shape in sample_shapes.values()) * capacity * itemsize
    return draws + 2 * checkpoint_bytes(model, mean_names) + (1 << 16)


def from_checkpoint(model: Model, cp: Checkpoint) -> tuple[State, dict]:
    """The state and running moments of a checkpoint (the inverse of to_checkpoint)."""
    arrays = dict(cp.arrays)
    for gi, (g, imp) in enumerate(zip(model.groups, _imputing(model))):
        y = np.ascontiguousarray(model.y_std[np.ix_(g.rows, g.cols)])
        if imp:
            y[_imputed_cells(g)] = arrays["Y"][gi]
        else:
            arrays["U_R_rot"][gi] = np.zeros((g.rows.size, g.cols.size))
        arrays["Y"][gi] = y
    if model.priors.lambda_type == "ARD":
        arrays["lambda_nu"] = np.ones_like(arrays["lambda_phi"])
        arrays["lambda_prec"] = loading_precision("ARD", arrays["lambda_phi"], arrays["delta"], None)
    rng = np.random.Generator(np.random.PCG64())
    rng.bit_generator.state = cp.rng_states["rng"]
    pred_rng = np.random.Generator(np.random.PCG64())
    pred_rng.bit_generator.state = cp.rng_states["pred_rng"]
    state = State(iteration=cp.iteration, rng=rng, pred_rng=pred_rng, **arrays)
    names = {key.rsplit(".", 1)[0] for key in cp.means}
    moments = {
        name: RunningMoments(int(cp.means[f"{name}.count"]), cp.means[f"{name}.mean"].copy(),
                             cp.means[f"{name}.m2"].copy() if f"{name}.m2" in cp.means else None)
        for name in names
    }
    return state, moments


@dataclass
class RunResult:
    iterations_done: int      # in this invocation
    iteration: int            # where the chain stands
    n_draws: int
    seconds: float            # sampling time in this invocation
    interrupted_by: int | None
    first_seconds: float = 0.0  # the first iteration of this invocation (numba compilation)


def _factor_moments(model: Model, moments: dict) -> None:
    """Empty running moments of the factor-indexed means for the model's k (k changed during
    burn-in, before any draw was added)."""
    rows = {"U_F": len(model.ids), "F": model.n}
    for name, mom in moments.items():
        if name in rows and mom.mean.shape[1] != model.k:
            assert mom.count == 0, "k changed after the first stored draw"
            moments[name] = RunningMoments.empty((rows[name], model.k), mom.m2 is not None)


def run_chain(model: Model, storage, plan: Plan, sample_names, mean_names, seed: int, chain: int,
              progress=None, stop: StopRequested | None = None, draw_dtype=np.float64,
              adaptation: AdaptationRule | None = None) -> RunResult:
    """Advance a chain to plan.total iterations, resuming from storage's last checkpoint.

    storage: ChainFile or MemoryChain; progress: callable(iterations_done_now) or None.
    draw_dtype: precision of a stored draw's large products (Q u_R*, the factor parts of U
    and eta_hat); float32 (posterior.dtype) halves their cost. The chain itself is unaffected.
    sample_names: the parameters whose draws are stored, recorded_samples(...) to include
    "U_cells" (dropped when U is not a posterior mean or the chain file has no dataset for it).
    adaptation: `model.factors: auto` (factor_count.py); model.k is then the starting k, and
    the sampled parameters' datasets are reshaped to the final k before the first draw.
    """
    draw_dtype = np.dtype(draw_dtype)
    checkpoint = storage.load()
    if checkpoint is None:
        rng, pred_rng = chain_generators(seed, chain)
        state = initial_state(model, rng, pred_rng, flat_shrinkage=adaptation is not None)
        moments = {name: RunningMoments.empty((len(model.ids), model.t), name != "eta_hat")
                   for name in mean_names if name in ("U", "eta_hat", "U_R")}
        moments.update({name: RunningMoments.empty((len(model.ids), model.k)) for name in mean_names
                        if name == "U_F"})
        moments.update({name: RunningMoments.empty((model.n, model.k)) for name in mean_names
                        if name == "F"})
        if model.n_effects > 1 and "U" in mean_names:  # genetic values of each effect
            moments["U_by_effect"] = RunningMoments.empty((model.n_effects, len(model.ids), model.t))
        n_draws, elapsed, first_total, runs = 0, 0.0, 0.0, 0
    else:
        state, moments = from_checkpoint(model, checkpoint)
        n_draws, elapsed = checkpoint.n_draws, checkpoint.elapsed
        first_total, runs = checkpoint.first_seconds, checkpoint.runs
        model = model.with_factors(state.Lambda.shape[0])  # k as adapted before the checkpoint

    sample_names = _storable(storage, sample_names)
    if "U_cells" in sample_names and "U" not in moments:  # U_cells come with the mean of U
        sample_names = tuple(n for n in sample_names if n != "U_cells")
    u_cells = model_u_cells(model) if "U_cells" in sample_names else None
    start_iteration = state.iteration
    started = time.perf_counter()
    interrupted = None
    first_seconds = 0.0
    try:
        while state.iteration < plan.total:
            gibbs_iteration(model, state)
            if state.iteration == start_iteration + 1:
                first_seconds = time.perf_counter() - started
                first_total, runs = first_total + first_seconds, runs + 1
            it = state.iteration
            if adaptation is not None and it <= min(adaptation.last_iteration, plan.burn_in):
                model = adapt_factors(model, state, adaptation)
                _factor_moments(model, moments)
            if it <= plan.burn_in and plan.reorder_every and it % plan.reorder_every == 0:
                reorder_factors(model, state)
            if it > plan.burn_in and (it - plan.burn_in) % plan.thin == 0:
                if n_draws == 0 and hasattr(storage, "fit_samples"):  # k is final now
                    storage.fit_samples({name: param_shape(model, name) for name in sample_names})
                storage.append(n_draws, _record(model, state, sample_names, moments, u_cells,
                                                draw_dtype))
                n_draws += 1
            if progress is not None:
                progress(it - start_iteration)
            pause_point("sample:iteration")
            kill_point("sample:iteration")
            stop_now = stop is not None and stop.signal is not None
            if it % plan.checkpoint_every == 0 or it == plan.total or stop_now:
                now = time.perf_counter()
                elapsed += now - started
                started = now
                storage.commit(to_checkpoint(model, state, moments, n_draws, elapsed, first_total, runs))
            if stop_now:
                interrupted = stop.signal
                break
    finally:
        storage.close()  # the draws' file descriptor
    return RunResult(state.iteration - start_iteration, state.iteration, n_draws,
                     elapsed - (checkpoint.elapsed if checkpoint else 0.0), interrupted, first_seconds)


def _record(model: Model, state: State, sample_names, moments: dict, u_cells=None,
            dtype=np.float64) -> dict:
    """One stored draw: returns the sampled parameters (name -> array) and updates the
    running moments (float64 accumulators; dtype: precision of the products that form U_R,
    U and eta_hat)."""
    need_effects = bool(moments) or any(name in EFFECT_PARAMS for name in sample_names)
    by_effect = None
    if need_effects and "U_by_effect" in moments:
        by_effect = random_effects_by_effect(model, state)
        effects = (by_effect[0].sum(axis=0), by_effect[1].sum(axis=0))
    else:
        effects = random_effects(model, state, dtype) if need_effects else None
    values = draw(model, state, [n for n in sample_names if n not in DERIVED_SAMPLES], effects)
    if not moments:
        return values
    u_f, u_r = effects
    genetic, expected = moments.get("U"), moments.get("eta_hat")
    if genetic is not None or expected is not None:
        top, bottom = factor_parts(model, state, u_f, u_r.dtype)
        count = (genetic or expected).count + 1
        add_draw(top, bottom, u_r, model.x1_all, state.B1, model.trait_sd, model.trait_mean,
                 count, genetic.mean if genetic else EMPTY, genetic.m2 if genetic else EMPTY,
                 expected.mean if expected else EMPTY)
        for mom in (genetic, expected):
            if mom is not None:
                mom.count = count
        if u_cells is not None:
            rows, cols = u_cells
            values["U_cells"] = (top[rows, cols] + u_r[rows, cols]) * model.trait_sd[cols]
    extra = draw(model, state, [n for n in moments if n in ("F", "U_F", "U_R")], effects)
    if by_effect is not None:  # U_e = U_F,e Lambda + U_R,e per effect, original units
        u_f_by, u_r_by = by_effect
        extra["U_by_effect"] = (u_f_by @ state.Lambda + u_r_by) * model.trait_sd
    for name, mom in moments.items():
        if name not in ("U", "eta_hat"):
            mom.add(extra[name])
    return values
