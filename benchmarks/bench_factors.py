"""`model.factors: auto` against fixed k: final k, accuracy and time. Writes the FACTORS
section of docs/benchmarks.md.

Simulated cases (in-process, one chain each, tests/factor_fit.py): 5, 15 and 40 true factors
(200 x 60 with loading sd 0.9^l for 5 and 15; 400 x 120 with 0.99^l for 40, so that all 40 are
within reach of the data; at 300 x 100 with 0.97^l every start settles near 37 factors),
20% missing cells; auto from 10 and from twice the truth, fixed k
at the truth, 1.5x and 2x. Scores: U on the masked cells (mean over traits of the correlation
of the posterior mean with the true U) and G (correlation of the posterior mean G with the
true G, lower triangle), time of run_chain.

G2F (shared/data/g2f_yield, 5 folds of the vignette split, through the CLI as in
benchmarks/g2f.py): fixed k 15 (the vignette's) and 5, `auto` (start and max 19, the number of
environments) and `{start: 5}`; mean over folds of the per-environment correlations of U and
eta_hat with the held-out yields, the final k of each fold and `sample`'s s/iteration.

    .venv/bin/python benchmarks/bench_factors.py [--workdir /tmp/megalmm_factors]
        [--cases sim g2f] [--burn-in 600] [--samples 1500]
"""

import argparse
import re
import shutil
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_sampler import machine  # noqa: E402
from docs_section import replace_section  # noqa: E402
from g2f import CONFIG, DATA, megalmm  # noqa: E402

from megalmm_cli.simulate import simulate_data  # noqa: E402
from megalmm_cli.storage import ChainFile  # noqa: E402
from tests.factor_fit import auto, fit  # noqa: E402

# (true k, n, t, loading decay, sampling iterations as a multiple of --samples): G among 120
# traits with 40 factors mixes more slowly, so that case runs twice as long
SIM_CASES = [(5, 200, 60, 0.9, 1), (15, 200, 60, 0.9, 1), (40, 400, 120, 0.99, 2)]
G2F_VARIANTS = {"k 15 (vignette)": 15, "k 5": 5, "auto": "auto", "auto, start 5": {"start": 5}}


def simulated(burn_in: int, samples: int) -> pd.DataFrame:
    rows = []
    for truth, n, t, decay, longer in SIM_CASES:
        sim = simulate_data(n, t, truth, missing=0.2, seed=3, n_markers=500, loading_decay=decay)
        runs = {"auto from 10": auto(10), f"auto from {2 * truth}": auto(2 * truth),
                f"k {truth}": truth, f"k {int(1.5 * truth)}": int(1.5 * truth),
                f"k {2 * truth}": 2 * truth}
        for name, factors in runs.items():
            f = fit(sim, factors, burn_in, samples * longer)
            rows.append({"true k": truth, "data": f"{n} x {t}", "iterations": f"{burn_in} + {samples * longer}",
                         "run": name, "final k": f.final_k,
                         "U accuracy": f.u_accuracy, "G recovery": f.g_recovery,
                         "seconds": f.seconds})
            print(rows[-1], flush=True)
    return pd.DataFrame(rows)


def g2f(workdir: Path) -> pd.DataFrame:
    folds = pd.read_csv(DATA / "folds.csv")
    rows = []
    for label, factors in G2F_VARIANTS.items():
        for fold in sorted(int(f) for f in folds["fold"].dropna().unique()):
            fold_dir = workdir / f"{re.sub(r'[^a-z0-9]+', '_', label)}_fold{fold}"
            shutil.rmtree(fold_dir, ignore_errors=True)
            fold_dir.mkdir(parents=True)
            folds.loc[folds["fold"] == fold, ["Line", "Env"]].to_csv(fold_dir / "test_cells.csv",
                                                                     index=False)
            raw = yaml.safe_load(CONFIG.format(fold=fold, outdir=fold_dir / "run",
                                               pheno=DATA / "yield_tall.csv",
                                               kinship=DATA / "K.csv"))
            raw["model"]["factors"] = factors
            config = fold_dir / "config.yaml"
            config.write_text(yaml.safe_dump(raw))
            megalmm("prepare", config)
            out, seconds = megalmm("sample", config)
            per_iter = float(re.search(r"\(([\d.]+) s/iteration", out).group(1))
            megalmm("predict", config)
            acc = pd.read_csv(fold_dir / "run" / "predictions" / "test_accuracy.csv")
            chain = ChainFile(fold_dir / "run" / "chains" / "chain_1.h5")
            final_k = int(chain.read_state_array("Lambda").shape[0])
            rows.append({"run": label, "fold": fold, "final k": final_k,
                         "U": acc["cor_U"].mean(), "eta_hat": acc["cor_eta_hat"].mean(),
                         "s/iteration": per_iter, "sample s": seconds})
            print(rows[-1], flush=True)
    return pd.DataFrame(rows)


def sim_block(table: pd.DataFrame) -> list:
    lines = ["Simulated data, 20% missing cells, one chain per run (burn-in + sampling "
             "iterations, thin 2), `model.factors: auto` against fixed k. U: mean over traits "
             "of cor(posterior mean U, true U) on the masked cells; G: cor(posterior mean G, "
             "true G) over its lower triangle. Time: the whole chain, in-process.", "",
             "| true k | data | iterations | run | final k | U accuracy | G recovery | time (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in table.itertuples(index=False):
        lines.append(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]} | {r[5]:.4f} | {r[6]:.4f} | "
                     f"{r[7]:.1f} |")
    lines.append("")
    for truth, part in table.groupby("true k", sort=False):
        fixed = part[part.run.str.startswith("k ")]
        autos = part[part.run.str.startswith("auto")]
        lines.append(
            f"- {truth} true factors: auto ends at k = {', '.join(map(str, autos['final k']))}; "
            f"against the best fixed k, U {min(autos['U accuracy']) - max(fixed['U accuracy']):+.4f}"
            f" and G {min(autos['G recovery']) - max(fixed['G recovery']):+.4f} (worst auto run).")
    return lines + [""]


def g2f_block(table: pd.DataFrame) -> list:
    lines = ["G2F yield (502 lines x 19 environments, 5 folds of the vignette split, one chain "
             "of 500 + 1,000 iterations per fold, through the CLI): mean over folds of the mean "
             "per-environment correlation with the held-out yields.", "",
             "| run | final k per fold | U | eta_hat | s/iteration (median) |",
             "|---|---|---|---|---|"]
    for label, part in table.groupby("run", sort=False):
        lines.append(f"| {label} | {', '.join(map(str, part['final k']))} | {part.U.mean():.3f} | "
                     f"{part.eta_hat.mean():.3f} | {part['s/iteration'].median():.4f} |")
    return lines + [""]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/megalmm_factors")
    parser.add_argument("--cases", nargs="+", default=["sim", "g2f"], choices=["sim", "g2f"])
    parser.add_argument("--burn-in", type=int, default=600)
    parser.add_argument("--samples", type=int, default=1500)
    parser.add_argument("--output", default=str(ROOT / "docs" / "benchmarks.md"))
    args = parser.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    block = [f"Machine: {machine()}. Written by `benchmarks/bench_factors.py` from one run.", ""]
    if "sim" in args.cases:
        block += sim_block(simulated(args.burn_in, args.samples))
    if "g2f" in args.cases:
        block += g2f_block(g2f(workdir))
    block.append(f"Whole benchmark: {time.perf_counter() - started:.0f} s.")
    replace_section(Path(args.output), "FACTORS", "\n".join(block),
                    "Number of factors: `auto` against fixed k")
    print("\n".join(block))


if __name__ == "__main__":
    main()
