"""The chain state: every parameter (standardised units, rotated where noted) + the Generator."""

from dataclasses import dataclass, fields

import numpy as np

from .model import Model


# factor-indexed parameters, factor on axis 0 and on axis 1; delta and lambda_prec apart
# (column-ordered shrinkage: each caller of take_factors decides what its positions keep)
FACTOR_ROWS = ("Lambda", "lambda_phi", "lambda_nu", "tot_f_prec", "f_h2_index", "b2_global2",
               "b2_global_xi", "factor_share")
FACTOR_COLUMNS = ("F", "U_F_rot", "B2F", "B2F_prec", "b2_local2", "b2_local_nu")


@dataclass
class State:
    iteration: int
    rng: np.random.Generator       # drives the chain
    pred_rng: np.random.Generator  # drives prediction noise only, so outputs never alter the chain
    # residual (trait) side
    B1: np.ndarray            # (b1, t); columns dropped in a group are 0
    Lambda: np.ndarray        # (k, t)
    tot_eta_prec: np.ndarray  # (t,)
    resid_h2_index: np.ndarray  # (t,) int into model.grid
    # factor side
    F: np.ndarray             # (n, k)
    tot_f_prec: np.ndarray    # (k,)
    f_h2_index: np.ndarray    # (k,) int
    U_F_rot: np.ndarray       # (n, k) in the factor rotation
    B2F: np.ndarray           # (b2, k)
    B2F_prec: np.ndarray      # (b2, k)
    b2_local2: np.ndarray     # (b2, k) horseshoe auxiliaries for B2F
    b2_local_nu: np.ndarray   # (b2, k)
    b2_global2: np.ndarray    # (k,)
    b2_global_xi: np.ndarray  # (k,)
    # Lambda shrinkage
    lambda_prec: np.ndarray   # (k, t) relative prior precision
    lambda_phi: np.ndarray    # (k, t) ARD local precisions / horseshoe local variances
    lambda_nu: np.ndarray     # (k, t) horseshoe auxiliaries (unused by ARD)
    delta: np.ndarray         # (k,)
    lambda_global: np.ndarray  # (2,) horseshoe global variance and its auxiliary
    # per missing-data group: data with imputed cells, its rotation, rotated U_R
    Y: list                   # [(n_g, t_g)]
    Y_rot: list               # [(n_g, t_g)] Q_g' Y_g
    U_R_rot: list             # [(n_g, t_g)]
    # (changes + 1, 2) int: (iteration, k) at the start and after each change of the number of
    # factors (`model.factors: auto`, factor_count.py)
    factor_path: np.ndarray = None
    factor_share: np.ndarray = None  # (k,) running mean share of the variance (factors: auto)

    def __post_init__(self):
        k = self.Lambda.shape[0]
        if self.factor_path is None:
            self.factor_path = np.array([[0, k]], dtype=np.int64)
        if self.factor_share is None:
            self.factor_share = np.full(k, np.nan)

    def take_factors(self, index, contiguous: bool = False) -> None:
        """Index every factor-indexed parameter but delta and lambda_prec by `index` (a
        permutation, or a (k,) bool mask); contiguous: C-ordered copies of the (., k) ones."""
        for name in FACTOR_ROWS:
            setattr(self, name, getattr(self, name)[index])
        for name in FACTOR_COLUMNS:
            value = getattr(self, name)[:, index]
            setattr(self, name, np.ascontiguousarray(value) if contiguous else value)

    def array_fields(self) -> dict:
        """Arrays that make up the checkpoint (lists of per-group arrays included)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("iteration", "rng", "pred_rng")}


def initial_state(model: Model, rng: np.random.Generator, pred_rng: np.random.Generator,
                  flat_shrinkage: bool = False) -> State:
    """Starting values: precisions and loadings from their priors, h2 uniform on the grid.

    flat_shrinkage: delta_h = 1 for h > 1 (every factor starts at the first one's prior scale),
    as `model.factors: auto` starts; from the prior, the later factors of a large starting k
    would start near zero and be dropped before the data could fill them."""
    n, t, k = model.n, model.t, model.k
    b1, b2 = model.x1_all.shape[1], model.x2_all.shape[1]
    p = model.priors
    G = model.grid.shape[0]
    tot_eta_prec = rng.gamma(p.tot_eta_shape, 1.0 / p.tot_eta_rate, size=t)
    delta = np.concatenate([
        rng.gamma(p.delta_1[0], 1.0 / p.delta_1[1], size=1),
        np.maximum(1.0, rng.gamma(p.delta_2[0], 1.0 / p.delta_2[1], size=k - 1)),
    ])
    if p.lambda_type == "horseshoe":
        delta[0] = 1.0
    if flat_shrinkage:
        delta[1:] = 1.0
    lambda_phi = np.ones((k, t))
    lambda_prec = lambda_phi * np.cumprod(delta)[:, None]
    Lambda = rng.standard_normal((k, t)) / np.sqrt(lambda_prec * tot_eta_prec[None, :])
    resid_h2_index = rng.integers(0, G, size=t)
    f_h2_index = rng.integers(0, G, size=k)
    F = rng.standard_normal((n, k))
    Y, Y_rot, U_R_rot = [], [], []
    for g in model.groups:
        y = model.y_std[np.ix_(g.rows, g.cols)]
        y = np.where(np.isnan(y), 0.0, y)
        Y.append(np.ascontiguousarray(y))
        Y_rot.append(np.ascontiguousarray(g.rot.vectors.T @ y))
        U_R_rot.append(np.zeros_like(y))
    return State(
        iteration=0, rng=rng, pred_rng=pred_rng,
        B1=np.zeros((b1, t)), Lambda=Lambda, tot_eta_prec=tot_eta_prec,
        resid_h2_index=resid_h2_index,
        F=F, tot_f_prec=np.ones(k), f_h2_index=f_h2_index, U_F_rot=np.zeros((n, k)),
        B2F=np.zeros((b2, k)), B2F_prec=np.full((b2, k), p.b2_ridge_prec),
        b2_local2=np.ones((b2, k)), b2_local_nu=np.ones((b2, k)),
        b2_global2=np.ones(k), b2_global_xi=np.ones(k),
        lambda_prec=lambda_prec, lambda_phi=lambda_phi, lambda_nu=np.ones((k, t)), delta=delta,
        lambda_global=np.ones(2),
        Y=Y, Y_rot=Y_rot, U_R_rot=U_R_rot,
    )
