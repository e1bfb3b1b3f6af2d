"""Design matrices (fixed effects from R-style formulas) and missing-data groups."""

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .errors import UserError

AUTO_MAX_GROUPS = 32        # 'auto' keeps every distinct missingness pattern up to this many
AUTO_MIN_SPLIT_GAIN = 0.05  # 'auto' splits a group only if it removes >= 5% of its imputed cells


def formula_variables(formula: str | None) -> list[str]:
    """Names of the covariate columns a formula uses (empty for None or '~ 1')."""
    if not formula:
        return []
    from formulaic import Formula

    return sorted(str(v) for v in Formula(formula).required_variables)


def fixed_design(
    formula: str, covariates: pd.DataFrame, ids, n_phenotyped: int, key: str
) -> tuple[np.ndarray, list[str]]:
    """Model matrix of a formula for every individual.

    covariates: indexed by id; ids: (N,) rows of the model, the first n_phenotyped phenotyped.
    A phenotyped individual without a covariate value is an error; an individual to predict
    without one gets the column means (its fixed effect is then an average).
    Returns X: (N, b) and the column names.
    """
    from formulaic import model_matrix

    ids = list(ids)
    needed = formula_variables(formula)
    missing_cols = [v for v in needed if v not in covariates.columns]
    if missing_cols:
        raise UserError(
            f"{key}: covariate '{missing_cols[0]}' is not a column of the phenotype or covariate "
            f"file (available: {', '.join(map(str, covariates.columns)) or 'none'}); fix the formula "
            "or add the column"
        )
    frame = covariates.reindex(ids)[needed] if needed else pd.DataFrame(index=ids)
    has_all = frame.notna().all(axis=1).to_numpy()
    bad = np.flatnonzero(~has_all[:n_phenotyped])
    if bad.size:
        row = ids[bad[0]]
        col = next(c for c in needed if pd.isna(frame.iloc[bad[0]][c]))
        raise UserError(
            f"{key}: individual '{row}' has no value for covariate '{col}' "
            f"({bad.size} phenotyped individuals lack covariates); supply it or drop the individual"
        )
    try:
        mm = model_matrix(formula, frame.iloc[np.flatnonzero(has_all)], na_action="raise")
    except Exception as exc:  # formulaic raises many types for a bad formula
        raise UserError(f"{key}: cannot build the design from '{formula}': {exc}") from None
    names = [str(c) for c in mm.columns]
    x_known = np.asarray(mm, dtype=np.float64)
    design = np.empty((len(ids), x_known.shape[1]))
    design[has_all] = x_known
    design[~has_all] = x_known.mean(axis=0)
    if not np.all(np.isfinite(design)):
        raise UserError(f"{key}: the design from '{formula}' has non-finite values; check covariates")
    return design, names


def independent_columns(design: np.ndarray, tol: float = 1e-8) -> np.ndarray:
    """Boolean mask of a maximal set of linearly independent columns (earlier columns first)."""
    b = design.shape[1]
    keep = np.zeros(b, dtype=bool)
    if b == 0 or design.shape[0] == 0:
        return keep
    scale = np.linalg.norm(design, axis=0)
    scale[scale == 0] = 1.0
    # Greedy in column order: keep a column if it adds rank.
    basis = np.zeros((design.shape[0], 0))
    for c in range(b):
        col = design[:, c] / scale[c]
        if basis.shape[1]:
            col = col - basis @ (basis.T @ col)
        norm = np.linalg.norm(col)
        if norm > tol * np.sqrt(design.shape[0]) and norm > 1e-6:
            keep[c] = True
            basis = np.column_stack([basis, col / norm])
    return keep


@dataclass(frozen=True)
class TraitGroup:
    """Traits that share a set of rows in the likelihood.

    rows: (n_g,) row indices (into the training rows); cols: (t_g,) trait indices.
    Missing cells inside rows x cols are imputed each iteration; missing cells of these
    traits on other rows are predicted only.
    """

    rows: np.ndarray
    cols: np.ndarray


def imputed_cells(observed: np.ndarray, group: TraitGroup) -> int:
    block = observed[np.ix_(group.rows, group.cols)]
    return int(block.size - block.sum())


def _group_from_cols(observed: np.ndarray, cols: np.ndarray) -> TraitGroup:
    rows = np.flatnonzero(observed[:, cols].any(axis=1))
    return TraitGroup(rows=rows, cols=np.sort(cols))


def _bisect(observed: np.ndarray, group: TraitGroup) -> tuple[np.ndarray, np.ndarray] | None:
    """Split a group's traits in two by 2-means on their missingness patterns (deterministic)."""
    pattern = observed[np.ix_(group.rows, group.cols)].T.astype(np.float64)  # (t_g, n_g)
    if pattern.shape[0] < 2:
        return None
    centre = pattern.mean(axis=0)
    first = np.argmax(((pattern - centre) ** 2).sum(axis=1))
    second = np.argmax(((pattern - pattern[first]) ** 2).sum(axis=1))
    centres = pattern[[first, second]]
    label = None
    for _ in range(20):
        dist = ((pattern[:, None, :] - centres[None]) ** 2).sum(axis=2)
        new_label = dist.argmin(axis=1)
        if label is not None and np.array_equal(new_label, label):
            break
        label = new_label
        if label.min() == label.max():
            return None
        centres = np.stack([pattern[label == c].mean(axis=0) for c in (0, 1)])
    return group.cols[label == 0], group.cols[label == 1]


def missing_data_groups(observed: np.ndarray, max_groups) -> list[TraitGroup]:
    """Partition traits into groups sharing rows (DESIGN.md section 5).

    observed: (n, t) bool over the training rows. max_groups: int >= 1 or 'auto'.
    Identical missingness patterns always share a group; if the number of distinct patterns
    fits the limit (AUTO_MAX_GROUPS for 'auto'), each is its own group and nothing is imputed.
    Otherwise groups are bisected greedily (largest number of imputed cells first) while a
    split removes imputed cells ('auto': at least AUTO_MIN_SPLIT_GAIN of them).
    Groups are returned largest first.
    """
    n, t = observed.shape
    auto = max_groups == "auto"
    limit = AUTO_MAX_GROUPS if auto else int(max_groups)
    _, pattern_of = np.unique(np.packbits(observed, axis=0).T, axis=0, return_inverse=True)
    pattern_of = pattern_of.ravel()
    n_patterns = pattern_of.max() + 1
    if n_patterns <= limit:
        groups = [_group_from_cols(observed, np.flatnonzero(pattern_of == p)) for p in range(n_patterns)]
    else:
        groups = [_group_from_cols(observed, np.arange(t))]
        frozen: set[int] = set()
        while len(groups) < limit:
            costs = [
                -1 if (i in frozen or g.cols.size < 2) else imputed_cells(observed, g)
                for i, g in enumerate(groups)
            ]
            worst = int(np.argmax(costs))
            if costs[worst] <= 0:
                break
            split = _bisect(observed, groups[worst])
            if split is None:
                frozen.add(worst)
                continue
            children = [_group_from_cols(observed, c) for c in split]
            gain = costs[worst] - sum(imputed_cells(observed, c) for c in children)
            if gain <= 0 or (auto and gain < AUTO_MIN_SPLIT_GAIN * costs[worst]):
                frozen.add(worst)
                continue
            groups[worst:worst + 1] = children
            frozen = {i if i < worst else i + 1 for i in frozen}
    groups.sort(key=lambda g: (-g.rows.size, g.cols[0]))
    return groups


def level_kinship(levels: pd.Series, kinship, source: str, column: str) -> np.ndarray:
    """Row-level covariance Z K Z' of a random effect whose grouping column maps rows to levels.

    levels: (N,) level of each row (NaN: no level, e.g. an individual to predict without a
    value; its row and column are 0, so the effect adds nothing there); kinship: data.Kinship
    over levels (levels absent from the data are ignored) or with matrix None (independent
    levels). Returns (N, N).
    """
    present = levels.notna().to_numpy()
    text = levels[present].astype(str).str.strip().to_numpy()
    if kinship.matrix is None:
        names, index = np.unique(text, return_inverse=True)
        level_matrix = np.eye(names.size)
    else:
        position = pd.Index(kinship.ids).get_indexer(text)
        absent = pd.unique(text[position < 0])
        if absent.size:
            shown = ", ".join(map(str, absent[:5])) + (", ..." if absent.size > 5 else "")
            raise UserError(
                f"{source}: {absent.size} level(s) of grouping column '{column}' are missing from "
                f"the kinship (first: {shown}); add them to the kinship or fix the column")
        used, index = np.unique(position, return_inverse=True)
        level_matrix = kinship.matrix[np.ix_(used, used)]
    z = np.zeros((levels.size, level_matrix.shape[0]))
    z[np.flatnonzero(present), index] = 1.0
    return z @ level_matrix @ z.T
