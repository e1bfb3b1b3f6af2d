"""G, R and the genetic correlations from stored draws, for any number of traits.

A draw's covariances are low rank plus diagonal (DESIGN.md section 2, factors of unit
variance, original units; f_h2 and resid_h2 summed over the random effects):

    G = Lambda' diag(f_h2) Lambda + diag(resid_h2 / tot_eta_prec)
    R = Lambda' diag(1 - f_h2) Lambda + diag((1 - resid_h2) / tot_eta_prec)

so their posterior means are sums of weighted factor rows: E[G] = A'A / S + diag(...) with
A stacking sqrt(f_h2_l) Lambda_l of every draw. `posterior_mean_matrix` accumulates that
with one symmetric rank-k update (BLAS syrk) per chunk of draws into a single t x t array,
never a t x t matrix per draw. Factor rows whose every loading is negligible
(Lambda_lj^2 < 1e-14 of trait j's variance, far below float32 rounding) are left out of
float32 sums: with strong shrinkage most of the K factors of a draw are such rows.

Per-trait quantities (diagonals, h2, each effect's share) are computed per draw, for
intervals; so are the covariances among a chosen subset of traits, one entry at a time
(SubsetFactors), each entry's draws summarised as soon as they are formed.
"""

from dataclasses import dataclass

import numpy as np
from numba import njit, prange
from scipy.linalg import blas

DROP_BELOW = {np.dtype("float32"): 1e-14, np.dtype("float64"): 0.0}
CHUNK_DRAWS = 8


@dataclass
class Draws:
    """A block of consecutive stored draws, float64, totals over the random effects.

    lam: (s, K, t); f_h2: (s, K); resid_h2, tot_eta_prec: (s, t); f_by_effect (s, m, K) and
    resid_by_effect (s, m, t) when there are several random effects, else None.
    """

    lam: np.ndarray
    f_h2: np.ndarray
    resid_h2: np.ndarray
    tot_eta_prec: np.ndarray
    f_by_effect: np.ndarray | None = None
    resid_by_effect: np.ndarray | None = None

    @classmethod
    def from_arrays(cls, lam, f_h2, resid_h2, tot_eta_prec):
        lam, f_h2, resid_h2, prec = (np.asarray(a, dtype=np.float64) for a in
                                     (lam, f_h2, resid_h2, tot_eta_prec))
        if f_h2.ndim == 3:  # several effects: (s, m, .)
            return cls(lam, f_h2.sum(axis=1), resid_h2.sum(axis=1), prec, f_h2, resid_h2)
        return cls(lam, f_h2, resid_h2, prec)


def chain_draws(chain, names=("Lambda", "f_h2", "resid_h2", "tot_eta_prec"), chunk=CHUNK_DRAWS):
    """Draws of one chain file in blocks of `chunk` draws (bounded memory)."""
    n = chain.progress().n_draws
    with chain._open() as f:
        samples = f["samples"]
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            yield Draws.from_arrays(*(samples[name][start:stop] for name in names))


def trait_diagonals(d: Draws) -> dict:
    """Per draw (s, t): genetic and residual variance, h2; (s, m, t) each effect's share."""
    squared = d.lam * d.lam
    factor_total = squared.sum(axis=1)
    factor_g = np.einsum("sk,skt->st", d.f_h2, squared)
    genetic = factor_g + d.resid_h2 / d.tot_eta_prec
    residual = (factor_total - factor_g) + (1.0 - d.resid_h2) / d.tot_eta_prec
    out = {"G_var": genetic, "R_var": residual, "h2": genetic / (genetic + residual)}
    if d.f_by_effect is not None:
        by_effect = (np.einsum("srk,skt->srt", d.f_by_effect, squared)
                     + d.resid_by_effect / d.tot_eta_prec[:, None, :])
        out["shares"] = by_effect / (genetic + residual)[:, None, :]
    return out


def _weighted_rows(d: Draws, which: str, dtype) -> np.ndarray:
    """The factor rows (rows, t) of a block of draws whose A'A is the block's sum of the
    low-rank part of G ("G"), R ("R") or of the correlations G_ij / sqrt(G_ii G_jj) ("G_cor")."""
    if which == "G":
        rows = d.lam * np.sqrt(d.f_h2)[:, :, None]
    elif which == "R":
        rows = d.lam * np.sqrt(1.0 - d.f_h2)[:, :, None]
    elif which == "G_cor":
        genetic = trait_diagonals(d)["G_var"]
        rows = d.lam * np.sqrt(d.f_h2)[:, :, None] / np.sqrt(genetic)[:, None, :]
    else:
        raise ValueError(f"unknown matrix {which!r}")
    drop = DROP_BELOW[np.dtype(dtype)]
    if drop > 0:
        variance = trait_diagonals(d)
        total = variance["G_var"] + variance["R_var"]
        keep = ((d.lam * d.lam) / total[:, None, :]).max(axis=2) >= drop   # (s, K)
        rows = rows[keep]
    return np.ascontiguousarray(rows.reshape(-1, d.lam.shape[2]), dtype=dtype)


def posterior_mean_matrix(blocks, which: str, t: int, n_draws: int, dtype="float32",
                          progress=None) -> tuple[np.ndarray, int]:
    """Posterior mean (t, t) of G, R or G_cor over the draws of `blocks` (an iterable of
    Draws, n_draws in all). Returns the matrix and the number of factor rows it summed."""
    dtype = np.dtype(dtype)
    syrk = blas.ssyrk if dtype == np.float32 else blas.dsyrk
    acc = np.zeros((t, t), dtype=dtype, order="F")
    diagonal = np.zeros(t)
    used, done = 0, 0
    for d in blocks:
        rows = _weighted_rows(d, which, dtype)
        if rows.shape[0]:
            # acc += rows' rows / n_draws (upper triangle); rows.T is Fortran-ordered (t, rows)
            acc = syrk(1.0 / n_draws, rows.T, beta=1.0, c=acc, trans=0, lower=0, overwrite_c=1)
        used += rows.shape[0]
        if which == "G":
            diagonal += (d.resid_h2 / d.tot_eta_prec).sum(axis=0) / n_draws
        elif which == "R":
            diagonal += ((1.0 - d.resid_h2) / d.tot_eta_prec).sum(axis=0) / n_draws
        done += d.lam.shape[0]
        if progress is not None:
            progress(done)
    _mirror_upper(acc)
    index = np.arange(t)
    if which == "G_cor":
        acc[index, index] = 1.0
    else:
        acc[index, index] += diagonal.astype(dtype)
    return acc, used


def _mirror_upper(acc: np.ndarray, block: int = 1024) -> None:
    """Copy the upper triangle of a square array into its lower triangle, in place."""
    t = acc.shape[0]
    for start in range(0, t, block):
        stop = min(t, start + block)
        acc[start:stop, :start] = acc[:start, start:stop].T
        part = acc[start:stop, start:stop]
        acc[start:stop, start:stop] = np.triu(part) + np.triu(part, 1).T


@dataclass
class SubsetFactors:
    """What G and R among a subset of m traits are made of, over S draws (all chains):
    lam: (m, K, S) loadings of each chosen trait, draws innermost; f_h2: (S, K); g_diag,
    r_diag: (S, m) the diagonal parts resid_h2 / tot_eta_prec and (1 - resid_h2) / tot_eta_prec."""

    lam: np.ndarray
    f_h2: np.ndarray
    g_diag: np.ndarray
    r_diag: np.ndarray

    @classmethod
    def from_blocks(cls, blocks, cols: np.ndarray) -> "SubsetFactors":
        """From an iterable of Draws (chain_draws of every chain, in order)."""
        lam, f_h2, g_diag, r_diag = [], [], [], []
        for d in blocks:
            lam.append(d.lam[:, :, cols])
            f_h2.append(d.f_h2)
            g_diag.append(d.resid_h2[:, cols] / d.tot_eta_prec[:, cols])
            r_diag.append((1.0 - d.resid_h2[:, cols]) / d.tot_eta_prec[:, cols])
        # chains may have different numbers of factors (`model.factors: auto`): a factor
        # with zero loadings adds nothing to G or R
        k = max(a.shape[1] for a in lam)
        if any(a.shape[1] < k for a in lam):  # (np.pad copies: only when needed)
            lam = [np.pad(a, ((0, 0), (0, k - a.shape[1]), (0, 0))) for a in lam]
            f_h2 = [np.pad(a, ((0, 0), (0, k - a.shape[1]))) for a in f_h2]
        return cls(np.ascontiguousarray(np.concatenate(lam).transpose(2, 1, 0)),
                   np.concatenate(f_h2), np.concatenate(g_diag), np.concatenate(r_diag))

    def genetic_entries(self, rows, cols) -> np.ndarray:
        """(S, len(rows)) draws of the off-diagonal entries G[rows[i], cols[i]] (subset indices)."""
        return genetic_entries(self.lam.transpose(2, 1, 0), self.f_h2, rows, cols)

    def summary(self, prob: float = 0.95) -> dict:
        """Posterior means and HPD bounds (m, m) of G and R among the subset: "G", "R",
        "G_low", "G_high", "R_low", "R_high". Each entry's S draws are formed and summarised
        in one pass (numba, parallel over rows): no (S, m, m) array is built."""
        width = max(1, int(np.ceil(prob * self.lam.shape[2])))
        lam = np.ascontiguousarray(self.lam)
        weighted = lam * self.f_h2.T[None, :, :]  # lam_l f_h2_l
        out = _subset_summary(lam, weighted, np.ascontiguousarray(self.g_diag.T),
                              np.ascontiguousarray(self.r_diag.T), width)
        return dict(zip(("G", "R", "G_low", "G_high", "R_low", "R_high"), out))


@njit(parallel=True, cache=True)
def _subset_summary(lam, weighted, g_diag, r_diag, width):
    """lam (m, K, S) loadings, weighted = lam * f_h2 (m, K, S); g_diag, r_diag (m, S).
    Means and HPD bounds (as hpd_interval) of the G and R entries, each (m, m).
    Row a holds the m - a entries (a, b >= a): each parallel task takes rows p and m - 1 - p,
    so that the threads' shares of the triangle are equal (by single rows, the first of two
    threads would get 3/4 of it)."""
    m, k, n_draws = lam.shape
    out = np.empty((6, m, m))  # G, R means; G low, high; R low, high
    for pair in prange((m + 1) // 2):
        genetic = np.empty(n_draws)
        both = np.empty(n_draws)   # lam_a lam_b summed over factors: G + R's low-rank parts
        residual = np.empty(n_draws)
        tail = max(1, n_draws - width + 1)
        smallest, largest = np.empty(tail), np.empty(tail)
        _summary_row(pair, lam, weighted, g_diag, r_diag, width, genetic, both, residual,
                     smallest, largest, out)
        if m - 1 - pair != pair:
            _summary_row(m - 1 - pair, lam, weighted, g_diag, r_diag, width, genetic, both,
                         residual, smallest, largest, out)
    return out[0], out[1], out[2], out[3], out[4], out[5]


@njit(cache=True)
def _summary_row(a, lam, weighted, g_diag, r_diag, width, genetic, both, residual, smallest,
                 largest, out):
    """The entries (a, b >= a) of _subset_summary, written to out[:, a, b] and out[:, b, a];
    genetic, both, residual (S,) and smallest, largest: scratch."""
    m, k, n_draws = lam.shape
    for b in range(a, m):
        for s in range(n_draws):
            genetic[s] = g_diag[a, s] if a == b else 0.0
            both[s] = 0.0
        for q in range(k):
            w_a = weighted[a, q]
            l_a = lam[a, q]
            l_b = lam[b, q]
            for s in range(n_draws):
                genetic[s] += w_a[s] * l_b[s]
                both[s] += l_a[s] * l_b[s]
        for s in range(n_draws):  # R's low-rank part; on the diagonal G's diagonal part is
            residual[s] = both[s] - genetic[s]  # taken out with G and added back with R's
            if a == b:
                residual[s] += g_diag[a, s] + r_diag[a, s]
        values = (genetic.mean(), residual.mean()) + _hpd(genetic, width, smallest, largest) \
            + _hpd(residual, width, smallest, largest)
        for i in range(6):
            out[i, a, b] = out[i, b, a] = values[i]


@njit(cache=True)
def _hpd(values, width, smallest, largest):
    """hpd_interval of one sample (the first shortest window of `width` ordered draws) from
    its L = n - width + 1 smallest and L largest values only: a window starts among the
    first L and ends among the last L ordered draws, so no full sort is needed.
    smallest, largest: (L,) scratch, filled with ordered[:L] and ordered[n-L:] reversed."""
    n = values.size
    if width >= n:
        return values.min(), values.max()
    tail = n - width + 1
    # the L smallest, ascending, and the L largest, descending: insertion into short sorted
    # buffers, most values rejected by one comparison with the current L-th
    for i in range(tail):
        smallest[i] = np.inf
        largest[i] = -np.inf
    low_cut, high_cut = np.inf, -np.inf
    for v in values:
        if v < low_cut:
            pos = tail - 1
            while pos > 0 and smallest[pos - 1] > v:
                smallest[pos] = smallest[pos - 1]
                pos -= 1
            smallest[pos] = v
            low_cut = smallest[tail - 1]
        if v > high_cut:
            pos = tail - 1
            while pos > 0 and largest[pos - 1] < v:
                largest[pos] = largest[pos - 1]
                pos -= 1
            largest[pos] = v
            high_cut = largest[tail - 1]
    start = 0
    best = largest[n - width] - smallest[0]
    for i in range(1, tail):
        span = largest[n - width - i] - smallest[i]
        if span < best:
            best = span
            start = i
    return smallest[start], largest[n - width - start]


def hpd_interval(draws: np.ndarray, prob: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Shortest interval holding `prob` of the draws, per column. draws: (S, ...)."""
    s = draws.shape[0]
    ordered = np.sort(draws, axis=0)
    width = max(1, int(np.ceil(prob * s)))
    if width >= s:
        return ordered[0], ordered[-1]
    spans = ordered[width - 1:] - ordered[: s - width + 1]
    start = np.argmin(spans, axis=0)
    low = np.take_along_axis(ordered, start[None], axis=0)[0]
    high = np.take_along_axis(ordered, (start + width - 1)[None], axis=0)[0]
    return low, high


def effective_factors(lam: np.ndarray, share: float = 0.01) -> np.ndarray:
    """Number of factors whose loadings carry >= `share` of the total sum of squared
    loadings. lam: (..., K, t) -> (...,)."""
    ss = np.sum(lam ** 2, axis=-1)
    total = np.sum(ss, axis=-1, keepdims=True)
    return np.sum(ss >= share * total, axis=-1)


def ranked_factor_shares(d: Draws, diag: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each factor's share of the total genetic and of the total residual variance
    (sum_j G_jj and sum_j R_jj), per draw, factors ranked by their share of the total
    variance in that draw (rank 0 the largest): two (s, K) arrays. Factors change places and
    signs during sampling, so only ranks within a draw are comparable across draws.
    diag: trait_diagonals(d), when already computed."""
    squared = (d.lam * d.lam).sum(axis=2)                    # (s, K): sum_j Lambda_lj^2
    genetic = squared * d.f_h2
    residual = squared - genetic
    diag = trait_diagonals(d) if diag is None else diag
    g_share = genetic / diag["G_var"].sum(axis=1)[:, None]
    r_share = residual / diag["R_var"].sum(axis=1)[:, None]
    order = np.argsort(-squared, axis=1, kind="stable")
    return (np.take_along_axis(g_share, order, axis=1), np.take_along_axis(r_share, order, axis=1))


def tail_size(k: int) -> int:
    """How many of K factors count as "the last factors" in the diagnostic: 10%, at least 1."""
    return max(1, int(np.ceil(0.1 * k)))


def genetic_entries(lam, f_h2, rows, cols) -> np.ndarray:
    """Draws of off-diagonal entries G[rows[m], cols[m]]: lam (..., K, t), f_h2 (..., K)
    -> (..., m)."""
    return np.einsum("...km,...k,...km->...m", lam[..., rows], f_h2, lam[..., cols])
