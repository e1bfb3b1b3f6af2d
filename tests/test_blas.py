"""gibbs/blas.matmul and gibbs/linalg.weighted_grams: the same products whichever route and
thread count they take."""

import numpy as np
import pytest

from megalmm_cli.gibbs.blas import matmul
from megalmm_cli.gibbs.linalg import weighted_grams

from .conftest import numba_threads


@pytest.mark.parametrize("shape", [(300, 300, 1), (300, 300, 5), (300, 300, 40), (600, 300, 7),
                                   (40, 300, 300), (300, 20, 300)])
@pytest.mark.parametrize("transposed", [False, True])
def test_matmul_equals_the_plain_product(shape, transposed):
    """Every route (split in two halves, and the skinny route (b' a')' for a few columns of b)
    gives a @ b to rounding, C-ordered, with one thread or two bit for bit."""
    rows, inner, cols = shape
    rng = np.random.default_rng(sum(shape))
    a = rng.standard_normal((inner, rows)).T if transposed else rng.standard_normal((rows, inner))
    b = rng.standard_normal((inner, cols))
    with numba_threads(2):
        two = matmul(a, b, split_min=1e3)
    with numba_threads(1):
        one = matmul(a, b, split_min=1e3)
    np.testing.assert_allclose(two, a @ b, rtol=1e-12, atol=1e-12)
    assert two.flags.c_contiguous and two.shape == (rows, cols)
    np.testing.assert_array_equal(one, two)


@pytest.mark.parametrize("shape", [(1800, 23, 20), (50, 3, 7), (50, 3, 2), (90, 70, 3)])
def test_weighted_grams_equal_the_plain_products(shape):
    """gibbs/linalg.weighted_grams: X' diag(w) X for each row w, to rounding, exactly
    symmetric, the same bits on one thread and two (a strided X too), by either route."""
    n, b, u = shape
    rng = np.random.default_rng(n + b)
    x = rng.standard_normal((b, n)).T  # Fortran-ordered, as an hstack's slice may be
    weights = rng.uniform(0.1, 3.0, size=(u, n))
    want = np.stack([x.T @ (x * w[:, None]) for w in weights])
    with numba_threads(2):
        two = weighted_grams(x, weights)
    with numba_threads(1):
        one = weighted_grams(x, weights)
    np.testing.assert_allclose(two, want, rtol=1e-12, atol=1e-10)
    np.testing.assert_array_equal(two, np.swapaxes(two, 1, 2))
    np.testing.assert_array_equal(one, two)


@pytest.mark.parametrize("shape", [(300, 40, 2000), (2000, 40, 300), (30, 5, 20)])
def test_fused_halves_equal_numpy(shape):
    """residual, difference_product and square_sums: their numpy expressions to rounding,
    one thread or two bit for bit."""
    from megalmm_cli.gibbs.blas import difference_product, residual, square_sums

    rows, inner, cols = shape
    rng = np.random.default_rng(rows)
    a = rng.standard_normal((rows, inner))
    b = rng.standard_normal((inner, cols)).T.copy().T  # Fortran-ordered, as coefficients are
    base = rng.standard_normal((rows, cols))
    y, u = rng.standard_normal((rows, inner)), rng.standard_normal((rows, inner))
    weights = rng.uniform(0.1, 2.0, size=(7, rows))
    cases = [(lambda: residual(base, a, b, split_min=1e3), base - a @ b),
             (lambda: difference_product(y, u, b, split_min=1e3), (y - u) @ b),
             (lambda: square_sums(weights, base, split_min=1e3), weights @ base ** 2)]
    for compute, want in cases:
        with numba_threads(2):
            two = compute()
        with numba_threads(1):
            one = compute()
        np.testing.assert_allclose(two, want, rtol=1e-12, atol=1e-10)
        np.testing.assert_array_equal(one, two)
        assert two.flags.c_contiguous
