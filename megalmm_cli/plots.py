"""Headless PNG plots for `megalmm summarize`: trace plots, a genetic correlation heatmap and
h2 per trait with intervals."""

import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np

# labels in scripts the bundled font lacks (CJK ids, say) are drawn as boxes: not a problem
# worth a warning in the user's terminal
warnings.filterwarnings("ignore", message="Glyph .* missing from font", category=UserWarning)

MAX_LABELS = 60


def correlation(cov: np.ndarray) -> np.ndarray:
    """Correlation matrix of a covariance matrix (0 where a variance is not positive)."""
    sd = np.sqrt(np.clip(np.diag(cov), 0, None))
    with np.errstate(divide="ignore", invalid="ignore"):
        corr = cov / np.outer(sd, sd)
    corr = np.nan_to_num(corr, nan=0.0, posinf=0.0, neginf=0.0)
    np.fill_diagonal(corr, 1.0)
    return np.clip(corr, -1.0, 1.0)


def cluster_order(corr: np.ndarray) -> np.ndarray:
    """Trait order from average-linkage clustering on the distance 1 - |corr|."""
    from scipy.cluster.hierarchy import leaves_list, linkage
    from scipy.spatial.distance import squareform

    t = corr.shape[0]
    if t < 3:
        return np.arange(t)
    dist = 1.0 - np.abs(corr)
    dist = (dist + dist.T) / 2
    np.fill_diagonal(dist, 0.0)
    dist = np.clip(dist, 0.0, None)
    return leaves_list(linkage(squareform(dist, checks=False), method="average"))


def trace_plots(path, series: dict) -> None:
    """One PNG, a panel per parameter, one line per chain. series: name -> (chains, draws)."""
    names = list(series)
    n = max(1, len(names))
    fig, axes = plt.subplots(n, 1, figsize=(8, 1.9 * n + 0.85), squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        draws = np.atleast_2d(np.asarray(series[name], dtype=float))
        for c, chain in enumerate(draws):
            ax.plot(np.arange(1, len(chain) + 1), chain, lw=0.8, alpha=0.85, label=f"chain {c + 1}")
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=8)
    if not names:
        axes[0, 0].text(0.5, 0.5, "no parameters", ha="center", va="center")
    else:
        axes[0, 0].legend(fontsize=7, loc="upper right", ncol=min(4, len(series[names[0]])))
    axes[-1, 0].set_xlabel("saved draw")
    fig.suptitle("Trace plots of the worst-mixing parameters (largest R-hat)", fontsize=10)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.6 / (1.9 * n + 0.85), top=1 - 0.75 / (1.9 * n + 0.85),
                        hspace=0.45)
    fig.savefig(Path(path), dpi=100)
    plt.close(fig)


def genetic_correlation_heatmap(path, G: np.ndarray, traits) -> np.ndarray:
    """Heatmap of the genetic correlations, traits ordered by clustering; returns the order."""
    corr = correlation(np.asarray(G, dtype=float))
    order = cluster_order(corr)
    t = len(traits)
    size = min(14.0, max(5.0, 0.22 * t + 3))
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(corr[np.ix_(order, order)], cmap="RdBu_r", vmin=-1, vmax=1,
                   interpolation="nearest")
    if t <= MAX_LABELS:
        labels = [str(traits[i]) for i in order]
        ax.set_xticks(range(t), labels, rotation=90, fontsize=7)
        ax.set_yticks(range(t), labels, fontsize=7)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(f"{t} traits (clustered)")
    fig.colorbar(im, ax=ax, shrink=0.8, label="genetic correlation")
    ax.set_title("Genetic correlation (posterior mean G), traits clustered")
    fig.tight_layout()
    fig.savefig(Path(path), dpi=100)
    plt.close(fig)
    return order


def h2_plot(path, h2_mean, low, high, traits) -> None:
    """h2 per trait, sorted, with 95% HPD intervals as error bars."""
    h2_mean, low, high = (np.asarray(a, dtype=float) for a in (h2_mean, low, high))
    order = np.argsort(h2_mean, kind="stable")
    t = len(traits)
    x = np.arange(t)
    fig, ax = plt.subplots(figsize=(min(16.0, max(6.0, 0.25 * t + 2)), 4.5))
    m = h2_mean[order]
    yerr = np.vstack([np.clip(m - low[order], 0, None), np.clip(high[order] - m, 0, None)])
    ax.errorbar(x, m, yerr=yerr, fmt="o", ms=3, lw=0.8, capsize=2 if t <= MAX_LABELS else 0)
    ax.set_ylim(0, 1)
    ax.set_ylabel("h2 (posterior mean, 95% HPD)")
    if t <= MAX_LABELS:
        ax.set_xticks(x, [str(traits[i]) for i in order], rotation=90, fontsize=7)
    else:
        ax.set_xticks([])
        ax.set_xlabel(f"{t} traits, sorted by h2")
    ax.set_title("Heritability per trait")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(Path(path), dpi=100)
    plt.close(fig)


def factor_count_plot(path, paths: dict) -> None:
    """The number of factors over burn-in (`model.factors: auto`), one step line per chain;
    paths: chain number -> (changes + 1, 2) array of (iteration, k)."""
    fig, ax = plt.subplots(figsize=(7.0, 3.5))
    for chain, steps in sorted(paths.items()):
        steps = np.asarray(steps).reshape(-1, 2)
        ax.step(steps[:, 0], steps[:, 1], where="post", lw=1.0, label=f"chain {chain}")
    ax.set_xlabel("iteration (burn-in)")
    ax.set_ylabel("number of factors k")
    ax.set_title("Number of factors chosen during burn-in")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(Path(path), dpi=100)
    plt.close(fig)
