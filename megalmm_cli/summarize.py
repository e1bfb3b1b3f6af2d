"""`megalmm summarize`: posterior means and intervals of G, R and h2 over all chains, and
convergence diagnostics (R-hat, bulk and tail ESS) per chain."""

from pathlib import Path

import numpy as np
import pandas as pd

from .config import Config
from .errors import UserError
from .posterior import covariances
from .prepare import prepared_path
from .runinfo import chain_paths, sampling_hash
from .storage import ChainFile

NEEDED = ("Lambda", "f_h2", "resid_h2", "tot_eta_prec")


def hpd_interval(draws: np.ndarray, prob: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Shortest interval holding `prob` of the draws, per column. draws: (S, ...)."""
    s = draws.shape[0]
    ordered = np.sort(draws, axis=0)
    width = max(1, int(np.ceil(prob * s)))
    if width >= s:
        return ordered[0], ordered[-1]
    spans = ordered[width - 1:] - ordered[: s - width + 1]
    start = np.argmin(spans, axis=0)
    low = np.take_along_axis(ordered, start[None], axis=0)[0]
    high = np.take_along_axis(ordered, (start + width - 1)[None], axis=0)[0]
    return low, high


def load_chain_draws(config: Config, names=NEEDED) -> dict:
    """Draws of the named parameters per chain: name -> [(S_c, ...) for each chain]."""
    paths = chain_paths(config)
    if not paths:
        raise UserError(f"{config.path.name}: no chains to summarise; run `megalmm sample` first")
    expected = sampling_hash(config)
    out = {name: [] for name in names}
    for path in paths:
        chain = ChainFile(path)
        if chain.attrs().get("config_hash") != expected:
            raise UserError(f"{path}: was sampled with a different config; move it aside")
        for name in names:
            try:
                out[name].append(chain.read_samples(name))
            except KeyError:
                raise UserError(f"{path}: no draws of {name}; add it to posterior.samples "
                                "and sample again") from None
    if sum(len(d) for d in out[names[0]]) == 0:
        raise UserError(f"{config.path.name}: the chains hold no draws yet")
    return out


def load_draws(config: Config, names=NEEDED) -> dict:
    """Draws of the named parameters, chains concatenated: name -> (S, ...)."""
    return {name: np.concatenate(vals) for name, vals in load_chain_draws(config, names).items()}


def by_chain(per_chain: list) -> np.ndarray:
    """Stack per-chain draws [(S_c, ...)] into (chains, min S_c, ...), dropping empty chains
    and each longer chain's last draws so that all chains have equal length."""
    per_chain = [d for d in per_chain if len(d)]
    n = min(len(d) for d in per_chain)
    return np.stack([d[:n] for d in per_chain])


def effective_factors(lam: np.ndarray, share: float = 0.01) -> np.ndarray:
    """Number of factors whose loadings carry >= `share` of the total sum of squared
    loadings. lam: (..., K, t) -> (...,)."""
    ss = np.sum(lam ** 2, axis=-1)
    total = np.sum(ss, axis=-1, keepdims=True)
    return np.sum(ss >= share * total, axis=-1)


def genetic_block(lam, f_h2, resid_h2, tot_eta_prec, cols) -> np.ndarray:
    """Draws of the columns `cols` of G. lam (S, K, t), f_h2 (S, K), resid_h2 and
    tot_eta_prec (S, t), cols (b,) -> (S, t, b)."""
    block = np.einsum("ski,sk,skj->sij", lam, f_h2, lam[:, :, cols], optimize=True)
    block[:, cols, np.arange(len(cols))] += resid_h2[:, cols] / tot_eta_prec[:, cols]
    return block


def genetic_entries(lam, f_h2, rows, cols) -> np.ndarray:
    """Draws of off-diagonal entries G[rows[m], cols[m]]: lam (..., K, t), f_h2 (..., K)
    -> (..., m)."""
    return np.einsum("...km,...k,...km->...m", lam[..., rows], f_h2, lam[..., cols])


def g_hpd(draws: dict, prob: float = 0.95, max_elements: int = 2 ** 25):
    """95% HPD bounds (t, t) of G from chain-concatenated draws, a block of columns at a
    time (at most 256 columns, and at most `max_elements` draws of G held at once)."""
    lam = draws["Lambda"]
    n_draws, _, t = lam.shape
    width = int(max(1, min(256, max_elements // max(1, n_draws * t))))
    low, high = np.empty((t, t)), np.empty((t, t))
    for start in range(0, t, width):
        cols = np.arange(start, min(t, start + width))
        block = genetic_block(lam, draws["f_h2"], draws["resid_h2"], draws["tot_eta_prec"], cols)
        low[:, cols], high[:, cols] = hpd_interval(block, prob)
    return low, high


def diagnostic_series(chains: dict, h2_by_chain: np.ndarray, genetic_mean: np.ndarray,
                      traits: list, max_g: int = 50) -> tuple[list, np.ndarray]:
    """Names and per-chain draws (C, S, params) of the monitored parameters: h2 and resid_h2
    per trait, the `max_g` largest |off-diagonal| entries of genetic_mean (t, t), and the
    number of effective factors. chains: name -> (C, S, ...); h2_by_chain (C, S, t)."""
    t = len(traits)
    names = [f"h2[{tr}]" for tr in traits] + [f"resid_h2[{tr}]" for tr in traits]
    columns = [h2_by_chain, chains["resid_h2"]]
    rows, cols = np.triu_indices(t, k=1)
    if len(rows):
        order = np.argsort(-np.abs(genetic_mean[rows, cols]), kind="stable")[:max_g]
        rows, cols = rows[order], cols[order]
        columns.append(genetic_entries(chains["Lambda"], chains["f_h2"], rows, cols))
        names += [f"G[{traits[i]},{traits[j]}]" for i, j in zip(rows, cols)]
    columns.append(effective_factors(chains["Lambda"])[..., None].astype(float))
    names.append("n_effective_factors")
    return names, np.concatenate(columns, axis=-1)


def diagnostics_table(names: list, series: np.ndarray) -> pd.DataFrame:
    """Rows param, rhat, ess_bulk, ess_tail from diagnostic_series' output."""
    from .diagnostics import convergence

    return pd.DataFrame({"param": names, **convergence(series)})


def run_summarize(config: Config, echo=print) -> Path:
    import h5py

    with h5py.File(prepared_path(config), "r") as f:
        traits = [s.decode() if isinstance(s, bytes) else s for s in f["traits"][()]]
    per_chain = load_chain_draws(config)
    draws = {name: np.concatenate(vals) for name, vals in per_chain.items()}
    n_draws = draws["Lambda"].shape[0]
    t = len(traits)
    genetic, residual = np.zeros((t, t)), np.zeros((t, t))
    h2 = np.empty((n_draws, t))
    for s in range(n_draws):
        cov = covariances(draws["Lambda"][s], draws["f_h2"][s], draws["resid_h2"][s],
                          draws["tot_eta_prec"][s])
        genetic += cov["G"] / n_draws
        residual += cov["R"] / n_draws
        h2[s] = cov["h2"]
    out = Path(config.run.output_dir) / "summary"
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(genetic, index=traits, columns=traits).to_csv(out / "G.csv", float_format="%.6g")
    pd.DataFrame(residual, index=traits, columns=traits).to_csv(out / "R.csv", float_format="%.6g")
    low, high = hpd_interval(h2)
    table = pd.DataFrame({"trait": traits, "h2_mean": h2.mean(axis=0), "hpd_low": low, "hpd_high": high})
    table.to_csv(out / "h2.csv", index=False, float_format="%.4f")
    echo(f"wrote {out}/G.csv, R.csv, h2.csv from {n_draws} draws "
         f"(median h2 {np.median(table.h2_mean):.3f})")

    g_low, g_high = g_hpd(draws)
    pd.DataFrame(g_low, index=traits, columns=traits).to_csv(out / "G_hpd_low.csv", float_format="%.6g")
    pd.DataFrame(g_high, index=traits, columns=traits).to_csv(out / "G_hpd_high.csv", float_format="%.6g")

    all_lengths = [len(v) for v in per_chain["Lambda"]]
    lengths = [n for n in all_lengths if n]
    chains = {name: by_chain(vals) for name, vals in per_chain.items()}
    del per_chain
    h2_by_chain = by_chain(np.split(h2, np.cumsum(all_lengths)[:-1]))
    names, series = diagnostic_series(chains, h2_by_chain, genetic, traits)
    del chains
    diag = diagnostics_table(names, series)
    diag.to_csv(out / "diagnostics.csv", index=False, float_format="%.6g")
    worst = diag.loc[diag.rhat.idxmax()] if diag.rhat.notna().any() else None
    least = diag.loc[diag.ess_bulk.idxmin()] if diag.ess_bulk.notna().any() else None
    note = f" (chains trimmed to {min(lengths)} draws each)" if len(set(lengths)) > 1 else ""
    echo(f"convergence over {len(lengths)} chain(s){note}: worst R-hat "
         + (f"{worst.rhat:.3f} ({worst.param})" if worst is not None else "n/a")
         + ", smallest bulk ESS "
         + (f"{least.ess_bulk:.0f} ({least.param})" if least is not None else "n/a")
         + f"; wrote {out}/diagnostics.csv, G_hpd_low.csv, G_hpd_high.csv")

    from .report import write_plots_and_report

    report = write_plots_and_report(config, out, traits, genetic, table, diag, names, series,
                                    g_low, g_high)
    echo(f"wrote {out}/plots/ and the report: {report}")
    return out
