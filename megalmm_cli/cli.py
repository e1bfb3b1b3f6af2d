"""The `megalmm` command line: thin commands that parse, check, call the library, report."""

import errno
import sys
import traceback
from pathlib import Path

import click

from . import __version__
from .console import echo, progress_bar, stage_bar, warn
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
        echo(f"wrote a simulated data set ({n} individuals, {t} traits, {k} factors, "
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
        echo(f"wrote {len(paths)} fold files to {outdir}/ ({in_folds} of {len(table)} observed "
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
        bar = progress_bar(progress, "prepare: groups", unit="group")
        try:
            run_prepare(cfg, force=force, max_memory=limit, progress=bar.update_to if bar is not None else None,
                        echo=echo)
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
            from .sample_run import sample_chain

            cfg = _load(config)
            if iterations is not None and iterations < 1:
                raise UserError(f"--iterations: must be >= 1, got {iterations}")
            if chain is not None:
                check_chain_number(cfg, chain)
            if not is_up_to_date(cfg):
                echo("prepared.h5 is missing or out of date: running prepare first")
                run_prepare(cfg, echo=echo)
            chains = [chain] if chain is not None else list(range(1, cfg.mcmc.chains + 1))
            for number in chains:
                code = sample_chain(cfg, number, iterations, progress, cache_mode, stop)
                if code:
                    sys.exit(code)

        _run(action, verbose)


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

        bar = progress_bar(progress, "predict", unit="row")
        try:
            run_predict(_load(config), echo=echo, new_kinship=new_kinship, test_file=test_file,
                        warn=warn, progress=bar.update_to if bar is not None else None)
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

        with stage_bar(progress, "summarize", "stage") as stage:
            run_summarize(_load(config), echo=echo, warn=warn, progress=stage)

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

        with stage_bar(progress, "export", "part") as part:
            run_export(_load(config), output=output, echo=echo, warn=warn, progress=part)

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

        echo(format_status(chain_status(_load(config))))

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
                    echo(f"{path}: intact ({stored} draws, iteration "
                          f"{kept.iteration if kept is not None else 0})")
                    continue
                kept, damaged = store.repair()
                echo(f"{path}: repaired ({problem}): kept {kept.n_draws} draws up to iteration "
                      f"{kept.iteration} ({stored - kept.n_draws} later draws dropped, they are "
                      f"sampled again); the damaged file is {damaged}; re-run `megalmm sample` "
                      "to continue")

    _run(action, verbose)


if __name__ == "__main__":
    main()
