"""The SLURM scripts in configs/slurm/, run with bash and fake megalmm/sbatch/scontrol."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .test_chain import sim_dir, write_config  # noqa: F401  (sim_dir is a fixture)

SLURM = Path(__file__).resolve().parent.parent / "configs" / "slurm"
SCRIPTS = sorted(SLURM.glob("*.sbatch")) + [SLURM / "submit.sh"]
SAMPLE = SLURM / "sample_array.sbatch"

# Records its arguments and thread variables; exits with $FAKE_<COMMAND>_RC (default 0).
FAKE_MEGALMM = """#!/bin/bash
echo "megalmm $* NUMBA=${NUMBA_NUM_THREADS:-} OPENBLAS=${OPENBLAS_NUM_THREADS:-} \
MKL=${MKL_NUM_THREADS:-} OMP=${OMP_NUM_THREADS:-}" >> "$FAKE_LOG"
case $1 in
prepare) exit "${FAKE_PREPARE_RC:-0}" ;;
sample)
    if [ -n "${FAKE_WAIT_FOR_TERM:-}" ]; then  # like the sampler: checkpoint on TERM, exit 143
        trap 'echo "megalmm got TERM" >> "$FAKE_LOG"; exit 143' TERM
        touch "$FAKE_WAIT_FOR_TERM"
        for _ in $(seq 600); do sleep 0.1; done
        exit 99
    fi
    exit "${FAKE_SAMPLE_RC:-0}" ;;
*) exit "${FAKE_OTHER_RC:-0}" ;;
esac
"""
FAKE_SCONTROL = """#!/bin/bash
echo "scontrol $*" >> "$FAKE_LOG"
exit "${FAKE_SCONTROL_RC:-0}"
"""
# `sbatch --parsable` prints "<id>" or "<id>;<cluster>"; ids 101, 102, ... from a counter.
FAKE_SBATCH = """#!/bin/bash
echo "sbatch $*" >> "$FAKE_LOG"
n=$(cat "$FAKE_COUNTER" 2>/dev/null || echo 100)
n=$((n + 1))
echo "$n" > "$FAKE_COUNTER"
if [ "$n" = 102 ] && [ -n "${FAKE_CLUSTER:-}" ]; then echo "$n;$FAKE_CLUSTER"; else echo "$n"; fi
"""


@pytest.fixture
def fakes(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("megalmm", FAKE_MEGALMM), ("scontrol", FAKE_SCONTROL), ("sbatch", FAKE_SBATCH)):
        path = bin_dir / name
        path.write_text(text)
        path.chmod(0o755)
    log = tmp_path / "calls.log"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "MEGALMM", "NUMBA_", "OPENBLAS_", "MKL_", "OMP_"))}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", FAKE_LOG=str(log),
               FAKE_COUNTER=str(tmp_path / "counter"))
    return env, log


def calls(log):
    return log.read_text().splitlines() if log.exists() else []


def run_sample(env, *args, **extra):
    env = dict(env, **{k: str(v) for k, v in extra.items()})
    return subprocess.run(["bash", str(SAMPLE), *args], env=env, capture_output=True, text=True,
                          timeout=60)


ARRAY = dict(SLURM_ARRAY_TASK_ID=3, SLURM_ARRAY_JOB_ID=777, SLURM_JOB_ID=780, SLURM_CPUS_PER_TASK=4)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_syntax(script):
    check = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert script.read_text().startswith("#!/bin/bash\n")


def test_sample_array_header():
    text = SAMPLE.read_text()
    assert "#SBATCH --signal=B:TERM@120" in text and "#SBATCH --requeue" in text


def test_sample_runs_prepare_then_the_task_chain_with_threads(fakes):
    env, log = fakes
    done = run_sample(env, "run.yaml", FAKE_SAMPLE_RC=0, **ARRAY)
    assert done.returncode == 0, done.stderr
    assert calls(log) == [
        "megalmm prepare run.yaml NUMBA=4 OPENBLAS=1 MKL=1 OMP=1",
        "megalmm sample run.yaml --chain 3 NUMBA=4 OPENBLAS=1 MKL=1 OMP=1",
    ]  # no scontrol requeue on success


def test_config_from_environment_and_megalmm_variable(fakes, tmp_path):
    env, log = fakes
    other = tmp_path / "my-megalmm"
    other.write_text('#!/bin/bash\necho "other $*" >> "$FAKE_LOG"\n')
    other.chmod(0o755)
    done = run_sample(env, CONFIG="env.yaml", MEGALMM=other, SLURM_ARRAY_TASK_ID=2)
    assert done.returncode == 0, done.stderr
    assert calls(log) == ["other prepare env.yaml", "other sample env.yaml --chain 2"]


def test_site_omp_threads_are_overridden_and_blas_threads_settable(fakes):
    env, log = fakes
    run_sample(env, "run.yaml", OMP_NUM_THREADS=16, **ARRAY)
    assert calls(log)[-1].endswith("NUMBA=4 OPENBLAS=1 MKL=1 OMP=1")
    run_sample(env, "run.yaml", MEGALMM_BLAS_THREADS=2, **ARRAY)
    assert calls(log)[-1].endswith("NUMBA=4 OPENBLAS=2 MKL=2 OMP=2")


def test_numba_threads_default_to_one(fakes):
    env, log = fakes
    assert run_sample(env, "run.yaml", SLURM_ARRAY_TASK_ID=1).returncode == 0
    assert calls(log)[-1] == "megalmm sample run.yaml --chain 1 NUMBA=1 OPENBLAS=1 MKL=1 OMP=1"


def test_exit_143_requeues_the_array_task(fakes):
    env, log = fakes
    done = run_sample(env, "run.yaml", FAKE_SAMPLE_RC=143, **ARRAY)
    assert done.returncode == 0, done.stderr
    assert calls(log)[-1] == "scontrol requeue 777_3"
    assert "re-queueing 777_3" in done.stdout


def test_failed_requeue_is_reported(fakes):
    env, log = fakes
    done = run_sample(env, "run.yaml", FAKE_SAMPLE_RC=143, FAKE_SCONTROL_RC=1, **ARRAY)
    assert done.returncode == 143 and "scontrol requeue 777_3 failed" in done.stderr


def test_requeue_limit(fakes):
    env, log = fakes
    done = run_sample(env, "run.yaml", FAKE_SAMPLE_RC=143, SLURM_RESTART_COUNT=5,
                      MEGALMM_MAX_REQUEUES=5, **ARRAY)
    assert done.returncode == 143 and not any(c.startswith("scontrol") for c in calls(log))


@pytest.mark.parametrize("code", [1, 2, 130])
def test_other_failures_propagate_without_requeue(fakes, code):
    env, log = fakes
    done = run_sample(env, "run.yaml", FAKE_SAMPLE_RC=code, **ARRAY)
    assert done.returncode == code
    assert not any(c.startswith("scontrol") for c in calls(log))


def test_failed_prepare_stops_before_sampling(fakes):
    env, log = fakes
    done = run_sample(env, "run.yaml", FAKE_PREPARE_RC=2, **ARRAY)
    assert done.returncode == 2
    assert [c.split()[1] for c in calls(log)] == ["prepare"]


def test_skip_prepare(fakes):
    env, log = fakes
    assert run_sample(env, "run.yaml", MEGALMM_SKIP_PREPARE=1, **ARRAY).returncode == 0
    assert [c.split()[1] for c in calls(log)] == ["sample"]


def test_missing_config_or_task_id(fakes):
    env, log = fakes
    assert run_sample(env, **ARRAY).returncode == 2
    assert run_sample(env, "run.yaml").returncode == 2
    assert calls(log) == []


def test_term_to_batch_shell_is_forwarded_and_requeues(fakes, tmp_path):
    """SLURM's --signal=B:TERM reaches only the batch shell: it must pass it on to megalmm."""
    env, log = fakes
    ready = tmp_path / "sampling"
    env = dict(env, FAKE_WAIT_FOR_TERM=str(ready), **{k: str(v) for k, v in ARRAY.items()})
    proc = subprocess.Popen(["bash", str(SAMPLE), "run.yaml"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not ready.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert ready.exists()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert calls(log)[-2:] == ["megalmm got TERM", "scontrol requeue 777_3"]


def run_submit(env, *args, cwd):
    return subprocess.run(["bash", str(SLURM / "submit.sh"), *args], env=env, capture_output=True,
                          text=True, cwd=cwd, timeout=60)


def test_submit_chains_three_jobs(fakes, tmp_path):
    env, log = fakes
    (tmp_path / "run.yaml").write_text("data: {}\n")
    done = run_submit(dict(env, FAKE_CLUSTER="c1"), "run.yaml", "4", "--account=proj", "-p", "long",
                      cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    config = str(tmp_path / "run.yaml")
    assert calls(log) == [
        f"sbatch --parsable --account=proj -p long {SLURM}/prepare.sbatch {config}",
        f"sbatch --parsable --account=proj -p long --array=1-4 --dependency=afterok:101 "
        f"{SLURM}/sample_array.sbatch {config}",
        f"sbatch --parsable --account=proj -p long --dependency=afterok:102 {SLURM}/post.sbatch {config}",
    ]
    assert "prepare: job 101" in done.stdout and "array job 102" in done.stdout
    assert "job 103" in done.stdout


@pytest.mark.parametrize("args", [[], ["run.yaml"], ["run.yaml", "0"], ["run.yaml", "x"],
                                  ["missing.yaml", "2"]])
def test_submit_refuses_bad_arguments(fakes, tmp_path, args):
    env, log = fakes
    (tmp_path / "run.yaml").write_text("data: {}\n")
    done = run_submit(env, *args, cwd=tmp_path)
    assert done.returncode == 2 and calls(log) == []


def test_submit_stops_when_sbatch_fails(fakes, tmp_path):
    env, log = fakes
    bad = Path(env["PATH"].split(os.pathsep)[0]) / "sbatch"
    bad.write_text('#!/bin/bash\necho "sbatch $*" >> "$FAKE_LOG"\necho "sbatch: error: x" >&2\nexit 1\n')
    (tmp_path / "run.yaml").write_text("data: {}\n")
    done = run_submit(env, "run.yaml", "2", cwd=tmp_path)
    assert done.returncode != 0 and len(calls(log)) == 1


def test_prepare_and_post_scripts(fakes):
    env, log = fakes
    env = dict(env, SLURM_CPUS_PER_TASK="8")
    prep = subprocess.run(["bash", str(SLURM / "prepare.sbatch"), "run.yaml"], capture_output=True,
                          text=True, env=dict(env, MEGALMM_MAX_MEMORY="60G"))
    assert prep.returncode == 0, prep.stderr
    post = subprocess.run(["bash", str(SLURM / "post.sbatch")], capture_output=True, text=True,
                          env=dict(env, CONFIG="run.yaml"))
    assert post.returncode == 0, post.stderr
    assert [c.split(" NUMBA")[0] for c in calls(log)] == [
        "megalmm prepare run.yaml --max-memory 60G", "megalmm predict run.yaml",
        "megalmm summarize run.yaml", "megalmm status run.yaml"]
    assert all("NUMBA=8 OPENBLAS=1" in c for c in calls(log))
    failing = subprocess.run(["bash", str(SLURM / "post.sbatch"), "run.yaml"], capture_output=True,
                             text=True, env=dict(env, FAKE_OTHER_RC="2"))
    assert failing.returncode == 2


def test_sample_script_with_real_megalmm(sim_dir, tmp_path, fakes):  # noqa: F811
    env, log = fakes
    cfg = write_config(tmp_path, "slurm", sim_dir)
    megalmm = Path(sys.executable).parent / "megalmm"
    if not megalmm.exists():
        pytest.skip("no megalmm executable next to this python")
    done = run_sample(env, str(cfg), MEGALMM=megalmm, SLURM_ARRAY_TASK_ID=1)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "slurm" / "chains" / "chain_1.h5").exists()
    assert (tmp_path / "slurm" / "prepared.h5").exists()
    assert "chain 1: starting at iteration 0" in done.stdout
    assert not any(c.startswith("scontrol") for c in calls(log))


def test_time_limit_signal_with_real_megalmm_checkpoints_and_requeues(sim_dir, tmp_path, fakes):  # noqa: F811
    """TERM to the batch shell -> megalmm checkpoints, exits 143 -> scontrol requeue; then resume."""
    import yaml

    from megalmm_cli.storage import ChainFile

    env, log = fakes
    cfg = write_config(tmp_path, "slurm_term", sim_dir)
    text = yaml.safe_load(cfg.read_text())
    text["mcmc"]["samples"] = 100000  # far more than it can run before the signal
    cfg.write_text(yaml.safe_dump(text))
    megalmm = Path(sys.executable).parent / "megalmm"
    if not megalmm.exists():
        pytest.skip("no megalmm executable next to this python")
    env = dict(env, MEGALMM=str(megalmm), SLURM_ARRAY_TASK_ID="1", SLURM_ARRAY_JOB_ID="55",
               SLURM_CPUS_PER_TASK="2")
    out_file = tmp_path / "job.out"
    chain = ChainFile(tmp_path / "slurm_term" / "chains" / "chain_1.h5")
    with open(out_file, "w") as out:
        proc = subprocess.Popen(["bash", str(SAMPLE), str(cfg)], env=env, stdout=out,
                                stderr=subprocess.STDOUT)
        while not (chain.exists() and chain.progress().iteration > 0):  # a first checkpoint
            assert proc.poll() is None, out_file.read_text()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0, out_file.read_text()
    assert "checkpoint written" in out_file.read_text()
    assert calls(log) == ["scontrol requeue 55_1"]
    stopped_at = chain.progress().iteration
    assert stopped_at > 0
    assert not Path(chain.path + ".lock").exists()
    # the re-queued task resumes from the checkpoint
    proc = subprocess.Popen(["bash", str(SAMPLE), str(cfg)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:  # until megalmm says where it resumes
        lines.append(line)
        if "resuming at iteration" in line:
            break
    proc.send_signal(signal.SIGTERM)
    out = "".join(lines) + proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, out
    assert f"resuming at iteration {stopped_at}" in out


def test_term_during_prepare_also_requeues(fakes):
    env, log = fakes
    done = run_sample(env, "run.yaml", FAKE_PREPARE_RC=143, **ARRAY)
    assert done.returncode == 0, done.stderr
    assert [c.split()[:2] for c in calls(log)] == [["megalmm", "prepare"], ["scontrol", "requeue"]]
