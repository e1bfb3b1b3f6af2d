import multiprocessing
import os
from contextlib import contextmanager

import numpy as np
import pytest

from megalmm_cli.model import Priors, build_model
from megalmm_cli.simulate import simulate_data

DEFAULT_PRIORS = Priors(
    tot_eta_shape=4.0, tot_eta_rate=2.5, tot_f_shape=19.0, tot_f_rate=18.0, lambda_type="ARD",
    lambda_df=3.0, delta_1=(2.0, 1.0), delta_2=(3.0, 1.0), delta_iterations=20, lambda_prop_0=0.1,
    b2_type="horseshoe", b2_prop_0=0.1, b2_ridge_prec=1.0,
)


def model_from_simulation(sim, k, max_groups="auto", priors=DEFAULT_PRIORS, divisions=10):
    values = np.where(sim.observed, sim.Y, np.nan)
    return build_model(sim.ids, sim.traits, values, sim.kinship, sim.X1, ["Intercept", "pop", "x"],
                       np.zeros((sim.n, 0)), k, divisions, priors, max_groups=max_groups)


@pytest.fixture(scope="session")
def small_model():
    """60 individuals (5 without phenotypes) x 12 traits, 20% missing, imputed cells."""
    sim = simulate_data(60, 12, 3, missing=0.2, seed=5, n_markers=300, n_new=5)
    return model_from_simulation(sim, k=4, max_groups=1)


def one_error_line(result, *words):
    """A user's mistake: exit 2, one line on stderr naming it (with `words`), no traceback."""
    assert result.exit_code == 2, (result.output, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("megalmm: error: "), result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert "Traceback" not in result.output


def run_small_pipeline(directory, commands, n_new=3, chains=2):
    """Simulate 40 individuals x 6 traits into `directory`, shorten the chains, and run the
    given CLI commands on its config. Returns (config path, {command: click Result})."""
    import yaml
    from click.testing import CliRunner

    from megalmm_cli.cli import main

    runner = CliRunner()
    made = runner.invoke(main, ["simulate", str(directory), "--n", "40", "--t", "6", "--k", "2",
                                "--markers", "200", "--n-new", str(n_new)])
    assert made.exit_code == 0, made.output
    config = directory / "config.yaml"
    raw = yaml.safe_load(config.read_text())
    raw["mcmc"] = {"burn_in": 10, "samples": 20, "thin": 2, "checkpoint_every": 10,
                   "reorder_every": 5, "chains": chains}
    config.write_text(yaml.safe_dump(raw))
    results = {}
    for command in commands:
        results[command] = runner.invoke(main, [command, str(config)])
        assert results[command].exit_code == 0, (command, results[command].output,
                                                 results[command].stderr)
    return config, results


@contextmanager
def numba_threads(n):
    """Run numba kernels on n threads (restored afterwards). Tiny kernels called many times
    run faster on one: a parallel region costs thread wake-ups; results do not depend on it."""
    import numba

    old = numba.get_num_threads()
    numba.set_num_threads(n)
    try:
        yield
    finally:
        numba.set_num_threads(old)


def _cli(args, env):
    """Child process body: the megalmm command line with `args` (exit code as its own)."""
    os.environ.update(env)
    from megalmm_cli.cli import main

    main(args, prog_name="megalmm")


@pytest.fixture(scope="session")
def forkserver():
    """Runs of the megalmm command line forked from a server process that has imported
    megalmm but never run a numba kernel (so forking is safe): each starts in a fraction of
    a second."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["megalmm_cli.cli", "megalmm_cli.chain", "megalmm_cli.prepare",
                                "megalmm_cli.predict", "megalmm_cli.summarize"])
    return ctx


def start(ctx, args, env=None):
    proc = ctx.Process(target=_cli, args=(args, dict(env or {})))
    proc.start()
    return proc


def finish(ctx, args, env=None, timeout=300):
    proc = start(ctx, args, env)
    proc.join(timeout)
    return proc.exitcode
