"""CLI conventions: --help with examples, --version, exit codes 0 / 2 / 1, one-line errors."""

import pytest
import yaml
from click.testing import CliRunner

from megalmm_cli import __version__
from megalmm_cli.cli import main

from .conftest import run_small_pipeline

COMMANDS = ["simulate", "cv-split", "prepare", "sample", "predict", "summarize", "status"]


def invoke(*args):
    return CliRunner().invoke(main, list(args))


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0 and __version__ in result.output


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command):
    result = invoke(command, "--help")
    assert result.exit_code == 0
    assert "Example" in result.output and f"megalmm {command}" in result.output


def test_commands_listed_in_pipeline_order():
    text = invoke("--help").output.split("Commands:")[1]
    positions = [text.index(f"  {c}") for c in COMMANDS]
    assert positions == sorted(positions)


def test_missing_config_is_a_one_line_user_error(tmp_path):
    result = invoke("prepare", str(tmp_path / "nope.yaml"))
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("megalmm: error: ") and "nope.yaml" in lines[0]
    assert "Traceback" not in result.output


def test_bad_option_value_is_exit_2(tmp_path):
    result = invoke("simulate", str(tmp_path / "x"), "--missing", "1.5")
    assert result.exit_code == 2 and "--missing" in result.stderr


def test_internal_error_is_exit_1(tmp_path, monkeypatch):
    import megalmm_cli.predict as predict

    def boom(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(predict, "run_predict", boom)
    cfg = tmp_path / "c.yaml"
    (tmp_path / "p.csv").write_text("id,a\ni1,1\n")
    (tmp_path / "k.csv").write_text("id,i1\ni1,1\n")
    cfg.write_text(yaml.safe_dump({"data": {"phenotypes": {"file": "p.csv"},
                                            "kinships": {"id": {"file": "k.csv"}}}}))
    result = invoke("predict", str(cfg))
    assert result.exit_code == 1
    assert "internal error: RuntimeError: disk on fire" in result.stderr


def test_whole_pipeline_on_a_small_simulation(tmp_path):
    data = tmp_path / "sim"
    run_small_pipeline(data, ("prepare", "sample", "predict", "summarize"))
    run = data / "run"
    for name in ("predictions/U.csv", "predictions/U_sd.csv", "predictions/eta_hat.csv",
                 "predictions/test_accuracy.csv", "summary/G.csv", "summary/R.csv", "summary/h2.csv",
                 "chains/chain_1.h5", "chains/chain_2.h5"):
        assert (run / name).stat().st_size > 0, name
    u = (run / "predictions/U.csv").read_text().splitlines()
    assert len(u) == 41 and u[0].split(",")[0] == "id"  # every individual, incl. unphenotyped


def test_unwritable_output_directory_is_a_user_error(tmp_path):
    data = tmp_path / "sim"
    assert invoke("simulate", str(data), "--n", "30", "--t", "4", "--k", "2", "--markers", "100").exit_code == 0
    raw = yaml.safe_load((data / "config.yaml").read_text())
    blocker = tmp_path / "not_a_directory"
    blocker.write_text("a file where the output directory should go")
    raw["run"]["output_dir"] = str(blocker / "run")
    (data / "config.yaml").write_text(yaml.safe_dump(raw))
    result = invoke("prepare", str(data / "config.yaml"))
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot write" in lines[0] and "writable run.output_dir" in lines[0]


def test_cv_split_writes_fold_files(tmp_path):
    data = tmp_path / "sim"
    assert invoke("simulate", str(data), "--n", "40", "--t", "5", "--k", "2", "--markers", "100").exit_code == 0
    result = invoke("cv-split", str(data / "config.yaml"), "--folds", "4", "--group", "Population",
                    "--outdir", str(tmp_path / "folds"))
    assert result.exit_code == 0, result.stderr
    files = sorted((tmp_path / "folds").glob("fold_*.csv"))
    assert [f.name for f in files] == ["fold_1.csv", "fold_2.csv", "fold_3.csv", "fold_4.csv"]
    assert files[0].read_text().splitlines()[0] == "id,trait"
    bad = invoke("cv-split", str(data / "config.yaml"), "--group", "Nope", "--outdir", str(tmp_path / "x"))
    assert bad.exit_code == 2 and "Nope" in bad.stderr


def test_predict_scores_a_test_file_and_refuses_mixed_chains(tmp_path):
    data = tmp_path / "sim"
    assert invoke("simulate", str(data), "--n", "40", "--t", "5", "--k", "2", "--markers", "100").exit_code == 0
    raw = yaml.safe_load((data / "config.yaml").read_text())
    raw["mcmc"] = {"burn_in": 10, "samples": 20, "thin": 2, "checkpoint_every": 10, "reorder_every": 5}
    (data / "config.yaml").write_text(yaml.safe_dump(raw))
    cfg = str(data / "config.yaml")
    assert invoke("sample", cfg).exit_code == 0
    result = invoke("predict", cfg, "--test", str(data / "heldout_cells.csv"))
    assert result.exit_code == 0, result.stderr
    table = (data / "run" / "predictions" / "test_accuracy.csv").read_text().splitlines()
    assert table[0].startswith("trait,n_test,cor_U") and len(table) == 1 + 5
    assert not any(line.startswith("mean,") for line in table)
    mean = (data / "run" / "predictions" / "test_accuracy_mean.csv").read_text().splitlines()
    assert mean[0] == "n_traits,n_test,cor_U,cor_eta_hat" and mean[1].startswith("5,")
    first_cell = (data / "heldout_cells.csv").read_text().splitlines()[1].split(",")[:2]
    no_values = tmp_path / "cells.csv"
    no_values.write_text("id,trait\n" + ",".join(first_cell) + "\n")
    refused = invoke("predict", cfg, "--test", str(no_values))
    assert refused.exit_code == 2 and "value" in refused.stderr
    # a chain sampled with another config is refused, not mixed in
    raw["priors"] = {"tot_Y_var": {"V": 0.4, "nu": 5}}
    (data / "other.yaml").write_text(yaml.safe_dump(raw))
    mixed = invoke("predict", str(data / "other.yaml"))
    assert mixed.exit_code == 2 and "different config" in mixed.stderr
