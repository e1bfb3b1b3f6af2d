"""Convergence diagnostics: a thin wrapper around arviz-stats' array interface.

R-hat is the rank-normalised split R-hat of Vehtari et al. (2021), the maximum of the bulk
(rank-normalised) and tail (folded) versions; ESS is their bulk and tail effective sample
size. All three come from `arviz_stats.base.array_stats`; nothing is computed here by hand.
"""

import warnings

import numpy as np
from arviz_stats.base import array_stats

TAIL_PROB = 0.05  # tail ESS: the smaller of the ESS of the 5% and 95% quantiles


def convergence(draws_by_chain: np.ndarray) -> dict:
    """R-hat, bulk ESS and tail ESS per parameter.

    draws_by_chain: (chains, draws, params), or (chains, draws) for one parameter.
    Returns {"rhat": (params,), "ess_bulk": (params,), "ess_tail": (params,)} (scalars'
    shape () when the input had no params axis). NaN where undefined: a constant parameter
    (R-hat) or fewer than 4 draws per chain.

    With a single chain, arviz-stats gives no R-hat (it needs two chains), so the chain is
    cut into halves passed as two chains; arviz splits those again, giving the R-hat of four
    quarter-chains (slightly stricter than the classic two-half split R-hat). ESS uses the
    chain as it is.
    """
    ary = np.asarray(draws_by_chain, dtype=float)
    if ary.ndim not in (2, 3):
        raise ValueError(f"draws_by_chain must be (chains, draws[, params]), got {ary.shape}")
    n_chains, n_draws = ary.shape[:2]
    for_rhat = ary
    if n_chains == 1:
        half = n_draws // 2
        for_rhat = np.stack([ary[0, :half], ary[0, n_draws - half:]])
    axes = {"chain_axis": 0, "draw_axis": 1}
    with warnings.catch_warnings():  # constant parameters: 0/0 inside arviz, reported as NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        rhat = array_stats.rhat(for_rhat, method="rank", **axes)
        ess_bulk = array_stats.ess(ary, method="bulk", **axes)
        ess_tail = array_stats.ess(ary, method="tail", prob=TAIL_PROB, **axes)
    return {"rhat": np.asarray(rhat, dtype=float), "ess_bulk": np.asarray(ess_bulk, dtype=float),
            "ess_tail": np.asarray(ess_tail, dtype=float)}
