"""Run small pieces of work on one thread.

Waking numba's worker threads costs tens of microseconds to milliseconds on a busy node,
more than a small group's whole update. Every kernel's result is independent of the number
of threads, so this changes speed only.
"""

from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numba

# work (elements; k^2 per row for rows of k x k systems) below which one thread is faster
PARALLEL_MIN_WORK = 200_000


@contextmanager
def threads_for(work: float):
    if work >= PARALLEL_MIN_WORK:
        yield
        return
    previous = numba.get_num_threads()
    if previous == 1:  # already on one thread (e.g. an enclosing threads_for)
        yield
        return
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(previous)


@contextmanager
def blas_threads(threads: int | None = None):
    """Let BLAS use `threads` threads (numba's count when None) for a block of large products
    that run alone (summaries): the sampler keeps BLAS on one thread (two layers of threads
    only compete), but a single big syrk or gemm gains from every core. A forked process
    passes the count it was given, so as not to touch numba's threads."""
    from threadpoolctl import threadpool_limits

    limit = numba.get_num_threads() if threads is None else threads
    with threadpool_limits(limits=limit, user_api="blas"):
        yield


def side_by_side(work: list) -> bool:
    """Whether independent pieces of work (one per missing-data group, sizes in `work`) run
    side by side, one piece per thread (each piece's kernels and products then on one thread):
    two or more pieces, none more than half of all the work, all of it worth handing to other
    threads, and a numba threading layer that takes parallel kernels from several threads at
    once (OpenMP or TBB; not the workqueue layer)."""
    if len(work) < 2 or numba.get_num_threads() < 2:
        return False
    if max(work) * 2 > sum(work) or sum(work) < PARALLEL_MIN_WORK:
        return False
    try:
        return numba.threading_layer() in ("omp", "tbb")
    except ValueError:  # no parallel kernel has run yet
        return False


_pool = None


def each_on_own_thread(fn, *iterables) -> list:
    """[fn(*args) for args in zip(*iterables)], each call on one of the pool's threads with
    numba on one thread there (numba's thread count is per thread)."""
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=numba.get_num_threads(),
                                   thread_name_prefix="megalmm-group")

    def alone(*args):
        numba.set_num_threads(1)
        return fn(*args)

    return list(_pool.map(alone, *iterables))
