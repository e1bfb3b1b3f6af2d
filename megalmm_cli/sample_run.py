"""`megalmm sample` for one chain: its lock, the chain file (created, resumed or resized, after
a check of the disk), the progress bar and the messages around run_chain."""

import time

import click

from .console import echo, progress_bar
from .errors import UserError


def sample_chain(cfg, number, iterations, progress, cache_mode, stop) -> int:
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
        echo(f"chain {number}: {model.n_effects} random effects ({', '.join(model.effect_names)}); "
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
        echo(f"chain {number} is complete ({done.iteration} iterations, {done.n_draws} draws in "
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
    echo(f"chain {number}: chain file {bound}{_human(size)} ({capacity} draws of "
          f"{', '.join(shapes)} as {dtype}, two checkpoints of the state) in {path}")
    if adaptation is not None and (done is None or done.iteration == 0):
        echo(f"chain {number}: number of factors chosen during the first "
              f"{adaptation.last_iteration} iterations of burn-in, starting from {model.k} "
              f"(at most {adaptation.max_factors})")
    if done is None:
        storage.create({"config_hash": expected, "chain": number, "seed": cfg.run.seed,
                        "burn_in": plan.burn_in, "thin": plan.thin}, shapes, capacity, dtype, target)
    else:
        storage.set_target(target, capacity)
    at = done.iteration if done is not None else 0
    setup = time.perf_counter() - started
    bar = progress_bar(progress, f"chain {number}", total=plan.total, initial=at)
    verb = "resuming" if at else "starting"
    echo(f"chain {number}: {verb} at iteration {at} of {plan.total} "
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
        echo(f"chain {number}: stopped by signal {result.interrupted_by} at iteration "
              f"{result.iteration}; checkpoint written to {path}; re-run the same command to resume")
        return 128 + int(result.interrupted_by)
    echo(f"chain {number}: {result.iterations_done} iterations in {result.seconds:.1f} s "
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
