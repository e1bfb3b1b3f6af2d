"""Cross-validation folds over observed cells, as in MegaLMM's multi-environment (G2F) vignette.

For each trait (e.g. environment), the observed cells of the best-represented group (e.g.
population) among that trait's observed cells are split at random into n_folds folds of sizes
as equal as possible; cells of the other groups get no fold and are never test cells. Without
groups every observed cell is split. Fold f's cells are the test cells of fold f: hidden from
training and scored afterwards (`data.test_cells`).
"""

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd


def cv_folds(
    ids: Sequence[str],
    traits: Sequence[str],
    values: np.ndarray,
    group_of_id: Mapping[str, object] | Sequence[object] | None,
    n_folds: int = 5,
    seed: int = 1,
) -> pd.DataFrame:
    """Assign the observed cells of a (n, t) phenotype matrix to cross-validation folds.

    ids: n individual ids (rows of values); traits: t trait names (columns of values);
    values: (n, t) floats with NaN for missing cells; group_of_id: the group of each id, as a
    mapping id -> group or a length-n sequence aligned with ids, or None (one group);
    n_folds >= 1; seed: seed of the numpy Generator that draws the split.

    Returns a DataFrame with one row per observed cell (row-major over traits in the given
    order, then ids in the given order), columns id, trait, fold: fold is an int in
    1..n_folds for cells of the trait's best-represented group (ties go to the group seen first
    among that trait's observed ids), and pd.NA (Int64 dtype) for the other groups' cells.
    Within a trait the fold sizes differ by at most 1; the fold labels of the n mod n_folds
    larger folds are drawn at random too.
    """
    values = np.asarray(values, dtype=float)
    ids = [str(i) for i in ids]
    traits = [str(t) for t in traits]
    if values.shape != (len(ids), len(traits)):
        raise ValueError(f"values has shape {values.shape}, expected ({len(ids)}, {len(traits)})")
    if n_folds < 1:
        raise ValueError(f"n_folds must be >= 1, got {n_folds}")
    if group_of_id is None:
        groups = np.zeros(len(ids), dtype=object)
    elif isinstance(group_of_id, Mapping):
        missing = [i for i in ids if i not in group_of_id]
        if missing:
            raise ValueError(f"group_of_id has no group for ids {missing[:5]}")
        groups = np.array([group_of_id[i] for i in ids], dtype=object)
    else:
        groups = np.asarray(list(group_of_id), dtype=object)
        if groups.size != len(ids):
            raise ValueError(f"group_of_id has {groups.size} entries, expected {len(ids)}")
    rng = np.random.default_rng(seed)
    id_col, trait_col, fold_col = [], [], []
    for j, trait in enumerate(traits):
        rows = np.flatnonzero(~np.isnan(values[:, j]))
        folds = np.full(rows.size, -1, dtype=np.int64)
        if rows.size:
            labels, first, counts = np.unique(groups[rows].astype(str), return_index=True,
                                              return_counts=True)
            # the most cells; among ties the group whose first observed id comes first
            best = labels[min(range(labels.size), key=lambda g: (-counts[g], first[g]))]
            members = np.flatnonzero(groups[rows].astype(str) == best)
            # as equal as possible: a random permutation of a balanced label vector
            balanced = np.arange(members.size) % n_folds
            shift = rng.permutation(n_folds)  # which folds get the extra cells is random too
            folds[members] = shift[rng.permutation(balanced)] + 1
        id_col.extend(ids[r] for r in rows)
        trait_col.extend([trait] * rows.size)
        fold_col.extend(folds.tolist())
    fold = pd.array([f if f > 0 else pd.NA for f in fold_col], dtype="Int64")
    return pd.DataFrame({"id": id_col, "trait": trait_col, "fold": fold})


def write_fold_files(
    table: pd.DataFrame,
    outdir: str | Path,
    id_col: str = "id",
    trait_col: str = "trait",
    fold_col: str = "fold",
) -> list[Path]:
    """Write one test-cells file per fold: <outdir>/fold_1.csv ... fold_<max>.csv.

    table: one row per cell with columns id_col, trait_col and fold_col (an int fold, or NA for
    cells that are never test cells), e.g. the output of cv_folds. Each file has columns id,
    trait (usable as `data.test_cells: {file: fold_1.csv}` with the default column names) and
    the rows of that fold in table order. Returns the written paths in fold order.
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    folds = pd.to_numeric(table[fold_col], errors="coerce")
    numbers = sorted(int(f) for f in folds.dropna().unique())
    paths = []
    for number in range(1, (numbers[-1] if numbers else 0) + 1):
        cells = table.loc[folds == number, [id_col, trait_col]]
        cells = cells.rename(columns={id_col: "id", trait_col: "trait"})
        path = outdir / f"fold_{number}.csv"
        cells.to_csv(path, index=False)
        paths.append(path)
    return paths
