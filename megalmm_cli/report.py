"""`summary/report.md`: a plain-language Markdown report of a run for breeders: data size,
run settings, speed, a convergence verdict, and top-line h2 and G summaries."""

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .config_schema import FactorAdaptation
from .factor_count import describe_setting, factor_range
from .plots import correlation

TAIL_SHARE_LIMIT = 0.01  # the last factors carry more than this: k may be too small
RHAT_GOOD = 1.01
RHAT_OK = 1.1
ESS_GOOD = 400
TOP = 5


@dataclass
class ReportInfo:
    run_name: str
    data: dict                     # individuals, phenotyped, traits, observed_cells, missing_groups
    settings: dict                 # factors, h2_divisions, burn_in, samples, thin, chains, seed
    chains: list                   # per chain: {"chain", "iteration", "n_draws", "elapsed_seconds"}
    diagnostics: pd.DataFrame      # param, rhat, ess_bulk, ess_tail
    h2: pd.DataFrame               # trait, h2_mean, hpd_low, hpd_high
    genetic: np.ndarray            # (t, t) posterior mean G
    traits: list
    g_low: np.ndarray | None = None
    g_high: np.ndarray | None = None
    links: dict = field(default_factory=dict)  # label -> path relative to the report
    h2_by_effect: pd.DataFrame | None = None  # trait, effect, h2_mean, hpd_low, hpd_high (m > 1)
    subset_note: str = ""          # "300 of 20843 traits (...)" when G covers a subset
    accuracy: pd.DataFrame | None = None   # predictions/test_accuracy.csv, when predict wrote it
    samples: int = 0               # sampling iterations per chain (after burn-in)
    factors: pd.DataFrame | None = None    # summary/factors.csv (summarize.factor_table)
    factor_paths: dict = field(default_factory=dict)  # `factors: auto`: chain -> (iteration, k) rows
    factor_max: int | None = None          # `factors: auto`: the largest k allowed


def more_iterations(min_ess: float, samples: int) -> int | None:
    """Sampling iterations per chain (after burn-in) that would bring the smallest bulk ESS
    to ESS_GOOD, if ESS grows in proportion (rounded up to a hundred)."""
    if not samples or min_ess is None or not np.isfinite(min_ess) or min_ess <= 0:
        return None
    return int(math.ceil(samples * ESS_GOOD / min_ess / 100.0) * 100)


def verdict(worst_rhat: float, min_ess: float, samples: int = 0) -> tuple[str, str]:
    """(verdict, advice) from the largest R-hat and smallest bulk ESS; samples: the chains'
    sampling iterations, for the advice on how many more to run."""
    target = more_iterations(min_ess, samples)
    extend = (f" Run about {target} sampling iterations per chain (now {samples}): "
              f"`megalmm sample CONFIG --iterations {target}` extends the chains."
              if target and target > samples else "")
    if worst_rhat is None or not np.isfinite(worst_rhat):
        return ("unknown", ("R-hat could not be computed (too few draws, or constant "
                            "parameters); run more iterations before trusting the results."))
    if worst_rhat < RHAT_GOOD and min_ess is not None and np.isfinite(min_ess) and min_ess >= ESS_GOOD:
        return ("converged", (f"All R-hat < {RHAT_GOOD} and every bulk ESS >= {ESS_GOOD}: "
                              "the chains agree and hold enough independent draws."))
    if worst_rhat < RHAT_OK:
        return ("needs more iterations",
                (f"The chains roughly agree (R-hat < {RHAT_OK}) but not yet to R-hat < {RHAT_GOOD} "
                 f"with bulk ESS >= {ESS_GOOD}; extend the chains (`megalmm sample --iterations`) "
                 "before relying on the intervals." + extend))
    return ("not converged",
            (f"Some R-hat >= {RHAT_OK}: the chains disagree. Run many more iterations (longer "
             "burn-in and more samples) and use more chains (mcmc.chains >= 4) so that "
             "disagreement shows up; do not use these estimates yet." + extend))


def _fmt(x, digits=3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{digits}f}"


def _table(header: list, rows: list) -> list:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def _seconds(s: float) -> str:
    if s >= 3600:
        return f"{s / 3600:.1f} h"
    if s >= 60:
        return f"{s / 60:.1f} min"
    return f"{s:.1f} s"


def _data_section(info: ReportInfo) -> list:
    d = info.data
    rows = [("Individuals (with kinship)", d.get("individuals")),
            ("Phenotyped individuals", d.get("phenotyped")),
            ("Traits", d.get("traits"))]
    cells = d.get("observed_cells")
    if cells is not None:
        total = (d.get("phenotyped") or 0) * (d.get("traits") or 0)
        share = f" ({100 * cells / total:.1f}% of {total})" if total else ""
        rows.append(("Observed phenotype cells", f"{cells}{share}"))
    if d.get("missing_groups") is not None:
        rows.append(("Missing-data groups", d["missing_groups"]))
    return ["## Data", ""] + _table(["", "value"], [r for r in rows if r[1] is not None]) + [""]


def _settings_section(info: ReportInfo) -> list:
    s = info.settings
    labels = [("factors", "Factors (K)"), ("h2_divisions", "h2 grid divisions"),
              ("burn_in", "Burn-in iterations"), ("samples", "Sampling iterations per chain (after burn-in)"),
              ("thin", "Thinning"), ("chains", "Chains (configured)"), ("seed", "Seed")]
    rows = [(label, s[key]) for key, label in labels if key in s]
    return ["## Run settings", ""] + _table(["", "value"], rows) + [""]


def _timing_section(info: ReportInfo) -> list:
    lines = ["## Time per iteration", ""]
    rows, pers = [], []
    for c in info.chains:
        it, el = int(c.get("iteration", 0)), float(c.get("elapsed_seconds", 0.0))
        per_s = c.get("seconds_per_iteration")
        per = f"{1000 * per_s:.1f} ms" if per_s else "n/a"
        if per_s:
            pers.append(per_s)
        rows.append((c.get("chain"), it, c.get("n_draws"), _seconds(el), per))
    if not rows:
        return lines + ["No chain information.", ""]
    lines += _table(["chain", "iterations", "stored draws", "sampling time", "time / iteration"], rows)
    if pers:
        lines += ["", (f"On average **{1000 * float(np.mean(pers)):.1f} ms per iteration**, "
                       "without the first iteration of each run (numba compilation).")]
    return lines + [""]


def _accuracy_section(info: ReportInfo) -> list:
    table = info.accuracy
    if table is None or not len(table):
        return []
    cols = [c for c in table.columns if c.startswith("cor_")]
    lines = ["## Prediction accuracy on the test cells", "",
             (f"Correlation between the predictions and the {int(table.n_test.sum())} held-out "
              f"cells of {len(table)} traits (predictions/test_accuracy.csv), mean over traits: "
              + ", ".join(f"**{c[4:]} {table[c].mean():.3f}**" for c in cols) + "."), ""]
    return lines


def _convergence_section(info: ReportInfo) -> list:
    diag = info.diagnostics
    worst_rhat = float(diag.rhat.max()) if diag.rhat.notna().any() else float("nan")
    min_ess = float(diag.ess_bulk.min()) if diag.ess_bulk.notna().any() else float("nan")
    label, advice = verdict(worst_rhat, min_ess, info.samples)
    u_cells = "a sample of genetic values U, " if diag.param.astype(str).str.startswith("U[").any() else ""
    lines = ["## Convergence", "", f"**Verdict: {label}.** {advice}", "",
             (f"Over {len(diag)} monitored parameters (trait h2, residual h2, the largest "
              f"genetic covariances, {u_cells}and the number of effective factors): worst R-hat "
              f"{_fmt(worst_rhat)}, smallest bulk ESS {_fmt(min_ess, 0)}."), ""]
    by_rhat = diag.dropna(subset=["rhat"]).sort_values("rhat", ascending=False, kind="stable").head(TOP)
    by_ess = diag.dropna(subset=["ess_bulk"]).sort_values("ess_bulk", kind="stable").head(TOP)
    row = lambda r: (f"`{r.param}`", _fmt(r.rhat), _fmt(r.ess_bulk, 0), _fmt(r.ess_tail, 0))
    header = ["parameter", "R-hat", "bulk ESS", "tail ESS"]
    if len(by_rhat):
        lines += ["Largest R-hat (worst mixing):", ""] + _table(header, [row(r) for r in by_rhat.itertuples()]) + [""]
    if len(by_ess):
        lines += ["Smallest bulk ESS:", ""] + _table(header, [row(r) for r in by_ess.itertuples()]) + [""]
    return lines


def _h2_section(info: ReportInfo) -> list:
    h2 = info.h2
    lines = ["## Heritability (h2)", ""]
    if not len(h2):
        return lines + ["No traits.", ""]
    v = h2.h2_mean
    lines += [(f"Across {len(h2)} traits: median h2 **{v.median():.3f}**, range "
               f"{v.min():.3f} ({h2.trait[v.idxmin()]}) to {v.max():.3f} ({h2.trait[v.idxmax()]})."), ""]
    row = lambda r: (r.trait, f"{r.h2_mean:.3f}", f"[{r.hpd_low:.3f}, {r.hpd_high:.3f}]")
    header = ["trait", "h2 (posterior mean)", "95% HPD"]
    high = h2.sort_values("h2_mean", ascending=False, kind="stable").head(TOP)
    low = h2.sort_values("h2_mean", kind="stable").head(TOP)
    lines += ["Most heritable traits:", ""] + _table(header, [row(r) for r in high.itertuples()]) + [""]
    lines += ["Least heritable traits:", ""] + _table(header, [row(r) for r in low.itertuples()]) + [""]
    return lines


def _effects_section(info: ReportInfo) -> list:
    """Several random effects: each effect's share of the traits' variance."""
    shares = info.h2_by_effect
    if shares is None or not len(shares):
        return []
    lines = ["## Random effects", "",
             ("Share of each trait's variance from each random effect (posterior means; "
              "h2 above is their sum):"), ""]
    rows = []
    for effect, part in shares.groupby("effect", sort=False):
        v = part.h2_mean
        rows.append((effect, f"{v.median():.3f}", f"{v.min():.3f} ({part.trait.iloc[int(np.argmin(v))]})",
                     f"{v.max():.3f} ({part.trait.iloc[int(np.argmax(v))]})"))
    return lines + _table(["effect", "median share", "lowest", "highest"], rows) + [""]


def factors_verdict(factors: pd.DataFrame, factor_max: int | None = None) -> tuple[bool, str]:
    """Whether K looks large enough, and the report's sentence saying so: the last 10% of the
    factors (ranked by size in each draw, at least one) should carry at most
    TAIL_SHARE_LIMIT of the genetic and of the residual variance; with the shrinkage prior,
    factors beyond those the data need are shrunk towards zero and carry almost nothing.
    factor_max: with `model.factors: auto`, the largest k allowed (the advice differs)."""
    from .covariance import tail_size

    k = len(factors)
    last = tail_size(k)
    row = factors.iloc[k - last]
    g, r = row.genetic_share_from_here, row.residual_share_from_here
    what = (f"the last {last} of {k} factors (ranked by size in each draw) carry "
            f"{100 * g:.2g}% of the genetic and {100 * r:.2g}% of the residual variance")
    if max(g, r) > TAIL_SHARE_LIMIT:
        if factor_max is None:
            advice = f"Run again with a larger `model.factors` (for example {2 * k})."
        elif k >= factor_max:
            advice = (f"k reached `model.factors.max` ({factor_max}): run again with a larger "
                      f"max (for example {2 * factor_max}).")
        else:
            advice = ("Run again with a smaller `model.factors.epsilon` (factors are then "
                      "dropped less readily), or a fixed `model.factors` of at least "
                      f"{2 * k}.")
        return False, (f"**k may be too small**: {what} (more than {100 * TAIL_SHARE_LIMIT:g}%). "
                       + advice)
    return True, f"**k looks large enough**: {what}."


def _factors_section(info: ReportInfo) -> list:
    if info.factors is None or not len(info.factors):
        return []
    from .factor_count import describe_path

    _, sentence = factors_verdict(info.factors, info.factor_max)
    lines = ["## Number of factors", ""]
    if info.factor_paths:
        lines += ["k was chosen during burn-in (`model.factors: auto`) and then kept fixed "
                  "([plot](plots/factor_count.png)); per chain, the starting and the final k, "
                  "the range over burn-in, the changes and the last change:", ""]
        lines += [f"- chain {c}: {describe_path(p)}" for c, p in sorted(info.factor_paths.items())]
        lines += [""]
    return lines + [sentence, "Each factor's share is in [factors.csv](factors.csv).", ""]


def _genetic_section(info: ReportInfo) -> list:
    lines = ["## Genetic covariance (G)", ""]
    if info.subset_note:
        lines += [(f"This section, the CSV matrices and the heatmap cover {info.subset_note}; "
                   "G, R and the genetic correlations of every pair of traits are in "
                   "matrices.h5."), ""]
    t = len(info.traits)
    if t < 2:
        return lines + ["Only one trait: no genetic correlations.", ""]
    corr = correlation(info.genetic)
    rows, cols = np.triu_indices(t, k=1)
    values = corr[rows, cols]
    lines += [(f"Mean genetic correlation magnitude |r_g| over {len(values)} trait pairs: "
               f"**{np.mean(np.abs(values)):.3f}** (median {np.median(np.abs(values)):.3f}; "
               f"{int(np.sum(np.abs(values) >= 0.5))} pair(s) with |r_g| >= 0.5)."), ""]
    top = np.argsort(-np.abs(values), kind="stable")[:TOP]
    table = []
    for m in top:
        i, j = rows[m], cols[m]
        interval = ""
        if info.g_low is not None and info.g_high is not None:
            interval = f"[{info.g_low[i, j]:.3g}, {info.g_high[i, j]:.3g}]"
        table.append((info.traits[i], info.traits[j], f"{values[m]:+.3f}",
                      f"{info.genetic[i, j]:.3g}", interval))
    lines += ["Strongest genetic correlations:", ""]
    lines += _table(["trait", "trait", "r_g", "G covariance", "95% HPD of covariance"], table) + [""]
    return lines


def _links_section(info: ReportInfo) -> list:
    if not info.links:
        return []
    lines = ["## Files", ""]
    for label, rel in info.links.items():
        rel = Path(rel).as_posix()
        lines.append(f"- ![{label}]({rel})" if rel.endswith(".png") else f"- [{label}]({rel})")
    return lines + [""]


def render_report(info: ReportInfo) -> str:
    lines = [f"# megalmm report: {info.run_name}", ""]
    for section in (_data_section, _settings_section, _timing_section, _convergence_section,
                    _accuracy_section, _h2_section, _effects_section, _factors_section,
                    _genetic_section, _links_section):
        lines += section(info)
    return "\n".join(lines).rstrip() + "\n"


def write_report(path, info: ReportInfo) -> Path:
    path = Path(path)
    path.write_text(render_report(info), encoding="utf-8")
    return path


# -- gathering a run's facts and writing plots + report (used by `megalmm summarize`) ---------

def data_facts(prepared) -> dict:
    """Data sizes from prepared.h5."""
    import h5py

    with h5py.File(prepared, "r") as f:
        y = f["y_std"][()]
        return {"individuals": int(f["ids"].shape[0]), "phenotyped": int(f.attrs["n_train"]),
                "traits": int(f["traits"].shape[0]), "observed_cells": int(np.sum(~np.isnan(y))),
                "missing_groups": int(f["groups"].attrs["count"]) if "groups" in f else None}


def chain_facts(paths) -> list:
    """Per chain: number, iterations, saved draws and sampling seconds, from the chain files."""
    from .storage import ChainFile

    facts = []
    for path in paths:
        chain = ChainFile(path)
        progress = chain.progress()
        facts.append({"chain": int(chain.attrs().get("chain", len(facts) + 1)),
                      "iteration": progress.iteration, "n_draws": progress.n_draws,
                      "elapsed_seconds": progress.elapsed,
                      "seconds_per_iteration": progress.seconds_per_iteration})
    return facts


def chain_factor_paths(paths) -> dict:
    """Chain number -> (iteration, k) rows of its number of factors over burn-in."""
    from .storage import ChainFile

    out = {}
    for path in paths:
        chain = ChainFile(path)
        steps = chain.read_state_array("factor_path")
        if steps is not None:
            out[int(chain.attrs().get("chain", len(out) + 1))] = steps
    return out


def _read_accuracy(config) -> pd.DataFrame | None:
    """predictions/test_accuracy.csv when `megalmm predict` wrote it after the last sample."""
    path = Path(config.run.output_dir) / "predictions" / "test_accuracy.csv"
    try:
        return pd.read_csv(path)
    except (OSError, ValueError):
        return None


def write_plots_and_report(config, out: Path, traits, genetic, h2_table, diag, worst: dict,
                           g_low=None, g_high=None, h2_by_effect=None, subset_note="",
                           matrices=False, factors=None) -> Path:
    """summary/plots/trace_worst.png (worst: summarize.worst_series' dict),
    plots/factor_count.png (`model.factors: auto`) and summary/report.md (summarize draws
    plots/h2.png and plots/genetic_correlation.png before)."""
    from . import plots
    from .prepare import prepared_path
    from .runinfo import chains_for_reading

    plot_dir = out / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    plots.trace_plots(plot_dir / "trace_worst.png", worst)
    m = config.mcmc
    factor_paths, factor_max = {}, None
    if isinstance(config.model.factors, FactorAdaptation):
        factor_paths = chain_factor_paths(chains_for_reading(config))
        factor_max = factor_range(config.model.factors, len(traits))[1]
        if factor_paths:
            plots.factor_count_plot(plot_dir / "factor_count.png", factor_paths)
    info = ReportInfo(
        run_name=config.run.name, data=data_facts(prepared_path(config)),
        settings={"factors": describe_setting(config.model.factors, len(traits)), "h2_divisions": config.model.h2_divisions,
                  "burn_in": m.burn_in, "samples": m.samples, "thin": m.thin, "chains": m.chains,
                  "seed": config.run.seed},
        chains=chain_facts(chains_for_reading(config)), diagnostics=diag, h2=h2_table,
        genetic=genetic, traits=list(traits), g_low=g_low, g_high=g_high,
        h2_by_effect=h2_by_effect, subset_note=subset_note, accuracy=_read_accuracy(config),
        samples=max([c["iteration"] - m.burn_in for c in chain_facts(chains_for_reading(config))] + [0]),
        factors=factors, factor_paths=factor_paths, factor_max=factor_max,
        links={"Genetic covariance G (G.csv)": "G.csv", "Residual covariance R (R.csv)": "R.csv",
               "Per trait: h2, variances, intervals (traits.csv)": "traits.csv",
               **({"G, R and genetic correlations of every trait (matrices.h5)": "matrices.h5"}
                  if matrices else {}),
               "h2 per trait (h2.csv)": "h2.csv", "G 95% HPD lower (G_hpd_low.csv)": "G_hpd_low.csv",
               **({"Each factor's share of the variance (factors.csv)": "factors.csv"}
                  if factors is not None else {}),
               "G 95% HPD upper (G_hpd_high.csv)": "G_hpd_high.csv",
               "R 95% HPD lower (R_hpd_low.csv)": "R_hpd_low.csv",
               "R 95% HPD upper (R_hpd_high.csv)": "R_hpd_high.csv",
               "Convergence diagnostics (diagnostics.csv)": "diagnostics.csv",
               "Trace plots of the worst-mixing parameters": "plots/trace_worst.png",
               "Genetic correlation heatmap": "plots/genetic_correlation.png",
               "h2 per trait": "plots/h2.png",
               **({"Number of factors over burn-in": "plots/factor_count.png"}
                  if factor_paths else {}),
               **({"Share of each random effect (h2_by_effect.csv)": "h2_by_effect.csv"}
                  if h2_by_effect is not None else {})})
    return write_report(out / "report.md", info)
