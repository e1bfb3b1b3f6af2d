"""`megalmm summarize`: posterior means and intervals of G, R and h2 over all chains, and
convergence diagnostics (R-hat, bulk and tail ESS) per chain."""

from pathlib import Path

import numpy as np
import pandas as pd

from .config import Config
from .errors import UserError
from .posterior import covariances, u_cell_indices
from .prepare import prepared_path, read_effect_names
from .outputs import replaced_directory
from .runinfo import chains_for_reading, require_prepared
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


def load_chain_draws(config: Config, names=NEEDED, warn=None) -> dict:
    """Draws of the named parameters per chain (chains 1..mcmc.chains):
    name -> [(S_c, ...) for each chain]."""
    out = {name: [] for name in names}
    for path in chains_for_reading(config, warn):
        chain = ChainFile(path)
        for name in names:
            try:
                out[name].append(chain.read_samples(name))
            except KeyError:
                raise UserError(f"{path}: no draws of {name}; add it to posterior.samples "
                                "and sample again") from None
    if sum(len(d) for d in out[names[0]]) == 0:
        raise UserError(f"{config.path.name}: the chains hold no draws yet; let `megalmm sample "
                        f"{config.path}` run past burn-in first")
    return out


def load_optional_chain_draws(config: Config, name: str):
    """Per-chain draws [(S_c, ...)] of `name`, or None when some chain does not hold it
    (older chains, or the parameter was not recorded)."""
    out = []
    for path in chains_for_reading(config):
        try:
            out.append(ChainFile(path).read_samples(name))
        except KeyError:
            return None
    return out


def u_cell_names(ids: list, traits: list, n_train: int) -> list:
    """Names "U[id,trait]" of the cells posterior.u_cell_indices(n_train, t) selects."""
    rows, cols = u_cell_indices(n_train, len(traits))
    return [f"U[{ids[i]},{traits[j]}]" for i, j in zip(rows, cols)]


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


def covariance_block(lam, factor_weight, resid_weight, tot_eta_prec, cols) -> np.ndarray:
    """Draws of the columns `cols` of Lambda' diag(factor_weight) Lambda
    + diag(resid_weight / tot_eta_prec). lam (S, K, t), factor_weight (S, K), resid_weight and
    tot_eta_prec (S, t), cols (b,) -> (S, t, b). G takes (f_h2, resid_h2), R (1 - f_h2,
    1 - resid_h2)."""
    block = np.einsum("ski,sk,skj->sij", lam, factor_weight, lam[:, :, cols], optimize=True)
    block[:, cols, np.arange(len(cols))] += resid_weight[:, cols] / tot_eta_prec[:, cols]
    return block


def genetic_block(lam, f_h2, resid_h2, tot_eta_prec, cols) -> np.ndarray:
    """Draws of the columns `cols` of G (see covariance_block)."""
    return covariance_block(lam, f_h2, resid_h2, tot_eta_prec, cols)


def _weights(draws: dict, which: str) -> tuple[np.ndarray, np.ndarray]:
    if which == "G":
        return draws["f_h2"], draws["resid_h2"]
    if which == "R":
        return 1.0 - draws["f_h2"], 1.0 - draws["resid_h2"]
    raise ValueError(f"unknown covariance {which!r}; use 'G' or 'R'")


def genetic_entries(lam, f_h2, rows, cols) -> np.ndarray:
    """Draws of off-diagonal entries G[rows[m], cols[m]]: lam (..., K, t), f_h2 (..., K)
    -> (..., m)."""
    return np.einsum("...km,...k,...km->...m", lam[..., rows], f_h2, lam[..., cols])


def covariance_hpd(draws: dict, which: str = "G", prob: float = 0.95,
                   max_elements: int = 2 ** 25):
    """95% HPD bounds (t, t) of G (which="G") or R (which="R") from chain-concatenated draws,
    a block of columns at a time (at most 256 columns, and at most `max_elements` draws of
    the matrix held at once)."""
    lam = draws["Lambda"]
    factor_weight, resid_weight = _weights(draws, which)
    n_draws, _, t = lam.shape
    width = int(max(1, min(256, max_elements // max(1, n_draws * t))))
    low, high = np.empty((t, t)), np.empty((t, t))
    for start in range(0, t, width):
        cols = np.arange(start, min(t, start + width))
        block = covariance_block(lam, factor_weight, resid_weight, draws["tot_eta_prec"], cols)
        low[:, cols], high[:, cols] = hpd_interval(block, prob)
    return low, high


def g_hpd(draws: dict, prob: float = 0.95, max_elements: int = 2 ** 25):
    """95% HPD bounds (t, t) of G (covariance_hpd)."""
    return covariance_hpd(draws, "G", prob, max_elements)


def r_hpd(draws: dict, prob: float = 0.95, max_elements: int = 2 ** 25):
    """95% HPD bounds (t, t) of R (covariance_hpd)."""
    return covariance_hpd(draws, "R", prob, max_elements)


def diagnostic_series(chains: dict, h2_by_chain: np.ndarray, genetic_mean: np.ndarray,
                      traits: list, max_g: int = 50, u_names=None) -> tuple[list, np.ndarray]:
    """Names and per-chain draws (C, S, params) of the monitored parameters: h2 and resid_h2
    per trait, the `max_g` largest |off-diagonal| entries of genetic_mean (t, t), the U cells
    (when chains holds "U_cells" (C, S, m), named by u_names) and the number of effective
    factors. chains: name -> (C, S, ...); h2_by_chain (C, S, t)."""
    t = len(traits)
    names = [f"h2[{tr}]" for tr in traits] + [f"resid_h2[{tr}]" for tr in traits]
    columns = [h2_by_chain, chains["resid_h2"]]
    rows, cols = np.triu_indices(t, k=1)
    if len(rows):
        order = np.argsort(-np.abs(genetic_mean[rows, cols]), kind="stable")[:max_g]
        rows, cols = rows[order], cols[order]
        columns.append(genetic_entries(chains["Lambda"], chains["f_h2"], rows, cols))
        names += [f"G[{traits[i]},{traits[j]}]" for i, j in zip(rows, cols)]
    if chains.get("U_cells") is not None and u_names:
        columns.append(chains["U_cells"])
        names += list(u_names)
    columns.append(effective_factors(chains["Lambda"])[..., None].astype(float))
    names.append("n_effective_factors")
    return names, np.concatenate(columns, axis=-1)


def h2_by_effect(lam, f_h2, resid_h2, tot_eta_prec) -> np.ndarray:
    """(S, m, t) share of each random effect in each trait's variance, from draws of lam
    (S, K, t), f_h2 (S, m, K), resid_h2 (S, m, t) and tot_eta_prec (S, t) (unit-variance
    factors): (sum_l lam_lj^2 f_h2[r, l] + resid_h2[r, j] / tot_eta_prec_j) / var_j."""
    squared = lam ** 2
    total = squared.sum(axis=1) + 1.0 / tot_eta_prec
    genetic = np.einsum("srk,skt->srt", f_h2, squared) + resid_h2 / tot_eta_prec[:, None, :]
    return genetic / total[:, None, :]


def diagnostics_table(names: list, series: np.ndarray) -> pd.DataFrame:
    """Rows param, rhat, ess_bulk, ess_tail from diagnostic_series' output."""
    from .diagnostics import convergence

    return pd.DataFrame({"param": names, **convergence(series)})


def run_summarize(config: Config, echo=print, warn=None) -> Path:
    """Write summary/ (replaced whole: a failed or killed run leaves the previous one)."""
    require_prepared(config)
    final = Path(config.run.output_dir) / "summary"
    per_chain = load_chain_draws(config, warn=warn)  # every input checked before writing
    with replaced_directory(final) as out:
        _summarize(config, per_chain, out, lambda text: echo(text.replace(str(out), str(final))))
    return final


def _summarize(config: Config, per_chain: dict, out: Path, echo) -> None:
    import h5py

    with h5py.File(prepared_path(config), "r") as f:
        traits = [s.decode() if isinstance(s, bytes) else s for s in f["traits"][()]]
        ids = [s.decode() if isinstance(s, bytes) else s for s in f["ids"][()]]
        n_train = int(f.attrs["n_train"])
    effect_names = read_effect_names(config)
    by_effect = {}
    for name in ("f_h2", "resid_h2"):  # several effects: (S, m, .) -> totals, kept by effect
        if per_chain[name] and per_chain[name][0].ndim == 3:
            by_effect[name] = np.concatenate(per_chain[name])
            per_chain[name] = [d.sum(axis=1) for d in per_chain[name]]
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
    pd.DataFrame(genetic, index=traits, columns=traits).to_csv(out / "G.csv", float_format="%.6g")
    pd.DataFrame(residual, index=traits, columns=traits).to_csv(out / "R.csv", float_format="%.6g")
    low, high = hpd_interval(h2)
    table = pd.DataFrame({"trait": traits, "h2_mean": h2.mean(axis=0), "hpd_low": low, "hpd_high": high})
    table.to_csv(out / "h2.csv", index=False, float_format="%.4f")
    echo(f"wrote {out}/G.csv, R.csv, h2.csv from {n_draws} draws "
         f"(median h2 {np.median(table.h2_mean):.3f})")
    shares_table = None
    if by_effect:
        shares = h2_by_effect(draws["Lambda"], by_effect["f_h2"], by_effect["resid_h2"],
                              draws["tot_eta_prec"])
        low, high = hpd_interval(shares)
        m = shares.shape[1]
        shares_table = pd.DataFrame({
            "trait": np.tile(traits, m), "effect": np.repeat(effect_names, t),
            "h2_mean": shares.mean(axis=0).ravel(), "hpd_low": low.ravel(), "hpd_high": high.ravel()})
        shares_table.to_csv(out / "h2_by_effect.csv", index=False, float_format="%.4f")
        echo(f"wrote {out}/h2_by_effect.csv (shares of {', '.join(effect_names)})")

    g_low, g_high = g_hpd(draws)
    pd.DataFrame(g_low, index=traits, columns=traits).to_csv(out / "G_hpd_low.csv", float_format="%.6g")
    pd.DataFrame(g_high, index=traits, columns=traits).to_csv(out / "G_hpd_high.csv", float_format="%.6g")
    r_low, r_high = r_hpd(draws)
    pd.DataFrame(r_low, index=traits, columns=traits).to_csv(out / "R_hpd_low.csv", float_format="%.6g")
    pd.DataFrame(r_high, index=traits, columns=traits).to_csv(out / "R_hpd_high.csv", float_format="%.6g")
    del draws

    all_lengths = [len(v) for v in per_chain["Lambda"]]
    lengths = [n for n in all_lengths if n]
    chains = {name: by_chain(vals) for name, vals in per_chain.items()}
    del per_chain
    u_names = None
    u_cells = load_optional_chain_draws(config, "U_cells")
    if u_cells is not None and [len(v) for v in u_cells] == all_lengths:
        u_names = u_cell_names(ids, traits, n_train)
        if all(v.shape[1:] == (len(u_names),) for v in u_cells):
            chains["U_cells"] = by_chain(u_cells)
        else:
            u_names = None
    h2_by_chain = by_chain(np.split(h2, np.cumsum(all_lengths)[:-1]))
    names, series = diagnostic_series(chains, h2_by_chain, genetic, traits, u_names=u_names)
    if shares_table is not None:  # each effect's share of every trait, per chain
        per_effect = by_chain(np.split(shares, np.cumsum(all_lengths)[:-1]))
        names += [f"h2_{effect}[{trait}]" for effect in effect_names for trait in traits]
        series = np.concatenate([series, per_effect.reshape(per_effect.shape[:2] + (-1,))], axis=-1)
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
         + f"; wrote {out}/diagnostics.csv, G_hpd_low.csv, G_hpd_high.csv, R_hpd_low.csv, "
         "R_hpd_high.csv")

    from .report import write_plots_and_report

    report = write_plots_and_report(config, out, traits, genetic, table, diag, names, series,
                                    g_low, g_high, h2_by_effect=shares_table)
    echo(f"wrote {out}/plots/ and the report: {report}")
