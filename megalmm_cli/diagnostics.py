"""Convergence diagnostics for many parameters at once.

R-hat is the rank-normalised split R-hat of Vehtari et al. (2021), the maximum of the bulk
(rank-normalised) and tail (folded) versions; ESS is their bulk and tail effective sample
size. The formulas are those of ArviZ (arviz-stats' `array_stats.rhat(method="rank")` and
`ess(method="bulk" / "tail")`), computed here for all parameters together: ranks, FFT
autocovariances and the R-hat sums are numpy operations over a parameter axis, and Geyer's
initial positive and monotone sequences run in a numba kernel, one parameter per loop. (The
arviz-stats functions loop over parameters in Python: 80 s for 42,000 parameters, where this
takes about a second.) tests/test_diagnostics.py checks the two agree to 1e-10.
"""

import warnings

import numpy as np
from numba import njit, prange
from scipy import special
from scipy.fft import next_fast_len

TAIL_PROB = 0.05  # tail ESS: the smaller of the ESS of the 5% and 95% quantiles
MIN_DRAWS = 4


def convergence(draws_by_chain: np.ndarray) -> dict:
    """R-hat, bulk ESS and tail ESS per parameter.

    draws_by_chain: (chains, draws, params), or (chains, draws) for one parameter.
    Returns {"rhat": (params,), "ess_bulk": (params,), "ess_tail": (params,)} (scalars'
    shape () when the input had no params axis). NaN where undefined: a constant parameter
    (R-hat) or fewer than 4 draws per chain.

    With a single chain there is no R-hat between chains, so the chain is cut into halves
    taken as two chains, which are split again: the R-hat of four quarter-chains (slightly
    stricter than the classic two-half split R-hat). ESS uses the chain as it is.
    """
    ary = np.asarray(draws_by_chain, dtype=float)
    if ary.ndim not in (2, 3):
        raise ValueError(f"draws_by_chain must be (chains, draws[, params]), got {ary.shape}")
    scalar = ary.ndim == 2
    if scalar:
        ary = ary[:, :, None]
    n_chains, n_draws = ary.shape[:2]
    for_rhat = ary
    if n_chains == 1:
        half = n_draws // 2
        for_rhat = np.stack([ary[0, :half], ary[0, n_draws - half:]])
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        out = {"rhat": rhat_rank(for_rhat), "ess_bulk": ess_bulk(ary), "ess_tail": ess_tail(ary)}
    invalid = np.isnan(ary).any(axis=(0, 1))
    for key, value in out.items():
        value[invalid] = np.nan
    if scalar:
        return {key: value[0] for key, value in out.items()}
    return out


# Internally every array is (params, chains, draws): each parameter's draws are contiguous,
# so sorts and FFTs along the draws run over contiguous memory.


def split_chains(ary: np.ndarray) -> np.ndarray:
    """(P, C, S) -> (P, 2C, S // 2): the first and the last half of every chain."""
    half = ary.shape[2] // 2
    return np.concatenate([ary[:, :, :half], ary[:, :, ary.shape[2] - half:]], axis=1)


def z_scale(ary: np.ndarray) -> np.ndarray:
    """Rank-normalise each parameter over all its draws (ties averaged, Blom's offset 3/8)."""
    params, chains, draws = ary.shape
    size = chains * draws
    ranks = average_ranks(np.ascontiguousarray(ary.reshape(params, size)))
    return special.ndtri((ranks - 3 / 8) / (size - 2 * 3 / 8 + 1)).reshape(ary.shape)


@njit(parallel=True, cache=True)
def average_ranks(values):
    """Ranks 1..N of each row of (P, N) values, tied values sharing their average rank (as
    scipy.stats.rankdata(method="average"))."""
    n_rows, n = values.shape
    out = np.empty((n_rows, n))
    for p in prange(n_rows):
        row = values[p]
        order = np.argsort(row, kind="mergesort")
        i = 0
        while i < n:
            j = i
            while j + 1 < n and row[order[j + 1]] == row[order[i]]:
                j += 1
            rank = 0.5 * (i + j) + 1.0
            for m in range(i, j + 1):
                out[p, order[m]] = rank
            i = j + 1
    return out


def _rhat(ary: np.ndarray) -> np.ndarray:
    """Classic R-hat of (P, C, S) per parameter."""
    n = ary.shape[2]
    chain_mean = ary.mean(axis=2)
    chain_var = ary.var(axis=2, ddof=1)
    between = n * chain_mean.var(axis=1, ddof=1)
    within = chain_var.mean(axis=1)
    return np.sqrt((between / within + n - 1) / n)


def rhat_rank(ary: np.ndarray) -> np.ndarray:
    """Rank-normalised split R-hat (bulk and folded tail, the larger) of (C, S, P); NaN with
    fewer than 2 chains or 4 draws."""
    if ary.shape[0] < 2 or ary.shape[1] < MIN_DRAWS:
        return np.full(ary.shape[2], np.nan)
    split = split_chains(_params_first(ary))
    bulk = _rhat(z_scale(split))
    median = np.median(split.reshape(split.shape[0], -1), axis=1)
    tail = _rhat(z_scale(np.abs(split - median[:, None, None])))
    return np.maximum(bulk, tail)


def ess_bulk(ary: np.ndarray) -> np.ndarray:
    if ary.shape[1] < MIN_DRAWS:
        return np.full(ary.shape[2], np.nan)
    return _ess(z_scale(split_chains(_params_first(ary))))


def ess_tail(ary: np.ndarray, prob: float = TAIL_PROB) -> np.ndarray:
    """The smaller of the ESS of the indicators of being below the prob and 1 - prob quantiles."""
    if ary.shape[1] < MIN_DRAWS:
        return np.full(ary.shape[2], np.nan)
    first = _params_first(ary)
    flat = first.reshape(first.shape[0], -1)
    low, high = sorted((prob, 1 - prob))
    result = []
    for p in (low, high):
        quantile = np.quantile(flat, p, axis=1)
        result.append(_ess(split_chains((first <= quantile[:, None, None]).astype(float))))
    return np.minimum(result[0], result[1])


def _params_first(ary: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(ary, 2, 0))


def _ess(ary: np.ndarray) -> np.ndarray:
    """Effective sample size of (P, C, S) per parameter (Geyer's initial monotone sequence)."""
    _, n_chain, n_draw = ary.shape
    acov = _autocov(ary)                                      # (P, C, S)
    chain_mean = ary.mean(axis=2)
    mean_var = acov[:, :, 0].mean(axis=1) * n_draw / (n_draw - 1.0)
    var_plus = mean_var * (n_draw - 1.0) / n_draw
    if n_chain > 1:
        var_plus = var_plus + chain_mean.var(axis=1, ddof=1)
    rho = 1.0 - (mean_var[:, None] - acov.mean(axis=1)) / var_plus[:, None]   # (P, S)
    constant = (ary.max(axis=(1, 2)) - ary.min(axis=(1, 2))) < np.finfo(float).resolution
    ess = _geyer(np.ascontiguousarray(rho), float(n_chain * n_draw))
    ess[constant] = n_chain * n_draw
    return ess


def _autocov(ary: np.ndarray) -> np.ndarray:
    """Autocovariance at every lag along the draws axis (FFT), divided by S."""
    n = ary.shape[2]
    m = next_fast_len(2 * n)
    centred = ary - ary.mean(axis=2, keepdims=True)
    spectrum = np.fft.rfft(centred, n=m, axis=2)
    spectrum *= np.conjugate(spectrum)
    return np.fft.irfft(spectrum, n=m, axis=2)[:, :, :n] / n


@njit(parallel=True, cache=True)
def _geyer(rho, total):
    """ESS per parameter from its autocorrelations rho (P, S), as ArviZ computes it."""
    n_params, n_draw = rho.shape
    out = np.empty(n_params)
    for p in prange(n_params):
        r = rho[p]
        rho_hat = np.zeros(n_draw)
        even = 1.0
        rho_hat[0] = even
        odd = r[1]
        rho_hat[1] = odd
        t = 1
        while t < n_draw - 3 and even + odd > 0.0:
            even = r[t + 1]
            odd = r[t + 2]
            if even + odd >= 0:
                rho_hat[t + 1] = even
                rho_hat[t + 2] = odd
            t += 2
        max_t = t - 2
        if even > 0:
            rho_hat[max_t + 1] = even
        t = 1
        while t <= max_t - 2:
            if rho_hat[t + 1] + rho_hat[t + 2] > rho_hat[t - 1] + rho_hat[t]:
                rho_hat[t + 1] = (rho_hat[t - 1] + rho_hat[t]) / 2.0
                rho_hat[t + 2] = rho_hat[t + 1]
            t += 2
        tau = -1.0 + 2.0 * np.sum(rho_hat[: max_t + 1]) + np.sum(rho_hat[max_t + 1: max_t + 2])
        tau = max(tau, 1.0 / np.log10(total))
        out[p] = total / tau
        if np.isnan(rho_hat).any():
            out[p] = np.nan
    return out
