"""Tests for megalmm_cli.data, .kinship and .tables: loaders, checks and their error messages."""

from types import SimpleNamespace

import h5py
import numpy as np
import pytest
from bed_reader import to_bed

from megalmm_cli.data import (
    AlignedData,
    align_individuals,
    load_covariates,
    load_phenotypes,
    load_test_cells,
)
from megalmm_cli.kinship import Kinship, load_kinship
from megalmm_cli.errors import UserError

PSD_TOL = 1e-6


# ----------------------------------------------------------------------------- helpers


def raises(pattern):
    """Expect a UserError whose message matches the regex."""
    return pytest.raises(UserError, match=pattern)


def write(tmp_path, name, text, bom=False, crlf=False):
    """Write a text file; returns its path."""
    if crlf:
        text = text.replace("\n", "\r\n")
    path = tmp_path / name
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


def pheno_cfg(file, **kw):
    """PhenotypesConfig stand-in with the spec's defaults."""
    fields = dict(
        file=file, layout="wide", id=None, trait=None, value=None, traits=None,
        covariate_columns=(), missing_values=("NA", ""),
    )
    fields.update(kw)
    return SimpleNamespace(**fields)


def tall_cfg(file, **kw):
    return pheno_cfg(file, layout="tall", id="id", trait="trait", value="value", **kw)


def kin_cfg(name="Line", **kw):
    """KinshipConfig stand-in with the spec's defaults."""
    fields = dict(name=name, file=None, h5_dataset="K", plink=None, genotypes=None, identity=False)
    fields.update(kw)
    return SimpleNamespace(**fields)


def cells_cfg(file, **kw):
    fields = dict(file=file, id="id", trait="trait", value="value")
    fields.update(kw)
    return SimpleNamespace(**fields)


def matrix_csv(ids, matrix, label="Line", sep=","):
    """Square kinship text: header label + ids, then one row per id."""
    rows = [sep.join([label, *ids])]
    rows += [sep.join([i, *(repr(float(x)) for x in row)]) for i, row in zip(ids, matrix)]
    return "\n".join(rows) + "\n"


def vanraden_reference(genotypes):
    """K = Z Z' / (2 sum p (1 - p)), Z = M - 2p (no missing calls)."""
    p = genotypes.mean(axis=0) / 2
    z = genotypes - 2 * p
    return z @ z.T / (2 * np.sum(p * (1 - p)))


def load_matrix(tmp_path, ids, matrix, name="K.csv"):
    path = write(tmp_path, name, matrix_csv(ids, matrix))
    return load_kinship(kin_cfg(file=path), PSD_TOL)


GENOTYPES = np.array([[0, 1, 2, 0], [2, 1, 0, 1], [1, 1, 1, 2], [0, 2, 2, 1]], dtype=float)
GENO_IDS = ["g1", "g2", "g3", "g4"]


# ----------------------------------------------------------------------------- phenotypes


def test_wide_csv_with_covariates(tmp_path):
    text = "id,Env1,Env2,Block,Sex\n L1 ,1.5,NA,1,M\nL2,2.5,3,2,F\nL3,,4.5,1,M\n"
    cfg = pheno_cfg(write(tmp_path, "pheno.csv", text), covariate_columns=("Block",))
    pheno = load_phenotypes(cfg, extra_covariate_columns=("Sex", "Age"))
    assert pheno.ids == ("L1", "L2", "L3")
    assert pheno.traits == ("Env1", "Env2")
    np.testing.assert_array_equal(pheno.values, [[1.5, np.nan], [2.5, 3.0], [np.nan, 4.5]])
    assert pheno.values.dtype == np.float64
    assert list(pheno.covariates.columns) == ["Block", "Sex"]
    assert list(pheno.covariates.index) == ["L1", "L2", "L3"]
    assert pheno.covariates["Block"].tolist() == [1.0, 2.0, 1.0]
    assert pheno.covariates["Sex"].tolist() == ["M", "F", "M"]
    assert pheno.source == "pheno.csv"


def test_wide_explicit_traits_and_id(tmp_path):
    path = write(tmp_path, "pheno.csv", "x,name,T1,T2\n9,a,1,2\n8,b,3,5\n")
    pheno = load_phenotypes(pheno_cfg(path, id="name", traits=("T2",)))
    assert pheno.ids == ("a", "b")
    assert pheno.traits == ("T2",)
    np.testing.assert_array_equal(pheno.values, [[2.0], [5.0]])


def test_wide_tsv(tmp_path):
    path = write(tmp_path, "pheno.tsv", "id\tT1\tT2\n001\t1\t2\n002\tNA\t7\n003\t4\t\n")
    pheno = load_phenotypes(pheno_cfg(path))
    assert pheno.ids == ("001", "002", "003")  # ids stay strings
    np.testing.assert_array_equal(pheno.values, [[1, 2], [np.nan, 7], [4, np.nan]])


def test_bom_and_crlf(tmp_path):
    path = write(tmp_path, "pheno.csv", "id,T1\nL1,1\nL2,2\n\nL3,5\n", bom=True, crlf=True)
    pheno = load_phenotypes(pheno_cfg(path))
    assert pheno.ids == ("L1", "L2", "L3")
    assert pheno.traits == ("T1",)
    np.testing.assert_array_equal(pheno.values[:, 0], [1, 2, 5])


def test_custom_missing_values(tmp_path):
    path = write(tmp_path, "pheno.csv", "id,T1\nL1,-9\nL2,2\nL3,5\n")
    pheno = load_phenotypes(pheno_cfg(path, missing_values=("-9",)))
    assert np.isnan(pheno.values[0, 0])


def test_tall(tmp_path):
    text = (
        "id,trait,value,Block\n"
        "L2,T1,1.0,b1\n"
        "L1,T2,2.0,b2\n"
        "L2,T2,NA,b1\n"
        "L1,T1,4.0,b2\n"
        "L3,T2,5.0,b1\n"
    )
    pheno = load_phenotypes(tall_cfg(write(tmp_path, "tall.csv", text)))
    assert pheno.ids == ("L2", "L1", "L3")
    assert pheno.traits == ("T1", "T2")
    np.testing.assert_array_equal(pheno.values, [[1, np.nan], [4, 2], [np.nan, 5]])
    assert list(pheno.covariates.index) == ["L2", "L1", "L3"]
    assert pheno.covariates["Block"].tolist() == ["b1", "b2", "b1"]


# ----------------------------------------------------------------------------- phenotype errors


def test_wide_duplicated_ids(tmp_path):
    path = write(tmp_path, "pheno.csv", "id,T1\nL1,1\nL2,2\nL1,3\n")
    with raises(r"pheno\.csv: 1 duplicated ids \(first: L1\)"):
        load_phenotypes(pheno_cfg(path))


def test_wide_duplicated_column(tmp_path):
    path = write(tmp_path, "pheno.csv", "id,T1,T1\nL1,1,2\nL2,2,3\n")
    with raises(r"pheno\.csv: column name\(s\) T1 appear more than once"):
        load_phenotypes(pheno_cfg(path))


def test_missing_id_column(tmp_path):
    path = write(tmp_path, "pheno.csv", "id,T1\nL1,1\nL2,2\n")
    with raises(r"pheno\.csv: no id column 'ID'"):
        load_phenotypes(pheno_cfg(path, id="ID"))


def test_tall_duplicated_pair(tmp_path):
    path = write(tmp_path, "tall.csv", "id,trait,value\nL1,T1,1\nL2,T1,2\nL1,T1,3\n")
    with raises(r"tall\.csv: line 4: id 'L1' and trait 'T1' already appear on line 2"):
        load_phenotypes(tall_cfg(path))


def test_tall_covariate_not_constant(tmp_path):
    path = write(tmp_path, "tall.csv", "id,trait,value,Block\nL1,T1,1,a\nL1,T2,2,b\nL2,T1,3,a\n")
    with raises(r"tall\.csv: covariate column 'Block' differs .* id 'L1' \(lines 2, 3\)"):
        load_phenotypes(tall_cfg(path))


def test_tall_non_numeric_value(tmp_path):
    path = write(tmp_path, "tall.csv", "id,trait,value\nL1,T1,1\nL2,T1,abc\n")
    with raises(r"tall\.csv: line 3 \(id 'L2'\), column 'value': 'abc' is not a number"):
        load_phenotypes(tall_cfg(path))


def test_wide_non_numeric_value(tmp_path):
    path = write(tmp_path, "pheno.csv", "id,T1,T2\nL1,1,2\nL2,3,x4\nL3,5,6\n")
    with raises(r"pheno\.csv: line 3 \(id 'L2'\), column 'T2': 'x4' is not a number"):
        load_phenotypes(pheno_cfg(path))


def test_infinite_value(tmp_path):
    path = write(tmp_path, "pheno.csv", "id,T1,T2\nL1,1,2\nL2,3,4\nL3,inf,6\n")
    with raises(r"pheno\.csv: line 4 \(id 'L3'\), column 'T1': value is infinite"):
        load_phenotypes(pheno_cfg(path))


def test_trait_without_observation(tmp_path):
    path = write(tmp_path, "pheno.csv", "id,T1,Env07\nL1,1,NA\nL2,2,\n")
    with raises(r"pheno\.csv: trait 'Env07' has no observed value"):
        load_phenotypes(pheno_cfg(path))


def test_constant_trait(tmp_path):
    path = write(tmp_path, "pheno.csv", "id,T1,T2\nL1,1,5\nL2,2,5\nL3,3,NA\n")
    with raises(r"pheno\.csv: trait 'T2' has the same value \(5\) .* cannot be scaled"):
        load_phenotypes(pheno_cfg(path))
    path = write(tmp_path, "pheno.csv", "id,T1,T2\nL1,1,5\nL2,2,NA\n")
    with raises(r"pheno\.csv: trait 'T2' has only one observed value \(5\)"):
        load_phenotypes(pheno_cfg(path))


def test_no_traits(tmp_path):
    path = write(tmp_path, "pheno.csv", "id,Block\nL1,1\nL2,2\n")
    with raises(r"pheno\.csv: no trait columns"):
        load_phenotypes(pheno_cfg(path, covariate_columns=("Block",)))


@pytest.mark.parametrize(
    "text, line, fields",
    [("id,T1,T2\nL1,1,2\nL2,3,4,5\n", 3, 4), ("id,T1,T2\nL1,1,2\n\nL2,3\n", 4, 2)],
)
def test_ragged_row(tmp_path, text, line, fields):
    path = write(tmp_path, "pheno.csv", text)
    with raises(rf"pheno\.csv: line {line} has {fields} fields but the header has 3"):
        load_phenotypes(pheno_cfg(path))


def test_quoted_line_break_and_whitespace_line(tmp_path):
    text = 'id,T1,Note\nL1,1,"two\nlines"\n   \nL2,2,x\nL3,abc,y\n'
    with raises(r"pheno\.csv: line 6 \(id 'L3'\), column 'T1': 'abc' is not a number"):
        load_phenotypes(pheno_cfg(write(tmp_path, "pheno.csv", text), covariate_columns=("Note",)))
    path = write(tmp_path, "pheno.csv", text.replace("abc", "3"))
    pheno = load_phenotypes(pheno_cfg(path, covariate_columns=("Note",)))
    assert pheno.ids == ("L1", "L2", "L3")
    assert pheno.covariates["Note"].tolist() == ["two\nlines", "x", "y"]
    ragged = 'id,T1,Note\nL1,1,"two\nlines"\nL2,2\n'
    with raises(r"pheno\.csv: line 4 has 2 fields but the header has 3"):
        load_phenotypes(pheno_cfg(write(tmp_path, "pheno.csv", ragged)))


@pytest.mark.parametrize("text", ["", "\n\n", "\ufeff", " \n"])
def test_empty_file(tmp_path, text):
    path = write(tmp_path, "pheno.csv", text)
    with raises(r"pheno\.csv: the file is empty"):
        load_phenotypes(pheno_cfg(path))


def test_header_only(tmp_path):
    path = write(tmp_path, "pheno.csv", "id,T1\n")
    with raises(r"pheno\.csv: the file has a header but no data rows"):
        load_phenotypes(pheno_cfg(path))


# ----------------------------------------------------------------------------- covariates


def test_covariates(tmp_path):
    path = write(tmp_path, "cov.tsv", "id\tAge\tSex\tBlock\n007\t3\tM\t1\nL2\tNA\t F \t2\n")
    cov = load_covariates(SimpleNamespace(file=path, id=None))
    assert list(cov.index) == ["007", "L2"]
    assert cov["Age"].dtype == np.float64
    assert cov["Age"].tolist()[0] == 3.0 and np.isnan(cov["Age"].iloc[1])
    assert cov["Sex"].tolist() == ["M", "F"]
    assert cov["Block"].tolist() == [1.0, 2.0]


def test_covariates_duplicated_ids(tmp_path):
    path = write(tmp_path, "cov.csv", "id,Age\nA,1\nB,2\nA,3\nB,4\n")
    with raises(r"cov\.csv: 2 duplicated ids \(first: A, B\)"):
        load_covariates(SimpleNamespace(file=path, id="id"))


# ----------------------------------------------------------------------------- kinships


def test_kinship_csv_reorders_columns(tmp_path):
    text = "Line,B,A,C\nA,0.5,1.0,0.1\nB,1.0,0.5,0.2\nC,0.2,0.1,1.0\n"
    kin = load_kinship(kin_cfg(file=write(tmp_path, "K.csv", text)), PSD_TOL)
    assert kin.name == "Line" and kin.source == "K.csv"
    assert kin.ids == ("A", "B", "C")
    np.testing.assert_array_equal(kin.matrix, [[1.0, 0.5, 0.1], [0.5, 1.0, 0.2], [0.1, 0.2, 1.0]])


def test_kinship_tsv(tmp_path):
    matrix = np.array([[2.0, 0.5], [0.5, 1.0]])
    path = write(tmp_path, "K.tsv", matrix_csv(["x", "y"], matrix, sep="\t"), bom=True, crlf=True)
    kin = load_kinship(kin_cfg(file=path), PSD_TOL)
    assert kin.ids == ("x", "y")
    np.testing.assert_array_equal(kin.matrix, matrix)


def test_kinship_h5(tmp_path):
    matrix = np.array([[1.0, 0.3, 0.0], [0.3, 1.0, 0.2], [0.0, 0.2, 1.0]])
    path = tmp_path / "K.h5"
    with h5py.File(path, "w") as h5:
        h5["G"] = matrix
        h5["ids"] = np.array([b"a", b"b", b"c"])
    kin = load_kinship(kin_cfg(file=path, h5_dataset="G"), PSD_TOL)
    assert kin.ids == ("a", "b", "c") and kin.source == "K.h5"
    np.testing.assert_array_equal(kin.matrix, matrix)
    with raises(r"K\.h5: no dataset 'K'"):
        load_kinship(kin_cfg(file=path), PSD_TOL)


def test_kinship_plink(tmp_path):
    prefix = tmp_path / "geno"
    to_bed(str(prefix) + ".bed", GENOTYPES.astype(np.float32), properties={"iid": GENO_IDS})
    kin = load_kinship(kin_cfg(plink=prefix), PSD_TOL)
    assert kin.ids == tuple(GENO_IDS) and kin.source == "geno.bed"
    np.testing.assert_allclose(kin.matrix, vanraden_reference(GENOTYPES), atol=1e-12)


def test_kinship_genotype_csv(tmp_path):
    text = "id,m1,m2,m3,m4\n" + "".join(
        f"{i},{','.join(str(int(g)) for g in row)}\n" for i, row in zip(GENO_IDS, GENOTYPES)
    )
    kin = load_kinship(kin_cfg(genotypes=write(tmp_path, "geno.csv", text)), PSD_TOL)
    assert kin.ids == tuple(GENO_IDS)
    np.testing.assert_allclose(kin.matrix, vanraden_reference(GENOTYPES), atol=1e-12)


def test_kinship_identity():
    kin = load_kinship(kin_cfg(name="Block", identity=True), PSD_TOL)
    assert kin == Kinship("Block", None, None, kin.source)


# ----------------------------------------------------------------------------- kinship errors


def test_kinship_duplicated_ids(tmp_path):
    text = "Line,A,B\nA,1,0\nA,0,1\n"
    with raises(r"K\.csv: 1 duplicated ids \(first: A\)"):
        load_kinship(kin_cfg(file=write(tmp_path, "K.csv", text)), PSD_TOL)


def test_kinship_not_square(tmp_path):
    text = "Line,A,B,C\nA,1,0,0\nB,0,1,0\n"
    with raises(r"K\.csv: kinship is not square \(2 rows, 3 id columns\)"):
        load_kinship(kin_cfg(file=write(tmp_path, "K.csv", text)), PSD_TOL)


def test_kinship_ids_differ(tmp_path):
    text = "Line,A,B\nA,1,0\nC,0,1\n"
    with raises(r"K\.csv: the header ids and the first-column ids differ .*rows: C.*header: B"):
        load_kinship(kin_cfg(file=write(tmp_path, "K.csv", text)), PSD_TOL)


def test_kinship_non_numeric(tmp_path):
    text = "Line,A,B\nA,1,0\nB,zero,1\n"
    with raises(r"K\.csv: line 3 \(id 'B'\), column 'A': 'zero' is not a number"):
        load_kinship(kin_cfg(file=write(tmp_path, "K.csv", text)), PSD_TOL)


def test_kinship_not_symmetric(tmp_path):
    matrix = np.array([[1.0, 0.5, 0.0], [0.19, 1.0, 0.0], [0.0, 0.0, 1.0]])
    with raises(r"K\.csv: kinship is not symmetric \(max \|K - K'\| = 0\.31 at (A/B|B/A)\)"):
        load_matrix(tmp_path, ["A", "B", "C"], matrix)


@pytest.mark.parametrize("bad", ["NA", "inf"])
def test_kinship_non_finite(tmp_path, bad):
    text = f"Line,A,B\nA,1,{bad}\nB,0,1\n"
    with raises(r"K\.csv: kinship has a non-finite value \((nan|inf)\) at A/B"):
        load_kinship(kin_cfg(file=write(tmp_path, "K.csv", text)), PSD_TOL)


def test_kinship_not_psd(tmp_path):
    matrix = np.array([[1.0, 2.0], [2.0, 1.0]])  # eigenvalues -1 and 3
    with raises(r"K\.csv: kinship is not positive semi-definite \(smallest eigenvalue -1,"):
        load_matrix(tmp_path, ["A", "B"], matrix)
    with raises("add a small value .* to the diagonal"):
        load_matrix(tmp_path, ["A", "B"], matrix)


def test_kinship_psd_tolerance(tmp_path):
    matrix = np.array([[1.0, 1.0 + 1e-9], [1.0 + 1e-9, 1.0]])  # smallest eigenvalue -1e-9
    kin = load_matrix(tmp_path, ["A", "B"], matrix)
    assert kin.ids == ("A", "B")


def test_genotype_value_out_of_range(tmp_path):
    text = "id,m1,m2\ng1,0,1\ng2,3,2\ng3,NA,1\n"
    with raises(r"geno\.csv: line 3 \(id 'g2'\), marker 'm1': value 3 is not a genotype"):
        load_kinship(kin_cfg(genotypes=write(tmp_path, "geno.csv", text)), PSD_TOL)


def test_genotypes_monomorphic(tmp_path):
    text = "id,m1,m2\ng1,0,2\ng2,0,2\n"
    with raises(r"geno\.csv: all markers are monomorphic"):
        load_kinship(kin_cfg(genotypes=write(tmp_path, "geno.csv", text)), PSD_TOL)


# ----------------------------------------------------------------------------- alignment


def _pheno_and_kinship(tmp_path):
    pheno = load_phenotypes(pheno_cfg(write(tmp_path, "pheno.csv", "id,T1,T2\nB,1,2\nA,3,4\n")))
    matrix = np.array(
        [[1.0, 0.1, 0.2, 0.3], [0.1, 2.0, 0.4, 0.5], [0.2, 0.4, 3.0, 0.6], [0.3, 0.5, 0.6, 4.0]]
    )
    kin = load_matrix(tmp_path, ["C", "A", "D", "B"], matrix)
    return pheno, kin, matrix


def test_align_appends_kinship_only_ids(tmp_path):
    pheno, kin, matrix = _pheno_and_kinship(tmp_path)
    block = Kinship("Block", None, None, "identity")
    aligned = align_individuals(pheno, [kin, block])
    assert isinstance(aligned, AlignedData)
    assert aligned.ids == ("B", "A", "C", "D")
    assert aligned.n_phenotyped == 2
    assert aligned.traits == ("T1", "T2")
    np.testing.assert_array_equal(aligned.values[:2], pheno.values)
    assert np.isnan(aligned.values[2:]).all()
    order = [3, 1, 0, 2]  # positions of B, A, C, D in the kinship
    np.testing.assert_array_equal(aligned.kinships[0], matrix[np.ix_(order, order)])
    assert aligned.kinships[1] is None


def test_align_phenotyped_id_missing(tmp_path):
    pheno = load_phenotypes(pheno_cfg(write(tmp_path, "pheno.csv", "id,T1\nA,1\nL1,2\nL7,3\nL9,4\n")))
    kin = load_matrix(tmp_path, ["A", "B"], np.eye(2))
    with raises(r"K\.csv: 3 phenotyped ids are missing from the kinship \(first: L1, L7, L9\)"):
        align_individuals(pheno, [kin])


def test_align_later_kinship_must_cover_all_ids(tmp_path):
    pheno, kin, _ = _pheno_and_kinship(tmp_path)
    second = load_matrix(tmp_path, ["A", "B", "C"], np.eye(3), name="K2.csv")
    with raises(r"K2\.csv: 1 ids are missing from the kinship \(first: D\)"):
        align_individuals(pheno, [kin, second])


# ----------------------------------------------------------------------------- test cells


def test_test_cells(tmp_path):
    path = write(tmp_path, "cells.csv", "id,trait,value\nC,T2,1.5\nA,T1,NA\n")
    cells = load_test_cells(cells_cfg(path), ["B", "A", "C"], ["T1", "T2"])
    np.testing.assert_array_equal(cells.rows, [2, 1])
    np.testing.assert_array_equal(cells.cols, [1, 0])
    np.testing.assert_array_equal(cells.values, [1.5, np.nan])


def test_test_cells_without_values(tmp_path):
    path = write(tmp_path, "cells.tsv", "Line\tEnv\nA\tT1\n")
    cells = load_test_cells(cells_cfg(path, id="Line", trait="Env"), ["A"], ["T1"])
    assert cells.rows.tolist() == [0] and cells.cols.tolist() == [0]
    assert np.isnan(cells.values).all()


def test_test_cells_unknown_id(tmp_path):
    path = write(tmp_path, "cells.csv", "id,trait\nA,T1\nZZ,T1\n")
    with raises(r"cells\.csv: line 3: id 'ZZ' is not a known individual"):
        load_test_cells(cells_cfg(path), ["A"], ["T1"])


def test_test_cells_unknown_trait(tmp_path):
    path = write(tmp_path, "cells.csv", "id,trait\nA,T9\n")
    with raises(r"cells\.csv: line 2: trait 'T9' is not a trait"):
        load_test_cells(cells_cfg(path), ["A"], ["T1"])


def test_test_cells_duplicated(tmp_path):
    path = write(tmp_path, "cells.csv", "id,trait\nA,T1\nB,T1\nA,T1\n")
    with raises(r"cells\.csv: line 4: cell id 'A', trait 'T1' already appears on line 2"):
        load_test_cells(cells_cfg(path), ["A", "B"], ["T1"])
