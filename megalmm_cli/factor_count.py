"""`model.factors: auto`: the number of factors adapted during burn-in, then frozen.

After the adaptive Gibbs sampler of Bhattacharya & Dunson (2011) for shrinkage factor models.
After iteration i of the adaptation window (the first FREEZE_FRACTION of burn-in), with
probability exp(-(ADAPT_B0 + ADAPT_B1 i)):
- the negligible factors are dropped, all but the SPARE largest of them;
- when fewer than SPARE are negligible, factors are added, at least GROWTH k of them, so that
  a large k is reached in few steps (surplus ones empty and are dropped again).
B&D keep no spares (drop all negligible factors, add one when none is); the spares keep k
from settling one short when the weakest real factor dips below the threshold.

Negligible: the factor carries on average less than `epsilon` of a trait's variance
(lambda_lj^2 mean_i F_il^2 against trait j's total variance sum_l lambda_lj^2 mean_i F_il^2
+ 1 / tot_eta_prec_j: no dependence on the traits' units, and a factor that matters for a
few traits only is kept), in a running average over the window's draws (weight SMOOTHING
for the newest); decided on one draw, k jumps by several factors from one step to the next.
From the freeze on, the chain is an ordinary Gibbs chain of a fixed-k model.
"""

import math
from dataclasses import dataclass

import numpy as np

from .config_schema import FactorAdaptation
from .gibbs.shrinkage import loading_precision
from .model import Model
from .state import State

ADAPT_B0, ADAPT_B1 = 1.0, 5e-4   # adaptation probability exp(-(b0 + b1 * iteration))
FREEZE_FRACTION = 0.8            # k changes only in this first share of burn-in
DEFAULT_START = 20               # `auto`: start from min(t, 20) factors
MAX_OVER_START = 10              # `auto`: at most min(t, 10 * start) factors
GROWTH = 0.1                     # factors added at once: at least round(GROWTH * k)
SPARE = 2                        # negligible factors kept as headroom
SMOOTHING = 0.1                  # weight of the current draw in each factor's running share


@dataclass(frozen=True)
class AdaptationRule:
    max_factors: int
    epsilon: float
    last_iteration: int      # k may change after iterations 1..last_iteration

    def probability(self, iteration: int) -> float:
        return math.exp(-(ADAPT_B0 + ADAPT_B1 * iteration))


def factor_range(setting, t: int) -> tuple[int, int]:
    """(start, max) numbers of factors of a model.factors setting (an int k gives (k, k))."""
    if not isinstance(setting, FactorAdaptation):
        return int(setting), int(setting)
    start = setting.start if setting.start is not None else min(t, DEFAULT_START,
                                                                 setting.max or DEFAULT_START)
    top = setting.max if setting.max is not None else min(t, MAX_OVER_START * start)
    return start, max(start, top)


def adaptation_rule(setting, t: int, burn_in: int) -> AdaptationRule | None:
    """The rule of a model.factors setting, or None for a fixed k."""
    if not isinstance(setting, FactorAdaptation):
        return None
    _, top = factor_range(setting, t)
    return AdaptationRule(top, setting.epsilon, int(FREEZE_FRACTION * burn_in))


def factor_shares(state: State) -> np.ndarray:
    """(k,) each factor's average share of a trait's variance in the current draw."""
    f_sq = (state.F * state.F).mean(axis=0)                      # (k,)
    carried = state.Lambda * state.Lambda * f_sq[:, None]       # (k, t)
    total = carried.sum(axis=0) + 1.0 / state.tot_eta_prec       # (t,)
    return (carried / total[None, :]).mean(axis=1)


def adapt_factors(model: Model, state: State, rule: AdaptationRule) -> Model:
    """One adaptation step after iteration state.iteration, which run_chain calls in the
    window only (iterations 1..rule.last_iteration): the model with the new number of factors
    (the same model when k did not change)."""
    it = state.iteration
    now = factor_shares(state)
    fresh = np.isnan(state.factor_share)  # factors added at the last step
    state.factor_share = np.where(fresh, now, (1.0 - SMOOTHING) * state.factor_share + SMOOTHING * now)
    if state.rng.random() >= rule.probability(it):
        return model
    shares = state.factor_share
    negligible = np.flatnonzero(shares < rule.epsilon)
    k = model.k
    if negligible.size > SPARE:  # drop all but the SPARE largest negligible ones
        keep = np.ones(k, dtype=bool)
        by_size = negligible[np.argsort(-shares[negligible], kind="stable")]
        keep[by_size[SPARE:]] = False
        drop_factors(model, state, keep)
    elif negligible.size < SPARE and k < rule.max_factors:
        add_factors(model, state, min(max(SPARE - negligible.size, round(GROWTH * k)),
                                      rule.max_factors - k))
    else:
        return model
    new_k = state.Lambda.shape[0]
    state.factor_path = np.vstack([state.factor_path, [[it, new_k]]])
    return model.with_factors(new_k)


def _lambda_prec(model: Model, state: State) -> np.ndarray:
    return loading_precision(model.priors.lambda_type, state.lambda_phi, state.delta,
                             state.lambda_global[0])


def drop_factors(model: Model, state: State, keep: np.ndarray) -> None:
    """Keep only the factors `keep` ((k,) bool) in every factor-indexed parameter. The first
    column-ordered shrinkage term stays first (delta_1 has its own prior)."""
    state.take_factors(keep, contiguous=True)
    first = state.delta[0]
    state.delta = state.delta[keep]
    state.delta[0] = first
    state.lambda_prec = _lambda_prec(model, state)


def add_factors(model: Model, state: State, count: int) -> None:
    """Append `count` factors: local precisions and loadings from the prior, given delta = 1
    (at the last factor's prior scale: from the delta prior a new factor would start smaller
    than the last one, usually negligible, and be dropped again); scores N(0, 1) (tot_f_prec =
    1, U_F = 0), h2 uniform on the grid, B2F = 0 with its prior's starting values. The random
    numbers are drawn factor by factor; every array grows once."""
    p, rng = model.priors, state.rng
    t = state.Lambda.shape[1]
    n, b2 = state.F.shape[0], state.B2F.shape[0]
    phis, nus, loadings, scores, h2_index = [], [], [], [], []
    for _ in range(count):
        if p.lambda_type == "ARD":
            phi = rng.gamma(p.lambda_df / 2.0, 2.0 / p.lambda_df, size=t)
            nu = np.ones(t)
        else:
            nu = 1.0 / rng.gamma(0.5, 1.0, size=t)                # local_nu ~ IG(1/2, 1)
            phi = (1.0 / nu) / rng.gamma(0.5, 1.0, size=t)        # local2 ~ IG(1/2, 1/nu)
        state.delta = np.append(state.delta, 1.0)
        tau = np.cumprod(state.delta)[-1]  # the new factor's row of loading_precision
        prec = phi * tau if p.lambda_type == "ARD" else tau / (state.lambda_global[0] * phi)
        phis.append(phi)
        nus.append(nu)
        loadings.append(rng.standard_normal(t) / np.sqrt(state.tot_eta_prec * prec))
        scores.append(rng.standard_normal((n, 1)))
        h2_index.append(rng.integers(0, model.grid.shape[0]))
    state.lambda_phi = np.vstack([state.lambda_phi] + phis)
    state.lambda_nu = np.vstack([state.lambda_nu] + nus)
    state.lambda_prec = _lambda_prec(model, state)
    state.Lambda = np.vstack([state.Lambda] + loadings)
    state.F = np.hstack([state.F] + scores)
    state.U_F_rot = np.hstack([state.U_F_rot, np.zeros((n, count))])
    state.tot_f_prec = np.append(state.tot_f_prec, np.ones(count))
    state.f_h2_index = np.append(state.f_h2_index, h2_index)
    state.B2F = np.hstack([state.B2F, np.zeros((b2, count))])
    state.B2F_prec = np.hstack([state.B2F_prec, np.full((b2, count), p.b2_ridge_prec)])
    state.b2_local2 = np.hstack([state.b2_local2, np.ones((b2, count))])
    state.b2_local_nu = np.hstack([state.b2_local_nu, np.ones((b2, count))])
    state.b2_global2 = np.append(state.b2_global2, np.ones(count))
    state.b2_global_xi = np.append(state.b2_global_xi, np.ones(count))
    state.factor_share = np.append(state.factor_share, np.full(count, np.nan))


def describe_path(path: np.ndarray) -> str:
    """One line on a chain's (iteration, k) path: "20 -> 10 (8-14, 97 changes, last at
    iteration 158)", or "12" for a fixed k."""
    path = np.asarray(path).reshape(-1, 2)
    ks = path[:, 1]
    if len(path) == 1:
        return str(int(ks[0]))
    return (f"{int(ks[0])} -> {int(ks[-1])} ({int(ks.min())}-{int(ks.max())}, "
            f"{len(path) - 1} changes, last at iteration {int(path[-1, 0])})")


def describe_setting(setting, t: int) -> str:
    """model.factors as the report shows it (t traits)."""
    if not isinstance(setting, FactorAdaptation):
        return str(setting)
    start, top = factor_range(setting, t)
    return f"auto (start {start}, max {top}, epsilon {setting.epsilon:g})"
