"""The `megalmm` command line: thin commands that parse, check, call the library, report."""

import errno
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

import click

from . import __version__
from .errors import UserError
from .signals import StopSignal

PIPELINE = ["simulate", "cv-split", "prepare", "sample", "predict", "summarize", "status", "repair"]


class PipelineOrderGroup(click.Group):
    """Lists commands in pipeline order in --help."""

    def list_commands(self, ctx):
        return sorted(self.commands, key=lambda c: PIPELINE.index(c) if c in PIPELINE else 99)


verbose_option = click.option("-v", "--verbose", is_flag=True, help="Show tracebacks and details.")
progress_option = click.option(
    "--progress/--no-progress", default=None,
    help="Progress bars on stderr (default: on when stderr is a terminal).")


def _progress_enabled(flag) -> bool:
    return sys.stderr.isatty() if flag is None else flag


def _echo(message: str) -> None:
    click.echo(message)


def _warn(message: str) -> None:
    click.echo(f"megalmm: warning: {message}", err=True)


def _run(action, verbose: bool):
    """Run a command body: user errors -> one line + exit 2, others -> exit 1."""
    try:
        return action()
    except UserError as exc:
        click.echo(f"megalmm: error: {exc}", err=True)
        sys.exit(2)
    except StopSignal as exc:
        click.echo(f"megalmm: stopped by signal {exc.signum} before sampling started; nothing "
                   "to save: re-run the same command to continue", err=True)
        sys.exit(128 + exc.signum)
    except KeyboardInterrupt:
        click.echo("megalmm: interrupted", err=True)
        sys.exit(130)
    except OSError as exc:
        if exc.errno not in _USER_FIXABLE_ERRNOS:
            raise_internal(exc, verbose)
        where = exc.filename or "the output directory"
        click.echo(f"megalmm: error: cannot write {where}: {exc.strerror}; choose a writable "
                   "run.output_dir or free disk space, then re-run", err=True)
        sys.exit(2)
    except Exception as exc:  # an internal error: a bug, or the machine (memory)
        raise_internal(exc, verbose)


_USER_FIXABLE_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT,
                        errno.ENOTDIR, errno.EISDIR}


def raise_internal(exc: Exception, verbose: bool):
    if verbose:
        traceback.print_exc()
    click.echo(f"megalmm: internal error: {type(exc).__name__}: {exc} "
               "(re-run with -v for the traceback)", err=True)
    sys.exit(1)


def _load(config_path: str):
    from .config import load_config

    return load_config(config_path)


@click.group(cls=PipelineOrderGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="megalmm")
def main():
    """Fit mega-scale multivariate linear mixed models (MegaLMM) for genomic prediction.

    A YAML config drives the pipeline: `prepare` checks the data and builds the design and
    rotations, `sample` runs the Gibbs sampler (resumable), `predict` writes genetic values,
    `summarize` writes G, R and h2. `simulate` writes a data set and config to try it on.

    \b
    Example:
      megalmm simulate demo --n 300 --t 200 --k 8
      megalmm prepare demo/config.yaml
      megalmm sample demo/config.yaml
      megalmm predict demo/config.yaml
      megalmm summarize demo/config.yaml
    """


@main.command()
@click.argument("outdir", type=click.Path(file_okay=False))
@click.option("--n", "n", default=300, show_default=True, help="Individuals.")
@click.option("--t", "t", default=200, show_default=True, help="Traits.")
@click.option("--k", "k", default=8, show_default=True, help="True factors.")
@click.option("--missing", default=0.2, show_default=True, help="Fraction of cells missing at random.")
@click.option("--n-new", default=0, show_default=True,
              help="Individuals with genotypes but no phenotypes (to predict).")
@click.option("--markers", "n_markers", default=2000, show_default=True, help="Simulated markers.")
@click.option("--factors", default=None, type=int, help="Factors in the written config [default: max(2k, k + 5), at most t].")
@click.option("--blocks", default=0, show_default=True,
              help="Levels of a second random effect (a Block column); 0 = one random effect.")
@click.option("--loading-decay", default=0.8, show_default=True,
              help="Factor l's loadings have sd decay^l (near 1: factors of similar size).")
@click.option("--seed", default=1, show_default=True, help="Random seed.")
@verbose_option
def simulate(outdir, n, t, k, missing, n_new, n_markers, factors, blocks, loading_decay, seed,
             verbose):
    """Simulate a data set from the MegaLMM model, with its truth and a ready config.

    Writes phenotypes.csv (wide), covariates.csv, genotypes.csv (0/1/2), kinship.csv,
    heldout_cells.csv (the true values of the missing cells), truth.h5 and config.yaml.
    With --blocks L a second random effect is simulated: a Block column with L independent
    levels, and the config lists both effects (model.random: [id, Block]).

    \b
    Examples:
      megalmm simulate example_data --n 300 --t 200 --k 8 --missing 0.2 --seed 1
      megalmm simulate two_effects --n 400 --t 100 --k 5 --blocks 40
    """
    def action():
        from .simulate import simulate_data, write_simulation

        if not (0 <= missing < 1):
            raise UserError(f"--missing: must be in [0, 1), got {missing}")
        if min(n, t, k) < 1 or n_new < 0 or n_new >= n:
            raise UserError("--n, --t, --k must be >= 1 and 0 <= --n-new < --n")
        if blocks < 0:
            raise UserError(f"--blocks: must be >= 0, got {blocks}")
        if not 0 < loading_decay <= 1:
            raise UserError(f"--loading-decay: must be in (0, 1], got {loading_decay}")
        sim = simulate_data(n, t, k, missing=missing, seed=seed, n_markers=n_markers, n_new=n_new,
                            n_blocks=blocks, loading_decay=loading_decay)
        paths = write_simulation(sim, Path(outdir), factors=factors)
        _echo(f"wrote a simulated data set ({n} individuals, {t} traits, {k} factors, "
              f"{missing:.0%} missing) to {outdir}/; config: {paths['config']}")

    _run(action, verbose)


@main.command("cv-split")
@click.argument("config", type=click.Path())
@click.option("--folds", "n_folds", default=5, show_default=True, help="Number of folds.")
@click.option("--group", "group_column", default=None,
              help="Covariate whose best-represented level is split in each trait (e.g. Population); "
                   "the other levels' cells always stay in training [default: split every cell].")
@click.option("--outdir", required=True, type=click.Path(file_okay=False),
              help="Where fold_1.csv ... fold_K.csv are written.")
@click.option("--seed", default=1, show_default=True, help="Seed of the random split.")
@verbose_option
def cv_split(config, n_folds, group_column, outdir, seed, verbose):
    """Write k-fold test-cell files (the G2F tutorial's scheme) for cross-validation.

    Per trait, the observed cells of the best-represented level of --group are split into
    folds; each fold_<k>.csv (columns id, trait) can be a config's data.test_cells file.

    \b
    Example:
      megalmm cv-split run.yaml --folds 5 --group Population --outdir folds
      # then, per fold, a config with  data: {test_cells: {file: folds/fold_1.csv}}
    """
    def action():
        from .cvsplit import cv_folds, write_fold_files
        from .data import load_covariates, load_phenotypes

        if n_folds < 2:
            raise UserError(f"--folds: must be >= 2, got {n_folds}")
        cfg = _load(config)
        extra = [group_column] if group_column else []
        pheno = load_phenotypes(cfg.data.phenotypes, extra_covariate_columns=extra)
        groups = None
        if group_column:
            covariates = pheno.covariates
            if group_column not in covariates.columns and cfg.data.covariates is not None:
                covariates = load_covariates(cfg.data.covariates)
            if group_column not in covariates.columns:
                raise UserError(f"--group: '{group_column}' is not a column of the phenotype or "
                                "covariate file; name an existing column")
            column = covariates[group_column].reindex(list(pheno.ids))
            if column.isna().any():
                first = column.index[column.isna()][0]
                raise UserError(f"--group: individual '{first}' has no value for '{group_column}'")
            groups = {i: str(v) for i, v in column.items()}
        table = cv_folds(pheno.ids, pheno.traits, pheno.values, groups, n_folds, seed)
        paths = write_fold_files(table, outdir)
        in_folds = int(table["fold"].notna().sum())
        _echo(f"wrote {len(paths)} fold files to {outdir}/ ({in_folds} of {len(table)} observed "
              "cells are test cells in some fold)")

    _run(action, verbose)


@main.command()
@click.argument("config", type=click.Path())
@click.option("--force", is_flag=True, help="Rebuild even if prepared.h5 is up to date.")
@click.option("--max-memory", default=None,
              help="Refuse when the estimate exceeds this (e.g. 16G, 500M) [default: 80% of available RAM].")
@progress_option
@verbose_option
def prepare(config, force, max_memory, progress, verbose):
    """Check the data and build prepared.h5 (design, missing-data groups, rotations).

    With several random effects (model.random) it also builds the Grid-LMM cache,
    grid_cache.h5, after printing its size (refused when over --max-memory or the free
    disk); an interrupted prepare resumes the cache where it stopped.
    Re-running with an unchanged config does nothing; --force rebuilds.

    \b
    Example:
      megalmm prepare configs/example.yaml
    """
    def action():
        from .prepare import run_prepare

        cfg = _load(config)
        limit = _parse_size(max_memory) if max_memory else None
        bar = _bar(progress, "prepare: groups", unit="group")
        try:
            run_prepare(cfg, force=force, max_memory=limit, progress=bar.update_to if bar is not None else None,
                        echo=_echo)
        finally:
            if bar is not None:
                bar.close()

    _run(action, verbose)


def _parse_size(text: str) -> int:
    units = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    value = text.strip().upper().rstrip("B")
    unit = value[-1] if value and value[-1] in units else ""
    try:
        number = float(value[: len(value) - len(unit)])
    except ValueError:
        raise UserError(f"--max-memory: '{text}' is not a size; use e.g. 16G or 500M") from None
    return int(number * units[unit])


def _bar(flag, desc, total=None, initial=0, unit="it"):
    if not _progress_enabled(flag):
        return None
    from tqdm import tqdm

    class Bar(tqdm):
        def update_to(self, done, total=None, desc=None):
            if desc is not None and desc != self.desc:
                self.set_description(desc, refresh=False)
                self.reset(total)
            if total is not None:
                self.total = total
            self.update(done - self.n)

    return Bar(desc=desc, total=total, initial=initial, unit=unit, file=sys.stderr, dynamic_ncols=True)


@contextmanager
def _stage_bar(flag, desc: str, unit: str):
    """A progress bar driven by callback(done, total, description); yields the callback, or
    None when bars are off."""
    bar = _bar(flag, desc, unit=unit)
    if bar is None:
        yield None
        return

    def stage(done, total, description):
        bar.total = total
        bar.set_description(description, refresh=False)
        bar.update(done - bar.n)

    try:
        yield stage
    finally:
        bar.close()


@main.command()
@click.argument("config", type=click.Path())
@click.option("--chain", type=int, default=None,
              help="Run only this chain, 1..mcmc.chains (e.g. $SLURM_ARRAY_TASK_ID) "
                   "[default: chains 1..mcmc.chains, one after another].")
@click.option("--iterations", type=int, default=None,
              help="Iterations after burn-in for the chain [default: the chain's recorded "
                   "target, or mcmc.samples if larger]; recorded in the chain file, so a plain "
                   "re-run continues towards it. A larger value extends a finished chain.")
@click.option("--cache", "cache_mode", type=click.Choice(["auto", "memory", "disk"]), default="auto",
              show_default=True,
              help="Several random effects: hold the Grid-LMM cache in memory, or read it from "
                   "grid_cache.h5 one slice at a time (auto: memory when it takes under half "
                   "the available RAM). Same results either way.")
@progress_option
@verbose_option
def sample(config, chain, iterations, cache_mode, progress, verbose):
    """Run the Gibbs sampler; re-running resumes from the last checkpoint.

    Draws go to <output_dir>/chains/chain_<N>.h5 every mcmc.checkpoint_every iterations,
    with the full state, so a run killed at any instant (even by SIGKILL) resumes exactly
    where its last checkpoint left it. SIGTERM or SIGINT (e.g. a SLURM time limit) write a
    checkpoint before exiting with 128 + the signal number. Before sampling starts, the
    expected size of the chain file is printed, and sampling is refused (exit 2) when the
    disk cannot hold it.

    \b
    Examples:
      megalmm sample configs/example.yaml
      megalmm sample run.yaml --chain $SLURM_ARRAY_TASK_ID
      megalmm sample run.yaml --chain 1 --iterations 4000     # extend chain 1
    """
    from .signals import StopRequested

    with StopRequested() as stop:  # first of all: a signal during set-up ends the command
        def action():
            from .faults import pause_point

            pause_point("sample:handlers_installed")
            from .prepare import is_up_to_date, run_prepare
            from .runinfo import check_chain_number

            cfg = _load(config)
            if iterations is not None and iterations < 1:
                raise UserError(f"--iterations: must be >= 1, got {iterations}")
            if chain is not None:
                check_chain_number(cfg, chain)
            if not is_up_to_date(cfg):
                _echo("prepared.h5 is missing or out of date: running prepare first")
                run_prepare(cfg, echo=_echo)
            chains = [chain] if chain is not None else list(range(1, cfg.mcmc.chains + 1))
            for number in chains:
                code = _sample_chain(cfg, number, iterations, progress, cache_mode, stop)
                if code:
                    sys.exit(code)

        _run(action, verbose)


def _sample_chain(cfg, number, iterations, progress, cache_mode, stop) -> int:
    from .lock import chain_lock
    from .runinfo import chain_path

    path = chain_path(cfg, number)
    path.parent.mkdir(parents=True, exist_ok=True)
    with chain_lock(path):  # taken before the chain file is created or resumed
        return _sample_locked_chain(cfg, number, iterations, path, progress, cache_mode, stop)


def _sample_locked_chain(cfg, number, iterations, path, progress, cache_mode, stop) -> int:
    import numpy as np

    from .chain import Plan, chain_file_bytes, recorded_samples, run_chain
    from .factor_count import adaptation_rule
    from .posterior import param_shape
    from .prepare import load_model
    from .rawh5 import remove_stale_temporaries
    from .runinfo import sampling_hash
    from .storage import ChainFile

    storage = ChainFile(path)
    remove_stale_temporaries(path)  # left by a writer killed while rewriting the file
    names = recorded_samples(cfg.posterior.samples, cfg.posterior.means)
    expected = sampling_hash(cfg)
    started = time.perf_counter()
    model = load_model(cfg, cache_in_memory={"auto": None, "memory": True, "disk": False}[cache_mode])
    if model.n_effects > 1:
        where = ("in memory" if isinstance(model.factor_cache.transforms, np.ndarray)
                 else "read from disk one slice at a time")
        _echo(f"chain {number}: {model.n_effects} random effects ({', '.join(model.effect_names)}); "
              f"Grid-LMM cache {where}")
    recorded = 0
    if storage.exists():
        attrs = storage.attrs()
        if attrs.get("config_hash") != expected:
            raise UserError(
                f"{path}: was sampled with a different config (data, model, priors, seed or "
                f"burn_in/thin/reorder_every changed); restore that config, or move {path} "
                "aside (mv) to sample this chain anew")
        if attrs.get("numpy_version") != np.__version__:
            click.echo(f"megalmm: warning: {path} was written with numpy {attrs.get('numpy_version')}, "
                       f"this is numpy {np.__version__}: the resumed chain is valid but may not "
                       "repeat an uninterrupted one bit for bit", err=True)
        recorded = storage.progress().target
    burn_in = cfg.mcmc.burn_in
    target = (burn_in + iterations if iterations is not None
              else max(recorded, burn_in + cfg.mcmc.samples))
    plan = Plan(burn_in, target - burn_in, cfg.mcmc.thin, cfg.mcmc.reorder_every,
                cfg.mcmc.checkpoint_every)
    done = storage.progress() if storage.exists() else None
    if done is not None and done.iteration >= target:
        _echo(f"chain {number} is complete ({done.iteration} iterations, {done.n_draws} draws in "
              f"{path}); use --iterations to extend it")
        return 0
    shapes = {name: param_shape(model, name) for name in names}
    capacity = max(plan.draws(target), done.n_draws if done is not None else 0)
    dtype = cfg.posterior.dtype
    adaptation = adaptation_rule(cfg.model.factors, model.t, plan.burn_in)
    largest, bound = model, ""
    if adaptation is not None:
        if done is not None and done.iteration > adaptation.last_iteration:  # k is final
            largest = model.with_factors(storage.read_state_array("factor_path")[-1, 1])
        else:  # sized for the largest k it may reach
            largest = model.with_factors(adaptation.max_factors)
            bound = f"at most (with {adaptation.max_factors} factors) "
        if adaptation.last_iteration < MIN_ADAPTATION and (done is None or done.iteration == 0):
            click.echo(f"megalmm: warning: model.factors: auto adapts k during the first "
                       f"{adaptation.last_iteration} iterations only (80% of mcmc.burn_in); give "
                       "burn-in a few hundred iterations", err=True)
    size = chain_file_bytes(largest, {name: param_shape(largest, name) for name in names},
                            capacity, dtype, cfg.posterior.means)
    _check_disk(path, size, done is not None and done.capacity != capacity)
    _echo(f"chain {number}: chain file {bound}{_human(size)} ({capacity} draws of "
          f"{', '.join(shapes)} as {dtype}, two checkpoints of the state) in {path}")
    if adaptation is not None and (done is None or done.iteration == 0):
        _echo(f"chain {number}: number of factors chosen during the first "
              f"{adaptation.last_iteration} iterations of burn-in, starting from {model.k} "
              f"(at most {adaptation.max_factors})")
    if done is None:
        storage.create({"config_hash": expected, "chain": number, "seed": cfg.run.seed,
                        "burn_in": plan.burn_in, "thin": plan.thin}, shapes, capacity, dtype, target)
    else:
        storage.set_target(target, capacity)
    at = done.iteration if done is not None else 0
    setup = time.perf_counter() - started
    bar = _bar(progress, f"chain {number}", total=plan.total, initial=at)
    verb = "resuming" if at else "starting"
    _echo(f"chain {number}: {verb} at iteration {at} of {plan.total} "
          f"(burn-in {plan.burn_in}, thin {plan.thin}); set-up {setup:.1f} s")
    stop.sampling = True
    try:
        result = run_chain(model, storage, plan, names, cfg.posterior.means,
                           cfg.run.seed, number,
                           progress=(lambda i: bar.update_to(at + i)) if bar is not None else None,
                           stop=stop, draw_dtype=cfg.posterior.dtype, adaptation=adaptation)
    finally:
        stop.sampling = False
        if bar is not None:
            bar.close()
    if storage.fell_back:
        click.echo(f"megalmm: warning: {path}: {storage.fell_back}; resumed from the checkpoint "
                   "before it (the chain is the same, some iterations were run again)", err=True)
    rest = max(1, result.iterations_done - 1)
    per_iter = (result.seconds - result.first_seconds) / rest if result.iterations_done > 1 else result.seconds
    if result.interrupted_by is not None:
        _echo(f"chain {number}: stopped by signal {result.interrupted_by} at iteration "
              f"{result.iteration}; checkpoint written to {path}; re-run the same command to resume")
        return 128 + int(result.interrupted_by)
    _echo(f"chain {number}: {result.iterations_done} iterations in {result.seconds:.1f} s "
          f"({per_iter:.4f} s/iteration; the first, with compilation, {result.first_seconds:.1f} s), "
          f"{result.n_draws} draws in {path}")
    return 0


MIN_ADAPTATION = 100  # `model.factors: auto` with fewer adaptation iterations gets a warning


def _human(size: float) -> str:
    from .prepare import human_bytes

    return human_bytes(size)


def _check_disk(path, size: int, rewrite: bool) -> None:
    """Refuse to sample when the chain file will not fit on its disk. A chain file being
    resized is written anew beside the old one; otherwise only the part not yet on disk
    (its draws are allocated but written as sampling goes) is needed."""
    import shutil

    on_disk = 0
    if path.exists() and not rewrite:
        on_disk = path.stat().st_blocks * 512
    need = max(0, size - on_disk)
    free = shutil.disk_usage(path.parent).free
    if need > free:
        raise UserError(
            f"{path}: the chain file needs {_human(need)} more but {path.parent} has {_human(free)} "
            "free; free disk space, store fewer draws (raise mcmc.thin, or drop large "
            "parameters from posterior.samples), or set posterior.dtype: float32")


@main.command()
@click.argument("config", type=click.Path())
@click.option("--new-kinship", type=click.Path(), default=None,
              help="Kinship block (CSV/TSV) of new individuals (rows) against the modelled ones and "
                   "among themselves (columns); writes predictions/U_new.csv.")
@click.option("--test", "test_file", type=click.Path(), default=None,
              help="Cells to score instead of the config's test cells: tall CSV/TSV with columns "
                   "id, trait, value; writes predictions/test_accuracy.csv.")
@progress_option
@verbose_option
def predict(config, verbose, new_kinship, test_file, progress):
    """Write genetic values (U, U_sd) and expected phenotypes (eta_hat) from all chains.

    Output: <output_dir>/predictions/U.csv, U_sd.csv, eta_hat.csv, reliability.csv
    (individuals x traits, including individuals with no phenotype), the same matrices in
    predictions.h5 (float32, chunked), and test_accuracy.csv (per trait) with
    test_accuracy_mean.csv when the config names test cells. The directory is
    replaced whole, after every input has been checked. With several random effects also U_<effect>.csv and U_<effect>_sd.csv, the
    part of U from each effect (they sum to U.csv). With --new-kinship (one random effect),
    also U_new.csv (and eta_hat_new.csv when B1 draws and covariates allow) for individuals
    that were not in the model.

    \b
    Example:
      megalmm predict configs/example.yaml
      megalmm predict configs/example.yaml --new-kinship new_vs_model.csv
      megalmm predict configs/example.yaml --test heldout.csv
    """
    def action():
        from .predict import run_predict

        bar = _bar(progress, "predict", unit="row")
        try:
            run_predict(_load(config), echo=_echo, new_kinship=new_kinship, test_file=test_file,
                        warn=_warn, progress=bar.update_to if bar is not None else None)
        finally:
            if bar is not None:
                bar.close()

    _run(action, verbose)


@main.command()
@click.argument("config", type=click.Path())
@progress_option
@verbose_option
def summarize(config, progress, verbose):
    """Write posterior summaries of G, R and trait h2, diagnostics, a report and plots.

    Output under <output_dir>/summary/ (replaced whole; docs/outputs.md has every column):
    traits.csv (per trait: h2, genetic and residual variance, each random effect's share,
    with 95% HPD), h2.csv, matrices.h5 (posterior means of G, R and the genetic
    correlations over every trait, chunked HDF5), G.csv, R.csv, G_cor.csv and the HPD bounds
    G_hpd_low/high.csv, R_hpd_low/high.csv for the traits chosen by summary.traits or
    summary.top (all traits when there are at most summary.top), diagnostics.csv
    (rank-normalised split R-hat, bulk and tail ESS across chains), fixed_effects.csv (B1
    with sd and 95% HPD), report.md and plots/*.png. With several random effects also
    h2_by_effect.csv.

    \b
    Example:
      megalmm summarize configs/example.yaml
    """
    def action():
        from .summarize import run_summarize

        with _stage_bar(progress, "summarize", "stage") as stage:
            run_summarize(_load(config), echo=_echo, warn=_warn, progress=stage)

    _run(action, verbose)


@main.command()
@click.argument("config", type=click.Path())
@click.option("--output", "-o", type=click.Path(), default=None,
              help="File to write (default: <output_dir>/posterior.nc).")
@progress_option
@verbose_option
def export(config, output, progress, verbose):
    """Write the draws of every chain as an ArviZ InferenceData file (netCDF4).

    Groups posterior (every stored parameter, with named trait/factor/id coordinates, and per
    trait the identified h2, G_var and R_var of each draw) and sample_stats (iteration,
    number of effective factors), dimensions (chain, draw, ...). Open it with
    arviz.from_netcdf(path) or xarray.open_datatree(path); R reads it as HDF5 (rhdf5, hdf5r)
    or with ncdf4. Needs h5netcdf: pip install "megalmm-cli[arviz]". docs/outputs.md shows
    how to read it.

    \b
    Example:
      megalmm export configs/example.yaml
    """
    def action():
        from .export import run_export

        with _stage_bar(progress, "export", "part") as part:
            run_export(_load(config), output=output, echo=_echo, warn=_warn, progress=part)

    _run(action, verbose)


@main.command()
@click.argument("config", type=click.Path())
@verbose_option
def status(config, verbose):
    """Show each chain's progress and whether a process is sampling it.

    Per chain: iterations done / planned, draws stored, last checkpoint (UTC), seconds per
    iteration, and the lock holder (host, pid; running or stale).

    \b
    Example:
      megalmm status configs/example.yaml
    """
    def action():
        from .status import chain_status, format_status

        _echo(format_status(chain_status(_load(config))))

    _run(action, verbose)


@main.command()
@click.argument("config", type=click.Path())
@click.option("--chain", type=int, default=None, help="Repair only this chain [default: every chain].")
@verbose_option
def repair(config, chain, verbose):
    """Check chain files and rewrite damaged ones from their newest intact checkpoint.

    A kill at any instant never needs this: `sample` resumes by itself, and also skips a
    damaged newest checkpoint for the one before it. `repair` is for damage from other
    causes (a bad disk block, a torn write after a power cut): it rewrites the chain into a
    fresh file from the newest intact checkpoint and keeps the damaged file beside it as
    chain_<N>.h5.damaged; `sample` then resumes from the kept checkpoint.

    \b
    Example:
      megalmm repair run.yaml --chain 3
    """
    def action():
        from .lock import chain_lock
        from .runinfo import chain_path, chain_paths
        from .storage import ChainFile

        cfg = _load(config)
        paths = [chain_path(cfg, chain)] if chain is not None else chain_paths(cfg)
        if not paths or not paths[0].exists():
            raise UserError(f"{config}: no chain files to check")
        for path in paths:
            with chain_lock(path):
                store = ChainFile(path)
                stored = store.progress().n_draws
                intact, kept, problem = store.check()
                if intact:
                    _echo(f"{path}: intact ({stored} draws, iteration "
                          f"{kept.iteration if kept is not None else 0})")
                    continue
                kept, damaged = store.repair()
                _echo(f"{path}: repaired ({problem}): kept {kept.n_draws} draws up to iteration "
                      f"{kept.iteration} ({stored - kept.n_draws} later draws dropped, they are "
                      f"sampled again); the damaged file is {damaged}; re-run `megalmm sample` "
                      "to continue")

    _run(action, verbose)


if __name__ == "__main__":
    main()
