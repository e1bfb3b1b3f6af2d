"""The fitted model's fixed inputs: data in the rotated bases, designs, grid, priors.

`build_model` is pure (arrays in, Model out); `prepare.py` stores a Model in prepared.h5 and
reads it back. Rows of the model are the training rows (individuals with at least one
observed training cell); individuals without any are predicted by conditioning on the
training rows' random effects through the kinship (`Projection`).
"""

from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np

from .design import independent_columns, missing_data_groups
from .gibbs.missing import missing_cells_csr
from .gibbs.small_groups import SmallGroups, qualifies
from .gridcache import GridCache, WhitenedData, build_cache, whitened_bytes
from .gridlmm import Rotation, grid_weights, h2_grid, h2_log_prior, rotation


def as_slice(cols: np.ndarray):
    """Column indices as a slice when they are consecutive (indexing with it gives views, not
    copies), else cols."""
    if cols.size and int(cols[-1]) - int(cols[0]) + 1 == cols.size and np.all(np.diff(cols) == 1):
        return slice(int(cols[0]), int(cols[-1]) + 1)
    return cols


@dataclass(frozen=True)
class Projection:
    """Conditional draw of random effects on other rows given the rotated ones on a row set.

    u_other = mean_map @ u_rot + chol @ z * sqrt(var), with mean_map = K[o, R] Q diag(1/s)
    (zero where s = 0) and chol a factor of K[o, o] - K[o, R] K[R, R]^+ K[R, o].
    other_rows: (n_o,) indices into all N individuals; mean_map: (n_o, n_g); chol: (n_o, n_o).
    """

    other_rows: np.ndarray
    mean_map: np.ndarray
    chol: np.ndarray


@dataclass(frozen=True)
class GroupModel:
    """One missing-data group: its rows (into training rows), traits, rotation and designs."""

    rows: np.ndarray          # (n_g,) indices into training rows
    cols: np.ndarray          # (t_g,) trait indices
    rot: Rotation             # eigenbasis of K on these rows
    weights: np.ndarray       # (G, n_g) grid weights 1 / (h2 s + 1 - h2)
    x1_keep: np.ndarray       # (b1,) bool: identifiable fixed-effect columns in this group
    x1_rot: np.ndarray        # (n_g, b1_g) Q' X1[rows][:, keep]
    observed: np.ndarray      # (n_g, t_g) bool
    miss_ptr: np.ndarray      # (t_g + 1,) CSR pointers of the imputed cells, by column
    miss_rows: np.ndarray     # (n_miss,) local row of each imputed cell
    projection: Projection    # to every individual outside `rows`
    cache: GridCache | None = None     # several random effects: the general Grid-LMM path
    effect_projections: tuple = ()     # several effects: one Projection per effect (raw rows)

    @cached_property
    def col_index(self):
        """The group's traits as a slice when they are consecutive (one group of all traits,
        typically), else as cols: indexing with a slice gives views, not copies."""
        return as_slice(self.cols)

    @cached_property
    def whitened(self):
        """WhitenedData of this group on the general path (None with one effect, or when it
        would exceed gridcache.WHITENED_MAX_BYTES)."""
        if self.cache is None or not whitened_bytes(self.rows.size, self.cols.size,
                                                    self.cache.n_slices):
            return None
        imputed = np.diff(self.miss_ptr) > 0  # these columns change every iteration
        return WhitenedData(self.cache, [as_slice(c) for c in (np.flatnonzero(~imputed),
                                                               np.flatnonzero(imputed)) if c.size])

    @cached_property
    def half_logdet(self) -> np.ndarray:
        """(G,) -log|V(h)| / 2 of the grid log-likelihood."""
        if self.cache is not None:
            return self.cache.half_logdet
        return 0.5 * np.log(self.weights).sum(axis=1)


@dataclass(frozen=True)
class Priors:
    tot_eta_shape: float
    tot_eta_rate: float
    tot_f_shape: float
    tot_f_rate: float
    lambda_type: str          # "ARD" | "horseshoe"
    lambda_df: float
    delta_1: tuple            # (shape, rate)
    delta_2: tuple
    delta_iterations: int
    lambda_prop_0: float
    b2_type: str              # "horseshoe" | "ridge"
    b2_prop_0: float
    b2_ridge_prec: float
    # fixed effects: B1_bj ~ N(0, 1 / (tot_eta_prec_j b1_prec)); 0 (the default, and the only
    # value a run config gives) is the flat prior. A proper prior lets the Geweke tests cover
    # X1 (with a flat prior there is no joint distribution to draw from); it turns off the
    # translation move of step 6, which is exact only under the flat prior.
    b1_prec: float = 0.0


@dataclass(frozen=True)
class Model:
    ids: tuple                # (N,) all individuals (training rows first)
    traits: tuple             # (t,)
    n_train: int              # n: training rows are ids[:n_train]
    k: int                    # number of factors
    y_std: np.ndarray         # (n, t) standardised training values, NaN = missing
    trait_mean: np.ndarray    # (t,)
    trait_sd: np.ndarray      # (t,)
    x1_all: np.ndarray        # (N, b1) fixed-effect design for every individual
    x1_names: tuple
    x2_all: np.ndarray        # (N, b2) factor covariates (b2 may be 0)
    grid: np.ndarray          # (G, m) variance proportions of the m random effects
    resid_log_prior: np.ndarray   # (G,)
    factor_log_prior: np.ndarray  # (G,)
    groups: tuple             # GroupModel per missing-data group
    factor_rot: Rotation      # eigenbasis of K on all training rows
    factor_weights: np.ndarray    # (G, n)
    x2_rot: np.ndarray        # (n, b2)
    factor_projection: Projection  # to the individuals outside the training rows
    pattern_of_row: np.ndarray     # (n,) which set of groups covers each training row
    pattern_groups: tuple          # group indices per pattern
    priors: Priors
    group_of_trait: np.ndarray = field(default=None)  # (t,) group index per trait
    effect_names: tuple = ("id",)           # (m,) grouping column of each random effect
    factor_cache: GridCache | None = None   # several effects: the factors' Grid-LMM cache
    factor_effect_projections: tuple = ()   # several effects: one Projection per effect

    @cached_property
    def factor_half_logdet(self) -> np.ndarray:
        if self.factor_cache is not None:
            return self.factor_cache.half_logdet
        return 0.5 * np.log(self.factor_weights).sum(axis=1)

    @cached_property
    def grid_total(self) -> np.ndarray:
        """(G,) sum of the variance proportions at each grid point."""
        return self.grid.sum(axis=1)

    @property
    def n_effects(self) -> int:
        return self.grid.shape[1]

    @cached_property
    def small_groups(self) -> SmallGroups | None:
        """The groups whose steps 2-4 run together in one kernel (gibbs/small_groups.py),
        packed; None when no group qualifies."""
        members = [i for i, g in enumerate(self.groups)
                   if qualifies(g, int(g.x1_keep.sum()) + self.k)]
        return SmallGroups.pack(self.groups, members) if members else None

    def with_factors(self, k: int) -> "Model":
        """The same model with k factors (`model.factors: auto` changes k during burn-in)."""
        return self if k == self.k else replace(self, k=int(k))

    @property
    def n(self) -> int:
        return self.n_train

    @property
    def t(self) -> int:
        return len(self.traits)

    @property
    def x1(self) -> np.ndarray:
        return self.x1_all[: self.n_train]

    @property
    def x2(self) -> np.ndarray:
        return self.x2_all[: self.n_train]


def projection(kinship, rot: Rotation, other_rows: np.ndarray) -> Projection:
    """Conditioning map from the rotated random effects on rot.rows to other_rows."""
    n_o = other_rows.size
    if n_o == 0:
        return Projection(other_rows, np.zeros((0, rot.rows.size)), np.zeros((0, 0)))
    if kinship is None:  # iid levels: nothing is learnt about other levels
        return Projection(other_rows, np.zeros((n_o, rot.rows.size)), np.eye(n_o))
    cross = kinship[np.ix_(other_rows, rot.rows)] @ rot.vectors  # (n_o, n_g)
    inv_values = np.divide(1.0, rot.values, out=np.zeros_like(rot.values), where=rot.values > 0)
    mean_map = cross * inv_values[None, :]
    schur = kinship[np.ix_(other_rows, other_rows)] - (cross * inv_values[None, :]) @ cross.T
    values, vectors = np.linalg.eigh((schur + schur.T) / 2)
    chol = vectors * np.sqrt(np.clip(values, 0.0, None))[None, :]
    return Projection(other_rows, mean_map, chol)


def standardise(values: np.ndarray, scale: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre (and scale) each column over its observed cells. values: (n, t) with NaN."""
    mean = np.nanmean(values, axis=0)
    sd = np.nanstd(values, axis=0, ddof=1) if scale else np.ones(values.shape[1])
    sd = np.where(np.isfinite(sd) & (sd > 0), sd, 1.0)
    return (values - mean) / sd, mean, sd


def effect_projection(kinship, rows: np.ndarray, other_rows: np.ndarray, rot=None) -> Projection:
    """Conditioning map of one effect from raw (unrotated) values on rows to other_rows.
    rot: the kinship's rotation on rows when already computed."""
    rot = rotation(kinship, rows) if rot is None else rot
    proj = projection(kinship, rot, other_rows)
    return Projection(proj.other_rows, proj.mean_map @ rot.vectors.T, proj.chol)


def unused(other_rows: np.ndarray) -> Projection:
    """Placeholder for the one-effect projection when several effects use effect_projections."""
    return Projection(other_rows, np.zeros((other_rows.size, 0)), np.zeros((0, 0)))


def effect_blocks(kinships, rot: Rotation) -> list:
    """B_r = Q' K_r Q on rot.rows for every effect (B_1 = diag(s) when K_1 made rot)."""
    blocks = [np.diag(rot.values)]
    for kinship in kinships[1:]:
        block = (np.eye(rot.rows.size) if kinship is None
                 else kinship[np.ix_(rot.rows, rot.rows)])
        blocks.append(rot.vectors.T @ block @ rot.vectors)
    return blocks


def memory_cache(key, blocks, grid):
    """Default cache builder: the whole Grid-LMM cache in memory."""
    return build_cache(blocks, grid)


def build_model(
    ids,
    traits,
    values: np.ndarray,
    kinship,
    x1_all: np.ndarray,
    x1_names,
    x2_all: np.ndarray,
    k: int,
    h2_divisions: int,
    priors: Priors,
    max_groups="auto",
    trait_groups=None,
    scale_y: bool = True,
    resid_h2_prior="uniform",
    factor_h2_prior="uniform",
    progress=None,
    effect_names=None,
    general_cache: bool = False,
    cache_builder=memory_cache,
) -> Model:
    """Everything the sampler needs, from aligned arrays.

    values: (N, t) training phenotypes with NaN (test cells already hidden); kinship: (N, N)
    or None (identity) for one random effect, or a list of them (one per effect, in the
    order of effect_names; row-level Z K Z'); x1_all: (N, b1); x2_all: (N, b2). Rows with no
    observation are moved out of the training rows (they are predicted), so `ids` is
    reordered: training rows first. trait_groups: missing-data groups already chosen on those
    training rows (else from max_groups). With several effects (or general_cache) every group
    gets a Grid-LMM cache from cache_builder(key, blocks, grid), key "factors" or the group
    index.
    """
    kinships = list(kinship) if isinstance(kinship, (list, tuple)) else [kinship]
    n_effects = len(kinships)
    general = n_effects > 1 or general_cache
    values = np.asarray(values, dtype=np.float64)
    n_all, t = values.shape
    observed_any = ~np.isnan(values).all(axis=1)
    order = np.concatenate([np.flatnonzero(observed_any), np.flatnonzero(~observed_any)])
    ids = tuple(ids[i] for i in order)
    values = values[order]
    kinships = [None if K is None else K[np.ix_(order, order)] for K in kinships]
    kinship = kinships[0]
    x1_all = np.ascontiguousarray(x1_all[order])
    x2_all = np.ascontiguousarray(x2_all[order])
    n = int(observed_any.sum())
    y_std, mean, sd = standardise(values[:n], scale_y)
    observed = ~np.isnan(y_std)

    grid = h2_grid(n_effects, h2_divisions)
    resid_log_prior = h2_log_prior(resid_h2_prior, grid.shape[0], "priors.h2_prior.resid")
    factor_log_prior = h2_log_prior(factor_h2_prior, grid.shape[0], "priors.h2_prior.factors")

    all_train = np.arange(n)
    factor_rot = rotation(kinship, all_train)
    if trait_groups is None:  # else already chosen by the caller on the same training rows
        trait_groups = missing_data_groups(observed, max_groups)
    steps = len(trait_groups) + general
    factor_cache, factor_effects = None, ()
    if general:
        factor_cache = cache_builder("factors", effect_blocks(kinships, factor_rot), grid)
        if n_effects > 1:
            factor_effects = tuple(
                effect_projection(K, all_train, np.arange(n, n_all), factor_rot if e == 0 else None)
                for e, K in enumerate(kinships))
        if progress is not None:
            progress(1, steps)
    groups = []
    for gi, tg in enumerate(trait_groups):
        if np.array_equal(tg.rows, all_train):
            rot = factor_rot
        else:
            rot = rotation(kinship, tg.rows)
        keep = independent_columns(x1_all[tg.rows])
        x1_rot = rot.vectors.T @ x1_all[tg.rows][:, keep]
        obs_block = observed[np.ix_(tg.rows, tg.cols)]
        ptr, miss_rows = missing_cells_csr(obs_block)
        others = np.setdiff1d(np.arange(n_all), tg.rows)
        cache, effects = None, ()
        if general:
            cache = (factor_cache if rot is factor_rot
                     else cache_builder(gi, effect_blocks(kinships, rot), grid))
            if n_effects > 1:
                effects = tuple(effect_projection(K, tg.rows, others, rot if e == 0 else None)
                                for e, K in enumerate(kinships))
        groups.append(
            GroupModel(
                rows=tg.rows, cols=tg.cols, rot=rot,
                weights=cache.weights if general else grid_weights(grid[:, 0], rot.values),
                x1_keep=keep, x1_rot=np.ascontiguousarray(x1_rot), observed=obs_block,
                miss_ptr=ptr, miss_rows=miss_rows,
                projection=projection(kinship, rot, others) if n_effects == 1 else unused(others),
                cache=cache, effect_projections=effects,
            )
        )
        if progress is not None:
            progress(gi + 1 + general, steps)

    membership = np.zeros((n, len(groups)), dtype=bool)
    for gi, g in enumerate(groups):
        membership[g.rows, gi] = True
    patterns, pattern_of_row = np.unique(membership, axis=0, return_inverse=True)
    group_of_trait = np.empty(t, dtype=np.int64)
    for gi, g in enumerate(groups):
        group_of_trait[g.cols] = gi
    if effect_names is None:
        effect_names = tuple(f"effect{e + 1}" for e in range(n_effects)) if n_effects > 1 else ("id",)
    return Model(
        ids=ids, traits=tuple(traits), n_train=n, k=int(k), y_std=y_std, trait_mean=mean,
        trait_sd=sd, x1_all=x1_all, x1_names=tuple(x1_names), x2_all=x2_all, grid=grid,
        resid_log_prior=resid_log_prior, factor_log_prior=factor_log_prior, groups=tuple(groups),
        factor_rot=factor_rot,
        factor_weights=factor_cache.weights if general else grid_weights(grid[:, 0], factor_rot.values),
        x2_rot=np.ascontiguousarray(factor_rot.vectors.T @ x2_all[:n]),
        factor_projection=(projection(kinship, factor_rot, np.arange(n, n_all)) if n_effects == 1
                           else unused(np.arange(n, n_all))),
        pattern_of_row=pattern_of_row.ravel().astype(np.int64),
        pattern_groups=tuple(np.flatnonzero(p) for p in patterns),
        priors=priors, group_of_trait=group_of_trait, effect_names=tuple(effect_names),
        factor_cache=factor_cache, factor_effect_projections=factor_effects,
    )
