"""The run config's schema: frozen dataclasses with the defaults of every key (docs/config.md),
and the names the config may use."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

TABLE_SUFFIXES = (".csv", ".tsv", ".txt", ".tab")
KINSHIP_SUFFIXES = TABLE_SUFFIXES + (".h5", ".hdf5")
PLINK_SUFFIXES = (".bed", ".bim", ".fam")
MAX_RANDOM_EFFECTS = 4
POSTERIOR_SAMPLES = ("Lambda", "f_h2", "resid_h2", "tot_eta_prec", "tot_f_prec", "B1", "B2F",
                     "F", "U_F", "U_R", "lambda_prec", "delta", "G", "R", "h2")
POSTERIOR_MEANS = ("U", "eta_hat", "F", "U_F", "U_R")


# ---------------------------------------------------------------------------------------------
# Dataclasses (the contract used by the rest of megalmm)
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RunConfig:
    name: str
    output_dir: Path
    seed: int = 1


@dataclass(frozen=True)
class PhenotypesConfig:
    file: Path
    layout: str = "wide"
    id: str | None = None
    trait: str | None = None
    value: str | None = None
    traits: tuple[str, ...] | None = None
    covariate_columns: tuple[str, ...] = ()
    missing_values: tuple[str, ...] = ("NA", "")


@dataclass(frozen=True)
class CovariatesConfig:
    file: Path
    id: str | None = None


@dataclass(frozen=True)
class KinshipConfig:
    name: str
    file: Path | None = None
    h5_dataset: str = "K"
    plink: Path | None = None
    genotypes: Path | None = None
    identity: bool = False


@dataclass(frozen=True)
class TestCellsConfig:
    __test__ = False  # not a pytest test class

    file: Path
    id: str = "id"
    trait: str = "trait"
    value: str = "value"


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    phenotypes: PhenotypesConfig
    covariates: CovariatesConfig | None = None
    kinships: tuple[KinshipConfig, ...]
    test_cells: TestCellsConfig | None = None
    psd_tolerance: float = 1e-6


@dataclass(frozen=True)
class FactorAdaptation:
    """`model.factors: auto` or {start, max, epsilon}: k chosen during burn-in (factor_count.py).
    start/max None: chosen from the number of traits (factor_count.factor_range)."""
    start: int | None = None
    max: int | None = None
    epsilon: float = 1e-3


@dataclass(frozen=True)
class ModelConfig:
    fixed: str = "~ 1"
    factor_fixed: str | None = None
    random: tuple[str, ...] = ()  # load_config always fills it (default: see docs/config.md)
    factors: int | FactorAdaptation = 20  # a FactorAdaptation for `auto` or a mapping
    h2_divisions: int = 20
    scale_y: bool = True


@dataclass(frozen=True)
class VarPrior:
    V: float
    nu: float


@dataclass(frozen=True)
class GammaParams:
    shape: float
    rate: float


@dataclass(frozen=True)
class LambdaPrior:
    type: str = "ARD"
    df: float = 3.0
    delta_1: GammaParams = GammaParams(2.0, 1.0)
    delta_2: GammaParams = GammaParams(3.0, 1.0)
    delta_iterations_factor: int = 100
    prop_0: float = 0.1


@dataclass(frozen=True)
class B2Prior:
    type: str = "horseshoe"
    prop_0: float = 0.1
    ridge_prec: float = 1.0


@dataclass(frozen=True)
class H2Prior:
    resid: str | tuple[float, ...] = "uniform"
    factors: str | tuple[float, ...] = "uniform"


@dataclass(frozen=True)
class PriorsConfig:
    tot_Y_var: VarPrior = VarPrior(0.5, 5.0)
    tot_F_var: VarPrior = VarPrior(0.9, 20.0)
    lambda_: LambdaPrior = LambdaPrior()
    B2: B2Prior = B2Prior()
    h2_prior: H2Prior = H2Prior()


@dataclass(frozen=True)
class MissingDataConfig:
    max_groups: int | str = "auto"


@dataclass(frozen=True)
class McmcConfig:
    burn_in: int = 500
    reorder_every: int = 100
    samples: int = 1000
    thin: int = 2
    checkpoint_every: int = 100
    chains: int = 1


@dataclass(frozen=True)
class PosteriorConfig:
    samples: tuple[str, ...] = ("Lambda", "f_h2", "resid_h2", "tot_eta_prec", "B1")
    means: tuple[str, ...] = ("U", "eta_hat")
    dtype: str = "float32"        # type of the stored draws (the checkpointed state is float64)


@dataclass(frozen=True)
class SummaryConfig:
    traits: tuple[str, ...] = ()  # traits of the CSV matrices and heatmap (else `top` of them)
    top: int = 300                # at most this many traits there, chosen by `by`
    by: str = "h2"                # "h2": highest posterior mean h2; "loading": largest loadings
    matrices: bool = True         # write matrices.h5: G, R and G_cor over every trait
    dtype: str = "float32"        # type of the matrices in matrices.h5


@dataclass(frozen=True, kw_only=True)
class Config:
    path: Path
    format_version: int = 1
    run: RunConfig
    data: DataConfig
    model: ModelConfig = field(default_factory=ModelConfig)
    priors: PriorsConfig = field(default_factory=PriorsConfig)
    missing_data: MissingDataConfig = field(default_factory=MissingDataConfig)
    mcmc: McmcConfig = field(default_factory=McmcConfig)
    posterior: PosteriorConfig = field(default_factory=PosteriorConfig)
    summary: SummaryConfig = field(default_factory=SummaryConfig)
