"""Cross-validation folds (megalmm_cli.cvsplit): the G2F vignette's scheme, in general."""

import numpy as np
import pandas as pd
import pytest

from megalmm_cli.cvsplit import cv_folds, write_fold_files


def _data(n=60, t=5, missing=0.4, seed=0):
    rng = np.random.default_rng(seed)
    ids = [f"L{i:03d}" for i in range(n)]
    traits = [f"Env{j}" for j in range(t)]
    values = rng.normal(size=(n, t))
    values[rng.random((n, t)) < missing] = np.nan
    # group A is larger overall; in trait 0 group B dominates (only B observed on most rows)
    groups = np.where(np.arange(n) < 2 * n // 3, "A", "B")
    values[: n // 2, 0] = np.nan
    return ids, traits, values, dict(zip(ids, groups))


def _best_group(ids, values, group_of_id, j):
    observed = [group_of_id[ids[i]] for i in np.flatnonzero(~np.isnan(values[:, j]))]
    counts = pd.Series(observed).value_counts()
    return counts.index[0], counts


def test_folds_balanced_within_each_trait():
    ids, traits, values, groups = _data()
    for n_folds in (2, 3, 5, 7):
        table = cv_folds(ids, traits, values, groups, n_folds=n_folds, seed=3)
        for _, cells in table.dropna(subset=["fold"]).groupby("trait"):
            sizes = cells["fold"].value_counts().reindex(range(1, n_folds + 1), fill_value=0)
            assert sizes.max() - sizes.min() <= 1


def test_only_best_represented_group_gets_folds_and_each_cell_once():
    ids, traits, values, groups = _data()
    table = cv_folds(ids, traits, values, groups, n_folds=5, seed=1)
    assert not table.duplicated(["id", "trait"]).any()
    for j, trait in enumerate(traits):
        best, counts = _best_group(ids, values, groups, j)
        assert counts.iloc[0] > counts.iloc[1]  # the data are built without ties
        cells = table[table["trait"] == trait]
        in_best = cells["id"].map(groups) == best
        assert cells.loc[in_best, "fold"].notna().all()      # every best-group cell has a fold
        assert cells.loc[~in_best, "fold"].isna().all()      # the others never do
        assert cells.loc[in_best, "fold"].between(1, 5).all()
    # trait 0 is dominated by group B, the others by A: the choice is per trait
    assert _best_group(ids, values, groups, 0)[0] == "B"
    assert _best_group(ids, values, groups, 1)[0] == "A"


def test_no_missing_cell_is_a_test_cell():
    ids, traits, values, groups = _data()
    table = cv_folds(ids, traits, values, groups, n_folds=5, seed=1)
    observed = {(ids[i], traits[j]) for i, j in zip(*np.nonzero(~np.isnan(values)))}
    assert set(zip(table["id"], table["trait"])) == observed


def test_without_groups_every_observed_cell_is_split():
    ids, traits, values, _ = _data()
    table = cv_folds(ids, traits, values, None, n_folds=4, seed=1)
    assert table["fold"].notna().all()
    assert len(table) == int((~np.isnan(values)).sum())
    # a sequence aligned with ids works like a mapping
    seq = cv_folds(ids, traits, values, ["g"] * len(ids), n_folds=4, seed=1)
    pd.testing.assert_frame_equal(table, seq)


def test_reproducible_with_a_seed():
    ids, traits, values, groups = _data()
    a = cv_folds(ids, traits, values, groups, n_folds=5, seed=11)
    b = cv_folds(ids, traits, values, groups, n_folds=5, seed=11)
    c = cv_folds(ids, traits, values, groups, n_folds=5, seed=12)
    pd.testing.assert_frame_equal(a, b)
    assert not a["fold"].fillna(0).equals(c["fold"].fillna(0))


def test_bad_input_is_refused():
    ids, traits, values, groups = _data()
    with pytest.raises(ValueError):
        cv_folds(ids, traits, values[:, :2], groups)
    with pytest.raises(ValueError):
        cv_folds(ids, traits, values, groups, n_folds=0)
    with pytest.raises(ValueError):
        cv_folds(ids, traits, values, {"L000": "A"})


def test_fold_files_round_trip(tmp_path):
    ids, traits, values, groups = _data()
    table = cv_folds(ids, traits, values, groups, n_folds=5, seed=1)
    paths = write_fold_files(table, tmp_path / "folds", "id", "trait")
    assert [p.name for p in paths] == [f"fold_{f}.csv" for f in range(1, 6)]
    for f, path in enumerate(paths, start=1):
        back = pd.read_csv(path, dtype=str)
        assert list(back.columns) == ["id", "trait"]
        expected = table.loc[table["fold"] == f, ["id", "trait"]].reset_index(drop=True)
        pd.testing.assert_frame_equal(back, expected)


def test_fold_files_usable_as_test_cells(tmp_path):
    from types import SimpleNamespace

    from megalmm_cli.data import load_test_cells

    ids, traits, values, groups = _data()
    table = cv_folds(ids, traits, values, groups, n_folds=3, seed=1)
    path = write_fold_files(table, tmp_path, "id", "trait")[0]
    cfg = SimpleNamespace(file=path, id="id", trait="trait", value="value")
    cells = load_test_cells(cfg, ids, traits)
    fold_1 = table[table["fold"] == 1]
    assert list(cells.rows) == [ids.index(i) for i in fold_1["id"]]
    assert list(cells.cols) == [traits.index(t) for t in fold_1["trait"]]
    assert np.isnan(cells.values).all()
    assert (~np.isnan(values[cells.rows, cells.cols])).all()
