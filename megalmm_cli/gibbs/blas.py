"""Large matrix products split in two halves that run on two threads.

BLAS itself runs single-threaded (see megalmm_cli/__init__.py); numpy releases the GIL in
BLAS calls, so the halves of a large product run in parallel. The split depends only on the
shapes, never on the thread count, so results are the same with one thread or many.
"""

from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

SPLIT_MIN_FLOPS = 1e7
SKINNY_MAX = 256  # columns of b up to which matmul takes the transposed route
_pool = None


def _executor():
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="megalmm-blas")
    return _pool


def matmul(a: np.ndarray, b: np.ndarray, split_min: float = SPLIT_MIN_FLOPS) -> np.ndarray:
    """a @ b for 2-D arrays, the larger output dimension split in two when the product is big
    (split_min multiply-adds; lower for memory-bound products such as matrix-vector ones).
    Returns a C-ordered array."""
    if _skinny(a.shape[0], a.shape[1], b.shape[1]):
        return np.ascontiguousarray(_split_matmul(b.T, a.T, split_min).T)
    return _split_matmul(a, b, split_min)


def _skinny(rows: int, inner: int, cols: int) -> bool:
    """A large matrix times a few columns (a group's rotation of F, say): OpenBLAS runs the
    same product as (b' a')' 1.3-2.9x faster (1,650 x 1,650 by 15 columns: 6.4 -> 2.2 ms)."""
    return 2 <= cols <= SKINNY_MAX and cols * 8 <= rows and inner >= 256


def _split_matmul(a: np.ndarray, b: np.ndarray, split_min: float) -> np.ndarray:
    def product(rows, cols, target):
        np.matmul(a[rows], b[:, cols], out=target)

    return _in_halves(a.shape[0], a.shape[1], b.shape[1], np.result_type(a, b), split_min,
                      product)


def residual(base: np.ndarray, a: np.ndarray, b: np.ndarray,
             split_min: float = SPLIT_MIN_FLOPS) -> np.ndarray:
    """base - a @ b (C-ordered), each half's product and difference on its own thread (the
    difference of two n x t arrays is memory-bound work numpy does on one thread)."""
    rows, inner = a.shape
    cols = b.shape[1]
    if _skinny(rows, inner, cols):
        return np.subtract(base, matmul(a, b, split_min))  # matmul's (b' a')' route

    def difference(r, c, target):
        np.matmul(a[r], b[:, c], out=target)
        np.subtract(base[r, c], target, out=target)

    return _in_halves(rows, inner, cols, np.result_type(base, a, b), split_min, difference)


def difference_product(y: np.ndarray, u: np.ndarray, b: np.ndarray,
                       split_min: float = SPLIT_MIN_FLOPS) -> np.ndarray:
    """(y - u) @ b (C-ordered), each half of the rows differenced and multiplied on its own
    thread (y, u: (n, t) with n the larger side of the result, as F's right-hand side)."""
    rows, inner = y.shape
    cols = b.shape[1]
    if _skinny(rows, inner, cols):
        return matmul(np.subtract(y, u), b, split_min)  # matmul's (b' a')' route

    def product(r, c, target):
        np.matmul(np.subtract(y[r], u[r]), b[:, c], out=target)

    return _in_halves(rows, inner, cols, np.result_type(y, u, b), split_min, product)


def square_sums(weights: np.ndarray, values: np.ndarray,
                split_min: float = SPLIT_MIN_FLOPS) -> np.ndarray:
    """weights @ (values * values): (G, n) by (n, c), each half's squares and product on its
    own thread. Returns (G, c)."""

    def product(r, c, target):
        np.matmul(weights[r], np.square(values[:, c]), out=target)

    return _in_halves(weights.shape[0], weights.shape[1], values.shape[1],
                      np.result_type(weights, values), split_min, product)


def _in_halves(rows: int, inner: int, cols: int, dtype, split_min: float, block) -> np.ndarray:
    """A (rows, cols) result whose blocks block(row slice, column slice, out view) computes:
    the larger dimension in two halves on two threads when rows inner cols >= split_min, else
    whole. The split depends only on the shapes."""
    out = np.empty((rows, cols), dtype=dtype)
    whole = slice(None)
    if rows * inner * cols < split_min or max(rows, cols) < 2:
        block(whole, whole, out)
        return out
    if cols >= rows:
        half = slice(0, cols // 2), slice(cols // 2, cols)
        first, second = (whole, half[0]), (whole, half[1])
    else:
        half = slice(0, rows // 2), slice(rows // 2, rows)
        first, second = (half[0], whole), (half[1], whole)

    def run(part):
        block(part[0], part[1], out[part[0], part[1]])

    if numba.get_num_threads() > 1:
        pending = _executor().submit(run, first)
        run(second)
        pending.result()
    else:
        run(first)
        run(second)
    return out
