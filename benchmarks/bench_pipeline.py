"""The whole pipeline as a user runs it: simulate, prepare, sample, predict, summarize.

Each step is the `megalmm` command in its own process; its wall time, peak resident memory
(the child's maximum RSS) and the size of what it wrote are recorded. `sample` runs one
chain with the default posterior (draws of Lambda, f_h2, resid_h2, tot_eta_prec and B1; running
means of U, U_sd and eta_hat, products in float32) storing a draw every 2nd iteration; its s/iteration is the command's
own figure (the iterations after the first, which compiles). Writes a table to
docs/benchmarks.md between the PIPELINE markers, with the machine and the date.

    python benchmarks/bench_pipeline.py                        # both cases
    python benchmarks/bench_pipeline.py --cases 200x2000       # one of them
    python benchmarks/bench_pipeline.py --workdir /scratch/bench --keep
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_sampler import machine  # noqa: E402

CASES = {  # name -> simulate arguments, config changes, posterior draws
    "200x2000": {"simulate": ["--n", "200", "--t", "2000", "--k", "10", "--missing", "0.05",
                              "--factors", "20"],
                 "mcmc": {"burn_in": 100, "samples": 800, "thin": 2, "checkpoint_every": 100,
                          "reorder_every": 50, "chains": 1}},
    "665x20843": {"simulate": ["--n", "665", "--t", "20843", "--k", "20", "--missing", "0.05",
                               "--factors", "166"],
                  "mcmc": {"burn_in": 20, "samples": 400, "thin": 2, "checkpoint_every": 100,
                           "reorder_every": 10, "chains": 1}},
}


def megalmm():
    return str(Path(sys.executable).parent / "megalmm")


def run_measured(args, cwd) -> dict:
    """Run one command: wall seconds, the child's peak RSS (MB, from wait4), its output."""
    started = time.perf_counter()
    proc = subprocess.Popen(args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    chunks = []
    for line in proc.stdout:
        chunks.append(line.decode(errors="replace"))
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    out = "".join(chunks)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({proc.returncode}):\n{out}")
    return {"wall_s": wall, "peak_mb": usage.ru_maxrss / 1024, "stdout": out}


def size_mb(path: Path) -> float:
    """Bytes on disk (allocated blocks; chain files are sparse until their draws are written)."""
    if path.is_file():
        return path.stat().st_blocks * 512 / 1e6
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file()) / 1e6


def bench_case(name: str, spec: dict, workdir: Path) -> dict:
    data = workdir / name
    if data.exists():
        shutil.rmtree(data)
    steps = {}
    steps["simulate"] = run_measured([megalmm(), "simulate", str(data), *spec["simulate"]], workdir)
    config = data / "config.yaml"
    raw = yaml.safe_load(config.read_text())
    raw["mcmc"] = spec["mcmc"]
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    steps["simulate"]["output"] = size_mb(data)
    run = data / "run"
    for command in ("prepare", "sample", "predict", "summarize"):
        steps[command] = run_measured([megalmm(), command, str(config)], workdir)
    steps["prepare"]["output"] = size_mb(run / "prepared.h5")
    steps["sample"]["output"] = size_mb(run / "chains")
    steps["predict"]["output"] = size_mb(run / "predictions")
    steps["summarize"]["output"] = size_mb(run / "summary")
    found = re.search(r"\(([0-9.]+) s/iteration", steps["sample"]["stdout"])
    draws = re.search(r"(\d+) draws in", steps["sample"]["stdout"])
    csv_rate = re.search(r"CSV at (\d+) MB/s", steps["predict"]["stdout"])
    return {"case": name, "steps": {k: {key: v for key, v in s.items() if key != "stdout"}
                                    for k, s in steps.items()},
            "s_per_iteration": float(found.group(1)) if found else None,
            "draws": int(draws.group(1)) if draws else None,
            "iterations": spec["mcmc"]["burn_in"] + spec["mcmc"]["samples"],
            "csv_mb_s": int(csv_rate.group(1)) if csv_rate else None}


def write_table(results, path: Path) -> None:
    lines = []
    for r in results:
        lines += [f"**{r['case'].replace('x', ' individuals x ')} traits** ({r['iterations']} iterations, "
                  f"thin 2: {r['draws']} draws; sample {r['s_per_iteration']:.3f} s/iteration; predict's "
                  f"CSV writer {r['csv_mb_s']} MB/s)", "",
                  "| step | wall | peak RSS | output |", "|---|---|---|---|"]
        for step, s in r["steps"].items():
            lines.append(f"| {step} | {s['wall_s']:.1f} s | {s['peak_mb']:.0f} MB | {s['output']:.0f} MB |")
        lines.append("")
    block = "\n".join([f"Machine: {machine()}. Run on {time.strftime('%Y-%m-%d')}.", "", *lines]).rstrip()
    text = path.read_text()
    if "<!-- PIPELINE START -->" not in text:
        text += "\n<!-- PIPELINE START -->\n<!-- PIPELINE END -->\n"
    head, rest = text.split("<!-- PIPELINE START -->", 1)
    tail = rest.split("<!-- PIPELINE END -->", 1)[1]
    path.write_text(f"{head}<!-- PIPELINE START -->\n{block}\n<!-- PIPELINE END -->{tail}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--workdir", default=str(ROOT / "runs" / "bench_pipeline"))
    parser.add_argument("--output", default=str(ROOT / "docs" / "benchmarks.md"))
    parser.add_argument("--keep", action="store_true", help="keep the data and runs afterwards")
    args = parser.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    results = []
    for name in args.cases:
        result = bench_case(name, CASES[name], workdir)
        print(json.dumps(result), flush=True)
        results.append(result)
        if not args.keep:
            shutil.rmtree(workdir / name, ignore_errors=True)
    write_table(results, Path(args.output))


if __name__ == "__main__":
    main()
