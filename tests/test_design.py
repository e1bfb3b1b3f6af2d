import numpy as np
import pandas as pd
import pytest

from megalmm_cli.design import (fixed_design, imputed_cells, independent_columns,
                                missing_data_groups)
from megalmm_cli.errors import UserError


def covariates():
    return pd.DataFrame({"Population": ["A", "B", "A", "B", "A"], "x": [0.1, 0.5, -1.0, 2.0, 0.0]},
                        index=["i1", "i2", "i3", "i4", "i5"])


def test_formula_design_with_factor_and_numeric():
    x, names = fixed_design("~ Population + x", covariates(), ["i1", "i2", "i3", "i4", "i5"], 5, "model.fixed")
    assert names == ["Intercept", "Population[T.B]", "x"]
    assert np.allclose(x[:, 1], [0, 1, 0, 1, 0])
    assert np.allclose(x[:, 2], [0.1, 0.5, -1.0, 2.0, 0.0])


def test_individual_to_predict_without_covariates_gets_column_means():
    x, _ = fixed_design("~ x", covariates(), ["i1", "i2", "new"], 2, "model.fixed")
    assert np.allclose(x[2], [1.0, np.mean([0.1, 0.5])])


def test_phenotyped_individual_without_covariate_is_an_error():
    with pytest.raises(UserError, match="individual 'new' has no value for covariate 'x'"):
        fixed_design("~ x", covariates(), ["i1", "new"], 2, "model.fixed")


def test_unknown_covariate_is_an_error():
    with pytest.raises(UserError, match="model.fixed: covariate 'Block' is not a column"):
        fixed_design("~ Block", covariates(), ["i1"], 1, "model.fixed")


def test_constant_columns_are_dropped_within_rows():
    x, _ = fixed_design("~ Population + x", covariates(), ["i1", "i2", "i3", "i4", "i5"], 5, "k")
    keep_all = independent_columns(x)
    assert keep_all.tolist() == [True, True, True]
    only_a = independent_columns(x[[0, 2, 4]])  # Population constant among these rows
    assert only_a.tolist() == [True, False, True]


def test_groups_exact_patterns_have_no_imputed_cells():
    observed = np.zeros((10, 5), dtype=bool)
    observed[:6, :3] = True
    observed[4:, 3:] = True
    groups = missing_data_groups(observed, "auto")
    assert len(groups) == 2
    assert sorted(map(tuple, (g.cols for g in groups))) == [(0, 1, 2), (3, 4)]
    assert all(imputed_cells(observed, g) == 0 for g in groups)
    single = missing_data_groups(observed, 1)
    assert len(single) == 1 and imputed_cells(observed, single[0]) == 4 * 3 + 4 * 2


def test_groups_partition_traits_and_cover_observed_cells():
    rng = np.random.default_rng(3)
    observed = rng.random((60, 40)) > 0.3
    observed[:30, :20] = True  # some structure
    observed[30:, 20:] = rng.random((30, 20)) > 0.9
    for max_groups in (1, 3, "auto"):
        groups = missing_data_groups(observed, max_groups)
        cols = np.sort(np.concatenate([g.cols for g in groups]))
        assert np.array_equal(cols, np.arange(40))
        covered = np.zeros_like(observed)
        for g in groups:
            covered[np.ix_(g.rows, g.cols)] = True
        assert np.all(covered[observed])
        if max_groups != "auto":
            assert len(groups) <= max_groups


def test_more_groups_never_impute_more():
    rng = np.random.default_rng(4)
    blocks = rng.random((80, 4)) > 0.5
    observed = np.repeat(blocks, 10, axis=1) & (rng.random((80, 40)) > 0.05)
    counts = [sum(imputed_cells(observed, g) for g in missing_data_groups(observed, m)) for m in (1, 2, 4, 8)]
    assert counts == sorted(counts, reverse=True)
    assert counts[-1] < counts[0]
