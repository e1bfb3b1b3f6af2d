"""megalmm: mega-scale multivariate linear mixed models (MegaLMM) from the command line."""

__version__ = "0.1.0"

# Bumped whenever the layout of prepared.h5 or chain files changes incompatibly.
FORMAT_VERSION = 2


def _single_threaded_blas_by_default() -> None:
    """megalmm parallelises over traits with numba; a second layer of BLAS threads only
    competes with it (and OpenBLAS threads are very slow on small products on some VMs).
    Users who want BLAS threads set OPENBLAS_NUM_THREADS / MKL_NUM_THREADS / OMP_NUM_THREADS."""
    import os

    # numba's OpenMP workers otherwise spin between parallel regions and steal the core the
    # main thread needs for the numpy/BLAS work in between
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if not any(os.environ.get(v) for v in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                            "OMP_NUM_THREADS", "BLIS_NUM_THREADS")):
        for var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS"):
            os.environ[var] = "1"
        # numpy may already be imported (its BLAS then read the variables): limit it now too
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=1, user_api="blas")


_single_threaded_blas_by_default()


def _keep_freed_memory_for_reuse() -> None:
    """Large numpy temporaries (n x t) are allocated and freed every iteration; by default
    glibc returns each to the OS and the next one page-faults in again, which costs more
    than the arithmetic. Keep freed blocks in the heap instead (Linux/glibc only)."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 1 << 30)
    libc.mallopt(m_trim_threshold, 1 << 31 - 1)


_keep_freed_memory_for_reuse()
