"""Speed on data shaped like breeders' data: many missing-data groups, through the CLI.

Cases (each: `megalmm prepare`, then `megalmm sample` with the default posterior, running
means of U, U_sd and eta_hat, thin 2; each command in its own process):

- 1800x20: 1,800 lines x 20 traits, a VanRaden kinship from 10,000 simulated markers
  (computed by prepare), `~ Population + x`, 15 factors; cells missing the way field trials
  miss them: lines come in 60 sets (campaigns), and a trait is unmeasured on whole sets, at
  per-trait rates from 0% (3 traits) through 5-20% to 36% and 92%; `max_groups: auto`.
  It stands in for the real 1,814 x 20 data set of shared/anchors/README.md (R: 1.15-1.25 s
  per iteration, 758-848 s of set-up, 2.7-3.1 GB).
- g2f: shared/data/g2f_yield (502 lines x 19 environments, 65% missing), the R tutorial's
  model (`~ C(Population)`, 15 factors); R: 0.048 s per iteration (r_megalmm_g2f_timing.csv).
- 2000x1000: 2,000 x 1,000, 10 clusters of 100 traits, each cluster unmeasured on its own
  blocks of lines (10 groups), 20 factors.

Reported: s/iteration (from sample's own timing, compilation excluded), set-up s (prepare
wall time plus sample's set-up), peak RSS of each command, CPU use of sample ((user + sys) /
wall), the groups formed, and the time by Gibbs step (an in-process run of the same model,
median seconds per iteration of each step, and of the per-draw work). Writes the MISSING
section of docs/benchmarks.md.

    python benchmarks/bench_missing.py [--workdir DIR] [--cases 1800x20 g2f 2000x1000]
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_sampler import machine  # noqa: E402
from docs_section import replace_section  # noqa: E402

SHARED = ROOT.parent / "shared"
G2F = SHARED / "data" / "g2f_yield"
ANCHORS = SHARED / "anchors"


def megalmm():
    return str(Path(sys.executable).parent / "megalmm")


def run_measured(args, cwd) -> dict:
    """One command in a child: wall s, peak RSS MB and CPU s (user + sys) from wait4."""
    started = time.perf_counter()
    proc = subprocess.Popen(args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = proc.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{out}")
    return {"wall_s": wall, "peak_mb": usage.ru_maxrss / 1024,
            "cpu_s": usage.ru_utime + usage.ru_stime, "out": out}


# ------------------------------------------------------------------------ the data sets


def campaign_mask(rng, n: int, rates: np.ndarray, n_sets: int) -> np.ndarray:
    """(n, t) bool observed: lines in n_sets campaigns, each trait unmeasured on whole sets
    so that about rates[j] of its lines are missing."""
    sets = rng.permutation(np.arange(n) % n_sets)
    observed = np.ones((n, rates.size), dtype=bool)
    for j, rate in enumerate(rates):
        dropped = rng.permutation(n_sets)[: int(round(rate * n_sets))]
        observed[np.isin(sets, dropped), j] = False
    return observed


def simulated_case(workdir: Path, name: str, n: int, t: int, k_true: int, factors: int,
                   markers: int, observed_of, burn_in: int, samples: int) -> Path:
    data = workdir / name
    run_measured([megalmm(), "simulate", str(data), "--n", str(n), "--t", str(t), "--k",
                  str(k_true), "--missing", "0", "--markers", str(markers), "--seed", "7"], workdir)
    pheno = pd.read_csv(data / "phenotypes.csv")
    traits = [c for c in pheno.columns if c.startswith("trait")]
    observed = observed_of(np.random.default_rng(11), n, len(traits))
    values = pheno[traits].to_numpy()
    pheno[traits] = np.where(observed, values, np.nan)
    pheno.to_csv(data / "phenotypes.csv", index=False, na_rep="NA")
    config = data / "config.yaml"
    raw = yaml.safe_load(config.read_text())
    raw["data"]["kinships"] = {"id": {"genotypes": "genotypes.csv"}}
    raw["data"].pop("test_cells", None)
    raw["model"]["factors"] = factors
    raw["missing_data"] = {"max_groups": "auto"}
    raw["mcmc"] = {"burn_in": burn_in, "reorder_every": 100, "samples": samples, "thin": 2,
                   "checkpoint_every": burn_in + samples, "chains": 1}
    raw["posterior"] = {"samples": ["Lambda", "f_h2", "resid_h2", "tot_eta_prec", "B1"],
                        "means": ["U", "eta_hat"]}
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    return config


def case_1800x20(workdir: Path, burn_in: int, samples: int) -> Path:
    def observed(rng, n, t):
        rates = np.concatenate([[0.0, 0.0, 0.0], rng.uniform(0.05, 0.20, t - 5), [0.36, 0.92]])
        return campaign_mask(rng, n, rates, 60)
    return simulated_case(workdir, "1800x20", 1800, 20, 8, 15, 10_000, observed, burn_in, samples)


def case_2000x1000(workdir: Path, burn_in: int, samples: int) -> Path:
    def observed(rng, n, t):
        sets = rng.permutation(np.arange(n) % 40)
        out = np.ones((n, t), dtype=bool)
        for c in range(10):  # cluster c of 100 traits misses campaigns 4c..4c+3 (10% of lines)
            out[np.ix_(np.isin(sets, np.arange(4 * c, 4 * c + 4)), np.arange(c * t // 10, (c + 1) * t // 10))] = False
        return out
    return simulated_case(workdir, "2000x1000", 2000, 1000, 10, 20, 2000, observed, burn_in, samples)


def case_g2f(workdir: Path, burn_in: int, samples: int) -> Path:
    data = workdir / "g2f"
    data.mkdir(parents=True, exist_ok=True)
    config = data / "config.yaml"
    config.write_text(yaml.safe_dump({
        "run": {"name": "g2f", "output_dir": str(data / "run"), "seed": 1},
        "data": {"phenotypes": {"file": str(G2F / "yield_tall.csv"), "layout": "tall", "id": "Line",
                                "trait": "Env", "value": "Yield"},
                 "kinships": {"Line": {"file": str(G2F / "K.csv")}}},
        "model": {"fixed": "~ C(Population)", "random": ["Line"], "factors": 15, "h2_divisions": 20},
        "priors": {"tot_Y_var": {"V": 0.5, "nu": 5}, "tot_F_var": {"V": 0.9, "nu": 20},
                   "lambda": {"type": "ARD", "df": 3, "delta_1": {"shape": 2, "rate": 1},
                              "delta_2": {"shape": 3, "rate": 1}}},
        "missing_data": {"max_groups": "auto"},
        "mcmc": {"burn_in": burn_in, "reorder_every": 100, "samples": samples, "thin": 2,
                 "checkpoint_every": burn_in + samples, "chains": 1},
    }, sort_keys=False))
    return config


CASES = {"1800x20": (case_1800x20, 300, 600), "g2f": (case_g2f, 500, 1000),
         "2000x1000": (case_2000x1000, 60, 120)}


# ------------------------------------------------------------------------ time by step


def step_times(config: Path, iterations: int) -> dict:
    """Median seconds per iteration of each Gibbs step and of the per-draw work, in-process."""
    import megalmm_cli.sampler as s
    from megalmm_cli.chain import _record
    from megalmm_cli.config import load_config
    from megalmm_cli.gibbs.blas import matmul
    from megalmm_cli.posterior import RunningMoments, model_u_cells
    from megalmm_cli.prepare import load_model
    from megalmm_cli.state import initial_state

    model = load_model(load_config(config))
    state = initial_state(model, np.random.default_rng(1), np.random.default_rng(2))
    moments = {"U": RunningMoments.empty((len(model.ids), model.t)),
               "eta_hat": RunningMoments.empty((len(model.ids), model.t), False)}
    names = ("Lambda", "f_h2", "resid_h2", "tot_eta_prec", "B1", "U_cells")
    cells = model_u_cells(model)

    def per_draw(model, state):  # in float32, as `sample` does with the default posterior.dtype
        _record(model, state, names, moments, cells, np.float32)

    rotated = {}

    def trait_side(model, state):  # as gibbs_iteration: F's rotation once, for steps 2-5
        rotated["F"] = matmul(model.factor_rot.vectors.T, state.F)
        s.sample_trait_side(model, state, rotated["F"])

    def factor_side(model, state):
        s.sample_factor_side(model, state, rotated["F"])

    steps = {"impute": s.impute_missing, "trait side (2-4)": trait_side,
             "factor side (5)": factor_side, "scores and moves (6)": s.sample_scores,
             "shrinkage (7-8)": s.sample_shrinkage, "per-draw means": per_draw}
    times = {name: [] for name in steps}
    for it in range(iterations + 2):
        for name, step in steps.items():
            started = time.perf_counter()
            step(model, state)
            if it >= 2:  # the first two include compilation
                times[name].append(time.perf_counter() - started)
    return {name: float(np.median(v)) for name, v in times.items()}


# ------------------------------------------------------------------------ running a case


def bench(name: str, workdir: Path) -> dict:
    make, burn_in, samples = CASES[name]
    config = make(workdir, burn_in, samples)
    prepare = run_measured([megalmm(), "prepare", str(config)], workdir)
    sample = run_measured([megalmm(), "sample", str(config)], workdir)
    per_iter = float(re.search(r"\(([0-9.]+) s/iteration", sample["out"]).group(1))
    setup = float(re.search(r"set-up ([0-9.]+) s", sample["out"]).group(1))
    groups = int(re.search(r"(\d+) missing-data group", prepare["out"]).group(1))
    iterations = burn_in + samples
    return {"case": name, "groups": groups, "s_per_iteration": per_iter,
            "setup_s": prepare["wall_s"] + setup, "prepare_peak_mb": prepare["peak_mb"],
            "sample_peak_mb": sample["peak_mb"], "cpu": sample["cpu_s"] / sample["wall_s"],
            "iterations": iterations, "steps": step_times(config, 20 if name != "2000x1000" else 6)}


def r_figures() -> dict:
    """The R package's s/iteration for each case (fastest, slowest), from shared/anchors/."""
    out = {}
    readme = (ANCHORS / "README.md").read_text()
    found = re.search(r"then ([0-9.]+) s per iteration", readme)  # the 1,814 x 20 real data set
    out["1800x20"] = ((1.15, 1.25) if found is None else (float(found.group(1)),) * 2,
                      "the real 1,814 x 20 data set with 16 groups, anchors README")
    rows = list(csv.DictReader(open(ANCHORS / "r_megalmm_g2f_timing.csv")))
    g2f = [float(r["s_per_iter"]) for r in rows if r.get("s_per_iter")]
    out["g2f"] = ((min(g2f), max(g2f)), "r_megalmm_g2f_timing.csv, 5 folds")
    scaling = [float(r["seconds_per_iter"]) for name in ("r_megalmm_scaling.csv", "r_megalmm_scaling_2threads.csv")
               for r in csv.DictReader(open(ANCHORS / name)) if (r["n"], r["t"]) == ("2000", "1000")]
    out["2000x1000"] = ((min(scaling), max(scaling)), "complete data, r_megalmm_scaling*.csv")
    return out


def write_section(results, path: Path) -> None:
    lines = [f"Machine: {machine()}. Run on {time.strftime('%Y-%m-%d')}. `megalmm sample` with "
             "the default posterior (running means of U, U_sd and eta_hat), thin 2; s/iteration "
             "from sample's own timing (compilation excluded); set-up = prepare + sample's set-up.",
             "", "| case | groups | s/iteration | R s/iteration | speed-up | set-up s | peak RSS prepare / sample | CPU use (cores) |",
             "|---|---|---|---|---|---|---|---|"]
    anchors = r_figures()
    for r in results:
        (low, high), source = anchors[r["case"]]
        span = lambda a, b, fmt: f"{a:{fmt}}" if f"{a:{fmt}}" == f"{b:{fmt}}" else f"{a:{fmt}}-{b:{fmt}}"  # noqa: E731
        lines.append(f"| {r['case']} | {r['groups']} | {r['s_per_iteration']:.4f} | {span(low, high, '.3f')} ({source}) | "
                     f"{span(low / r['s_per_iteration'], high / r['s_per_iteration'], '.0f')}x | "
                     f"{r['setup_s']:.1f} | {r['prepare_peak_mb']:.0f} / {r['sample_peak_mb']:.0f} MB | "
                     f"{r['cpu']:.2f} |")
    lines += ["", "Time by Gibbs step (median s per iteration, in-process, same model; the trait "
              "side includes the rotation of F that steps 2-5 share; the per-draw means run at "
              "every stored draw, every 2nd iteration):", "",
              "| case | " + " | ".join(results[0]["steps"]) + " |",
              "|---|" + "---|" * len(results[0]["steps"])]
    for r in results:
        lines.append(f"| {r['case']} | " + " | ".join(f"{v:.4f}" for v in r["steps"].values()) + " |")
    replace_section(path, "MISSING", "\n".join(lines), "Missing-data groups (real data's shape)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="megalmm-missing-"))
    workdir.mkdir(parents=True, exist_ok=True)
    results = []
    for name in args.cases:
        results.append(bench(name, workdir))
        print(results[-1], flush=True)
    if not args.no_write:
        write_section(results, args.docs)


if __name__ == "__main__":
    main()
