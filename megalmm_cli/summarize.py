"""`megalmm summarize`: posterior summaries over all chains, for any number of traits.

Per trait (every trait): h2, each random effect's share, genetic and residual variance, with
95% HPD intervals (traits.csv, h2.csv, h2_by_effect.csv). Over every pair of traits: the
posterior means of G, R and the genetic correlations in matrices.h5 (covariance.py, never a
t x t matrix per draw). Among a chosen subset of traits (summary.traits, or the summary.top
traits by h2 or by loadings; all of them when there are few): the same matrices as CSV with
HPD intervals, and the heatmap. Then convergence diagnostics, the report and plots.
"""

from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numba
import numpy as np
import pandas as pd

from . import FORMAT_VERSION, __version__
from .background import Forked, JobWorker
from .config import Config
from .covariance import (SubsetFactors, chain_draws, effective_factors, hpd_interval,
                         posterior_mean_matrix, ranked_factor_shares, tail_size,
                         trait_diagonals)
from .csvout import write_matrix_csv
from .errors import UserError
from .outputs import replaced_directory
from .posterior import u_cell_indices
from .prepare import read_effect_names, read_names
from .runinfo import chains_for_reading, require_prepared
from .storage import ChainFile

NEEDED = ("Lambda", "f_h2", "resid_h2", "tot_eta_prec")
MAX_G_MONITORED = 50


@dataclass
class ChainSummary:
    """Per-draw per-trait quantities of one chain (S draws)."""

    h2: list = field(default_factory=list)           # (s, t) blocks
    G_var: list = field(default_factory=list)
    R_var: list = field(default_factory=list)
    resid_h2: list = field(default_factory=list)
    shares: list = field(default_factory=list)       # (s, m, t) blocks, several effects
    n_factors: list = field(default_factory=list)    # (s,) effective factors
    loading_ss: np.ndarray | None = None             # (t,) sum over draws of sum_l Lambda_lj^2
    factor_g: np.ndarray | None = None               # (K,) sum over draws of ranked genetic shares
    factor_r: np.ndarray | None = None               # (K,) the same for the residual variance

    def stack(self, name):
        parts = getattr(self, name)
        return np.concatenate(parts) if parts else None


def summarize_chain(chain: ChainFile) -> ChainSummary:
    """First pass over a chain's draws: everything per trait."""
    out = ChainSummary()
    for d in chain_draws(chain):
        diag = trait_diagonals(d)
        out.h2.append(diag["h2"])
        out.G_var.append(diag["G_var"])
        out.R_var.append(diag["R_var"])
        out.resid_h2.append(d.resid_h2)
        if "shares" in diag:
            out.shares.append(diag["shares"])
        out.n_factors.append(effective_factors(d.lam))
        ss = (d.lam * d.lam).sum(axis=(0, 1))
        out.loading_ss = ss if out.loading_ss is None else out.loading_ss + ss
        g_share, r_share = ranked_factor_shares(d, diag)
        out.factor_g = g_share.sum(axis=0) + (0 if out.factor_g is None else out.factor_g)
        out.factor_r = r_share.sum(axis=0) + (0 if out.factor_r is None else out.factor_r)
    return out


def factor_table(summaries: list, n_draws: int) -> pd.DataFrame:
    """factors.csv: per factor rank (1 = the largest in each draw), the posterior mean share
    of the total genetic and residual variance it carries, and the shares of all factors
    from that rank on (the "last factors" of the diagnostic)."""
    # chains may end with different numbers of factors (`model.factors: auto`): a rank that
    # a chain does not have carries nothing there
    g = _padded_sum([s.factor_g for s in summaries]) / n_draws
    r = _padded_sum([s.factor_r for s in summaries]) / n_draws
    return pd.DataFrame({"rank": np.arange(1, g.size + 1), "genetic_share": g,
                         "residual_share": r, "genetic_share_from_here": np.cumsum(g[::-1])[::-1],
                         "residual_share_from_here": np.cumsum(r[::-1])[::-1]})


def _padded_sum(arrays: list) -> np.ndarray:
    """Sum of 1-d arrays of different lengths, each padded with zeros to the longest."""
    arrays = [a for a in arrays if a is not None]
    total = np.zeros(max(a.size for a in arrays))
    for a in arrays:
        total[:a.size] += a
    return total


def by_chain(per_chain: list) -> np.ndarray:
    """Stack per-chain draws [(S_c, ...)] into (chains, min S_c, ...), dropping empty chains
    and each longer chain's last draws so that all chains have equal length."""
    per_chain = [d for d in per_chain if d is not None and len(d)]
    n = min(len(d) for d in per_chain)
    return np.stack([d[:n] for d in per_chain])


def choose_traits(config: Config, traits: list, h2_mean: np.ndarray, loading: np.ndarray) -> np.ndarray:
    """Indices (sorted) of the traits of the CSV matrices and heatmap."""
    chosen = config.summary.traits
    if chosen:
        position = {name: j for j, name in enumerate(traits)}
        unknown = [name for name in chosen if name not in position]
        if unknown:
            raise UserError(f"{config.path.name}: summary.traits: {len(unknown)} name(s) are not "
                            f"traits of this run (first: '{unknown[0]}'); use trait names as in "
                            "the phenotype file")
        return np.array(sorted({position[name] for name in chosen}), dtype=np.int64)
    top = config.summary.top
    if len(traits) <= top:
        return np.arange(len(traits))
    score = h2_mean if config.summary.by == "h2" else loading
    return np.sort(np.argsort(-score, kind="stable")[:top]).astype(np.int64)


def u_cell_names(ids: list, traits: list, n_train: int) -> list:
    """Names "U[id,trait]" of the cells posterior.u_cell_indices(n_train, t) selects."""
    rows, cols = u_cell_indices(n_train, len(traits))
    return [f"U[{ids[i]},{traits[j]}]" for i, j in zip(rows, cols)]


def diagnostics_table(names: list, series: np.ndarray) -> pd.DataFrame:
    """Rows param, rhat, ess_bulk, ess_tail for (C, S, params) draws."""
    from .diagnostics import convergence

    return pd.DataFrame({"param": names, **convergence(series)})


def h2_by_effect(lam, f_h2, resid_h2, tot_eta_prec) -> np.ndarray:
    """(S, m, t) share of each random effect in each trait's variance, from draws of lam
    (S, K, t), f_h2 (S, m, K), resid_h2 (S, m, t) and tot_eta_prec (S, t)."""
    from .covariance import Draws

    return trait_diagonals(Draws.from_arrays(lam, f_h2, resid_h2, tot_eta_prec))["shares"]


def _interval_columns(prefix: str, draws: np.ndarray) -> dict:
    low, high = hpd_interval(draws)
    return {f"{prefix}_mean": draws.mean(axis=0), f"{prefix}_low": low, f"{prefix}_high": high}


def run_summarize(config: Config, echo=print, warn=None, progress=None) -> Path:
    """Write summary/ (replaced whole: a failed or killed run leaves the previous one).

    progress: callable(done, total, description) or None.
    """
    require_prepared(config)
    chains = [ChainFile(p) for p in chains_for_reading(config, warn)]
    for chain in chains:
        names = set(chain.sample_names())
        missing = [n for n in NEEDED if n not in names]
        if missing:
            raise UserError(f"{chain.path}: no draws of {', '.join(missing)}; add them to "
                            "posterior.samples and sample again")
    counts = [c.progress().n_draws for c in chains]
    if sum(counts) == 0:
        raise UserError(f"{config.path.name}: the chains hold no draws yet; let `megalmm sample "
                        f"{config.path}` run past burn-in first")
    traits, ids, fixed_names, n_train = read_names(config)
    effect_names = read_effect_names(config)
    stages = iter(range(100))
    total = len(chains) + 3 + config.summary.matrices

    def step(description):  # one stage of the work begins
        if progress is not None:
            progress(next(stages), total, description)

    final = Path(config.run.output_dir) / "summary"
    with replaced_directory(final) as out:
        say = lambda text: echo(text.replace(str(out), str(final)))  # noqa: E731
        # plots and the report are drawn by a second process, which imports matplotlib while
        # this one reads the chains
        plotter = JobWorker(out, warm_up=_import_plotting)
        try:
            summaries = []
            for i, chain in enumerate(chains):
                step(f"summarize: per-trait draws, chain {i + 1}")
                summaries.append(summarize_chain(chain))
            _write(config, chains, counts, summaries, traits, ids, n_train, effect_names, out, say,
                   step, plotter)
            _write_fixed_effects(out / "fixed_effects.csv", chains, fixed_names, traits, say)
            plotter.finish()
            step("summarize: done")
        except BaseException:
            plotter.abandon()
            raise
        say(f"wrote {out}/plots/ and the report: {out / 'report.md'}")
    return final


# the plotting process's work: report.py (with pandas and matplotlib) is imported there only

def _import_plotting() -> None:
    import scipy.cluster.hierarchy  # noqa: F401  (the heatmap's clustering)

    from . import report  # noqa: F401


def _plot_job(name: str, *args) -> None:
    from . import plots

    getattr(plots, name)(*args)


def _report_job(*args, **kwargs) -> None:
    from .report import write_plots_and_report

    write_plots_and_report(*args, **kwargs)


def worst_series(rhat: np.ndarray, names: list, series: np.ndarray, n: int = 6) -> dict:
    """name -> (C, S) draws of the `n` parameters with the largest R-hat (NaN last), for the
    trace plots."""
    order = np.where(np.isnan(rhat), -np.inf, rhat).argsort(kind="stable")[::-1][:n]
    return {f"{names[i]} (R-hat {_fmt_rhat(float(rhat[i]))})": series[:, :, i] for i in order}


def _fmt_rhat(value: float) -> str:
    return "n/a" if np.isnan(value) else f"{value:.3f}"


def _write_fixed_effects(path: Path, chains, names, traits, echo) -> None:
    """fixed_effects.csv: per fixed-effect column and trait, posterior mean, sd and 95% HPD
    of B1 in the traits' original units (the intercept includes the trait mean)."""
    if not names or not all("B1" in c.sample_names() for c in chains):
        return
    draws = np.concatenate([c.read_samples("B1").astype(np.float64) for c in chains])
    if not len(draws):
        return
    low, high = hpd_interval(draws)
    table = pd.DataFrame({"effect": np.repeat(names, len(traits)), "trait": np.tile(traits, len(names)),
                          "mean": draws.mean(axis=0).ravel(), "sd": draws.std(axis=0, ddof=1).ravel(),
                          "hpd_low": low.ravel(), "hpd_high": high.ravel()})
    table.to_csv(path, index=False, float_format="%.6g")
    echo(f"wrote {path}: {len(names)} fixed effects x {len(traits)} traits (mean, sd, 95% HPD)")


def _write(config, chains, counts, summaries, traits, ids, n_train, effect_names, out, echo, step,
           plotter):
    t = len(traits)
    n_draws = sum(counts)
    stacked = {name: np.concatenate([s.stack(name) for s in summaries if s.stack(name) is not None])
               for name in ("h2", "G_var", "R_var")}
    table = pd.DataFrame({"trait": traits, **_interval_columns("h2", stacked["h2"]),
                          **_interval_columns("G_var", stacked["G_var"]),
                          **_interval_columns("R_var", stacked["R_var"])})
    shares = None
    if summaries[0].shares:
        shares = np.concatenate([s.stack("shares") for s in summaries if s.shares])
        for e, name in enumerate(effect_names):
            for key, value in _interval_columns(f"h2_{name}", shares[:, e]).items():
                table[key] = value
    (out / "plots").mkdir()
    plotter.submit(_plot_job, "h2_plot", out / "plots" / "h2.png", table.h2_mean.to_numpy(),
                   table.h2_low.to_numpy(), table.h2_high.to_numpy(), list(traits))
    _write_table(out / "traits.csv", table)
    h2_table = pd.DataFrame({"trait": traits, "h2_mean": table.h2_mean, "hpd_low": table.h2_low,
                             "hpd_high": table.h2_high})
    h2_table.to_csv(out / "h2.csv", index=False, float_format="%.4f")
    echo(f"wrote {out}/traits.csv and h2.csv: {t} traits from {n_draws} draws "
         f"(median h2 {np.median(table.h2_mean):.3f})")
    shares_table = None
    if shares is not None:
        low, high = hpd_interval(shares)
        m = shares.shape[1]
        shares_table = pd.DataFrame({
            "trait": np.tile(traits, m), "effect": np.repeat(effect_names, t),
            "h2_mean": shares.mean(axis=0).ravel(), "hpd_low": low.ravel(), "hpd_high": high.ravel()})
        shares_table.to_csv(out / "h2_by_effect.csv", index=False, float_format="%.4f")
        echo(f"wrote {out}/h2_by_effect.csv (shares of {', '.join(effect_names)})")

    factors = factor_table(summaries, n_draws)
    factors.to_csv(out / "factors.csv", index=False, float_format="%.6g")
    last = factors.iloc[len(factors) - tail_size(len(factors))]
    echo(f"wrote {out}/factors.csv: the last {tail_size(len(factors))} of {len(factors)} factors "
         f"carry {100 * last.genetic_share_from_here:.2g}% of the genetic and "
         f"{100 * last.residual_share_from_here:.2g}% of the residual variance")

    loading = sum(s.loading_ss for s in summaries if s.loading_ss is not None) / n_draws
    cols = choose_traits(config, traits, table.h2_mean.to_numpy(), loading)
    dtype = np.dtype(config.summary.dtype)
    matrices = None
    if config.summary.matrices:
        step(f"summarize: G, R and G_cor over {t} traits, beside the rest")
        threads = numba.get_num_threads()
        matrices = Forked.start(
            lambda: _write_matrices(out / "matrices.h5", chains, traits, cols, n_draws, dtype,
                                    threads), out)
    try:
        step(f"summarize: G and R among {cols.size} traits")
        subset = SubsetFactors.from_blocks((d for chain in chains for d in chain_draws(chain)),
                                           cols)
        among = subset.summary()
        names_sub = [traits[j] for j in cols]
        for name in ("G", "R"):
            for side in ("low", "high"):
                write_matrix_csv(out / f"{name}_hpd_{side}.csv", "trait", names_sub, names_sub,
                                 among[f"{name}_{side}"], "%.6g")
        plotter.submit(_plot_job, "genetic_correlation_heatmap",
                       out / "plots" / "genetic_correlation.png", among["G"],
                       [traits[j] for j in cols])
        _write_rest(config, chains, counts, summaries, traits, ids, n_train, effect_names, out,
                    echo, step, cols, subset, among, shares_table, h2_table, factors, plotter)
    except BaseException:  # this process's own error wins; the matrices' process is stopped
        if matrices is not None:
            matrices.abandon()
        raise
    g_low, g_high, r_low, r_high = among["G_low"], among["G_high"], among["R_low"], among["R_high"]
    if matrices is not None:
        (out / WAITING).touch()  # the matrices may now use every core
        matrices.result()
        (out / WAITING).unlink()
        _write_subset(out / "matrices.h5", traits, cols, dtype,
                      {"G": (g_low, g_high), "R": (r_low, r_high)})
        echo(f"wrote {out / 'matrices.h5'}: G, R and G_cor over {t} traits ({dtype.name})")
    else:  # G.csv and R.csv from the subset's own means
        names_sub = [traits[j] for j in cols]
        for name in ("G", "R"):
            write_matrix_csv(out / f"{name}.csv", "trait", names_sub, names_sub, among[name],
                             "%.6g")
    echo(f"wrote {out}/G.csv, R.csv (posterior means) and their 95% HPD bounds for "
         + _subset_note(config, cols, t))


def _subset_note(config, cols, t: int) -> str:
    if cols.size == t:
        return f"all {t} traits"
    how = (f" (summary.top, by {config.summary.by})" if not config.summary.traits
           else " (summary.traits)")
    return f"{cols.size} of {t} traits{how}"


def _write_rest(config, chains, counts, summaries, traits, ids, n_train, effect_names, out, echo,
                step, cols, subset, among, shares_table, h2_table, factors, plotter) -> None:
    """Convergence diagnostics, plots and the report: what needs the subset's G (its posterior
    mean in float64 from `among`, the same draws as matrices.h5) but not the full matrices."""
    t = len(traits)
    names_sub = [traits[j] for j in cols]
    g_mean = among["G"]
    lengths = [len(s.stack("h2")) for s in summaries]
    monitored = _monitored(chains, summaries, traits, ids, n_train, effect_names, cols, g_mean,
                           subset, counts)
    names, series = monitored
    step(f"summarize: convergence of {len(names)} parameters")
    diag = diagnostics_table(names, series)
    diag.to_csv(out / "diagnostics.csv", index=False, float_format="%.10g")
    worst = diag.loc[diag.rhat.idxmax()] if diag.rhat.notna().any() else None
    least = diag.loc[diag.ess_bulk.idxmin()] if diag.ess_bulk.notna().any() else None
    note = f" (chains trimmed to {min(lengths)} draws each)" if len(set(lengths)) > 1 else ""
    echo(f"convergence over {len(lengths)} chain(s){note}: worst R-hat "
         + (f"{worst.rhat:.3f} ({worst.param})" if worst is not None else "n/a")
         + ", smallest bulk ESS "
         + (f"{least.ess_bulk:.0f} ({least.param})" if least is not None else "n/a")
         + f"; wrote {out}/diagnostics.csv")

    step("summarize: plots and report")
    subset_note = _subset_note(config, cols, t) if cols.size < t else ""
    plotter.submit(_report_job, config, out, names_sub, g_mean, h2_table, diag,
                   worst_series(diag.rhat.to_numpy(), names, series), among["G_low"],
                   among["G_high"], h2_by_effect=shares_table, subset_note=subset_note,
                   matrices=config.summary.matrices, factors=factors)


def _write_table(path: Path, table: pd.DataFrame) -> None:
    values = table.drop(columns="trait").to_numpy()
    write_matrix_csv(path, "trait", table.trait.tolist(), list(table.columns[1:]), values, "%.6g")


WAITING = ".waiting"  # summarize's main process has nothing left but to wait for matrices.h5


class _CoreShare:
    """BLAS threads of the process that computes matrices.h5: all but one of `threads` while
    the main process works beside it, all of them once the file `waiting` exists."""

    def __init__(self, threads: int, waiting: Path):
        from threadpoolctl import threadpool_limits

        self._limit, self.threads, self.waiting = threadpool_limits, threads, waiting
        self.current = max(1, threads - 1)
        self._limit(limits=self.current, user_api="blas")
        self.update()

    def update(self, _done=None) -> None:
        """Called between blocks of draws."""
        if self.current < self.threads and self.waiting.exists():
            self.current = self.threads
            self._limit(limits=self.threads, user_api="blas")


def _write_matrices(path, chains, traits, cols, n_draws, dtype, threads: int) -> dict:
    """matrices.h5: G, R and G_cor (t, t) over every trait, chunked (_write_subset adds the
    subset's index and HPD bounds); their blocks among the subset `cols` as G.csv, R.csv and
    G_cor.csv beside it. Returns an empty dict (background.Forked's result). BLAS runs on `threads`
    threads (numba's count, passed in: this may run in a forked process, see
    background.Forked, where numba's threads are not to be touched): one fewer while the
    process that forked this one works, all of them once it waits (it creates WAITING)."""
    cores = _CoreShare(threads, Path(path).parent / WAITING)
    t = len(traits)
    chunk = (min(t, 512), min(t, 512))
    names_sub = [traits[j] for j in cols]
    with h5py.File(path, "w") as h5:
        h5.attrs.update({"format_version": FORMAT_VERSION, "package_version": __version__,
                         "n_draws": n_draws, "units": "the traits' original units"})
        h5.create_dataset("traits", data=np.array(traits, dtype=object), dtype=h5py.string_dtype())
        for which, meaning in (("G", "posterior mean genetic covariance"),
                               ("R", "posterior mean residual covariance"),
                               ("G_cor", "posterior mean genetic correlation")):
            matrix, rows = posterior_mean_matrix(
                (d for chain in chains for d in chain_draws(chain)), which, t, n_draws, dtype,
                progress=cores.update)
            dset = h5.create_dataset(which, shape=(t, t), dtype=dtype, chunks=chunk)
            for start in range(0, t, chunk[0]):
                dset[start:start + chunk[0]] = matrix[start:start + chunk[0]]
            dset.attrs["meaning"] = meaning
            dset.attrs["factor_rows"] = rows
            write_matrix_csv(Path(path).parent / f"{which}.csv", "trait", names_sub, names_sub,
                             matrix[np.ix_(cols, cols)].astype(np.float64),
                             "%.9g" if dtype == np.float32 else "%.10g")
            del matrix
    return {}


def _write_subset(path, traits, cols, dtype, bounds: dict) -> None:
    """matrices.h5's subset group: the chosen traits' indices and names, and the HPD bounds
    of G and R among them (bounds: name -> (low, high))."""
    with h5py.File(path, "r+") as h5:
        sub = h5.create_group("subset")
        sub.create_dataset("index", data=cols)
        sub.create_dataset("traits", data=np.array([traits[j] for j in cols], dtype=object),
                           dtype=h5py.string_dtype())
        for name, (low, high) in bounds.items():
            sub.create_dataset(f"{name}_hpd_low", data=low.astype(dtype))
            sub.create_dataset(f"{name}_hpd_high", data=high.astype(dtype))


def _monitored(chains, summaries, traits, ids, n_train, effect_names, cols, g_mean, subset,
               counts) -> tuple[list, np.ndarray]:
    """Names and per-chain draws (C, S, params) of the monitored parameters: h2 and resid_h2
    per trait, the largest |off-diagonal| genetic covariances among the chosen traits, the U
    cells (if stored), each effect's share (several effects) and the number of effective
    factors."""
    names = [f"h2[{tr}]" for tr in traits] + [f"resid_h2[{tr}]" for tr in traits]
    columns = [by_chain([s.stack("h2") for s in summaries]),
               by_chain([s.stack("resid_h2") for s in summaries])]
    m = cols.size
    rows, cols_ = np.triu_indices(m, k=1)
    if len(rows):
        order = np.argsort(-np.abs(g_mean[rows, cols_]), kind="stable")[:MAX_G_MONITORED]
        rows, cols_ = rows[order], cols_[order]
        per_chain = np.split(subset.genetic_entries(rows, cols_), np.cumsum(counts)[:-1])
        columns.append(by_chain(per_chain))
        names += [f"G[{traits[cols[i]]},{traits[cols[j]]}]" for i, j in zip(rows, cols_)]
    u_cells = [c.read_samples("U_cells") if "U_cells" in c.sample_names() else None for c in chains]
    u_names = u_cell_names(ids, traits, n_train)
    if all(u is not None and u.shape[1:] == (len(u_names),) for u in u_cells) and u_names:
        columns.append(by_chain(u_cells))
        names += u_names
    if summaries[0].shares:
        per_effect = by_chain([s.stack("shares") for s in summaries])
        columns.append(per_effect.reshape(per_effect.shape[:2] + (-1,)))
        names += [f"h2_{effect}[{trait}]" for effect in effect_names for trait in traits]
    columns.append(by_chain([s.stack("n_factors") for s in summaries])[..., None].astype(float))
    names.append("n_effective_factors")
    return names, np.concatenate(columns, axis=-1)
