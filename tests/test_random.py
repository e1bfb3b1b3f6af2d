"""Parallel random batches: right distribution, reproducible, independent of thread count."""

import numba
import numpy as np
import pytest
import scipy.stats as st

from megalmm_cli.gibbs.random import normals, standard_gammas


@pytest.mark.parametrize("shape", [(10, 10), (400, 500)])  # below and above the parallel size
def test_normals_distribution(shape):
    x = normals(np.random.default_rng(3), shape)
    assert x.shape == shape
    assert st.kstest(x.ravel(), "norm").pvalue > 1e-4


@pytest.mark.parametrize("k", [1.5, 2.0, 3.0, 10.5])
def test_gammas_distribution_integer_and_not(k):
    x = standard_gammas(np.random.default_rng(4), k, (400, 500)).ravel()
    assert st.kstest(x, "gamma", args=(k,)).pvalue > 1e-4
    assert abs(x.mean() - k) < 5 * np.sqrt(k / x.size)


def test_same_seed_same_draws_with_any_thread_count():
    a = normals(np.random.default_rng(5), (300, 400))
    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        b = normals(np.random.default_rng(5), (300, 400))
        c = standard_gammas(np.random.default_rng(6), 2.0, (300, 400))
    finally:
        numba.set_num_threads(previous)
    d = standard_gammas(np.random.default_rng(6), 2.0, (300, 400))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(c, d)
    assert not np.array_equal(a, normals(np.random.default_rng(7), (300, 400)))
