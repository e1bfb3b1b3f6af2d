"""Relationship matrices: read from a square CSV/TSV or HDF5 file, or computed (VanRaden)
from PLINK .bed/.bim/.fam or 0/1/2 CSV genotypes, and checked (square, symmetric, finite,
positive semi-definite, unique ids)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from megalmm_cli.errors import UserError
from megalmm_cli.tables import (
    H5_SUFFIXES,
    check_unique_ids,
    first_names,
    numeric_matrix,
    read_table,
    table_ids,
)


@dataclass(frozen=True)
class Kinship:
    name: str  # grouping column
    ids: tuple[str, ...] | None  # (q,) None for identity kinship
    matrix: np.ndarray | None  # (q, q) float64, None for identity
    source: str  # file name for messages


def vanraden(genotypes: np.ndarray) -> np.ndarray:
    """VanRaden (2008) method-1 genomic relationship matrix.

    genotypes: (n, m) allele counts 0/1/2, NaN for a missing call (replaced by the
    marker mean). Monomorphic markers contribute nothing. Returns K: (n, n).
    """
    geno = np.asarray(genotypes, dtype=np.float64)
    freq = np.nanmean(geno, axis=0) / 2.0
    centred = geno - 2.0 * freq
    centred[np.isnan(centred)] = 0.0
    scale = 2.0 * np.sum(freq * (1.0 - freq))
    if scale <= 0:
        raise ValueError("all markers are monomorphic: no relationship matrix can be computed")
    return centred @ centred.T / scale


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
    table = read_table(path, None)
    source = table.source
    row_ids = [str(x) for x in table_ids(table)]
    column_ids = [c for c in table.frame.columns if c != table.id_column]
    check_unique_ids(row_ids, source, "each id must appear once in the first column")
    if len(row_ids) != len(column_ids):
        raise UserError(
            f"{source}: kinship is not square ({len(row_ids)} rows, {len(column_ids)} id columns);"
            " the header must list the same ids as the first column"
        )
    only_rows = sorted(set(row_ids) - set(column_ids))
    only_columns = sorted(set(column_ids) - set(row_ids))
    if only_rows or only_columns:
        raise UserError(
            f"{source}: the header ids and the first-column ids differ (only in rows: {first_names(only_rows)};"
            f" only in header: {first_names(only_columns)}); both must list the same ids"
        )
    matrix = numeric_matrix(table, row_ids, fix="use a number")  # columns in row order
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
                        f"{source}: no dataset '{name}' (datasets: {first_names(list(h5.keys()))}); the file needs"
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
    table = read_table(path, None)
    ids = [str(x) for x in table_ids(table)]
    check_unique_ids(ids, table.source)
    markers = [c for c in table.frame.columns if c != table.id_column]
    if not markers:
        raise UserError(f"{table.source}: no marker columns; supply one column per marker after the id")
    genotypes = numeric_matrix(table, markers, fix="use allele counts 0, 1, 2 or NA")
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
    check_unique_ids(ids, source, "each id must appear once in the kinship")
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
