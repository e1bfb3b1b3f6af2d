"""One sampler per chain (chain_N.h5.lock), and `megalmm status`."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest
import yaml

from megalmm_cli.errors import UserError
from megalmm_cli.lock import chain_lock, lock_path, read_lock

from .test_chain import megalmm, sim_dir, write_config  # noqa: F401  (sim_dir is a fixture)


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
    cfg = write_config(tmp_path, "twice", sim_dir)
    plain = yaml.safe_load(cfg.read_text())
    plain["mcmc"]["samples"] = 760  # long enough (seconds) for the second sampler to start
    cfg.write_text(yaml.safe_dump(plain))
    assert megalmm("status", str(cfg)).stdout.strip() == "no chains yet"
    assert megalmm("prepare", str(cfg)).returncode == 0
    cmd = [sys.executable, "-m", "megalmm_cli.cli", "sample", str(cfg)]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock = tmp_path / "twice" / "chains" / "chain_1.h5.lock"
    deadline = time.time() + 60
    while not lock.exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    second = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out2, err2 = second.communicate(timeout=120)
    _, err1 = first.communicate(timeout=300)
    assert first.returncode == 0, err1
    assert second.returncode == 2, (out2, err2)
    lines = err2.strip().splitlines()
    assert len(lines) == 1 and "chain_1.h5 is being sampled by pid" in lines[0]
    assert f"pid {first.pid} on host {socket.gethostname()}" in lines[0]
    assert not lock.exists()

    status = megalmm("status", str(cfg))
    assert status.returncode == 0, status.stderr
    header, row = status.stdout.strip().splitlines()
    assert header.split()[:3] == ["chain", "iterations", "draws"]
    fields = row.split()
    assert fields[:3] == ["1", "800/800", "380"] and fields[-1] == "-"
