"""Loading and checking of the input data: phenotypes, covariates, test cells, and the
alignment of individuals with the kinships (kinship.py reads those; tables.py the files).

Pure I/O and validation, no model logic. Every problem with the user's files raises
megalmm_cli.errors.UserError with one line naming the file, the line/column or id, what is
wrong and what to do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from megalmm_cli.errors import UserError
from megalmm_cli.kinship import Kinship
from megalmm_cli.tables import (
    DEFAULT_MISSING,
    Table,
    check_finite_values,
    check_unique_ids,
    covariate_column,
    first_names,
    numeric_matrix,
    read_table,
    table_ids,
    to_float,
)


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Phenotypes:
    ids: tuple[str, ...]  # (n,) individuals with at least one row in the file, file order
    traits: tuple[str, ...]  # (t,)
    values: np.ndarray  # (n, t) float64, NaN = missing
    covariates: pd.DataFrame  # index = ids (same order); covariate columns of the phenotype file
    source: str  # file name for messages


@dataclass(frozen=True)
class AlignedData:
    ids: tuple[str, ...]  # (N,) phenotyped ids, then kinship-only ids of the first kinship
    n_phenotyped: int
    values: np.ndarray  # (N, t) rows of kinship-only ids are all NaN
    kinships: tuple[np.ndarray | None, ...]  # each (N, N) aligned to ids, None = identity
    traits: tuple[str, ...]


@dataclass(frozen=True)
class TestCells:
    __test__ = False  # not a pytest test class

    rows: np.ndarray  # (c,) int index into ids
    cols: np.ndarray  # (c,) int index into traits
    values: np.ndarray  # (c,) float, NaN where the file gives no value


# ----------------------------------------------------------------------------- phenotypes


def load_phenotypes(cfg, extra_covariate_columns: Sequence[str] = (),
                    text_columns: Sequence[str] = ()) -> Phenotypes:
    """Read the phenotype file (cfg: PhenotypesConfig, layout 'wide' or 'tall').

    Returns Phenotypes with values (n, t). extra_covariate_columns: columns (e.g. used by the
    model formula) that are not traits in a wide file; those present become covariates.
    text_columns: covariates kept as text even when they look numeric (grouping columns, whose
    level names must match a kinship's ids exactly: "007" stays "007").
    """
    missing = tuple(cfg.missing_values)
    if cfg.layout == "tall":
        pheno = _load_tall(cfg, missing, text_columns)
    elif cfg.layout == "wide":
        pheno = _load_wide(cfg, missing, extra_covariate_columns, text_columns)
    else:
        raise UserError(f"{Path(cfg.file).name}: unknown layout '{cfg.layout}'; use 'wide' or 'tall'")
    _check_traits(pheno)
    return pheno


def _load_wide(cfg, missing: Sequence[str], extra_covariate_columns: Sequence[str],
               text_columns: Sequence[str] = ()) -> Phenotypes:
    """One row per id; trait columns = cfg.traits or every non-id, non-covariate column."""
    table = read_table(cfg.file, cfg.id, text_columns=text_columns, missing_values=missing)
    columns = list(table.frame.columns)
    for column in cfg.covariate_columns:
        if column not in columns:
            raise UserError(
                f"{table.source}: covariate column '{column}' not found (columns: {first_names(columns, 10)});"
                " fix phenotypes.covariate_columns"
            )
    extra = [c for c in extra_covariate_columns if c in columns and c != table.id_column]
    covariate_columns = list(dict.fromkeys([*cfg.covariate_columns, *extra]))
    if cfg.traits is not None:
        traits = list(cfg.traits)
        for trait in traits:
            if trait not in columns or trait == table.id_column:
                raise UserError(
                    f"{table.source}: trait column '{trait}' not found (columns: {first_names(columns, 10)});"
                    " fix phenotypes.traits"
                )
    else:
        excluded = {table.id_column, *covariate_columns}
        traits = [c for c in columns if c not in excluded]
    if not traits:
        raise UserError(f"{table.source}: no trait columns found; add trait columns or set phenotypes.traits")

    ids = table_ids(table)
    check_unique_ids(ids, table.source, "keep one row per id (or use layout: tall)")
    values = numeric_matrix(table, traits)
    check_finite_values(table, values, traits)
    covariates = pd.DataFrame(
        {c: covariate_column(table.frame[c], c in text_columns, missing).to_numpy()
         for c in covariate_columns},
        index=pd.Index(ids, name=table.id_column),
    )
    return Phenotypes(tuple(ids), tuple(traits), values, covariates, table.source)


def _load_tall(cfg, missing: Sequence[str], text_columns: Sequence[str] = ()) -> Phenotypes:
    """One row per (id, trait) observation; other columns are per-id covariates."""
    table = read_table(cfg.file, cfg.id, text_columns=[cfg.trait, *text_columns],
                        missing_values=missing)
    frame, source = table.frame, table.source
    for key, column in (("trait", cfg.trait), ("value", cfg.value)):
        if column not in frame.columns:
            raise UserError(
                f"{source}: no {key} column '{column}' (columns: {first_names(list(frame.columns), 10)});"
                f" fix phenotypes.{key}"
            )
    id_column = table.id_column
    if len({id_column, cfg.trait, cfg.value}) < 3:
        raise UserError(f"{source}: the id, trait and value columns must be three different columns")

    row_ids = table_ids(table)
    row_traits = frame[cfg.trait]
    empty = np.flatnonzero((row_traits.isna() | (row_traits == "")).to_numpy())
    if empty.size:
        raise UserError(f"{source}: line {table.lines[empty[0]]}: empty trait name; every row needs a trait")
    repeated = np.flatnonzero(frame.duplicated([id_column, cfg.trait], keep="first").to_numpy())
    if repeated.size:
        row = repeated[0]
        same = (frame[id_column] == row_ids[row]) & (row_traits == row_traits.iat[row])
        first_row = np.flatnonzero(same.to_numpy())[0]
        raise UserError(
            f"{source}: line {table.lines[row]}: id '{row_ids[row]}' and trait '{row_traits.iat[row]}'"
            f" already appear on line {table.lines[first_row]}; keep one observation per (id, trait)"
            " (average replicates first)"
        )
    observed = to_float(table, cfg.value)
    check_finite_values(table, observed[:, None], [cfg.value])

    ids = pd.unique(row_ids)
    traits = pd.unique(row_traits.to_numpy(dtype=object))
    rows = pd.Index(ids).get_indexer(row_ids)
    cols = pd.Index(traits).get_indexer(row_traits.to_numpy(dtype=object))
    values = np.full((len(ids), len(traits)), np.nan)
    values[rows, cols] = observed

    covariate_columns = [c for c in frame.columns if c not in (id_column, cfg.trait, cfg.value)]
    covariates = _tall_covariates(table, covariate_columns, ids, text_columns, missing)
    return Phenotypes(tuple(ids), tuple(traits), values, covariates, source)


def _tall_covariates(table: Table, columns: Sequence[str], ids: Sequence[str],
                     text_columns: Sequence[str] = (),
                     missing: Sequence[str] = DEFAULT_MISSING) -> pd.DataFrame:
    """(n, len(columns)) covariates of a tall file: one value per id (must be constant within id)."""
    frame = pd.DataFrame({c: covariate_column(table.frame[c], c in text_columns, missing)
                          for c in columns}, index=table.frame.index)
    frame.insert(0, "__id__", table.frame[table.id_column].to_numpy())
    for column in columns:
        counts = frame.groupby("__id__", sort=False)[column].nunique(dropna=False)
        varying = counts.index[counts.to_numpy() > 1]
        if len(varying):
            rows = np.flatnonzero((frame["__id__"] == varying[0]).to_numpy())
            raise UserError(
                f"{table.source}: covariate column '{column}' differs between the rows of id"
                f" '{varying[0]}' (lines {first_names(table.lines[rows])}); a covariate column must have one"
                " value per id"
            )
    first = frame.drop_duplicates("__id__", keep="first").set_index("__id__")
    first.index.name = table.id_column
    return first.loc[list(ids), list(columns)]


def _check_traits(pheno: Phenotypes) -> None:
    """Each trait needs at least one observation and non-zero variance."""
    if not pheno.traits:
        raise UserError(f"{pheno.source}: no traits found; supply at least one trait")
    for j, trait in enumerate(pheno.traits):
        column = pheno.values[:, j]
        observed = column[~np.isnan(column)]
        if observed.size == 0:
            raise UserError(
                f"{pheno.source}: trait '{trait}' has no observed value; remove the column or supply data"
            )
        if np.all(observed == observed[0]):
            problem = (
                f"has only one observed value ({observed[0]:g})" if observed.size == 1
                else f"has the same value ({observed[0]:g}) for all {observed.size} observed individuals"
            )
            raise UserError(
                f"{pheno.source}: trait '{trait}' {problem}, so it cannot be scaled; remove the trait"
                " or supply varying data"
            )


# ----------------------------------------------------------------------------- covariates


def load_covariates(cfg, text_columns: Sequence[str] = ()) -> pd.DataFrame:
    """Covariate file (cfg: CovariatesConfig) -> DataFrame (n, k) indexed by id (str).

    Numeric columns become float64, other columns (and text_columns) stripped str objects;
    NaN = missing.
    """
    table = read_table(cfg.file, cfg.id, text_columns=text_columns)
    ids = table_ids(table)
    check_unique_ids(ids, table.source)
    columns = [c for c in table.frame.columns if c != table.id_column]
    return pd.DataFrame(
        {c: covariate_column(table.frame[c], c in text_columns).to_numpy() for c in columns},
        index=pd.Index(ids, name=table.id_column),
    )


# ----------------------------------------------------------------------------- alignment


def align_individuals(pheno: Phenotypes, kinships: Sequence[Kinship]) -> AlignedData:
    """Put phenotypes and kinships on one list of individuals.

    ids = phenotyped ids (file order) + ids only in the first kinship (kinship order; rows to
    predict, all NaN). Every kinship must contain every phenotyped id, and kinships after the
    first must contain all of ids. Each matrix is returned as (N, N) in ids order.
    """
    ids = list(pheno.ids)
    if kinships and kinships[0].ids is not None:
        phenotyped = set(ids)
        check_covers(kinships[0], ids, "phenotyped ids", "add them to the kinship or drop their rows")
        ids += [x for x in kinships[0].ids if x not in phenotyped]
    for kinship in kinships[1:]:
        if kinship.ids is not None:
            check_covers(
                kinship, ids, "ids",
                "every kinship must contain all phenotyped ids and the ids of the first kinship",
            )
    values = np.full((len(ids), len(pheno.traits)), np.nan)
    values[: len(pheno.ids)] = pheno.values
    return AlignedData(
        ids=tuple(ids),
        n_phenotyped=len(pheno.ids),
        values=values,
        kinships=tuple(reorder_kinship(k, ids) for k in kinships),
        traits=tuple(pheno.traits),
    )


def check_covers(kinship: Kinship, ids: Sequence[str], what: str, hint: str) -> None:
    known = set(kinship.ids)
    absent = [x for x in ids if x not in known]
    if absent:
        raise UserError(
            f"{kinship.source}: {len(absent)} {what} are missing from the kinship"
            f" (first: {first_names(absent)}); {hint}"
        )


def reorder_kinship(kinship: Kinship, ids: Sequence[str]) -> np.ndarray | None:
    """Kinship matrix (N, N) in the order of ids (None stays None)."""
    if kinship.matrix is None:
        return None
    index = pd.Index(kinship.ids).get_indexer(ids)
    if len(index) == len(kinship.ids) and np.array_equal(index, np.arange(len(index))):
        return kinship.matrix
    return kinship.matrix[np.ix_(index, index)]


# ----------------------------------------------------------------------------- test cells


def load_test_cells(cfg, ids: Sequence[str], traits: Sequence[str]) -> TestCells:
    """Tall file of held-out (id, trait[, value]) cells (cfg: TestCellsConfig) -> TestCells (c,)."""
    table = read_table(cfg.file, cfg.id, text_columns=[cfg.trait])
    frame, source = table.frame, table.source
    if cfg.trait not in frame.columns:
        raise UserError(
            f"{source}: no trait column '{cfg.trait}' (columns: {first_names(list(frame.columns), 10)});"
            " fix test_cells.trait"
        )
    cell_ids = table_ids(table)
    cell_traits = frame[cfg.trait].fillna("").to_numpy(dtype=object)
    rows = pd.Index(list(ids)).get_indexer(cell_ids)
    cols = pd.Index(list(traits)).get_indexer(cell_traits)
    if (rows < 0).any():
        i = np.flatnonzero(rows < 0)[0]
        raise UserError(
            f"{source}: line {table.lines[i]}: id '{cell_ids[i]}' is not a known individual"
            " (phenotype file or first kinship); fix the id or remove the row"
        )
    if (cols < 0).any():
        i = np.flatnonzero(cols < 0)[0]
        raise UserError(
            f"{source}: line {table.lines[i]}: trait '{cell_traits[i]}' is not a trait of the phenotype file"
            f" (traits: {first_names(traits)}); fix the trait or remove the row"
        )
    cells = pd.MultiIndex.from_arrays([rows, cols])
    repeated = np.flatnonzero(cells.duplicated())
    if repeated.size:
        i = repeated[0]
        first = np.flatnonzero((rows == rows[i]) & (cols == cols[i]))[0]
        raise UserError(
            f"{source}: line {table.lines[i]}: cell id '{cell_ids[i]}', trait '{cell_traits[i]}' already"
            f" appears on line {table.lines[first]}; list each cell once"
        )
    if cfg.value in frame.columns:
        values = to_float(table, cfg.value)
        check_finite_values(table, values[:, None], [cfg.value])
    else:
        values = np.full(len(rows), np.nan)
    return TestCells(rows.astype(np.int64), cols.astype(np.int64), values)
