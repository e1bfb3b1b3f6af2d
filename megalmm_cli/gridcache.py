"""The Grid-LMM cache for several random effects (m > 1).

In the eigenbasis Q of the first effect on a group's rows, effect r has the relationship
matrix B_r = Q' K_r Q (B_1 = diag(s)), and a column at grid point h has the covariance

    V(h) = sum_r h_r B_r + (1 - sum_r h_r) I        (times 1 / tot_prec).

Grid points that share h_1 .. h_{m-1} form a *slice*. Within slice s, with
A_s = (1 - sum_{r<m} h_r) I + sum_{r<m} h_r B_r = L L' and L^-1 (B_m - I) L^-T = P diag(lam) P',
the transform T_s = P' L^-1 diagonalises every V(h) of the slice at once:

    T_s V(h) T_s' = diag(1 + h_m lam),    log|V(h)| = log|A_s| + sum_i log(1 + h_m lam_i).

So V(h)^-1/2 (a factor of V(h) for every grid point) is diag(w(h))^1/2 T_s, with the weights
w_i(h) = 1 / (1 + h_m lam_i): whitening a column at any grid point is one product with its
slice's T_s. The cache holds S = C(D - 2 + m, m - 1) transforms per group (D times fewer than
one Cholesky factor per grid point), and the grid log-likelihood needs S products, not G.
With m = 1 there is one slice, A = I and T = P' is a permutation: the eigen basis itself.
"""

from dataclasses import dataclass
from functools import cached_property
from math import comb

import numpy as np
from scipy.linalg import cholesky, solve_triangular

from .gibbs.blas import matmul


@dataclass(frozen=True)
class GridCache:
    """Per-group cache (or for the factors): everything the general Grid-LMM path needs.

    slice_of_point: (G,) slice index of each grid point; transforms: (S, n, n) T_s in the
    group's rotated basis, a numpy array or an h5py dataset read one slice at a time;
    weights: (G, n) 1 / (1 + h_m lam_i); half_logdet: (G,) -log|V(h)| / 2;
    roots: (m, n, r) with roots[e] @ roots[e].T = B_e (zero-padded to a common r).
    """

    slice_of_point: np.ndarray
    transforms: object
    weights: np.ndarray
    half_logdet: np.ndarray
    roots: np.ndarray

    @property
    def n_slices(self) -> int:
        return int(self.slice_of_point.max()) + 1

    def transform(self, s: int) -> np.ndarray:
        return np.asarray(self.transforms[s])

    @cached_property
    def root_parts(self) -> list:
        """Each effect's root without its zero padding: ("diag", (n,)) when the root is
        diagonal (the first effect, whose block is diagonal in its own eigenbasis), else
        ("dense", (n, r_e)) with only the root's nonzero columns."""
        parts = []
        for root in self.roots:
            n = root.shape[0]
            nonzero = np.flatnonzero(np.any(root != 0.0, axis=0))
            width = int(nonzero[-1]) + 1 if nonzero.size else 1
            square = root[:, :n] if root.shape[1] >= n else None
            if square is not None and width <= n and np.count_nonzero(square - np.diag(np.diag(square))) == 0:
                parts.append(("diag", np.ascontiguousarray(np.diag(square))))
            else:
                parts.append(("dense", np.ascontiguousarray(root[:, :width])))
        return parts

    @cached_property
    def points_of_slice(self) -> list:
        """Grid points of each slice: [(points_s,)], computed once."""
        order = np.argsort(self.slice_of_point, kind="stable")
        bounds = np.searchsorted(self.slice_of_point[order], np.arange(self.n_slices + 1))
        return [order[bounds[s]:bounds[s + 1]] for s in range(self.n_slices)]

    def columns_by_slice(self, index: np.ndarray) -> list:
        """[(slice, columns)] for the slices used by the columns' grid points index (c,)."""
        slices = self.slice_of_point[index]
        return [(int(s), np.flatnonzero(slices == s)) for s in np.unique(slices)]


def grid_slices(grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slices of an (G, m) grid: (slice_of_point (G,), rest (S, m - 1)) where rest[s] holds
    h_1 .. h_{m-1} shared by the points of slice s (slices in order of first appearance)."""
    rest = grid[:, :-1]
    if rest.shape[1] == 0:
        return np.zeros(grid.shape[0], dtype=np.int64), np.zeros((1, 0))
    _, first, inverse = np.unique(rest, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first)             # slice numbers in order of first appearance
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    slice_of_point = rank[inverse.ravel()].astype(np.int64)
    return slice_of_point, rest[np.sort(first)]


def slice_transform(blocks, rest: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """T_s (n, n), lam (n,) and log|A_s| for one slice.

    blocks: m matrices B_r (n, n) in the group's basis; rest: (m - 1,) h_1 .. h_{m-1}.
    """
    n = blocks[0].shape[0]
    a = np.eye(n) * (1.0 - rest.sum())
    for h, block in zip(rest, blocks[:-1]):
        if h:
            a += h * block
    low = cholesky(a, lower=True)
    last = blocks[-1] - np.eye(n)
    half = solve_triangular(low, last, lower=True)                # L^-1 (B_m - I)
    middle = solve_triangular(low, half.T, lower=True)             # L^-1 (B_m - I) L^-T
    lam, vectors = np.linalg.eigh((middle + middle.T) / 2)
    transform = solve_triangular(low, vectors, lower=True, trans="T").T   # P' L^-1
    return np.ascontiguousarray(transform), lam, 2.0 * float(np.log(np.diag(low)).sum())


def point_weights(grid: np.ndarray, slice_of_point: np.ndarray, lams: np.ndarray,
                  logdet_a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """weights (G, n) = 1 / (1 + h_m lam_slice) and half_logdet (G,) = -log|V(h)| / 2."""
    weights = 1.0 / (1.0 + grid[:, -1, None] * lams[slice_of_point])
    half_logdet = 0.5 * np.log(weights).sum(axis=1) - 0.5 * logdet_a[slice_of_point]
    return weights, half_logdet


def effect_roots(blocks) -> np.ndarray:
    """(m, n, r): a square root of each B_r (eigen-based, zero eigenvalues dropped), padded."""
    roots = []
    for block in blocks:
        diag = np.diag(np.diag(block))
        if np.array_equal(block, diag):
            root = np.diag(np.sqrt(np.clip(np.diag(block), 0.0, None)))
        else:
            values, vectors = np.linalg.eigh((block + block.T) / 2)
            keep = values > 1e-10 * max(values.max(), 1e-300)
            root = vectors[:, keep] * np.sqrt(values[keep])[None, :]
        roots.append(root)
    width = max(r.shape[1] for r in roots)
    out = np.zeros((len(roots), roots[0].shape[0], width))
    for e, root in enumerate(roots):
        out[e, :, : root.shape[1]] = root
    return out


def build_cache(blocks, grid: np.ndarray, store=None, progress=None) -> GridCache:
    """The cache of one group from its m blocks B_r (n, n) and the (G, m) grid.

    store: optional cachefile.SliceStore (is_done / lam / logdet / write_slice per slice,
    save_roots) to stream the slices to disk and resume an interrupted build; the returned
    cache then holds no transforms (sample reads them from the file). Else everything is
    built in memory.
    """
    slice_of_point, rests = grid_slices(grid)
    n_slices, n = rests.shape[0], blocks[0].shape[0]
    lams = np.empty((n_slices, n))
    logdet_a = np.empty(n_slices)
    transforms = np.empty((n_slices, n, n)) if store is None else None
    for s in range(n_slices):
        if store is not None and store.is_done(s):
            lams[s], logdet_a[s] = store.lam(s), store.logdet(s)
        else:
            transform, lams[s], logdet_a[s] = slice_transform(blocks, rests[s])
            if store is None:
                transforms[s] = transform
            else:
                store.write_slice(s, transform, lams[s], logdet_a[s])
        if progress is not None:
            progress(s + 1, n_slices)
    weights, half_logdet = point_weights(grid, slice_of_point, lams, logdet_a)
    roots = effect_roots(blocks)
    if store is not None:
        store.save_roots(roots)
    return GridCache(slice_of_point, transforms, weights, half_logdet, roots)


def cache_bytes(n_rows: int, n_effects: int, divisions: int) -> int:
    """Size of one group's cache on disk: S transforms (n x n), their lam (n) and log|A|, the
    m effect roots (at most n x n each) and the slice flags."""
    n_slices = slice_count(n_effects, divisions)
    return 8 * (n_slices * n_rows * n_rows + n_effects * n_rows * n_rows
                + n_slices * (n_rows + 1)) + n_slices


def grid_point_count(n_effects: int, divisions: int) -> int:
    return comb(divisions - 1 + n_effects, n_effects)


def slice_count(n_effects: int, divisions: int) -> int:
    return 1 if n_effects == 1 else grid_point_count(n_effects - 1, divisions)


# at most this many bytes per missing-data group for WhitenedData (prepare counts it in its
# memory estimate); larger groups whiten their data through the slice products every iteration
WHITENED_MAX_BYTES = 1 << 30


def whitened_bytes(n_rows: int, n_cols: int, n_slices: int) -> int:
    """Bytes WhitenedData holds for a group of n_rows x n_cols: T_s y of every slice, y itself
    (0 when that exceeds WHITENED_MAX_BYTES: the group goes without)."""
    size = 8 * (n_slices + 1) * n_rows * n_cols
    return size if size <= WHITENED_MAX_BYTES else 0


class WhitenedData:
    """T_s y* for every slice s of a group's cache, kept between iterations.

    The group's columns are whitened in fixed batches (batches: a partition of the columns
    into non-empty index arrays or slices, e.g. the columns with imputed cells and the
    others), and a batch is whitened again, whole,
    when any of its columns changed since the last call. So a column's T_s y* never depends on
    what happened before (a resumed chain, whose cache starts empty, repeats an uninterrupted
    one bit for bit), and in a run only the columns with imputed cells are whitened again.

    Then the grid log-likelihood of a residual y* - X b at every grid point needs T_s X and
    (T_s X) b per slice, n b (n + c) flops, instead of T_s (y* - X b), n^2 c.
    """

    def __init__(self, cache: GridCache, batches):
        self.cache = cache
        self.batches = list(batches)
        self.y = None       # (n, c) the data last whitened
        self.white = None   # (S, n, c)

    def update(self, y_rot: np.ndarray) -> np.ndarray:
        """(S, n, c) T_s y_rot for every slice, y_rot (n, c) the group's rotated data."""
        first = self.y is None
        if first:
            self.y = np.empty_like(y_rot)
            self.white = np.empty((self.cache.n_slices,) + y_rot.shape)
        for cols in self.batches:
            values = y_rot[:, cols]  # a view when the batch's columns are consecutive
            if not first and np.array_equal(values, self.y[:, cols]):
                continue
            values = np.ascontiguousarray(values)
            self.y[:, cols] = values
            for s in range(self.cache.n_slices):
                self.white[s][:, cols] = matmul(self.cache.transform(s), values)
        return self.white



class SliceProducts:
    """T_s x (n, b) for the slices asked for, each computed once: what one iteration's steps
    2 and 3 share for a group's x = [X1*, F*] (freed with the object, after the group)."""

    def __init__(self, cache: GridCache, x: np.ndarray):
        self.cache, self.x, self.done = cache, x, {}

    def __call__(self, s: int) -> np.ndarray:
        if s not in self.done:
            self.done[s] = matmul(self.cache.transform(s), self.x)
        return self.done[s]
