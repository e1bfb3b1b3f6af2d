"""Fits of simulated data with a fixed k or `model.factors: auto`, scored against the truth:
shared by tests/test_factor_auto.py and benchmarks/bench_factors.py."""

import time
from dataclasses import dataclass

import numpy as np

from megalmm_cli.chain import Plan, run_chain
from megalmm_cli.config_schema import FactorAdaptation
from megalmm_cli.factor_count import adaptation_rule, factor_range
from megalmm_cli.storage import MemoryChain

from .conftest import model_from_simulation

DRAWS = ("Lambda", "f_h2", "resid_h2", "tot_eta_prec")


@dataclass
class Fit:
    final_k: int
    u_accuracy: float      # mean over traits of cor(posterior mean U, true U) on masked cells
    g_recovery: float      # cor of the posterior mean G with the true G (lower triangle)
    seconds: float
    path: np.ndarray       # (iteration, k) rows


def true_genetic(sim) -> np.ndarray:
    return (sim.Lambda.T * sim.f_h2[None, :]) @ sim.Lambda + np.diag(sim.G_extra)


def fit(sim, factors, burn_in: int, samples: int, thin: int = 2, seed: int = 4) -> Fit:
    """One chain on sim with model.factors = factors (an int or a FactorAdaptation)."""
    start, _ = factor_range(factors, sim.t)
    model = model_from_simulation(sim, k=start, max_groups=1)
    store = MemoryChain()
    began = time.perf_counter()
    run_chain(model, store, Plan(burn_in, samples, thin, reorder_every=20, checkpoint_every=10**6),
              DRAWS, ("U",), seed=seed, chain=1,
              adaptation=adaptation_rule(factors, sim.t, burn_in))
    seconds = time.perf_counter() - began
    cp = store.checkpoint
    lam, f_h2, resid_h2, prec = (store.samples[name].astype(np.float64) for name in DRAWS)
    genetic = (np.einsum("skt,sk,sku->tu", lam, f_h2, lam)
               + np.diag((resid_h2 / prec).sum(axis=0))) / len(lam)
    lower = np.tril_indices(sim.t)
    g_recovery = np.corrcoef(genetic[lower], true_genetic(sim)[lower])[0, 1]
    row_of = {name: i for i, name in enumerate(model.ids)}
    rows = np.array([row_of[name] for name in sim.ids])
    u_hat = cp.means["U.mean"][rows]
    masked = ~sim.observed
    masked[sim.n - sim.n_new:] = False
    cors = [np.corrcoef(u_hat[masked[:, j], j], sim.U[masked[:, j], j])[0, 1]
            for j in range(sim.t) if masked[:, j].sum() > 2]
    return Fit(int(cp.arrays["Lambda"].shape[0]), float(np.mean(cors)), float(g_recovery),
               seconds, cp.arrays["factor_path"])


def auto(start: int, maximum: int | None = None) -> FactorAdaptation:
    return FactorAdaptation(start=start, max=maximum)
