"""Reading delimited tables and checking their cells: the shared layer under data.py and
kinship.py.

Delimited files (CSV, or TSV for .tsv/.txt/.tab, optionally gzip-compressed) may start with a
UTF-8 BOM and use CRLF line ends. Ids are read as strings and stripped of surrounding
whitespace. Every problem raises megalmm_cli.errors.UserError with one line naming the file,
the line/column or id, what is wrong and what to do.
"""

from __future__ import annotations

import csv
import gzip
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from megalmm_cli.errors import UserError

DEFAULT_MISSING = ("NA", "")
TAB_SUFFIXES = (".tsv", ".txt", ".tab")
H5_SUFFIXES = (".h5", ".hdf5")
SHOW_FIRST = 5  # how many ids/names an error message lists


def first_names(items: Sequence, k: int = SHOW_FIRST) -> str:
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
class Table:
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
            f"{source}: column name(s) {first_names(repeated)} appear more than once in the header;"
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


def read_table(
    path: Path | str,
    id_column: str | None,
    text_columns: Sequence[str] = (),
    missing_values: Sequence[str] = DEFAULT_MISSING,
) -> Table:
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
            f"{source}: no id column '{id_column}' (columns: {first_names(header, 10)}); "
            "fix the id column name in the config"
        )
    text = [id_column] + [c for c in text_columns if c in header and c != id_column]
    try:
        with warnings.catch_warnings():
            # a column mixing numbers and text is fine here: to_float reports its bad cell
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
        frame[c] = strip_text(frame[c])
    return Table(frame, lines, source, id_column)


def strip_text(series: pd.Series) -> pd.Series:
    """Strip surrounding whitespace from str values (once per distinct value: ids repeat in tall files)."""
    codes, uniques = pd.factorize(series)  # missing -> code -1
    stripped = np.array([str(u).strip() for u in uniques] + [np.nan], dtype=object)
    return pd.Series(stripped[codes], index=series.index, dtype=object)


def text_values(series: pd.Series) -> pd.Series:
    """Series of str / NaN whatever pandas inferred (undoes number/bool inference)."""
    return series.astype(object).where(series.isna(), series.astype(str))


def is_number_dtype(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


def to_float(table: Table, column: str, fix: str = "use a number, or NA for missing") -> np.ndarray:
    """(rows,) float64 of one column; a non-numeric cell is a UserError naming line, id and column."""
    series = table.frame[column]
    if is_number_dtype(series):
        return series.to_numpy(dtype=np.float64)
    text = text_values(series)
    numbers = pd.to_numeric(text, errors="coerce")
    bad = np.flatnonzero(text.notna().to_numpy() & numbers.isna().to_numpy())
    if bad.size:
        row = bad[0]
        raise UserError(
            f"{table.source}: {table.where(row)}, column '{column}': '{text.iat[row]}' is not a number;"
            f" {fix}"
        )
    return numbers.to_numpy(dtype=np.float64)


def numeric_matrix(
    table: Table, columns: Sequence[str], fix: str = "use a number, or NA for missing"
) -> np.ndarray:
    """(rows, len(columns)) float64 of the given columns (non-numeric cell -> UserError).

    Text columns of table.frame are replaced by their numbers in place.
    """
    frame = table.frame
    for column in columns:
        if not is_number_dtype(frame[column]):
            frame[column] = to_float(table, column, fix)
    return frame[list(columns)].to_numpy(dtype=np.float64)


def check_finite_values(table: Table, values: np.ndarray, columns: Sequence[str]) -> None:
    """Inf in a (rows, columns) value matrix -> UserError naming line, id and column."""
    bad = np.argwhere(np.isinf(values))
    if bad.size:
        i, j = bad[0]
        raise UserError(
            f"{table.source}: {table.where(i)}, column '{columns[j]}': value is infinite ({values[i, j]});"
            " replace it with a finite number or NA"
        )


def table_ids(table: Table) -> np.ndarray:
    """(rows,) ids of the id column as str; an empty id is a UserError naming the line."""
    ids = table.frame[table.id_column]
    empty = np.flatnonzero((ids.isna() | (ids == "")).to_numpy())
    if empty.size:
        raise UserError(
            f"{table.source}: line {table.lines[empty[0]]}: empty id in column '{table.id_column}';"
            " every row needs an id"
        )
    return ids.to_numpy(dtype=object)


def check_unique_ids(ids: Sequence[str], source: str, hint: str = "keep one row per id") -> None:
    index = pd.Index(ids)
    if index.has_duplicates:
        repeated = index[index.duplicated()].unique()
        raise UserError(f"{source}: {len(repeated)} duplicated ids (first: {first_names(repeated)}); {hint}")


def covariate_column(series: pd.Series, as_text: bool = False,
                      missing: Sequence[str] = DEFAULT_MISSING) -> pd.Series:
    """Numbers as float64; anything else (or everything, as_text: a column read as raw text,
    where `missing` strings become NaN) as stripped str objects (NaN = missing)."""
    if as_text:
        text = text_values(series)
        text = text.where(text.isna(), text.astype(str).str.strip())
        return text.where(~text.isin(list(missing))).astype(object)
    if is_number_dtype(series):
        return series.astype(np.float64)
    text = text_values(series)
    numbers = pd.to_numeric(text, errors="coerce")
    if not (text.notna() & numbers.isna()).any():
        return numbers.astype(np.float64)
    return text.where(text.isna(), text.astype(str).str.strip()).astype(object)
