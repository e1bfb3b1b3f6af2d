"""A run as a user drives it: commands out of order, chain numbers, a changed config, and
output directories that a failed or killed command leaves whole."""

import shutil
import signal

import pytest
import yaml
from click.testing import CliRunner

from megalmm_cli.cli import main

from .conftest import finish, one_error_line, run_small_pipeline


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def snapshot(directory):
    return {p.relative_to(directory): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A run sampled (2 chains), predicted and summarised."""
    directory = tmp_path_factory.mktemp("finished")
    config, _ = run_small_pipeline(directory, ["prepare", "sample", "predict", "summarize"])
    return config


@pytest.mark.parametrize("command", ["predict", "summarize"])
def test_commands_before_prepare_say_what_to_run_first(tmp_path, command):
    config, _ = run_small_pipeline(tmp_path, [])
    one_error_line(invoke(command, config), "nothing is prepared", "megalmm prepare", "megalmm sample")


@pytest.mark.parametrize("command", ["predict", "summarize"])
def test_commands_before_sample_say_what_to_run_first(tmp_path, command):
    config, _ = run_small_pipeline(tmp_path, ["prepare"])
    one_error_line(invoke(command, config), "no chains", f"megalmm sample {config}")


def test_status_before_anything(tmp_path):
    config, _ = run_small_pipeline(tmp_path, [])
    result = invoke("status", config)
    assert result.exit_code == 0 and "no chains yet" in result.output


def test_chain_numbers_are_one_to_mcmc_chains(tmp_path):
    config, _ = run_small_pipeline(tmp_path, ["prepare"])
    for number in (0, 3):
        one_error_line(invoke("sample", config, "--chain", number), f"--chain {number}",
                       "mcmc.chains: 2", "chains are 1..2")
    assert not (tmp_path / "run" / "chains").exists()


def test_chain_files_beyond_mcmc_chains_are_named_and_not_read(tmp_path):
    config, _ = run_small_pipeline(tmp_path, ["prepare", "sample"], chains=3)
    raw = yaml.safe_load(config.read_text())
    raw["mcmc"]["chains"] = 2
    config.write_text(yaml.safe_dump(raw))
    for command in ("predict", "summarize"):
        result = invoke(command, config)
        assert result.exit_code == 0, result.stderr
        assert "chain file(s) 3 beyond mcmc.chains (2) are not read; using chain(s) 1, 2" in result.stderr
    assert "20 draws" in invoke("predict", config).output  # 2 chains x 10 draws, not 3
    raw["mcmc"]["chains"] = 4
    config.write_text(yaml.safe_dump(raw))
    result = invoke("predict", config)
    assert result.exit_code == 0 and "chain(s) 4 not sampled yet; using chain(s) 1, 2, 3" in result.stderr


def test_advice_after_a_config_change_works(tmp_path):
    config, _ = run_small_pipeline(tmp_path, ["prepare", "sample"])
    raw = yaml.safe_load(config.read_text())
    raw["run"]["seed"] = 99
    config.write_text(yaml.safe_dump(raw))
    chains = tmp_path / "run" / "chains"
    one_error_line(invoke("predict", config), "different config", f"move {chains} aside",
                   f"megalmm sample {config}")
    one_error_line(invoke("sample", config), "different config", "aside")
    shutil.move(chains, tmp_path / "chains.old")  # as the message says
    assert invoke("sample", config).exit_code == 0
    assert invoke("predict", config).exit_code == 0


@pytest.mark.parametrize("option,name,text", [("--new-kinship", "bad.csv", "id,L0,L1\nNEW1,0.1,oops\n"),
                                              ("--test", "cells.csv", "id,trait\nZZZ,t1\n")])
def test_a_bad_input_file_leaves_the_predictions_as_they_were(finished_run, tmp_path, option, name, text):
    out = finished_run.parent / "run" / "predictions"
    before = snapshot(out)
    bad = tmp_path / name
    bad.write_text(text)
    one_error_line(invoke("predict", finished_run, option, bad), name)
    assert snapshot(out) == before


@pytest.mark.parametrize("command,directory", [("predict", "predictions"), ("summarize", "summary")])
@pytest.mark.parametrize("point", ["outputs:before_rename", "outputs:between_renames"])
def test_killed_outputs_leave_the_previous_ones_whole(forkserver, finished_run, command, directory,
                                                      point):
    out = finished_run.parent / "run" / directory
    before = snapshot(out)
    env = {"MEGALMM_TEST_KILL_AT": point}
    if point == "outputs:between_renames":  # the path taken where renameat2 cannot swap
        env["MEGALMM_TEST_NO_RENAME_EXCHANGE"] = "1"
    assert finish(forkserver, [command, str(finished_run)], env) == -signal.SIGKILL
    if point == "outputs:before_rename":
        assert snapshot(out) == before
    else:  # killed between the two renames: the previous outputs wait whole beside
        assert not out.exists() and snapshot(out.with_name(f".{directory}.old")) == before
    assert invoke(command, finished_run).exit_code == 0  # repairs, then writes anew
    after = snapshot(out)
    assert sorted(after) == sorted(before)
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{directory}")]
    assert leftovers == []
