"""`megalmm summarize`: posterior means and intervals of G, R and h2 over all chains."""

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


def load_draws(config: Config, names=NEEDED) -> dict:
    """Draws of the named parameters, chains concatenated: name -> (S, ...)."""
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
    draws = {name: np.concatenate(vals) for name, vals in out.items()}
    if draws[names[0]].shape[0] == 0:
        raise UserError(f"{config.path.name}: the chains hold no draws yet")
    return draws


def run_summarize(config: Config, echo=print) -> Path:
    import h5py

    with h5py.File(prepared_path(config), "r") as f:
        traits = [s.decode() if isinstance(s, bytes) else s for s in f["traits"][()]]
    draws = load_draws(config)
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
    return out
