"""summary/report.md and summary/plots/*.png from `megalmm summarize`."""

import itertools

import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from megalmm_cli.cli import main
from megalmm_cli.plots import (
    cluster_order,
    genetic_correlation_heatmap,
    h2_plot,
    trace_plots,
)
from megalmm_cli.report import verdict

PLOTS = ("trace_worst.png", "genetic_correlation.png", "h2.png")

from .conftest import run_small_pipeline


def invoke(*args):
    return CliRunner().invoke(main, list(args))


def assert_png(path, min_bytes=5000):
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG"), path
    assert len(data) > min_bytes, (path, len(data))


@pytest.fixture(scope="module")
def summarized_run(tmp_path_factory):
    data = tmp_path_factory.mktemp("report") / "sim"
    config, results = run_small_pipeline(data, ("prepare", "sample", "summarize"))
    raw = yaml.safe_load(config.read_text())
    outputs = {command: result.output for command, result in results.items()}
    return data / "run" / "summary", outputs["summarize"], raw


def test_summarize_writes_a_report_with_real_numbers(summarized_run):
    summary, output, raw = summarized_run
    report = summary / "report.md"
    assert "report.md" in output
    text = report.read_text()
    for heading in ("# megalmm report:", "## Data", "## Run settings", "## Time per iteration",
                    "## Convergence", "## Heritability (h2)", "## Genetic covariance (G)", "## Files"):
        assert heading in text, heading
    assert raw["run"]["name"] in text.splitlines()[0]
    assert "| Traits | 6 |" in text
    assert "| Individuals (with kinship) | 40 |" in text
    assert "| Phenotyped individuals | 37 |" in text
    assert "| Chains (configured) | 2 |" in text
    assert "ms per iteration" in text
    diag = pd.read_csv(summary / "diagnostics.csv")
    worst = diag.loc[diag.rhat.idxmax()]
    assert f"`{worst.param}`" in text and f"{worst.rhat:.3f}" in text
    assert any(v in text for v in ("Verdict: converged", "Verdict: needs more iterations",
                                   "Verdict: not converged"))
    h2 = pd.read_csv(summary / "h2.csv")
    best = h2.loc[h2.h2_mean.idxmax()]
    assert f"| {best.trait} | {best.h2_mean:.3f} |" in text
    assert "Mean genetic correlation magnitude" in text
    factors = pd.read_csv(summary / "factors.csv")
    assert factors["rank"].tolist() == list(range(1, raw["model"]["factors"] + 1))
    assert ((factors.genetic_share_from_here >= 0) & (factors.genetic_share_from_here <= 1)).all()
    assert "## Number of factors" in text and "(factors.csv)" in text
    from megalmm_cli.report import factors_verdict
    assert factors_verdict(factors)[1] in text
    for link in ("(G.csv)", "(h2.csv)", "(diagnostics.csv)", "(plots/trace_worst.png)",
                 "(plots/genetic_correlation.png)", "(plots/h2.png)"):
        assert link in text, link


def test_summarize_writes_valid_plots(summarized_run):
    summary, _, _ = summarized_run
    for name in PLOTS:
        assert_png(summary / "plots" / name)


def test_clustering_puts_each_block_together():
    rng = np.random.default_rng(3)
    blocks = [0, 1, 2, 0, 1, 2, 0, 1, 2, 2]  # interleaved so input order is not clustered
    t = len(blocks)
    corr = np.full((t, t), 0.05)
    for i in range(t):
        for j in range(t):
            if blocks[i] == blocks[j]:
                corr[i, j] = 0.8 if i != j else 1.0
    corr[0, 3] = corr[3, 0] = -0.85  # a strong negative correlation still clusters together
    corr += np.triu(rng.uniform(-0.02, 0.02, (t, t)), 1) + np.triu(rng.uniform(-0.02, 0.02, (t, t)), 1).T
    order = cluster_order(corr)
    assert sorted(order) == list(range(t))
    labels = [blocks[i] for i in order]
    runs = [labels[0]] + [b for a, b in itertools.pairwise(labels) if a != b]
    assert len(runs) == 3, labels  # each block contiguous


def test_verdict_thresholds():
    assert verdict(1.005, 500)[0] == "converged"
    assert verdict(1.005, 399)[0] == "needs more iterations"
    assert verdict(1.01, 1000)[0] == "needs more iterations"
    assert verdict(1.09, 50)[0] == "needs more iterations"
    label, advice = verdict(1.1, 1000)
    assert label == "not converged" and "more iterations" in advice and "more chains" in advice
    assert verdict(float("nan"), 100)[0] == "unknown"


def test_plots_handle_many_traits_without_labels(tmp_path):
    rng = np.random.default_rng(0)
    t = 80
    traits = [f"trait_{i}" for i in range(t)]
    lam = rng.normal(size=(3, t))
    G = lam.T @ lam + np.eye(t)
    order = genetic_correlation_heatmap(tmp_path / "g.png", G, traits)
    assert sorted(order) == list(range(t))
    h2 = rng.uniform(0.1, 0.9, t)
    h2_plot(tmp_path / "h2.png", h2, h2 - 0.1, h2 + 0.1, traits)
    trace_plots(tmp_path / "trace.png", {"a": rng.normal(size=(2, 50)), "b": rng.normal(size=(2, 50))})
    for name in ("g.png", "h2.png", "trace.png"):
        assert_png(tmp_path / name, 2000)
