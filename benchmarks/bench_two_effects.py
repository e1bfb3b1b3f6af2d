"""Two random effects (kinship + a Block effect): prepare time, Grid-LMM cache size on disk,
seconds per iteration and peak memory, through the command line as a user runs it.

Simulates n individuals x t traits with `megalmm simulate --blocks L` (no missing cells, so
one missing-data group, whose cache the factors share), runs `megalmm prepare` and a short
`megalmm sample` (burn-in only, timed iterations; once with the cache in memory, once reading
it from disk), each in its own process, and writes the table to docs/benchmarks.md between the
BENCH2 markers.

    python benchmarks/bench_two_effects.py                       # n 1000, t 1000
    python benchmarks/bench_two_effects.py --n 500 --t 500 --iterations 10
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
# the child reports its own peak resident set size when it exits
WRAPPER = ("import atexit, resource, sys; atexit.register(lambda: sys.stderr.write("
           "'PEAK_KB %d\\n' % resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)); "
           "sys.argv = ['megalmm'] + sys.argv[1:]; from megalmm_cli.cli import main; main()")


def run(args, cwd):
    """Run a megalmm command in a child; returns (wall s, its peak RSS MB, its output)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", WRAPPER] + args, cwd=cwd, capture_output=True,
                          text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"{' '.join(args)} failed:\n{done.stderr}")
    peak_kb = int(re.search(r"PEAK_KB (\d+)", done.stderr).group(1))
    return wall, peak_kb / 1024, done.stderr + done.stdout


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--t", type=int, default=1000)
    parser.add_argument("--k", type=int, default=20, help="factors fitted")
    parser.add_argument("--blocks", type=int, default=50)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        run(["simulate", str(data), "--n", str(args.n), "--t", str(args.t), "--k", "10",
             "--missing", "0", "--blocks", str(args.blocks), "--markers", "2000"], tmp)
        config = data / "config.yaml"
        raw = yaml.safe_load(config.read_text())
        raw["model"]["factors"] = args.k
        raw["mcmc"] = {"burn_in": args.iterations + 1, "samples": 1, "thin": 1,
                       "checkpoint_every": 10_000, "reorder_every": 10_000, "chains": 2}
        config.write_text(yaml.safe_dump(raw))
        prep_s, prep_mb, prep_text = run(["prepare", str(config)], tmp)
        print(prep_text.strip())
        cache = data / "run" / "grid_cache.h5"
        cache_mb = cache.stat().st_size / 2**20
        per_it, sample_mb = {}, {}
        for chain, mode in ((1, "memory"), (2, "disk")):
            _, sample_mb[mode], text = run(["sample", str(config), "--chain", str(chain),
                                            "--cache", mode], tmp)
            print(text.strip())
            per_it[mode] = float(re.search(r"\(([\d.]+) s/iteration", text).group(1))
    row = (f"| {args.n:,} x {args.t:,} x {args.k}, id kinship + Block ({args.blocks} levels) "
           f"| {prep_s:.1f} | {cache_mb:,.0f} | {per_it['memory']:.3f} / {per_it['disk']:.3f} "
           f"| {prep_mb:,.0f} / {sample_mb['memory']:,.0f} / {sample_mb['disk']:,.0f} |")
    header = ("| n x t x k, effects | prepare s | cache MB on disk "
              "| s/iteration (cache in memory / read from disk) "
              "| peak RSS MB (prepare / sample in memory / from disk) |\n|---|---|---|---|---|")
    table = f"{header}\n{row}"
    print(table)
    if args.no_write:
        return
    doc = ROOT / "docs" / "benchmarks.md"
    text = doc.read_text()
    start, end = "<!-- BENCH2 -->", "<!-- /BENCH2 -->"
    machine = f"{os.cpu_count()} cores, python {sys.version.split()[0]}"
    block = (f"{start}\n{table}\n\n(prepare: wall time of the command, kinship from markers "
             f"included; s/iteration: sample's own figure, the mean over {args.iterations} "
             f"iterations after the first; {machine}; "
             f"`{' '.join(['python'] + sys.argv)}`)\n{end}")
    if start in text:
        text = re.sub(re.escape(start) + ".*?" + re.escape(end), block, text, flags=re.S)
    else:
        text += f"\n## Two random effects\n\n{block}\n"
    doc.write_text(text)


if __name__ == "__main__":
    main()
