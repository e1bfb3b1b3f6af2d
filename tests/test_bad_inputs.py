"""Hostile input: every bad config or data file gives exit code 2, one line on stderr naming
the problem, and leaves no output that a later run could mistake for a complete one."""

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from megalmm_cli.cli import main

from .conftest import one_error_line

IDS = [f"L{i}" for i in range(12)]
TRAITS = ["a", "b", "c"]


def base_files(tmp_path):
    rng = np.random.default_rng(0)
    markers = rng.integers(0, 3, size=(12, 40))
    centred = markers - markers.mean(axis=0)
    kinship = centred @ centred.T / 40 + 0.05 * np.eye(12)
    values = rng.standard_normal((12, 3))
    lines = ["id,Population," + ",".join(TRAITS)]
    lines += [f"{i},{'P1' if n % 2 else 'P2'}," + ",".join(f"{v:.4f}" for v in row)
              for n, (i, row) in enumerate(zip(IDS, values))]
    (tmp_path / "pheno.csv").write_text("\n".join(lines) + "\n")
    k_lines = ["id," + ",".join(IDS)] + [f"{i}," + ",".join(f"{v:.6f}" for v in row)
                                        for i, row in zip(IDS, kinship)]
    (tmp_path / "K.csv").write_text("\n".join(k_lines) + "\n")
    g_lines = ["id," + ",".join(f"m{j}" for j in range(40))] + [
        f"{i}," + ",".join(map(str, row)) for i, row in zip(IDS, markers)]
    (tmp_path / "geno.csv").write_text("\n".join(g_lines) + "\n")
    (tmp_path / "test.csv").write_text("id,trait\nL1,a\nL2,b\n")
    return {
        "run": {"name": "bad", "output_dir": "out", "seed": 1},
        "data": {"phenotypes": {"file": "pheno.csv", "layout": "wide", "id": "id",
                                "covariate_columns": ["Population"]},
                 "kinships": {"id": {"file": "K.csv"}},
                 "test_cells": {"file": "test.csv"}},
        "model": {"fixed": "~ Population", "random": ["id"], "factors": 2, "h2_divisions": 5},
        "mcmc": {"burn_in": 4, "samples": 4, "thin": 1, "checkpoint_every": 4, "reorder_every": 2},
    }


def edit(cfg, path, value):
    *keys, last = path.split(".")
    node = cfg
    for key in keys:
        node = node.setdefault(key, {})
    if value is DELETE:
        node.pop(last)
    else:
        node[last] = value


DELETE = object()


def write(tmp_path, name, text):
    (tmp_path / name).write_text(text)


# (case id, change to the config or files, words the one-line message must contain)
CASES = [
    ("typo_key", lambda c, d: edit(c, "model.factorss", 3), ["model.factorss", "did you mean 'factors'"]),
    ("wrong_type", lambda c, d: edit(c, "model.factors", "ten"), ["model.factors", "integer"]),
    ("bool_for_int", lambda c, d: edit(c, "mcmc.thin", True), ["mcmc.thin"]),
    ("negative_thin", lambda c, d: edit(c, "mcmc.thin", -2), ["mcmc.thin", ">= 1"]),
    ("h2_divisions_1", lambda c, d: edit(c, "model.h2_divisions", 1), ["model.h2_divisions", ">= 2"]),
    ("zero_factors", lambda c, d: edit(c, "model.factors", 0), ["model.factors"]),
    ("factors_exceed_traits", lambda c, d: edit(c, "model.factors", 5), ["model.factors", "traits"]),
    ("unknown_lambda_type", lambda c, d: edit(c, "priors.lambda", {"type": "lasso"}), ["priors.lambda.type"]),
    ("newer_format", lambda c, d: edit(c, "format_version", 99), ["format_version", "newer"]),
    ("random_not_in_kinships", lambda c, d: edit(c, "model.random", ["Block"]), ["model.random", "Block"]),
    ("max_groups_zero", lambda c, d: edit(c, "missing_data.max_groups", 0), ["missing_data.max_groups"]),
    ("missing_phenotype_file", lambda c, d: edit(c, "data.phenotypes.file", "nope.csv"), ["nope.csv"]),
    ("missing_test_cells_file", lambda c, d: edit(c, "data.test_cells.file", "gone.csv"), ["gone.csv"]),
    ("empty_phenotype_file", lambda c, d: write(d, "pheno.csv", ""), ["pheno.csv", "empty"]),
    ("ragged_row", lambda c, d: write(d, "pheno.csv", "id,Population,a,b,c\nL0,P1,1,2,3\nL1,P2,1,2\n"),
     ["pheno.csv", "line 3"]),
    ("duplicated_trait_column", lambda c, d: write(d, "pheno.csv", "id,Population,a,a,c\nL0,P1,1,2,3\n"),
     ["pheno.csv", "more than once"]),
    ("duplicated_id", lambda c, d: write(d, "pheno.csv", (d / "pheno.csv").read_text() + "L0,P1,1,2,3\n"),
     ["pheno.csv", "L0"]),
    ("non_numeric_value", lambda c, d: _replace_value(d, "L5", "b", "tall"), ["pheno.csv", "tall"]),
    ("inf_value", lambda c, d: _replace_value(d, "L4", "a", "Inf"), ["pheno.csv", "L4"]),
    ("all_na_trait", lambda c, d: _set_column(d, "c", "NA"), ["'c'", "no observed"]),
    ("constant_trait", lambda c, d: _set_column(d, "c", "1.5"), ["'c'"]),
    ("kinship_not_symmetric", lambda c, d: _edit_kinship(d, lambda k: _asym(k)), ["K.csv", "symmetric"]),
    ("kinship_not_psd", lambda c, d: _edit_kinship(
        d, lambda k: k - (np.linalg.eigvalsh(k)[0] + 0.3) * np.eye(len(k))),
     ["K.csv", "positive semi-definite", "smallest eigenvalue"]),
    ("kinship_nan", lambda c, d: _edit_kinship(d, lambda k: _with_nan(k)), ["K.csv"]),
    ("kinship_ids_do_not_match", lambda c, d: write(d, "K.csv", (d / "K.csv").read_text().replace("L3", "X3")),
     ["K.csv", "L3"]),
    ("genotype_value_3", lambda c, d: (edit(c, "data.kinships", {"id": {"genotypes": "geno.csv"}}),
                                       write(d, "geno.csv", (d / "geno.csv").read_text().replace("\nL2,0", "\nL2,3").replace("\nL2,1", "\nL2,3").replace("\nL2,2", "\nL2,3"))),
     ["geno.csv", "L2"]),
    ("test_cell_unknown_id", lambda c, d: write(d, "test.csv", "id,trait\nZZ9,a\n"), ["test.csv", "ZZ9"]),
    ("formula_unknown_column", lambda c, d: edit(c, "model.fixed", "~ Block"), ["model.fixed", "Block"]),
    ("tall_without_trait", lambda c, d: edit(c, "data.phenotypes", {"file": "pheno.csv", "layout": "tall"}),
     ["data.phenotypes"]),
    ("huge_memory", None, ["--max-memory"]),
    # several random effects
    ("grouping_column_absent", lambda c, d: (edit(c, "data.kinships", {"id": {"file": "K.csv"}, "Field": None}),
                                             edit(c, "model.random", ["id", "Field"])),
     ["model.random[1]", "'Field'", "neither the id column"]),
    ("identity_over_individuals", lambda c, d: (edit(c, "data.kinships", {"id": {"file": "K.csv"}, "Line": None}),
                                                edit(c, "data.phenotypes.id", "Line"),
                                                write(d, "pheno.csv", (d / "pheno.csv").read_text().replace("id,", "Line,", 1)),
                                                write(d, "K.csv", (d / "K.csv").read_text().replace("id,", "Line,", 1)),
                                                edit(c, "model.random", ["id", "Line"])),
     ["model.random[1]", "identity kinship over individuals"]),
    ("level_absent_from_kinship", lambda c, d: (edit(c, "data.kinships", {"id": {"file": "K.csv"}, "Population": {"file": "KP.csv"}}),
                                                write(d, "KP.csv", "Population,P1,P3\nP1,1,0.2\nP3,0.2,1\n"),
                                                edit(c, "model.random", ["id", "Population"])),
     ["KP.csv", "grouping column 'Population'", "P2"]),
    ("phenotyped_without_level", lambda c, d: (edit(c, "data.kinships", {"id": {"file": "K.csv"}, "Population": None}),
                                               edit(c, "model.fixed", "~ 1"),
                                               edit(c, "model.random", ["id", "Population"]),
                                               _replace_value(d, "L3", "Population", "NA")),
     ["pheno.csv", "'L3'", "grouping column 'Population'"]),
    # PLINK and HDF5 kinships
    ("truncated_bed", lambda c, d: _plink(c, d, lambda p: _truncate(p.with_suffix(".bed"))),
     ["geno.bed", "truncated", "geno.bim lists 40 markers", "geno.fam 12 individuals"]),
    ("fam_count_disagrees", lambda c, d: _plink(c, d, lambda p: _drop_last_line(p.with_suffix(".fam"), 4)),
     ["geno.bed", "geno.fam 8 individuals", "another data set"]),
    ("bim_count_disagrees", lambda c, d: _plink(c, d, lambda p: _drop_last_line(p.with_suffix(".bim"))),
     ["geno.bed", "geno.bim lists 39 markers"]),
    ("bed_not_plink", lambda c, d: _plink(c, d, lambda p: p.with_suffix(".bed").write_bytes(b"hello")),
     ["geno.bed", "not a SNP-major PLINK"]),
    ("h5_kinship_not_square", lambda c, d: _h5_kinship(c, d, np.ones((12, 11))), ["K.h5", "not square"]),
    ("h5_kinship_ids_disagree", lambda c, d: _h5_kinship(c, d, np.eye(12), IDS[:10]),
     ["K.h5", "12 x 12", "'ids' has 10"]),
    ("h5_kinship_no_dataset", lambda c, d: _h5_kinship(c, d, np.eye(12), name="K2"), ["K.h5", "no dataset 'K'"]),
    ("damaged_gzip", lambda c, d: (d / "pheno.csv").write_bytes(_gzip_bytes((d / "pheno.csv").read_text())[:40]),
     ["pheno.csv", "gzip", "damaged or truncated"]),
    ("phenotype_path_is_directory", lambda c, d: ((d / "dir.csv").mkdir(), edit(c, "data.phenotypes.file", "dir.csv")),
     ["dir.csv", "directory"]),
    # the config file itself
    ("config_not_a_mapping", lambda c, d: _raw_config(d, "- prepare\n- sample\n"), ["top level", "mapping"]),
    ("empty_config", lambda c, d: _raw_config(d, ""), ["run.yaml", "empty"]),
    ("unknown_posterior_dtype", lambda c, d: edit(c, "posterior.dtype", "float16"),
     ["posterior.dtype", "float32, float64"]),
]


def _plink(cfg, d, spoil):
    """Write the genotypes as PLINK geno.bed/.bim/.fam, name them in the config, spoil one."""
    from bed_reader import to_bed

    lines = (d / "geno.csv").read_text().splitlines()[1:]
    values = np.array([[float(v) for v in line.split(",")[1:]] for line in lines], dtype=np.float32)
    to_bed(d / "geno.bed", values, properties={"iid": IDS})
    edit(cfg, "data.kinships", {"id": {"plink": "geno"}})
    spoil(d / "geno.bed")


def _truncate(path):
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size - 7)


def _drop_last_line(path, count=1):
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:-count]))


def _h5_kinship(cfg, d, matrix, ids=IDS, name="K"):
    import h5py

    with h5py.File(d / "K.h5", "w") as h5:
        h5[name] = matrix
        h5["ids"] = np.array(ids, dtype=object).astype("S")
    edit(cfg, "data.kinships", {"id": {"file": "K.h5"}})


def _gzip_bytes(text: str) -> bytes:
    import gzip

    return gzip.compress(text.encode())


def _raw_config(d, text):
    (d / "raw.yaml").write_text(text)


def _replace_value(d, row_id, trait, value):
    lines = (d / "pheno.csv").read_text().splitlines()
    header = lines[0].split(",")
    col = header.index(trait)
    for n, line in enumerate(lines):
        fields = line.split(",")
        if fields[0] == row_id:
            fields[col] = value
            lines[n] = ",".join(fields)
    (d / "pheno.csv").write_text("\n".join(lines) + "\n")


def _set_column(d, trait, value):
    for row_id in IDS:
        _replace_value(d, row_id, trait, value)


def _edit_kinship(d, change):
    lines = (d / "K.csv").read_text().splitlines()
    k = np.array([[float(v) for v in line.split(",")[1:]] for line in lines[1:]])
    k = change(k)
    out = [lines[0]] + [f"{i}," + ",".join(f"{v:.6f}" for v in row) for i, row in zip(IDS, k)]
    (d / "K.csv").write_text("\n".join(out) + "\n")


def _asym(k):
    k = k.copy()
    k[0, 1] += 0.5
    return k


def _with_nan(k):
    k = k.copy()
    k[2, 3] = k[3, 2] = np.nan
    return k


@pytest.mark.parametrize("case,change,words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_exit_2_with_one_line(tmp_path, case, change, words):
    cfg = base_files(tmp_path)
    if change is not None:
        change(cfg, tmp_path)
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    if (tmp_path / "raw.yaml").exists():  # a case about the config file itself
        (tmp_path / "raw.yaml").replace(tmp_path / "run.yaml")
    args = ["prepare", str(tmp_path / "run.yaml")]
    if case == "huge_memory":
        args += ["--max-memory", "1K"]
    one_error_line(CliRunner().invoke(main, args), *words)
    assert not (tmp_path / "out" / "prepared.h5").exists()


def test_yaml_syntax_error(tmp_path):
    base_files(tmp_path)
    (tmp_path / "run.yaml").write_text("data:\n  phenotypes: {file: pheno.csv\n")
    result = CliRunner().invoke(main, ["prepare", str(tmp_path / "run.yaml")])
    assert result.exit_code == 2 and "run.yaml" in result.stderr and "line" in result.stderr


@pytest.mark.parametrize("text", ["\ufeffid,Population,a,b,c\r\n", "id,Population,a,b,c\n"])
def test_bom_crlf_and_spaces_around_ids_are_accepted(tmp_path, text):
    cfg = base_files(tmp_path)
    body = (tmp_path / "pheno.csv").read_text().splitlines()[1:]
    body = [f" {line.split(',', 1)[0]} ," + line.split(",", 1)[1] for line in body]
    newline = "\r\n" if "\r\n" in text else "\n"
    (tmp_path / "pheno.csv").write_text(text + newline.join(body) + newline)
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    result = CliRunner().invoke(main, ["prepare", str(tmp_path / "run.yaml")])
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "out" / "prepared.h5").exists()


def test_sample_refuses_bad_iterations_and_leaves_no_chain(tmp_path):
    cfg = base_files(tmp_path)
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    result = CliRunner().invoke(main, ["sample", str(tmp_path / "run.yaml"), "--iterations", "0"])
    assert result.exit_code == 2 and "--iterations" in result.stderr
    assert not (tmp_path / "out" / "chains").exists()


def test_gzip_compressed_inputs_are_accepted(tmp_path):
    """Phenotypes, kinship and test cells as .csv.gz give the same prepared data as plain CSV."""
    import gzip

    import h5py

    cfg = base_files(tmp_path)
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    assert CliRunner().invoke(main, ["prepare", str(tmp_path / "run.yaml")]).exit_code == 0
    for name in ("pheno.csv", "K.csv", "test.csv"):
        (tmp_path / f"{name}.gz").write_bytes(gzip.compress((tmp_path / name).read_bytes()))
    cfg["run"]["output_dir"] = "out_gz"
    edit(cfg, "data.phenotypes.file", "pheno.csv.gz")
    edit(cfg, "data.kinships", {"id": {"file": "K.csv.gz"}})
    edit(cfg, "data.test_cells.file", "test.csv.gz")
    (tmp_path / "gz.yaml").write_text(yaml.safe_dump(cfg))
    result = CliRunner().invoke(main, ["prepare", str(tmp_path / "gz.yaml")])
    assert result.exit_code == 0, result.stderr
    with h5py.File(tmp_path / "out" / "prepared.h5") as a, h5py.File(tmp_path / "out_gz" / "prepared.h5") as b:
        for name in ("y_std", "x1_all", "factor_rot/vectors", "test_cells/values"):
            np.testing.assert_array_equal(a[name][()], b[name][()], err_msg=name)


def test_non_ascii_ids_and_traits_are_accepted(tmp_path):
    """Ids and trait names in any script go through prepare, sample, predict and summarize."""
    cfg = base_files(tmp_path)
    names = {f"L{i}": f"Línea_{i}_çäø_東{i}" for i in range(12)}
    for name in ("pheno.csv", "K.csv", "test.csv"):
        text = (tmp_path / name).read_text()
        for old in sorted(names, key=len, reverse=True):
            text = text.replace(old + ",", names[old] + ",").replace("," + old + "\n", "," + names[old] + "\n")
        text = text.replace("id,Population,a,b,c", "id,Population,hauteur_é,b,c")
        text = text.replace(",a\n", ",hauteur_é\n")
        (tmp_path / name).write_text(text, encoding="utf-8")
    cfg["mcmc"]["chains"] = 1
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    for command in ("prepare", "sample", "predict", "summarize"):
        result = CliRunner().invoke(main, [command, str(tmp_path / "run.yaml")])
        assert result.exit_code == 0, (command, result.output, result.stderr)
    u = (tmp_path / "out" / "predictions" / "U.csv").read_text(encoding="utf-8")
    assert "Línea_3_çäø_東3" in u and "hauteur_é" in u.splitlines()[0]
    assert "hauteur_é" in (tmp_path / "out" / "summary" / "h2.csv").read_text(encoding="utf-8")
