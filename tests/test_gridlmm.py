from math import comb

import numpy as np
import pytest

from megalmm_cli.errors import UserError
from megalmm_cli.gridlmm import h2_grid, h2_log_prior, rotation


@pytest.mark.parametrize("m", [1, 2, 3])
@pytest.mark.parametrize("divisions", [2, 5, 20])
def test_grid_size_order_and_bounds(m, divisions):
    grid = h2_grid(m, divisions)
    assert grid.shape == (comb(divisions - 1 + m, m), m)
    assert np.all(grid[0] == 0)
    assert np.all(grid.sum(axis=1) < 1 - 1e-12)
    # every component on the lattice 0, 1/D, ..., (D-1)/D and every lattice point present once
    steps = np.rint(grid * divisions).astype(int)
    assert np.allclose(steps / divisions, grid)
    assert len({tuple(row) for row in steps}) == grid.shape[0]
    # first component varies fastest
    if m > 1:
        assert np.all(grid[1, 1:] == 0) and grid[1, 0] == 1 / divisions


def test_grid_one_effect_values():
    assert np.allclose(h2_grid(1, 4)[:, 0], [0, 0.25, 0.5, 0.75])


def test_grid_two_effects_exact():
    expected = [(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (0, 2)]
    assert np.allclose(h2_grid(2, 3) * 3, expected)


def test_h2_log_prior_uniform_and_weights():
    assert np.allclose(np.exp(h2_log_prior("uniform", 4, "k")), 0.25)
    w = np.exp(h2_log_prior([2, 1, 1, 0], 4, "k"))
    assert np.allclose(w, [0.5, 0.25, 0.25, 0])
    with pytest.raises(UserError, match="priors.x: needs 4 non-negative weights"):
        h2_log_prior([1, 2], 4, "priors.x")


def test_rotation_diagonalises_block():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((8, 3))
    kinship = a @ a.T  # rank 3
    rows = np.array([0, 2, 3, 5, 7])
    rot = rotation(kinship, rows)
    block = kinship[np.ix_(rows, rows)]
    assert np.allclose(rot.vectors @ np.diag(rot.values) @ rot.vectors.T, block, atol=1e-10)
    assert np.all(rot.values >= 0) and (rot.values > 0).sum() == 3
