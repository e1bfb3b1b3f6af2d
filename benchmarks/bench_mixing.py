"""Mixing of the shipped example: bulk ESS per second of h2, G and U, with and without the
exact moves of step 6 (gibbs/factors.py: F drawn with U_F integrated out, the translation of F
and B1, the rotation of factor pairs).

"Plain Gibbs" is the sampler with those moves switched off (the sampler before they were
added, step for step). Both runs use the shipped example (configs/example.yaml: 300 x 200, 20%
missing, 16 factors), the same seed and the same iterations; the figures are from the run's own
diagnostics.csv (rank-normalised R-hat and bulk ESS over 2 chains) and the wall time of
`megalmm sample`. Writes the MIXING section of docs/benchmarks.md.

    python benchmarks/bench_mixing.py [--workdir DIR] [--samples 4000] [--thin 4]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import megalmm_cli.sampler as sampler_mod  # noqa: E402
from megalmm_cli.cli import main  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_sampler import machine  # noqa: E402
from docs_section import replace_section  # noqa: E402


def config_for(workdir: Path, name: str, burn_in: int, samples: int, thin: int) -> Path:
    raw = yaml.safe_load((ROOT / "configs" / "example.yaml").read_text())
    base = ROOT / "configs"
    data = raw["data"]
    data["phenotypes"]["file"] = str((base / data["phenotypes"]["file"]).resolve())
    data["covariates"]["file"] = str((base / data["covariates"]["file"]).resolve())
    data["kinships"]["id"]["genotypes"] = str((base / data["kinships"]["id"]["genotypes"]).resolve())
    data["test_cells"]["file"] = str((base / data["test_cells"]["file"]).resolve())
    raw["run"]["output_dir"] = str(workdir / name)
    raw["mcmc"].update(burn_in=burn_in, samples=samples, thin=thin, checkpoint_every=samples)
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run_variant(workdir: Path, name: str, moves: bool, args) -> dict:
    config = config_for(workdir, name, args.burn_in, args.samples, args.thin)
    saved = (sampler_mod.scores_collapsed, sampler_mod.common_fixed_columns,
             sampler_mod.rotate_factor_pairs_given_effects)
    if not moves:  # F given U_F, no translation, no rotation: the sampler before the moves
        sampler_mod.scores_collapsed = lambda model: False
        sampler_mod.common_fixed_columns = lambda model: np.zeros(model.x1.shape[1], dtype=bool)
        sampler_mod.rotate_factor_pairs_given_effects = lambda *args: None
    runner = CliRunner()
    try:
        walls = {}
        for command in ("prepare", "sample", "summarize"):
            started = time.perf_counter()
            result = runner.invoke(main, [command, str(config)])
            walls[command] = time.perf_counter() - started
            if result.exit_code != 0:
                raise SystemExit(f"{name}: {command} failed:\n{result.output}")
    finally:
        (sampler_mod.scores_collapsed, sampler_mod.common_fixed_columns,
         sampler_mod.rotate_factor_pairs_given_effects) = saved
    diag = pd.read_csv(workdir / name / "summary" / "diagnostics.csv")
    seconds = walls["sample"]
    out = {"name": name, "sample_s": seconds, "rows": {}}
    for kind in ("h2", "G", "U"):
        rows = diag[diag["param"].str.startswith(kind + "[")]
        ess = rows["ess_bulk"].to_numpy()
        out["rows"][kind] = dict(count=len(rows), rhat=rows["rhat"].max(), ess_min=ess.min(),
                                 ess_median=np.median(ess), per_s_min=ess.min() / seconds,
                                 per_s_median=np.median(ess) / seconds)
    report = (workdir / name / "summary" / "report.md").read_text()
    out["verdict"] = report.split("**Verdict: ", 1)[1].split(".**", 1)[0]
    return out


def write_section(results, args, path: Path) -> None:
    draws = args.samples // args.thin
    lines = [f"Machine: {machine()}. Run on {time.strftime('%Y-%m-%d')}.", "",
             f"The shipped example (300 x 200, 20% missing cells, 16 factors), 2 chains of "
             f"{args.burn_in} burn-in + {args.samples} sampling iterations, thin {args.thin} "
             f"({draws} draws per chain), seed 1; ESS per second of `megalmm sample` wall time "
             f"(both chains).", "",
             "| sampler | quantity | monitored | worst R-hat | bulk ESS min | median | "
             "ESS/s min | median |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        for kind, s in r["rows"].items():
            lines.append(f"| {r['name']} ({r['sample_s']:.0f} s, verdict: {r['verdict']}) | {kind} | "
                         f"{s['count']} | {s['rhat']:.3f} | {s['ess_min']:.0f} | "
                         f"{s['ess_median']:.0f} | {s['per_s_min']:.2f} | {s['per_s_median']:.1f} |")
    plain, moves = results
    ratios = ", ".join(f"{kind} {moves['rows'][kind]['per_s_min'] / plain['rows'][kind]['per_s_min']:.1f}x"
                       for kind in plain["rows"])
    lines += ["", f"Smallest ESS per second, with the moves against plain Gibbs: {ratios}."]
    replace_section(path, "MIXING", "\n".join(lines), "Mixing: the exact moves of step 6")


def main_cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--burn-in", type=int, default=2000)
    parser.add_argument("--samples", type=int, default=4000)
    parser.add_argument("--thin", type=int, default=4)
    parser.add_argument("--docs", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="megalmm-mixing-"))
    workdir.mkdir(parents=True, exist_ok=True)
    results = [run_variant(workdir, "plain Gibbs", False, args),
               run_variant(workdir, "with the moves", True, args)]
    for r in results:
        print(r["name"], f"{r['sample_s']:.1f} s", r["verdict"],
              {k: (round(v["rhat"], 3), round(v["ess_min"]), round(v["per_s_min"], 2))
               for k, v in r["rows"].items()})
    write_section(results, args, args.docs)


if __name__ == "__main__":
    main_cli()
