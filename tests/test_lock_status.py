"""One sampler per chain (chain_N.h5.lock), and `megalmm status`."""

import json
import os
import socket
import subprocess
import sys

import pytest

from megalmm_cli.errors import UserError
from megalmm_cli.lock import chain_lock, lock_path, read_lock

from .test_chain import sim_dir, write_config  # noqa: F401  (sim_dir is a fixture)


def write_lock(chain, host, pid):
    lock_path(chain).write_text(json.dumps({"host": host, "pid": pid, "started": "2026-11-26 10:00:00 UTC",
                                            "command": "megalmm sample x.yaml"}))


def test_held_lock_blocks_a_second_acquisition(tmp_path):
    chain = tmp_path / "chain_1.h5"
    with chain_lock(chain):
        assert read_lock(chain)["pid"] == os.getpid()
        with pytest.raises(UserError) as err, chain_lock(chain):
            pass
        assert str(err.value).startswith(f"{chain} is being sampled by pid {os.getpid()} on host "
                                         f"{socket.gethostname()} since ")
        assert str(err.value).endswith("wait for it or stop it")
    assert not lock_path(chain).exists()


def test_lock_released_on_exception(tmp_path):
    chain = tmp_path / "chain_1.h5"
    with pytest.raises(RuntimeError), chain_lock(chain):
        raise RuntimeError("boom")
    assert not lock_path(chain).exists()


def test_stale_lock_is_taken_over(tmp_path, capsys):
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()  # its pid no longer exists
    chain = tmp_path / "chain_1.h5"
    write_lock(chain, socket.gethostname(), finished.pid)
    with chain_lock(chain):
        assert read_lock(chain)["pid"] == os.getpid()
    assert "taking over the stale lock" in capsys.readouterr().err
    assert not lock_path(chain).exists() and not list(tmp_path.glob("*.stale.*"))


def test_foreign_host_lock_is_refused(tmp_path):
    chain = tmp_path / "chain_1.h5"
    write_lock(chain, "some-other-node", 999999)
    with pytest.raises(UserError) as err, chain_lock(chain):
        pass
    message = str(err.value)
    assert f"{chain} is being sampled by pid 999999 on host some-other-node since 2026-11-26" in message
    assert "never treated as stale" in message and f"delete {lock_path(chain)}" in message
    assert lock_path(chain).exists()  # left alone


def test_two_samplers_on_one_chain_then_status(sim_dir, tmp_path):  # noqa: F811
    """A second sampler on a chain that one is sampling (held stopped at an iteration, so
    the overlap does not depend on timing) refuses with one line naming the holder."""
    import signal

    from click.testing import CliRunner

    from megalmm_cli.cli import main

    from .test_chain import stopped_process

    cfg = write_config(tmp_path, "twice", sim_dir)
    assert CliRunner().invoke(main, ["status", str(cfg)]).output.strip() == "no chains yet"
    assert CliRunner().invoke(main, ["prepare", str(cfg)]).exit_code == 0
    first = stopped_process(cfg, "sample:iteration:30")
    lock = tmp_path / "twice" / "chains" / "chain_1.h5.lock"
    assert lock.exists()
    second = CliRunner().invoke(main, ["sample", str(cfg)])
    assert second.exit_code == 2, (second.output, second.stderr)
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and "chain_1.h5 is being sampled by pid" in lines[0]
    assert f"pid {first.pid} on host {socket.gethostname()}" in lines[0]
    running = CliRunner().invoke(main, ["status", str(cfg)])
    assert f"pid {first.pid} on {socket.gethostname()}, running" in running.output
    first.send_signal(signal.SIGCONT)
    _, err1 = first.communicate(timeout=300)
    assert first.returncode == 0, err1
    assert not lock.exists()

    status = CliRunner().invoke(main, ["status", str(cfg)])
    assert status.exit_code == 0, status.stderr
    header, row = status.output.strip().splitlines()
    assert header.split()[:3] == ["chain", "iterations", "draws"]
    fields = row.split()
    assert fields[:3] == ["1", "200/200", "80"] and fields[-1] == "-"
