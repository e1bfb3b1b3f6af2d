"""Seconds per Gibbs iteration, set-up time and peak memory at the R package's timed sizes.

Each size runs in a fresh process: simulate data from the MegaLMM model (as the R timings
did: VanRaden kinship from 2,000 random markers, 10 true factors with h2 ~ U(0.1, 0.9),
40% non-zero loadings decaying with rank, residual h2 ~ U(0, 0.5), residual variance
~ U(0.2, 0.6)), build the model (set-up), run warm-up iterations (numba compilation), then
time iterations one by one and report the median. Peak RSS is the child's maximum resident
set size. Writes the table to docs/benchmarks.md (between the BENCH markers).

    python benchmarks/bench_sampler.py                 # all sizes
    python benchmarks/bench_sampler.py --sizes 500x1000 --iterations 20
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
R_ANCHORS = {  # n, t, k -> R s/iteration, set-up s, peak MB (faster of the two runs, 2 threads)
    (500, 100, 20): (0.0399, 2.6, 324),
    (500, 1000, 20): (0.2803, 3.1, 510),
    (500, 5000, 20): (1.3532, 4.6, 1070),
    (2000, 1000, 20): (2.7149, 74.4, 1369),
    (2000, 5000, 20): (15.7924, 91.1, 2791),
    (665, 20843, 166): (22.9036, 21.06, 3904),
}
DEFAULT_SIZES = ["500x100x20", "500x1000x20", "500x5000x20", "2000x1000x20", "2000x5000x20", "665x20843x166"]


def simulate(n, t, k_true, rng):
    """Y (n, t) and K (n, n) from the MegaLMM model, no missing data."""
    import numpy as np

    from megalmm_cli.kinship import vanraden

    freq = rng.uniform(0.05, 0.5, 2000)
    kinship = vanraden(rng.binomial(2, freq, size=(n, 2000)).astype(float))
    values, vectors = np.linalg.eigh(kinship)
    half = vectors * np.sqrt(np.clip(values, 0, None))
    f_h2 = rng.uniform(0.1, 0.9, k_true)
    factors = half @ rng.standard_normal((n, k_true)) * np.sqrt(f_h2) + \
        rng.standard_normal((n, k_true)) * np.sqrt(1 - f_h2)
    scale = 0.8 ** np.arange(k_true)
    loadings = rng.standard_normal((k_true, t)) * (rng.random((k_true, t)) < 0.4) * scale[:, None]
    resid_h2, resid_var = rng.uniform(0, 0.5, t), rng.uniform(0.2, 0.6, t)
    y = factors @ loadings
    y += (half @ rng.standard_normal((n, t))) * np.sqrt(resid_h2 * resid_var)
    y += rng.standard_normal((n, t)) * np.sqrt((1 - resid_h2) * resid_var)
    return y, kinship


def child(n, t, k, iterations):
    """Runs in the subprocess: prints one JSON line of measurements."""
    import resource

    import numpy as np

    from megalmm_cli.model import Priors, build_model
    from megalmm_cli.sampler import gibbs_iteration
    from megalmm_cli.state import initial_state

    rng = np.random.default_rng(1)
    y, kinship = simulate(n, t, 10, rng)
    priors = Priors(4.0, 2.5, 19.0, 18.0, "ARD", 3.0, (2.0, 1.0), (3.0, 1.0), 100, 0.1,
                    "horseshoe", 0.1, 1.0)
    start = time.perf_counter()
    model = build_model([str(i) for i in range(n)], [str(j) for j in range(t)], y, kinship,
                        np.ones((n, 1)), ["Intercept"], np.zeros((n, 0)), k, 20, priors, max_groups=1)
    del y
    state = initial_state(model, np.random.default_rng(2), np.random.default_rng(3))
    setup = time.perf_counter() - start
    for _ in range(3):  # compilation and warm-up
        gibbs_iteration(model, state)
    times = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        gibbs_iteration(model, state)
        times.append(time.perf_counter() - t0)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"n": n, "t": t, "k": k, "setup_s": setup, "s_per_iter": float(np.median(times)),
                      "min_s": float(np.min(times)), "max_s": float(np.max(times)),
                      "iterations": iterations, "peak_mb": peak_mb}))


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import numpy

    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}, numpy {numpy.__version__}")


def write_table(results, path: Path) -> None:
    lines = ["| n | t | k | megalmm s/iteration (median) | R s/iteration | speed-up | megalmm set-up s | R set-up s "
             "| megalmm peak MB | R peak MB |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        anchor = R_ANCHORS.get((r["n"], r["t"], r["k"]))
        r_iter, r_setup, r_mb = anchor if anchor else (float("nan"),) * 3
        lines.append(f"| {r['n']:,} | {r['t']:,} | {r['k']} | {r['s_per_iter']:.4f} | {r_iter:.3f} | "
                     f"{r_iter / r['s_per_iter']:.0f}x | {r['setup_s']:.1f} | {r_setup:.1f} | "
                     f"{r['peak_mb']:.0f} | {r_mb:.0f} |")
    block = "\n".join([f"Machine: {machine()}. Run on {time.strftime('%Y-%m-%d')}.", "", *lines])
    text = path.read_text() if path.exists() else "<!-- BENCH START -->\n<!-- BENCH END -->\n"
    head, rest = text.split("<!-- BENCH START -->", 1)
    tail = rest.split("<!-- BENCH END -->", 1)[1]
    path.write_text(f"{head}<!-- BENCH START -->\n{block}\n<!-- BENCH END -->{tail}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="*", default=DEFAULT_SIZES, help="n x t x k, e.g. 500x1000x20")
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--output", default=str(ROOT / "docs" / "benchmarks.md"))
    parser.add_argument("--child", nargs=4, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    results = []
    for size in args.sizes:
        n, t, k = (int(x) for x in size.split("x"))
        out = subprocess.run([sys.executable, __file__, "--child", str(n), str(t), str(k),
                              str(args.iterations)], capture_output=True, text=True, check=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        print(json.dumps(result), flush=True)
        results.append(result)
    write_table(results, Path(args.output))


if __name__ == "__main__":
    main()
