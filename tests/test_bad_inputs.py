"""Hostile input: every bad config or data file gives exit code 2, one line on stderr naming
the problem, and leaves no output that a later run could mistake for a complete one."""

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from megalmm_cli.cli import main

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
]


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
    args = ["prepare", str(tmp_path / "run.yaml")]
    if case == "huge_memory":
        args += ["--max-memory", "1K"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, (result.output, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("megalmm: error: "), result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert "Traceback" not in result.output
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
