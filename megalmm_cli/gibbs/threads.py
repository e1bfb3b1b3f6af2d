"""Run small pieces of work on one thread.

Waking numba's worker threads costs tens of microseconds to milliseconds on a busy node,
more than a small group's whole update. Every kernel's result is independent of the number
of threads, so this changes speed only.
"""

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
