"""gibbs/blas.matmul: the same product whichever route and thread count it takes."""

import numpy as np
import pytest

from megalmm_cli.gibbs.blas import matmul

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
