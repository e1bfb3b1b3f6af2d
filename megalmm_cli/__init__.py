"""megalmm: mega-scale multivariate linear mixed models (MegaLMM) from the command line."""

__version__ = "0.1.0"

# Bumped whenever the layout of prepared.h5 or chain files changes incompatibly.
FORMAT_VERSION = 1


def _single_threaded_blas_by_default() -> None:
    """megalmm parallelises over traits with numba; a second layer of BLAS threads only
    competes with it (and OpenBLAS threads are very slow on small products on some VMs).
    Users who want BLAS threads set OPENBLAS_NUM_THREADS / MKL_NUM_THREADS / OMP_NUM_THREADS."""
    import os

    if not any(os.environ.get(v) for v in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                            "OMP_NUM_THREADS", "BLIS_NUM_THREADS")):
        for var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS"):
            os.environ[var] = "1"
        # numpy may already be imported (its BLAS then read the variables): limit it now too
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=1, user_api="blas")


_single_threaded_blas_by_default()
