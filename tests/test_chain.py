"""Checkpoints and resume: a resumed chain equals an uninterrupted one exactly."""

import os
import signal
import subprocess
import sys

import h5py
import numpy as np
import pytest
import yaml

from megalmm_cli.chain import Plan, run_chain
from megalmm_cli.storage import ChainFile, MemoryChain

PLAN = Plan(burn_in=20, samples=40, thin=2, reorder_every=10, checkpoint_every=15)
SAMPLES = ("Lambda", "f_h2", "resid_h2", "tot_eta_prec", "B1", "U_R")
MEANS = ("U", "eta_hat")


class StopAfter:
    """Acts like a SIGTERM arriving after a given number of iterations."""

    def __init__(self, iterations):
        self.left = iterations
        self.signal = None

    def tick(self, done):
        if done >= self.left:
            self.signal = signal.SIGTERM


def run(model, storage, stop_after=None):
    stop = StopAfter(stop_after) if stop_after else None
    return run_chain(model, storage, PLAN, SAMPLES, MEANS, seed=7, chain=1,
                     progress=stop.tick if stop else None, stop=stop)


def assert_same_chain(a_samples, a_cp, b_samples, b_cp):
    assert a_samples.keys() == b_samples.keys()
    for name in a_samples:
        np.testing.assert_array_equal(a_samples[name], b_samples[name], err_msg=name)
    assert a_cp.iteration == b_cp.iteration and a_cp.n_draws == b_cp.n_draws
    assert a_cp.rng_states == b_cp.rng_states
    for name in a_cp.means:
        np.testing.assert_array_equal(a_cp.means[name], b_cp.means[name], err_msg=name)
    for name, value in a_cp.arrays.items():
        other = b_cp.arrays[name]
        if isinstance(value, list):
            for x, y in zip(value, other):
                np.testing.assert_array_equal(x, y, err_msg=name)
        else:
            np.testing.assert_array_equal(value, other, err_msg=name)


def test_memory_chain_draws_and_means(small_model):
    store = MemoryChain()
    result = run(small_model, store)
    assert result.iteration == PLAN.total and result.n_draws == PLAN.samples // PLAN.thin
    assert store.samples["Lambda"].shape == (20, small_model.k, small_model.t)
    assert store.samples["U_R"].shape == (20, len(small_model.ids), small_model.t)
    cp = store.load()
    assert int(cp.means["U.count"]) == 20
    assert np.all(np.isfinite(store.samples["Lambda"]))


@pytest.mark.parametrize("stop_at,dtype", [(7, "f8"), (15, "f4"), (31, "f8"), (44, "f4")])
def test_resume_is_bit_identical(small_model, stop_at, dtype, tmp_path):
    """Stopped and resumed (float64 or float32 draws): the same draws, bit for bit, as an
    uninterrupted chain stored in the same type."""
    whole = MemoryChain(dtype=dtype)
    run(small_model, whole)
    pieces = new_chain_file(small_model, tmp_path / "chain_1.h5", dtype=dtype)
    first = run(small_model, pieces, stop_after=stop_at)
    assert first.interrupted_by == signal.SIGTERM and first.iteration == stop_at
    second = run(small_model, pieces)
    assert second.iteration == PLAN.total
    samples = {name: pieces.read_samples(name) for name in SAMPLES}
    assert all(v.dtype == np.dtype(dtype) for v in samples.values())
    assert_same_chain(whole.samples, whole.load(), samples, pieces.load())


def _shape(model, name):
    from megalmm_cli.posterior import param_shape

    return param_shape(model, name)


def new_chain_file(model, path, names=SAMPLES, capacity=None, dtype="f8"):
    chain = ChainFile(path)
    chain.create({"config_hash": "x"}, {name: _shape(model, name) for name in names},
                 PLAN.draws(PLAN.total) if capacity is None else capacity, dtype)
    return chain


def test_uncommitted_draws_are_ignored_and_rewritten(small_model, tmp_path):
    """Rows written beyond the committed draws (a checkpoint killed before its commit
    record) are not read, and the resumed chain writes them again."""
    whole = MemoryChain()
    run(small_model, whole)
    chain = new_chain_file(small_model, tmp_path / "c.h5")
    run(small_model, chain, stop_after=31)
    committed = chain.progress().n_draws
    layout = chain.layout()
    with open(chain.path, "r+b") as raw:  # garbage in every row after the committed ones
        for name in SAMPLES:
            path = f"samples/{name}"
            row = layout.nbytes[path] // layout.capacity
            raw.seek(layout.offsets[path] + committed * row)
            raw.write(os.urandom(row * (layout.capacity - committed)))
    assert chain.read_samples("Lambda").shape[0] == committed
    run(small_model, chain)
    samples = {name: chain.read_samples(name) for name in SAMPLES}
    assert_same_chain(whole.samples, whole.load(), samples, chain.load())


def write_config(tmp_path, name, data_dir):
    cfg = yaml.safe_load(open(data_dir / "config.yaml"))
    cfg["run"] = {"name": name, "output_dir": str(tmp_path / name), "seed": 3}
    cfg["mcmc"] = {"burn_in": 40, "reorder_every": 20, "samples": 160, "thin": 2,
                   "checkpoint_every": 10, "chains": 1}
    cfg["model"]["factors"] = 4
    cfg["missing_data"] = {"max_groups": 2}
    path = data_dir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def sim_dir(tmp_path_factory):
    from megalmm_cli.simulate import simulate_data, write_simulation

    out = tmp_path_factory.mktemp("sim")
    write_simulation(simulate_data(60, 12, 3, missing=0.2, seed=11, n_markers=300), out)
    return out


def megalmm(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "megalmm_cli.cli", *args], capture_output=True,
                          text=True, **kwargs)


def stopped_process(cfg, pause_at, *extra):
    """`megalmm sample` started with MEGALMM_TEST_PAUSE_AT, returned once it has stopped
    itself there (SIGSTOP): an event the test waits for, not a time."""
    env = dict(os.environ, MEGALMM_TEST_PAUSE_AT=pause_at)
    proc = subprocess.Popen([sys.executable, "-m", "megalmm_cli.cli", "sample", str(cfg), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    _, status = os.waitpid(proc.pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status), "the sampler ended before reaching its pause point"
    return proc


def test_sigterm_writes_checkpoint_and_exit_code(sim_dir, tmp_path):
    from click.testing import CliRunner

    from megalmm_cli.cli import main

    cfg = write_config(tmp_path, "term", sim_dir)
    assert CliRunner().invoke(main, ["prepare", str(cfg)]).exit_code == 0
    proc = stopped_process(cfg, "sample:iteration:57")
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGCONT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by signal 15 at iteration 57; checkpoint written" in out
    chain = ChainFile(tmp_path / "term" / "chains" / "chain_1.h5")
    assert chain.progress().iteration == 57 and chain.load().iteration == 57
    resumed = CliRunner().invoke(main, ["sample", str(cfg)])
    assert resumed.exit_code == 0 and "resuming at iteration 57" in resumed.output


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_during_set_up_ends_the_command(sim_dir, tmp_path, sig):
    """The handlers are installed before any slow import: a signal that arrives before
    sampling starts ends `sample` with 128 + signal and one line, and writes nothing."""
    cfg = write_config(tmp_path, "early", sim_dir)
    proc = stopped_process(cfg, "sample:handlers_installed")
    proc.send_signal(sig)
    proc.send_signal(signal.SIGCONT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err
    assert f"stopped by signal {int(sig)} before sampling started" in err
    assert "Traceback" not in err
    assert not (tmp_path / "early" / "chains" / "chain_1.h5").exists()


def test_iterations_extends_a_finished_chain(sim_dir, tmp_path):
    from click.testing import CliRunner

    from megalmm_cli.cli import main

    cfg = str(write_config(tmp_path, "ext", sim_dir))
    assert CliRunner().invoke(main, ["sample", cfg]).exit_code == 0
    again = CliRunner().invoke(main, ["sample", cfg])
    assert again.exit_code == 0 and "is complete" in again.output
    more = CliRunner().invoke(main, ["sample", cfg, "--iterations", "200"])
    assert more.exit_code == 0, more.stderr
    chain = ChainFile(tmp_path / "ext" / "chains" / "chain_1.h5")
    progress = chain.progress()
    assert progress.iteration == 240 and progress.target == 240
    assert chain.read_samples("f_h2").shape[0] == 100 and progress.capacity == 100


def test_interrupted_extension_keeps_its_target(sim_dir, tmp_path):
    """`--iterations` is recorded: a chain stopped on its way there is shown against it by
    status and a plain re-run continues to it."""
    from click.testing import CliRunner

    from megalmm_cli.cli import main

    cfg = write_config(tmp_path, "target", sim_dir)
    proc = stopped_process(cfg, "sample:iteration:230", "--iterations", "300")
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGCONT)
    proc.communicate(timeout=120)
    assert proc.returncode == 143
    status = CliRunner().invoke(main, ["status", str(cfg)])
    assert status.exit_code == 0 and "230/340" in status.output
    plain = CliRunner().invoke(main, ["sample", str(cfg)])
    assert plain.exit_code == 0 and "resuming at iteration 230 of 340" in plain.output
    chain = ChainFile(tmp_path / "target" / "chains" / "chain_1.h5")
    assert chain.progress().iteration == 340 and chain.read_samples("f_h2").shape[0] == 150
    assert "230/340" not in CliRunner().invoke(main, ["status", str(cfg)]).output


def test_other_means_and_samples_without_u(small_model):
    store = MemoryChain()
    run_chain(small_model, store, Plan(5, 10, 2, 0, 10), ("F", "U_F", "G", "h2"), ("F", "U_R"),
              seed=1, chain=1)
    cp = store.load()
    assert int(cp.means["F.count"]) == 5 and cp.means["U_R.mean"].shape == (len(small_model.ids), small_model.t)
    assert store.samples["G"].shape == (5, small_model.t, small_model.t)
    assert np.allclose(store.samples["G"], np.transpose(store.samples["G"], (0, 2, 1)))
    assert np.all((store.samples["h2"] > 0) & (store.samples["h2"] < 1))


def test_failed_checkpoint_write_keeps_previous_checkpoint(small_model, tmp_path, monkeypatch):
    """Disk full in the middle of a checkpoint: a clear error, the previous checkpoint intact,
    and resuming gives the uninterrupted chain."""
    import errno

    import megalmm_cli.storage as storage
    from megalmm_cli.errors import UserError

    whole = MemoryChain()
    run(small_model, whole)
    chain = new_chain_file(small_model, tmp_path / "chain_1.h5")
    real_write_buffer = storage.write_buffer
    calls = {"n": 0}

    def full_disk(fd, layout, buffer, parts, cp, seq):
        calls["n"] += 1
        if calls["n"] == 3:  # the third checkpoint, after its draws were written
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write_buffer(fd, layout, buffer, parts, cp, seq)

    monkeypatch.setattr(storage, "write_buffer", full_disk)
    with pytest.raises(UserError, match=r"could not write the checkpoint of iteration 45 .*No space left"
                                        r".*previous checkpoint \(iteration 30\) is intact"):
        run(small_model, chain)
    monkeypatch.setattr(storage, "write_buffer", real_write_buffer)
    chain = ChainFile(chain.path)
    cp = chain.load()
    assert cp.iteration == 30 and chain.read_samples("Lambda").shape[0] == cp.n_draws == 5
    run(small_model, chain)
    samples = {name: chain.read_samples(name) for name in SAMPLES}
    assert_same_chain(whole.samples, whole.load(), samples, chain.load())


def _finished_chain(small_model, tmp_path):
    chain = new_chain_file(small_model, tmp_path / "chain_1.h5")
    run(small_model, chain)
    return chain


def _spoil(chain, path, nbytes=64):
    """Overwrite the first bytes of a dataset of the chain file with noise (a bad block)."""
    layout = chain.layout()
    with open(chain.path, "r+b") as raw:
        raw.seek(layout.offsets[path])
        raw.write(os.urandom(min(nbytes, layout.nbytes[path])))


def _active_buffer(chain):
    return ("state_a", "state_b")[int(h5py.File(chain.path)["commit"][2]) - 1]


def test_damaged_newest_checkpoint_falls_back_to_the_other(small_model, tmp_path):
    """A bad block in the newest checkpoint: load takes the one before it, and resuming
    from there gives the uninterrupted chain exactly (no repair needed)."""
    whole = MemoryChain()
    run(small_model, whole)
    chain = new_chain_file(small_model, tmp_path / "chain_1.h5")
    run(small_model, chain, stop_after=50)   # checkpoints at 15, 30, 45 and the stop at 50
    _spoil(chain, f"{_active_buffer(chain)}/arrays/Lambda")
    fresh = ChainFile(chain.path)
    cp = fresh.load()
    assert cp.iteration == 45 and "damaged" in fresh.fell_back
    run(small_model, fresh)
    samples = {name: fresh.read_samples(name) for name in SAMPLES}
    assert_same_chain(whole.samples, whole.load(), samples, fresh.load())


def test_torn_commit_record_is_rebuilt_from_the_buffers(small_model, tmp_path):
    whole = MemoryChain()
    run(small_model, whole)
    chain = new_chain_file(small_model, tmp_path / "chain_1.h5")
    run(small_model, chain, stop_after=31)
    _spoil(chain, "commit", 20)  # as a power cut in the middle of the record's write
    fresh = ChainFile(chain.path)
    assert fresh.progress().iteration == 31 and fresh.load().iteration == 31
    run(small_model, fresh)
    samples = {name: fresh.read_samples(name) for name in SAMPLES}
    assert_same_chain(whole.samples, whole.load(), samples, fresh.load())


def test_both_checkpoints_damaged_is_a_clear_error(small_model, tmp_path):
    from megalmm_cli.errors import UserError

    chain = _finished_chain(small_model, tmp_path)
    for buffer in ("state_a", "state_b"):
        _spoil(chain, f"{buffer}/means/U.mean")
    with pytest.raises(UserError, match="no checkpoint in this chain file is intact.*megalmm repair"):
        ChainFile(chain.path).load()


def test_truncated_chain_file_is_a_clear_error(small_model, tmp_path):
    from megalmm_cli.errors import UserError

    chain = _finished_chain(small_model, tmp_path)
    size = os.path.getsize(chain.path)
    with open(chain.path, "r+b") as raw:
        raw.truncate(size // 3)
    with pytest.raises(UserError, match="cannot open the chain file.*move it aside"):
        ChainFile(chain.path).load()


def test_repair_command(sim_dir, tmp_path):
    from click.testing import CliRunner

    from megalmm_cli.cli import main

    cfg = write_config(tmp_path, "rep", sim_dir)
    assert CliRunner().invoke(main, ["sample", str(cfg)]).exit_code == 0
    intact = CliRunner().invoke(main, ["repair", str(cfg)])
    assert intact.exit_code == 0 and "intact (80 draws, iteration 200)" in intact.output
    path = tmp_path / "rep" / "chains" / "chain_1.h5"
    chain = ChainFile(path)
    _spoil(chain, f"{_active_buffer(chain)}/means/U.mean")
    fixed = CliRunner().invoke(main, ["repair", str(cfg)])
    assert fixed.exit_code == 0 and "kept 75 draws up to iteration 190" in fixed.output
    assert (tmp_path / "rep" / "chains" / "chain_1.h5.damaged").exists()
    resumed = CliRunner().invoke(main, ["sample", str(cfg)])
    assert resumed.exit_code == 0 and "resuming at iteration 190" in resumed.output
    assert ChainFile(path).read_samples("f_h2").shape[0] == 80


def test_u_cells_are_recorded_with_u_means(small_model):
    from megalmm_cli.chain import recorded_samples
    from megalmm_cli.posterior import extra_sample_shapes, model_u_cells, param_shape, u_cell_indices

    assert recorded_samples(("Lambda",), ("U",)) == ("Lambda", "U_cells")
    assert recorded_samples(("Lambda",), ("eta_hat",)) == ("Lambda",)
    store = MemoryChain()
    plan = Plan(5, 12, 2, 0, 4)
    run_chain(small_model, store, plan, recorded_samples(("f_h2",), ("U",)), ("U",), seed=3, chain=1)
    rows, cols = model_u_cells(small_model)
    m = min(50, small_model.n_train * small_model.t)
    assert len(rows) == m and np.all(rows < small_model.n_train) and np.all(cols < small_model.t)
    assert np.all(np.diff(rows * small_model.t + cols) > 0)  # sorted, distinct
    again = u_cell_indices(small_model.n_train, small_model.t)
    np.testing.assert_array_equal(rows, again[0])
    np.testing.assert_array_equal(cols, again[1])
    assert param_shape(small_model, "U_cells") == (m,)
    assert extra_sample_shapes(small_model, ("U",)) == {"U_cells": (m,)}
    assert extra_sample_shapes(small_model, ("eta_hat",)) == {}
    cells = store.samples["U_cells"]
    assert cells.shape == (plan.samples // plan.thin, m)
    cp = store.load()
    np.testing.assert_allclose(cells.mean(axis=0), cp.means["U.mean"][rows, cols], rtol=0, atol=1e-10)
    # no U mean: no U_cells
    other = MemoryChain()
    run_chain(small_model, other, plan, ("f_h2", "U_cells"), ("eta_hat",), seed=3, chain=1)
    assert "U_cells" not in other.samples


def test_chain_file_without_u_cells_dataset_still_samples(small_model, tmp_path):
    from megalmm_cli.chain import recorded_samples
    from megalmm_cli.posterior import param_shape

    names = recorded_samples(("f_h2",), ("U",))
    chain = ChainFile(tmp_path / "c.h5")
    plan = Plan(5, 10, 2, 0, 5)
    chain.create({"config_hash": "x"}, {"f_h2": param_shape(small_model, "f_h2")}, 5)
    run_chain(small_model, chain, plan, names, ("U",), seed=3, chain=1)  # an older chain file
    assert chain.read_samples("f_h2").shape == (5, small_model.k)
    with pytest.raises(KeyError):
        chain.read_samples("U_cells")
    full = ChainFile(tmp_path / "d.h5")
    full.create({"config_hash": "x"}, {name: param_shape(small_model, name) for name in names}, 5)
    run_chain(small_model, full, plan, names, ("U",), seed=3, chain=1)
    assert full.read_samples("U_cells").shape == (5, param_shape(small_model, "U_cells")[0])


def test_sample_refuses_when_the_disk_cannot_hold_the_chain(sim_dir, tmp_path, monkeypatch):
    """The expected size is printed first; with too little free disk, exit 2 with the figure
    and nothing created."""
    import shutil
    from collections import namedtuple

    from click.testing import CliRunner

    from megalmm_cli.cli import main

    cfg = str(write_config(tmp_path, "disk", sim_dir))
    assert CliRunner().invoke(main, ["prepare", cfg]).exit_code == 0
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 50_000, 50_000))
    result = CliRunner().invoke(main, ["sample", cfg])
    assert result.exit_code == 2, result.output
    line = result.stderr.strip().splitlines()[-1]
    assert "the chain file needs" in line and "has 48.83 KiB free" in line and "mcmc.thin" in line
    assert not (tmp_path / "disk" / "chains" / "chain_1.h5").exists()
    monkeypatch.undo()
    done = CliRunner().invoke(main, ["sample", cfg])
    assert done.exit_code == 0 and "chain file" in done.output and "as float32" in done.output


def test_checkpoint_size_estimate_is_exact(small_model):
    """chain_file_bytes (printed before sampling, checked against the free disk) counts the
    checkpoint's arrays exactly as to_checkpoint makes them."""
    from megalmm_cli.chain import checkpoint_bytes
    from megalmm_cli.chainformat import flatten_checkpoint

    store = MemoryChain()
    run_chain(small_model, store, Plan(5, 10, 2, 0, 15), ("f_h2",), MEANS, seed=1, chain=1)
    parts = flatten_checkpoint(store.load())
    assert sum(a.nbytes for a in parts.values()) == checkpoint_bytes(small_model, MEANS)


def test_float32_draw_products_change_only_the_means(small_model):
    """draw_dtype (posterior.dtype) sets the precision of a stored draw's products (Q u_R*,
    the factor parts of U and eta_hat): the chain, its draws and its random streams are the
    same as in float64, and the running means agree to float32 precision (a product left in
    another basis or a dropped term would be off by far more)."""
    exact, rounded = MemoryChain(), MemoryChain()
    run_chain(small_model, exact, PLAN, SAMPLES, MEANS, seed=7, chain=1)
    run_chain(small_model, rounded, PLAN, SAMPLES, MEANS, seed=7, chain=1, draw_dtype="float32")
    a, b = exact.load(), rounded.load()
    assert a.rng_states == b.rng_states
    for name, value in a.arrays.items():
        for x, y in zip(value, b.arrays[name]) if isinstance(value, list) else [(value, b.arrays[name])]:
            np.testing.assert_array_equal(x, y, err_msg=name)
    for name in SAMPLES:
        if name != "U_R":
            np.testing.assert_array_equal(exact.samples[name], rounded.samples[name], err_msg=name)
    np.testing.assert_allclose(rounded.samples["U_R"], exact.samples["U_R"], rtol=1e-4, atol=1e-5)
    for name, value in a.means.items():
        if name.endswith(".count"):
            assert value == b.means[name]
            continue
        scale = np.abs(value).max()
        np.testing.assert_allclose(b.means[name], value, rtol=0, atol=1e-5 * scale, err_msg=name)
        assert not np.array_equal(b.means[name], value)  # the products did run in float32
