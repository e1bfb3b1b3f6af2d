"""Kill-fuzz: `megalmm sample` and `megalmm prepare` killed with SIGKILL at any instant,
each kill followed by the plain command again, end with files equal, dataset by dataset and
byte for byte, to those of an uninterrupted run.

The runs are forked from a server process that has imported megalmm but never run a numba
kernel (multiprocessing's forkserver), so each of the many short runs starts in well under
a second. Kills come in two kinds: at random instants (spread over set-up, sampling and
checkpoints), and at named points inside a commit (MEGALMM_TEST_KILL_AT, see
megalmm_cli/faults.py), so that every step of a checkpoint is interrupted at least once.
"""

import signal
import time

import h5py
import numpy as np
import pytest
import yaml

from megalmm_cli.storage import ChainFile

from .conftest import finish, start

COMMIT_POINTS = ["commit:draws_written", "commit:state_half_written", "commit:state_written",
                 "commit:marker_written", "rewrite:before_rename", "create:before_rename"]
CACHE_POINTS = ["cache:slice_written", "cache:flag_written", "cache:created", "cache:copied",
                "prepare:before_rename"]


def datasets(path) -> dict:
    """Every dataset of an HDF5 file as raw bytes (the bytes of its values as stored)."""
    out = {}

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            value = obj[()]
            if obj.dtype.kind == "O":  # variable-length strings: their text
                out[name] = repr(np.asarray(obj.asstr()[()]).tolist()).encode()
            else:
                out[name] = np.asarray(value).tobytes()

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return out


def assert_same_datasets(a, b, ignore=()):
    da, db = datasets(a), datasets(b)
    assert sorted(da) == sorted(db)
    differ = [name for name in da if da[name] != db[name] and not any(name.endswith(i) for i in ignore)]
    assert not differ, f"datasets differ: {differ}"


def write_config(directory, name, sim_dir, mcmc, model=None, max_groups="auto"):
    cfg = yaml.safe_load((sim_dir / "config.yaml").read_text())
    cfg["missing_data"] = {"max_groups": max_groups}
    cfg["run"] = {"name": name, "output_dir": str(directory / name), "seed": 5}
    cfg["mcmc"] = mcmc
    cfg["model"].update(model or {})
    path = sim_dir / f"{directory.name}_{name}.yaml"  # beside the data its paths name
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def sim_dir(tmp_path_factory):
    from megalmm_cli.simulate import simulate_data, write_simulation

    out = tmp_path_factory.mktemp("crash_sim")
    write_simulation(simulate_data(60, 10, 3, missing=0.2, seed=21, n_markers=200, n_new=4), out)
    return out


MCMC = {"burn_in": 20, "reorder_every": 10, "samples": 780, "thin": 2, "checkpoint_every": 5,
        "chains": 1}


def time_to_first_checkpoint(ctx, config, chain_file) -> float:
    """Seconds from start to the first checkpoint of a fresh chain (set-up and the first
    iterations): the span in which the random kills are spread."""
    began = time.perf_counter()
    proc = start(ctx, ["sample", str(config)])
    chain = ChainFile(chain_file)
    while not (chain.exists() and chain.progress().iteration > 0) and proc.exitcode is None:
        time.sleep(0.005)
    span = time.perf_counter() - began
    proc.join()
    assert proc.exitcode == 0
    return span


def test_sample_survives_sigkill_at_any_instant(forkserver, sim_dir, tmp_path):
    whole = write_config(tmp_path, "whole", sim_dir, MCMC, {"factors": 3}, max_groups=2)
    killed = write_config(tmp_path, "killed", sim_dir, MCMC, {"factors": 3}, max_groups=2)
    assert finish(forkserver, ["prepare", str(whole)]) == 0
    assert finish(forkserver, ["prepare", str(killed)]) == 0
    reference = tmp_path / "whole" / "chains" / "chain_1.h5"
    span = time_to_first_checkpoint(forkserver, whole, reference)
    chain = tmp_path / "killed" / "chains" / "chain_1.h5"

    rng = np.random.default_rng(2024)
    # the file's creation and first rewrite happen once, so they come first; then kills in
    # every step of a checkpoint, after a random number of iterations, and at random times.
    # Every run is also killed after 30 iterations at the latest (25 for the timed ones), so
    # that no run that misses its point, or runs fast, finishes the chain.
    first = ["create:before_rename,sample:iteration:30", "rewrite:before_rename,sample:iteration:30"]
    hooked = [f"{p}:{n},sample:iteration:30" for n in (1, 2, 3) for p in COMMIT_POINTS[:4]]
    hooked += [f"append:draw_written:{n},sample:iteration:30" for n in (2, 7)]
    hooked += [f"sample:iteration:{n}" for n in rng.integers(1, 21, size=10)]
    timed = list(rng.uniform(0.0, span, size=12))
    rest = [("hook", h) for h in hooked] + [("time", t) for t in timed]
    schedule = [("hook", h) for h in first] + [rest[i] for i in rng.permutation(len(rest))]
    kills = {"in a commit": 0, "after an iteration": 0, "at a random time": 0}
    for kind, what in schedule:
        if kind == "hook":
            code = finish(forkserver, ["sample", str(killed)], {"MEGALMM_TEST_KILL_AT": what})
            assert code == -signal.SIGKILL, (what, code)
            kills["after an iteration" if what.startswith(("sample:", "append:")) else "in a commit"] += 1
        else:
            proc = start(forkserver, ["sample", str(killed)], {"MEGALMM_TEST_KILL_AT": "sample:iteration:25"})
            proc.join(what)
            proc.kill()  # no error if its own hook killed it in the meantime
            proc.join()
            assert proc.exitcode == -signal.SIGKILL
            kills["at a random time"] += 1
    assert kills["in a commit"] >= 14 and sum(kills.values()) >= 30, kills
    assert ChainFile(chain).progress().iteration < 800   # the last run still has work to do
    assert finish(forkserver, ["sample", str(killed)]) == 0
    # every dataset is equal byte for byte; the buffer headers also hold the wall-clock
    # sampling times and the number of `sample` runs (elements 4, 6, 7 and the header's own
    # checksum, 9), which no two histories share, and nothing else that differs
    assert_same_datasets(reference, chain, ignore=("/header",))
    with h5py.File(reference) as a, h5py.File(chain) as b:
        for buffer in ("state_a", "state_b"):
            ha, hb = a[buffer]["header"][()], b[buffer]["header"][()]
            assert np.array_equal(np.delete(ha, [4, 6, 7, 9]), np.delete(hb, [4, 6, 7, 9])), buffer
    assert sorted(p.name for p in chain.parent.iterdir()) == ["chain_1.h5"]


@pytest.fixture(scope="module")
def two_effect_dir(tmp_path_factory):
    from megalmm_cli.simulate import simulate_data, write_simulation

    out = tmp_path_factory.mktemp("crash_two")
    write_simulation(simulate_data(50, 8, 2, missing=0.3, seed=22, n_markers=200, n_new=3,
                                   n_blocks=5), out)
    return out


def test_prepare_with_two_effects_survives_sigkill_at_any_instant(forkserver, two_effect_dir,
                                                                  tmp_path):
    """The cache is first built for one missing-data group (A), then the config changes to
    several groups (B) and `prepare` is killed over and over while it carries the factors'
    slices over to a new cache file and builds the others; the end result equals a prepare
    of B from scratch, byte for byte."""
    model = {"h2_divisions": 8, "factors": 2}
    fresh = write_config(tmp_path, "fresh", two_effect_dir, MCMC, model)
    killed_b = write_config(tmp_path, "killed", two_effect_dir, MCMC, model)
    raw = yaml.safe_load(killed_b.read_text())
    assert raw["missing_data"]["max_groups"] == "auto"
    raw["missing_data"] = {"max_groups": 1}
    killed_a = killed_b.with_name(killed_b.stem + "_a.yaml")
    killed_a.write_text(yaml.safe_dump(raw))

    assert finish(forkserver, ["prepare", str(fresh)]) == 0
    assert finish(forkserver, ["prepare", str(killed_a)]) == 0
    out = tmp_path / "killed"
    rng = np.random.default_rng(7)
    kills = 0
    hooked = ["cache:created", "cache:copied"]
    hooked += [f"cache:{p}:{n}" for n in (1, 2, 3, 5) for p in ("slice_written", "flag_written")]
    for point in hooked:  # each run finishes n - 1 more slices before it is killed
        code = finish(forkserver, ["prepare", str(killed_b)], {"MEGALMM_TEST_KILL_AT": point})
        assert code == -signal.SIGKILL, (point, code)
        kills += 1
    with h5py.File(out / "grid_cache.h5") as h5:
        assert not all(h5[key]["done"][()].all() for key in h5)  # still work left
    code = finish(forkserver, ["prepare", str(killed_b)], {"MEGALMM_TEST_KILL_AT": "prepare:before_rename"})
    assert code == -signal.SIGKILL
    kills += 1
    began = time.perf_counter()  # the cache is whole now: a rebuild of prepared.h5 alone
    assert finish(forkserver, ["prepare", str(killed_b), "--force"]) == 0
    rebuild = time.perf_counter() - began
    while kills < 32:  # random instants of such rebuilds
        proc = start(forkserver, ["prepare", str(killed_b), "--force"])
        proc.join(rng.uniform(0.0, 0.9 * rebuild))
        proc.kill()  # no error if it has just finished
        proc.join()
        assert proc.exitcode in (0, -signal.SIGKILL)
        kills += proc.exitcode == -signal.SIGKILL
    assert finish(forkserver, ["prepare", str(killed_b)]) == 0
    for name in ("prepared.h5", "grid_cache.h5"):
        assert_same_datasets(tmp_path / "fresh" / name, out / name)
    with h5py.File(out / "prepared.h5") as a, h5py.File(out / "grid_cache.h5") as b:
        assert a.attrs["cache_stamp"] == b.attrs["layout_hash"]
    assert sorted(p.name for p in out.iterdir()) == ["grid_cache.h5", "prepared.h5"]
