"""Loading and checking of the input data: phenotypes, covariates, kinships, test cells.

Pure I/O and validation, no model logic. Every problem with the user's files raises
megalmm_cli.errors.UserError with one line naming the file, the line/column or id, what is
wrong and what to do.

Delimited files (CSV, or TSV for .tsv/.txt/.tab) may start with a UTF-8 BOM and use CRLF line
ends. Ids are read as strings and stripped of surrounding whitespace.
"""

from __future__ import annotations

import csv
import gzip
import sys
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from megalmm_cli.errors import UserError
from megalmm_cli.kinship import vanraden

DEFAULT_MISSING = ("NA", "")
TAB_SUFFIXES = (".tsv", ".txt", ".tab")
H5_SUFFIXES = (".h5", ".hdf5")
SHOW_FIRST = 5  # how many ids/names an error message lists


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Phenotypes:
    ids: tuple[str, ...]  # (n,) individuals with at least one row in the file, file order
    traits: tuple[str, ...]  # (t,)
    values: np.ndarray  # (n, t) float64, NaN = missing
    covariates: pd.DataFrame  # index = ids (same order); covariate columns of the phenotype file
    source: str  # file name for messages


@dataclass(frozen=True)
class Kinship:
    name: str  # grouping column
    ids: tuple[str, ...] | None  # (q,) None for identity kinship
    matrix: np.ndarray | None  # (q, q) float64, None for identity
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


# ----------------------------------------------------------------------------- small helpers


def _first(items: Sequence, k: int = SHOW_FIRST) -> str:
    """'a, b, c' for the first k items, with ', ...' when there are more."""
    items = [str(x) for x in items]
    return ", ".join(items[:k]) + (", ..." if len(items) > k else "")


def _separator(path: Path) -> str:
    """Tab for .tsv/.txt/.tab (also gzip-compressed: .tsv.gz), else comma."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return "\t" if suffixes and suffixes[-1] in TAB_SUFFIXES else ","


def _is_gzip(path: Path) -> bool:
    """True for a gzip-compressed file (by its first two bytes, whatever its name)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(2) == b"\x1f\x8b"
    except (FileNotFoundError, IsADirectoryError):
        return False


def _open_text(path: Path):
    """The file as UTF-8 text (a byte-order mark skipped), decompressed if it is gzip."""
    if _is_gzip(path):
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


@dataclass(frozen=True)
class _Table:
    """A delimited file read as a DataFrame, with the file line of every data row."""

    frame: pd.DataFrame  # (rows, columns); id/text columns as str, others as pandas inferred them
    lines: np.ndarray  # (rows,) 1-based line number of each data row in the file
    source: str  # file name
    id_column: str

    def where(self, row: int) -> str:
        """'line 7 (id 'L3')' for messages."""
        return f"line {self.lines[row]} (id '{self.frame[self.id_column].iat[row]}')"


def _scan_structure(path: Path, sep: str, source: str) -> tuple[list[str], np.ndarray]:
    """Header (stripped names) and the line number of every data row.

    Rejects an empty file, a file without data rows, repeated column names and ragged rows.
    """
    try:
        header, lines, widths = _record_widths(path, sep)
    except FileNotFoundError:
        raise UserError(f"{path}: file not found; check the path in the config") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, not a file; check the path in the config") from None
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise UserError(f"{source}: the gzip data is damaged or truncated ({err}); "
                        "compress the file again") from None
    except UnicodeDecodeError as err:
        raise UserError(f"{source}: is not UTF-8 text ({err.reason}); save it as UTF-8 CSV/TSV") from None
    except csv.Error as err:
        raise UserError(f"{source}: cannot be parsed as delimited text ({err}); fix the file") from None
    if header is None:
        raise UserError(f"{source}: the file is empty; supply a header row and data rows")
    ragged = np.flatnonzero(widths != len(header))
    if ragged.size:
        i = ragged[0]
        raise UserError(
            f"{source}: line {lines[i]} has {widths[i]} fields but the header has {len(header)};"
            " fix the row so that every row has one field per column"
        )
    if not lines.size:
        raise UserError(f"{source}: the file has a header but no data rows; supply data")
    header = [name.strip() for name in header]
    repeated = pd.Index(header)[pd.Index(header).duplicated()].unique()
    if len(repeated):
        raise UserError(
            f"{source}: column name(s) {_first(repeated)} appear more than once in the header;"
            " column names must be unique"
        )
    return header, lines


def _is_blank(row: list[str]) -> bool:
    """An empty or whitespace-only line (pandas skips those)."""
    return not row or (len(row) == 1 and not row[0].strip())


def _record_widths(path: Path, sep: str) -> tuple[list[str] | None, np.ndarray, np.ndarray]:
    """Header fields, then for every later non-blank record: its first line (1-based) and field count."""
    with _open_text(path) as fh:
        reader = csv.reader(fh, delimiter=sep)
        header = next((row for row in reader if not _is_blank(row)), None)
        if header is None:
            return None, np.empty(0, np.int64), np.empty(0, np.int64)
        first = reader.line_num + 1
        widths = np.fromiter(map(len, reader), dtype=np.int64)  # fast: no Python code per row
        one_line_each = reader.line_num - first + 1 == len(widths)
    if one_line_each and not np.any(widths == 1):  # no quoted line breaks, no whitespace-only lines
        lines = np.arange(first, first + len(widths))
        return header, lines[widths > 0], widths[widths > 0]

    lines, widths, end = [], [], 0  # slow path: look at every record
    with _open_text(path) as fh:
        reader = csv.reader(fh, delimiter=sep)
        for row in reader:
            start, end = end + 1, reader.line_num
            if start >= first and not _is_blank(row):
                lines.append(start)
                widths.append(len(row))
    return header, np.asarray(lines, dtype=np.int64), np.asarray(widths, dtype=np.int64)


def _read_table(
    path: Path | str,
    id_column: str | None,
    text_columns: Sequence[str] = (),
    missing_values: Sequence[str] = DEFAULT_MISSING,
) -> _Table:
    """Read a CSV/TSV with pandas.

    id_column (None = first column) and text_columns are read as stripped strings with no
    missing-value conversion; every other column is inferred by pandas with `missing_values`
    read as NaN (values are converted to numbers later, with clear errors).
    """
    path = Path(path)
    source = path.name
    sep = _separator(path)
    header, lines = _scan_structure(path, sep, source)
    id_column = header[0] if id_column is None else id_column
    if id_column not in header:
        raise UserError(
            f"{source}: no id column '{id_column}' (columns: {_first(header, 10)}); "
            "fix the id column name in the config"
        )
    text = [id_column] + [c for c in text_columns if c in header and c != id_column]
    try:
        with warnings.catch_warnings():
            # a column mixing numbers and text is fine here: _to_float reports its bad cell
            warnings.simplefilter("ignore", pd.errors.DtypeWarning)
            frame = pd.read_csv(
                path,
                sep=sep,
                names=header,
                header=0,
                index_col=False,
                encoding="utf-8-sig",
                compression="gzip" if _is_gzip(path) else None,
                dtype={c: str for c in text},
                keep_default_na=False,
                na_values={c: list(missing_values) for c in header if c not in text},
            )
    except ValueError as err:  # includes pandas' ParserError
        raise UserError(f"{source}: cannot be read ({err}); fix the file") from None
    if len(frame) != len(lines):  # should not happen: both skip blank lines
        raise UserError(f"{source}: cannot be read consistently (blank or quoted lines?); fix the file")
    for c in text:
        frame[c] = _strip(frame[c])
    return _Table(frame, lines, source, id_column)


def _strip(series: pd.Series) -> pd.Series:
    """Strip surrounding whitespace from str values (once per distinct value: ids repeat in tall files)."""
    codes, uniques = pd.factorize(series)  # missing -> code -1
    stripped = np.array([str(u).strip() for u in uniques] + [np.nan], dtype=object)
    return pd.Series(stripped[codes], index=series.index, dtype=object)


def _as_text(series: pd.Series) -> pd.Series:
    """Series of str / NaN whatever pandas inferred (undoes number/bool inference)."""
    return series.astype(object).where(series.isna(), series.astype(str))


def _is_number_dtype(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


def _to_float(table: _Table, column: str, fix: str = "use a number, or NA for missing") -> np.ndarray:
    """(rows,) float64 of one column; a non-numeric cell is a UserError naming line, id and column."""
    series = table.frame[column]
    if _is_number_dtype(series):
        return series.to_numpy(dtype=np.float64)
    text = _as_text(series)
    numbers = pd.to_numeric(text, errors="coerce")
    bad = np.flatnonzero(text.notna().to_numpy() & numbers.isna().to_numpy())
    if bad.size:
        row = bad[0]
        raise UserError(
            f"{table.source}: {table.where(row)}, column '{column}': '{text.iat[row]}' is not a number;"
            f" {fix}"
        )
    return numbers.to_numpy(dtype=np.float64)


def _numeric_matrix(
    table: _Table, columns: Sequence[str], fix: str = "use a number, or NA for missing"
) -> np.ndarray:
    """(rows, len(columns)) float64 of the given columns (non-numeric cell -> UserError).

    Text columns of table.frame are replaced by their numbers in place.
    """
    frame = table.frame
    for column in columns:
        if not _is_number_dtype(frame[column]):
            frame[column] = _to_float(table, column, fix)
    return frame[list(columns)].to_numpy(dtype=np.float64)


def _check_finite_values(table: _Table, values: np.ndarray, columns: Sequence[str]) -> None:
    """Inf in a (rows, columns) value matrix -> UserError naming line, id and column."""
    bad = np.argwhere(np.isinf(values))
    if bad.size:
        i, j = bad[0]
        raise UserError(
            f"{table.source}: {table.where(i)}, column '{columns[j]}': value is infinite ({values[i, j]});"
            " replace it with a finite number or NA"
        )


def _ids(table: _Table) -> np.ndarray:
    """(rows,) ids of the id column as str; an empty id is a UserError naming the line."""
    ids = table.frame[table.id_column]
    empty = np.flatnonzero((ids.isna() | (ids == "")).to_numpy())
    if empty.size:
        raise UserError(
            f"{table.source}: line {table.lines[empty[0]]}: empty id in column '{table.id_column}';"
            " every row needs an id"
        )
    return ids.to_numpy(dtype=object)


def _check_unique_ids(ids: Sequence[str], source: str, hint: str = "keep one row per id") -> None:
    index = pd.Index(ids)
    if index.has_duplicates:
        repeated = index[index.duplicated()].unique()
        raise UserError(f"{source}: {len(repeated)} duplicated ids (first: {_first(repeated)}); {hint}")


def _covariate_column(series: pd.Series, as_text: bool = False,
                      missing: Sequence[str] = DEFAULT_MISSING) -> pd.Series:
    """Numbers as float64; anything else (or everything, as_text: a column read as raw text,
    where `missing` strings become NaN) as stripped str objects (NaN = missing)."""
    if as_text:
        text = _as_text(series)
        text = text.where(text.isna(), text.astype(str).str.strip())
        return text.where(~text.isin(list(missing))).astype(object)
    if _is_number_dtype(series):
        return series.astype(np.float64)
    text = _as_text(series)
    numbers = pd.to_numeric(text, errors="coerce")
    if not (text.notna() & numbers.isna()).any():
        return numbers.astype(np.float64)
    return text.where(text.isna(), text.astype(str).str.strip()).astype(object)


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
    table = _read_table(cfg.file, cfg.id, text_columns=text_columns, missing_values=missing)
    columns = list(table.frame.columns)
    for column in cfg.covariate_columns:
        if column not in columns:
            raise UserError(
                f"{table.source}: covariate column '{column}' not found (columns: {_first(columns, 10)});"
                " fix phenotypes.covariate_columns"
            )
    extra = [c for c in extra_covariate_columns if c in columns and c != table.id_column]
    covariate_columns = list(dict.fromkeys([*cfg.covariate_columns, *extra]))
    if cfg.traits is not None:
        traits = list(cfg.traits)
        for trait in traits:
            if trait not in columns or trait == table.id_column:
                raise UserError(
                    f"{table.source}: trait column '{trait}' not found (columns: {_first(columns, 10)});"
                    " fix phenotypes.traits"
                )
    else:
        excluded = {table.id_column, *covariate_columns}
        traits = [c for c in columns if c not in excluded]
    if not traits:
        raise UserError(f"{table.source}: no trait columns found; add trait columns or set phenotypes.traits")

    ids = _ids(table)
    _check_unique_ids(ids, table.source, "keep one row per id (or use layout: tall)")
    values = _numeric_matrix(table, traits)
    _check_finite_values(table, values, traits)
    covariates = pd.DataFrame(
        {c: _covariate_column(table.frame[c], c in text_columns, missing).to_numpy()
         for c in covariate_columns},
        index=pd.Index(ids, name=table.id_column),
    )
    return Phenotypes(tuple(ids), tuple(traits), values, covariates, table.source)


def _load_tall(cfg, missing: Sequence[str], text_columns: Sequence[str] = ()) -> Phenotypes:
    """One row per (id, trait) observation; other columns are per-id covariates."""
    table = _read_table(cfg.file, cfg.id, text_columns=[cfg.trait, *text_columns],
                        missing_values=missing)
    frame, source = table.frame, table.source
    for key, column in (("trait", cfg.trait), ("value", cfg.value)):
        if column not in frame.columns:
            raise UserError(
                f"{source}: no {key} column '{column}' (columns: {_first(list(frame.columns), 10)});"
                f" fix phenotypes.{key}"
            )
    id_column = table.id_column
    if len({id_column, cfg.trait, cfg.value}) < 3:
        raise UserError(f"{source}: the id, trait and value columns must be three different columns")

    row_ids = _ids(table)
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
    observed = _to_float(table, cfg.value)
    _check_finite_values(table, observed[:, None], [cfg.value])

    ids = pd.unique(row_ids)
    traits = pd.unique(row_traits.to_numpy(dtype=object))
    rows = pd.Index(ids).get_indexer(row_ids)
    cols = pd.Index(traits).get_indexer(row_traits.to_numpy(dtype=object))
    values = np.full((len(ids), len(traits)), np.nan)
    values[rows, cols] = observed

    covariate_columns = [c for c in frame.columns if c not in (id_column, cfg.trait, cfg.value)]
    covariates = _tall_covariates(table, covariate_columns, ids, text_columns, missing)
    return Phenotypes(tuple(ids), tuple(traits), values, covariates, source)


def _tall_covariates(table: _Table, columns: Sequence[str], ids: Sequence[str],
                     text_columns: Sequence[str] = (),
                     missing: Sequence[str] = DEFAULT_MISSING) -> pd.DataFrame:
    """(n, len(columns)) covariates of a tall file: one value per id (must be constant within id)."""
    frame = pd.DataFrame({c: _covariate_column(table.frame[c], c in text_columns, missing)
                          for c in columns}, index=table.frame.index)
    frame.insert(0, "__id__", table.frame[table.id_column].to_numpy())
    for column in columns:
        counts = frame.groupby("__id__", sort=False)[column].nunique(dropna=False)
        varying = counts.index[counts.to_numpy() > 1]
        if len(varying):
            rows = np.flatnonzero((frame["__id__"] == varying[0]).to_numpy())
            raise UserError(
                f"{table.source}: covariate column '{column}' differs between the rows of id"
                f" '{varying[0]}' (lines {_first(table.lines[rows])}); a covariate column must have one"
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
    table = _read_table(cfg.file, cfg.id, text_columns=text_columns)
    ids = _ids(table)
    _check_unique_ids(ids, table.source)
    columns = [c for c in table.frame.columns if c != table.id_column]
    return pd.DataFrame(
        {c: _covariate_column(table.frame[c], c in text_columns).to_numpy() for c in columns},
        index=pd.Index(ids, name=table.id_column),
    )


# ----------------------------------------------------------------------------- kinships


def load_kinship(cfg, psd_tolerance: float, progress: bool = False) -> Kinship:
    """Kinship of one grouping column (cfg: KinshipConfig) -> checked Kinship with matrix (q, q).

    Sources: square CSV/TSV or HDF5 (cfg.file), PLINK prefix (cfg.plink) or a 0/1/2 genotype
    CSV/TSV (cfg.genotypes); the last two go through VanRaden. None of them = identity.
    """
    if cfg.file is not None:
        path = Path(cfg.file)
        _say(progress, f"reading kinship {path.name}")
        if path.suffix.lower() in H5_SUFFIXES:
            ids, matrix = _read_kinship_h5(path, cfg.h5_dataset)
        else:
            ids, matrix = _read_kinship_table(path)
        source = path.name
    elif cfg.plink is not None:
        source = Path(str(cfg.plink) + ".bed").name
        _say(progress, f"reading genotypes {source}")
        ids, genotypes = _read_plink(Path(cfg.plink))
        matrix = _vanraden(genotypes, source, progress)
    elif cfg.genotypes is not None:
        source = Path(cfg.genotypes).name
        _say(progress, f"reading genotypes {source}")
        ids, genotypes = _read_genotype_table(Path(cfg.genotypes))
        matrix = _vanraden(genotypes, source, progress)
    else:
        return Kinship(cfg.name, None, None, "identity")
    _say(progress, f"checking kinship {source} ({len(ids)} ids)")
    _check_kinship(ids, matrix, source, psd_tolerance)
    return Kinship(cfg.name, tuple(ids), matrix, source)


def _say(progress: bool, message: str) -> None:
    if progress:
        print(f"[megalmm] {message}", file=sys.stderr, flush=True)


def _read_kinship_table(path: Path) -> tuple[list[str], np.ndarray]:
    """Square CSV/TSV: header = label + q ids, then q rows of id + q values. Returns ids (q,), K (q, q)."""
    table = _read_table(path, None)
    source = table.source
    row_ids = [str(x) for x in _ids(table)]
    column_ids = [c for c in table.frame.columns if c != table.id_column]
    _check_unique_ids(row_ids, source, "each id must appear once in the first column")
    if len(row_ids) != len(column_ids):
        raise UserError(
            f"{source}: kinship is not square ({len(row_ids)} rows, {len(column_ids)} id columns);"
            " the header must list the same ids as the first column"
        )
    only_rows = sorted(set(row_ids) - set(column_ids))
    only_columns = sorted(set(column_ids) - set(row_ids))
    if only_rows or only_columns:
        raise UserError(
            f"{source}: the header ids and the first-column ids differ (only in rows: {_first(only_rows)};"
            f" only in header: {_first(only_columns)}); both must list the same ids"
        )
    matrix = _numeric_matrix(table, row_ids, fix="use a number")  # columns in row order
    return row_ids, matrix


def _read_kinship_h5(path: Path, dataset: str) -> tuple[list[str], np.ndarray]:
    """HDF5: dataset `dataset` (q, q) and dataset 'ids' (q,) strings."""
    import h5py

    source = path.name
    try:
        with h5py.File(path, "r") as h5:
            for name in (dataset, "ids"):
                if name not in h5 or not isinstance(h5[name], h5py.Dataset):
                    raise UserError(
                        f"{source}: no dataset '{name}' (datasets: {_first(list(h5.keys()))}); the file needs"
                        f" the kinship in '{dataset}' (kinship.h5_dataset) and the ids in 'ids'"
                    )
            raw_ids = h5["ids"][()]
            raw_matrix = h5[dataset][()]
    except OSError as err:
        raise UserError(f"{source}: cannot be read as HDF5 ({err}); check the file") from None
    ids = [(x.decode("utf-8") if isinstance(x, bytes) else str(x)).strip() for x in np.ravel(raw_ids)]
    try:
        matrix = np.asarray(raw_matrix, dtype=np.float64)
    except (TypeError, ValueError):
        raise UserError(
            f"{source}: dataset '{dataset}' is not numeric; store the kinship as floats"
        ) from None
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise UserError(
            f"{source}: kinship '{dataset}' is not square (shape {matrix.shape}); store a q x q matrix"
        )
    if matrix.shape[0] != len(ids):
        raise UserError(
            f"{source}: kinship '{dataset}' is {matrix.shape[0]} x {matrix.shape[0]} but 'ids' has"
            f" {len(ids)} entries; they must match"
        )
    return ids, matrix


def _read_plink(prefix: Path) -> tuple[list[str], np.ndarray]:
    """PLINK .bed/.bim/.fam -> ids (n,) from the .fam iid column, genotypes (n, m) 0/1/2/NaN."""
    from bed_reader import open_bed

    bed = Path(str(prefix) + ".bed")
    for suffix in (".bed", ".bim", ".fam"):
        if not Path(str(prefix) + suffix).exists():
            raise UserError(f"{prefix}{suffix}: file not found; check the kinship plink prefix")
    _check_bed_size(prefix)
    try:
        with open_bed(bed) as reader:
            ids = [str(x).strip() for x in reader.iid]
            genotypes = reader.read(dtype="float64")
    except Exception as err:  # bed_reader raises a variety of types for corrupt files
        raise UserError(
            f"{bed.name}: cannot be read as PLINK ({err}); check the .bed/.bim/.fam files"
        ) from None
    return ids, genotypes


def _check_bed_size(prefix: Path) -> None:
    """A SNP-major .bed holds 3 header bytes and ceil(n / 4) bytes per marker, for the n
    individuals of the .fam and the markers of the .bim: say which files disagree."""
    def count_lines(path: Path) -> int:
        with open(path, "rb") as fh:
            return sum(1 for line in fh if line.strip())

    bed, bim, fam = (Path(str(prefix) + s) for s in (".bed", ".bim", ".fam"))
    n, m = count_lines(fam), count_lines(bim)
    size = bed.stat().st_size
    with open(bed, "rb") as fh:
        magic = fh.read(3)
    if magic != b"\x6c\x1b\x01":
        raise UserError(f"{bed.name}: is not a SNP-major PLINK 1 .bed file (its first bytes are "
                        f"{magic.hex() or 'missing'}); write it with plink --make-bed")
    expected = 3 + m * ((n + 3) // 4)
    if size != expected:
        cause = ("is truncated (an interrupted copy or download?)" if size < expected
                 else "is longer than they say")
        raise UserError(
            f"{bed.name}: has {size} bytes, but {bim.name} lists {m} markers and {fam.name} {n} "
            f"individuals, which take {expected} bytes: the .bed {cause}, or the .bim/.fam belong "
            "to another data set; use the three files plink wrote together")


def _read_genotype_table(path: Path) -> tuple[list[str], np.ndarray]:
    """CSV/TSV: id column then one column per marker with 0/1/2/NA. Returns ids (n,), genotypes (n, m)."""
    table = _read_table(path, None)
    ids = [str(x) for x in _ids(table)]
    _check_unique_ids(ids, table.source)
    markers = [c for c in table.frame.columns if c != table.id_column]
    if not markers:
        raise UserError(f"{table.source}: no marker columns; supply one column per marker after the id")
    genotypes = _numeric_matrix(table, markers, fix="use allele counts 0, 1, 2 or NA")
    bad = np.argwhere(~np.isnan(genotypes) & (genotypes != 0) & (genotypes != 1) & (genotypes != 2))
    if bad.size:
        i, j = bad[0]
        raise UserError(
            f"{table.source}: {table.where(i)}, marker '{markers[j]}': value {genotypes[i, j]:g} is not a"
            " genotype; use allele counts 0, 1, 2 or NA"
        )
    return ids, genotypes


def _vanraden(genotypes: np.ndarray, source: str, progress: bool) -> np.ndarray:
    """(n, m) genotypes -> (n, n) VanRaden kinship; all-monomorphic markers -> UserError."""
    n, m = genotypes.shape
    _say(progress, f"computing VanRaden kinship of {n} ids from {m} markers")
    if m == 0:
        raise UserError(f"{source}: no markers; supply genotypes with at least one marker")
    try:
        return vanraden(genotypes)
    except ValueError as err:
        raise UserError(f"{source}: {err}; supply polymorphic markers") from None


def _check_kinship(ids: Sequence[str], matrix: np.ndarray, source: str, psd_tolerance: float) -> None:
    """Checks on ids (q,) and K (q, q): unique ids, square, finite, symmetric, PSD."""
    ids = [str(x) for x in ids]
    _check_unique_ids(ids, source, "each id must appear once in the kinship")
    q = len(ids)
    if matrix.shape != (q, q):
        raise UserError(f"{source}: kinship is not square (shape {matrix.shape} for {q} ids); fix the file")
    if q == 0:
        raise UserError(f"{source}: kinship has no ids; supply at least one individual")
    bad = np.argwhere(~np.isfinite(matrix))
    if bad.size:
        i, j = bad[0]
        raise UserError(
            f"{source}: kinship has a non-finite value ({matrix[i, j]}) at {ids[i]}/{ids[j]};"
            " every entry must be a finite number"
        )
    asymmetry = np.abs(matrix - matrix.T)
    worst = np.unravel_index(np.argmax(asymmetry), asymmetry.shape)
    if asymmetry[worst] > 1e-8 * np.max(np.abs(matrix)):
        i, j = worst
        raise UserError(
            f"{source}: kinship is not symmetric (max |K - K'| = {asymmetry[worst]:.3g} at"
            f" {ids[i]}/{ids[j]}); fix the file"
        )
    del asymmetry
    eigenvalues = np.linalg.eigvalsh(matrix)
    smallest, largest = eigenvalues[0], eigenvalues[-1]
    if largest <= 0:
        raise UserError(
            f"{source}: kinship has no positive eigenvalue (largest {largest:.3g}); it is not a"
            " relationship matrix"
        )
    if smallest < -psd_tolerance * largest:
        raise UserError(
            f"{source}: kinship is not positive semi-definite (smallest eigenvalue {smallest:.4g},"
            f" largest {largest:.4g}); add a small value (at least {-smallest:.2g}) to the diagonal,"
            " or recompute the kinship"
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
        _check_covers(kinships[0], ids, "phenotyped ids", "add them to the kinship or drop their rows")
        ids += [x for x in kinships[0].ids if x not in phenotyped]
    for kinship in kinships[1:]:
        if kinship.ids is not None:
            _check_covers(
                kinship, ids, "ids",
                "every kinship must contain all phenotyped ids and the ids of the first kinship",
            )
    values = np.full((len(ids), len(pheno.traits)), np.nan)
    values[: len(pheno.ids)] = pheno.values
    return AlignedData(
        ids=tuple(ids),
        n_phenotyped=len(pheno.ids),
        values=values,
        kinships=tuple(_reorder(k, ids) for k in kinships),
        traits=tuple(pheno.traits),
    )


def _check_covers(kinship: Kinship, ids: Sequence[str], what: str, hint: str) -> None:
    known = set(kinship.ids)
    absent = [x for x in ids if x not in known]
    if absent:
        raise UserError(
            f"{kinship.source}: {len(absent)} {what} are missing from the kinship"
            f" (first: {_first(absent)}); {hint}"
        )


def _reorder(kinship: Kinship, ids: Sequence[str]) -> np.ndarray | None:
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
    table = _read_table(cfg.file, cfg.id, text_columns=[cfg.trait])
    frame, source = table.frame, table.source
    if cfg.trait not in frame.columns:
        raise UserError(
            f"{source}: no trait column '{cfg.trait}' (columns: {_first(list(frame.columns), 10)});"
            " fix test_cells.trait"
        )
    cell_ids = _ids(table)
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
            f" (traits: {_first(traits)}); fix the trait or remove the row"
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
        values = _to_float(table, cfg.value)
        _check_finite_values(table, values[:, None], [cfg.value])
    else:
        values = np.full(len(rows), np.nan)
    return TestCells(rows.astype(np.int64), cols.astype(np.int64), values)
