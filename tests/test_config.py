"""Tests for megalmm_cli.config: defaults, validation messages, round trip, hashing, docs."""

import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from megalmm_cli import FORMAT_VERSION
from megalmm_cli.config import config_hash, config_to_dict, load_config
from megalmm_cli.config_schema import (
    B2Prior, Config, GammaParams, H2Prior, LambdaPrior, McmcConfig, MissingDataConfig,
    ModelConfig, PosteriorConfig, PriorsConfig, VarPrior,
)
from megalmm_cli.errors import UserError

DOCS = Path(__file__).resolve().parent.parent / "docs" / "config.md"
MINIMAL = "data:\n  phenotypes: {file: y.csv}\n  kinships: {Line: {file: K.csv}}\n"

FULL = """\
format_version: 1
run: {name: g2f_fold1, output_dir: runs/g2f_fold1, seed: 7}
data:
  phenotypes: {file: yield.csv, layout: tall, id: Line, trait: Env, value: Yield,
               missing_values: [NA, "", "-9"]}
  covariates: {file: lines.csv, id: Line}
  kinships: {Line: {file: K.csv}, Block: null}
  test_cells: {file: test.csv, id: Line, trait: Env, value: Yield}
  psd_tolerance: 1e-5
model: {fixed: "~ Population", factor_fixed: "~ 1", random: [Line, Block], factors: 15,
        h2_divisions: 10, scale_y: false}
priors:
  tot_Y_var: {V: 0.4, nu: 6}
  tot_F_var: {nu: 10}
  lambda: {type: horseshoe, df: 4, delta_1: {shape: 2.5}, delta_2: {shape: 3, rate: 2},
           delta_iterations_factor: 50, prop_0: 0.2}
  B2: {type: ridge, prop_0: 0.3, ridge_prec: 2}
  h2_prior: {resid: [1, 1, 1, 1, 1, 1, 1, 1, 1, 1], factors: uniform}
missing_data: {max_groups: 3}
mcmc: {burn_in: 100, reorder_every: 10, samples: 200, thin: 5, checkpoint_every: 50, chains: 2}
posterior: {samples: [Lambda, G, R, h2], means: [U]}
"""


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A directory with tiny data files; the tests run in it so messages say 'run.yaml'."""
    (tmp_path / "y.csv").write_text("id,a,b\nx,1,2\n")
    (tmp_path / "yield.csv").write_text("Line,Env,Yield\nx,e1,1\n")
    (tmp_path / "lines.csv").write_text("Line,Population\nx,p\n")
    (tmp_path / "test.csv").write_text("Line,Env,Yield\nx,e1,1\n")
    (tmp_path / "K.csv").write_text(",x\nx,1\n")
    (tmp_path / "markers.csv").write_text("id,m1\nx,0\n")
    for suffix in (".bed", ".bim", ".fam"):
        (tmp_path / f"geno{suffix}").write_text("")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(text: str, name: str = "run.yaml") -> str:
    Path(name).write_text(text)
    return name


def error_of(text: str) -> str:
    with pytest.raises(UserError) as info:
        load_config(write(text))
    message = str(info.value)
    assert "\n" not in message
    return message


# --- defaults and the happy path ---------------------------------------------------------------

def test_minimal_config_gets_every_default(project):
    config = load_config(write(MINIMAL))
    assert config.path == project / "run.yaml"
    assert config.format_version == 1
    assert config.run.name == "run"
    assert config.run.output_dir == project / "runs" / "run"
    assert config.run.seed == 1
    pheno = config.data.phenotypes
    assert pheno.file == project / "y.csv" and pheno.file.is_absolute()
    assert (pheno.layout, pheno.id, pheno.trait, pheno.value) == ("wide", None, None, None)
    assert pheno.traits is None
    assert pheno.covariate_columns == () and pheno.missing_values == ("NA", "")
    assert config.data.covariates is None and config.data.test_cells is None
    assert config.data.psd_tolerance == 1e-6
    (kin,) = config.data.kinships
    assert (kin.name, kin.file, kin.h5_dataset, kin.plink, kin.genotypes, kin.identity) == (
        "Line", project / "K.csv", "K", None, None, False)
    assert config.model == ModelConfig(random=("Line",))
    assert config.model.fixed == "~ 1" and config.model.factors == 20
    assert config.model.h2_divisions == 20 and config.model.scale_y is True
    assert config.priors == PriorsConfig()
    assert config.priors.tot_Y_var == VarPrior(V=0.5, nu=5)
    assert config.priors.tot_F_var == VarPrior(V=0.9, nu=20)
    assert config.priors.lambda_ == LambdaPrior(type="ARD", df=3, delta_1=GammaParams(2, 1),
                                                delta_2=GammaParams(3, 1),
                                                delta_iterations_factor=100, prop_0=0.1)
    assert config.priors.B2 == B2Prior(type="horseshoe", prop_0=0.1, ridge_prec=1.0)
    assert config.priors.h2_prior == H2Prior(resid="uniform", factors="uniform")
    assert config.missing_data == MissingDataConfig(max_groups="auto")
    assert config.mcmc == McmcConfig(burn_in=500, reorder_every=100, samples=1000, thin=2,
                                     checkpoint_every=100, chains=1)
    assert config.posterior == PosteriorConfig(
        samples=("Lambda", "f_h2", "resid_h2", "tot_eta_prec", "B1"), means=("U", "eta_hat"))


def test_config_is_frozen(project):
    config = load_config(write(MINIMAL))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.mcmc.thin = 3


def test_full_example_loads(project):
    config = load_config(write(FULL))
    assert config.run == dataclasses.replace(config.run, name="g2f_fold1", seed=7,
                                             output_dir=project / "runs" / "g2f_fold1")
    pheno = config.data.phenotypes
    assert (pheno.layout, pheno.id, pheno.trait, pheno.value) == ("tall", "Line", "Env", "Yield")
    assert pheno.missing_values == ("NA", "", "-9")
    assert config.data.covariates.file == project / "lines.csv"
    assert config.data.test_cells.trait == "Env"
    assert config.data.psd_tolerance == 1e-5  # YAML 1.1 would read 1e-5 as a string
    line, block = config.data.kinships
    assert line.file == project / "K.csv" and not line.identity
    assert block.name == "Block" and block.identity and block.file is None
    assert config.model.random == ("Line", "Block")
    assert config.model.factor_fixed == "~ 1" and config.model.scale_y is False
    assert config.priors.tot_Y_var == VarPrior(0.4, 6.0)
    assert config.priors.tot_F_var == VarPrior(0.9, 10.0)  # V keeps its default
    lam = config.priors.lambda_
    assert lam.type == "horseshoe" and lam.delta_1 == GammaParams(2.5, 1.0)
    assert lam.delta_2 == GammaParams(3.0, 2.0) and lam.delta_iterations_factor == 50
    assert config.priors.B2 == B2Prior("ridge", 0.3, 2.0)
    assert config.priors.h2_prior.resid == (1.0,) * 10
    assert config.missing_data.max_groups == 3
    assert config.mcmc == McmcConfig(100, 10, 200, 5, 50, 2)
    assert config.posterior == PosteriorConfig(("Lambda", "G", "R", "h2"), ("U",))


def test_kinship_sources_and_identity(project):
    text = """\
data:
  phenotypes: {file: yield.csv, layout: tall, trait: Env, value: Yield}
  kinships:
    Line: {plink: geno.bed}
    Env: {identity: true}
    Block: K.csv
    Plot: {genotypes: markers.csv}
model: {random: [Line, Env, Block, Plot]}
"""
    kin = {k.name: k for k in load_config(write(text)).data.kinships}
    assert kin["Line"].plink == project / "geno"
    assert kin["Env"].identity and kin["Env"].plink is None
    assert kin["Block"].file == project / "K.csv"
    assert kin["Plot"].genotypes == project / "markers.csv"


def test_default_random_effect(project):
    two = "data:\n  phenotypes: {file: y.csv, id: Line}\n  kinships: {Env: null, Line: {file: K.csv}}\n"
    assert load_config(write(two)).model.random == ("Line",)  # the id column has a kinship
    other = "data:\n  phenotypes: {file: y.csv, id: id}\n  kinships: {Env: null, Line: {file: K.csv}}\n"
    assert load_config(write(other)).model.random == ("Env",)  # else the first kinship


def test_choices_are_case_insensitive_and_canonical(project):
    config = load_config(write(MINIMAL + "priors: {lambda: {type: ard}, B2: {type: Ridge}}\n"
                                         "missing_data: {max_groups: AUTO}\n"))
    assert config.priors.lambda_.type == "ARD"
    assert config.priors.B2.type == "ridge"
    assert config.missing_data.max_groups == "auto"


def test_paths_are_relative_to_the_config_file(project, monkeypatch):
    sub = project / "configs"
    sub.mkdir()
    (sub / "run.yaml").write_text(MINIMAL.replace("y.csv", "../y.csv").replace("K.csv", "../K.csv"))
    monkeypatch.chdir("/")
    config = load_config(sub / "run.yaml")
    assert config.data.phenotypes.file == project / "y.csv"
    assert config.run.output_dir == sub / "runs" / "run"


def test_symlinked_files_keep_their_name(project):
    """Data managed by git-annex or DVC are symlinks to blobs without a suffix."""
    (project / "blob").write_text("id,a\nx,1\n")
    (project / "linked.csv").symlink_to(project / "blob")
    config = load_config(write(MINIMAL.replace("y.csv", "linked.csv")))
    assert config.data.phenotypes.file == project / "linked.csv"


@pytest.mark.parametrize("text", [MINIMAL, FULL])
def test_config_to_dict_round_trips(project, text):
    config = load_config(write(text))
    plain = config_to_dict(config)
    dumped = yaml.safe_dump(plain, sort_keys=False)
    assert yaml.safe_load(dumped) == plain
    again = load_config(write(dumped, "again.yaml"))
    assert dataclasses.replace(again, path=config.path) == config
    assert "lambda" in plain["priors"] and "path" not in plain


# --- config_hash ---------------------------------------------------------------------------------

def test_config_hash(project):
    base = load_config(write(MINIMAL))
    same = load_config(write(MINIMAL + "model: {factors: 20}\n", "same.yaml"))
    sections = ("data", "model")
    assert config_hash(base, sections) == config_hash(same, sections)
    assert re.fullmatch(r"[0-9a-f]{64}", config_hash(base, sections))

    model = load_config(write(MINIMAL + "model: {factors: 10}\n", "model.yaml"))
    assert config_hash(model, sections) != config_hash(base, sections)

    mcmc = load_config(write(MINIMAL + "mcmc: {thin: 5, samples: 10}\n", "mcmc.yaml"))
    assert config_hash(mcmc, sections) == config_hash(base, sections)
    assert config_hash(mcmc, ("mcmc",)) != config_hash(base, ("mcmc",))

    # file contents are not part of the hash, only the paths
    (project / "y.csv").write_text("id,a\nz,3\n")
    assert config_hash(load_config("run.yaml"), sections) == config_hash(base, sections)

    with pytest.raises(ValueError):
        config_hash(base, ("nonsense",))


# --- bad configs: the exact one-line message -------------------------------------------------------

DATA = "data:\n  phenotypes: {file: y.csv}\n  kinships: {Line: {file: K.csv}}\n"
TALL = "data:\n  phenotypes: {file: yield.csv, layout: tall, %s}\n  kinships: {Line: {file: K.csv}}\n"
KIN = "data:\n  phenotypes: {file: y.csv}\n  kinships: {Line: %s}\n"

BAD = [
    # unknown keys, with the nearest valid key suggested
    (DATA + "model: {factorss: 3}\n", "run.yaml: model.factorss: unknown key; did you mean 'factors'?"),
    (DATA + "mcmcc: {thin: 2}\n", "run.yaml: mcmcc: unknown key; did you mean 'mcmc'?"),
    (DATA + "priors: {lamda: {df: 3}}\n", "run.yaml: priors.lamda: unknown key; did you mean 'lambda'?"),
    (DATA + "priors: {lambda: {dff: 3}}\n", "run.yaml: priors.lambda.dff: unknown key; did you mean 'df'?"),
    (DATA + "mcmc: {xyz: 1}\n", "run.yaml: mcmc.xyz: unknown key; allowed: burn_in, reorder_every, "
                                "samples, thin, checkpoint_every, chains"),
    # wrong types
    (DATA + "mcmc: {thin: two}\n", "run.yaml: mcmc.thin: must be an integer >= 1, got 'two'"),
    (DATA + "mcmc: {samples: '100'}\n", "run.yaml: mcmc.samples: must be an integer >= 1, got '100'"),
    (DATA + "model: {factors: true}\n", "run.yaml: model.factors: must be an integer >= 1, `auto`, or a mapping {start: .., max: ..}, got true"),
    (DATA + "model: {factors: 2.5}\n", "run.yaml: model.factors: must be an integer >= 1, `auto`, or a mapping {start: .., max: ..}, got 2.5"),
    (DATA + "priors: {lambda: {df: yes}}\n", "run.yaml: priors.lambda.df: must be a number > 0, got true"),
    (DATA + "priors: {lambda: {df: .nan}}\n", "run.yaml: priors.lambda.df: must be a number > 0, got nan"),
    (DATA + "model: {scale_y: 1}\n", "run.yaml: model.scale_y: must be true or false, got 1"),
    (DATA + "mcmc: [1, 2]\n", "run.yaml: mcmc: must be a mapping (key: value), got a list; allowed keys: "
                              "burn_in, reorder_every, samples, thin, checkpoint_every, chains"),
    ("- data\n- model\n", "run.yaml: top level: must be a mapping of sections (format_version, run, data, "
                          "model, priors, missing_data, mcmc, posterior, summary), got a list"),
    (DATA + "run: {name: 5}\n", "run.yaml: run.name: must be a non-empty string (quote it), got 5"),
    # ranges
    (DATA + "mcmc: {thin: -2}\n", "run.yaml: mcmc.thin: must be an integer >= 1, got -2"),
    (DATA + "mcmc: {burn_in: -1}\n", "run.yaml: mcmc.burn_in: must be an integer >= 0, got -1"),
    (DATA + "model: {h2_divisions: 1}\n", "run.yaml: model.h2_divisions: must be an integer >= 2, got 1"),
    (DATA + "model: {factors: 0}\n", "run.yaml: model.factors: must be an integer >= 1, got 0"),
    (DATA + "run: {seed: -1}\n", "run.yaml: run.seed: must be an integer >= 0, got -1"),
    (DATA + "priors: {tot_Y_var: {V: 0}}\n", "run.yaml: priors.tot_Y_var.V: must be a number > 0, got 0"),
    (DATA + "priors: {tot_F_var: {nu: 1}}\n", "run.yaml: priors.tot_F_var.nu: must be a number > 1, got 1"),
    (DATA + "priors: {lambda: {prop_0: 1}}\n",
     "run.yaml: priors.lambda.prop_0: must be a number > 0 and < 1, got 1"),
    (DATA + "priors: {h2_prior: {resid: [1, -1]}}\n",
     "run.yaml: priors.h2_prior.resid[1]: must be a number >= 0, got -1"),
    (DATA + "priors: {h2_prior: {factors: flat}}\n",
     "run.yaml: priors.h2_prior.factors: must be one of uniform, got 'flat'"),
    (DATA + "missing_data: {max_groups: 0}\n",
     "run.yaml: missing_data.max_groups: must be 'auto' or an integer >= 1, got 0"),
    (DATA + "format_version: 0\n",
     "run.yaml: format_version: must be an integer >= 1, got 0"),
    # choices
    (DATA + "priors: {lambda: {type: gaussian}}\n",
     "run.yaml: priors.lambda.type: must be one of ARD, horseshoe, got 'gaussian'"),
    (DATA + "priors: {lambda: {type: horseshoes}}\n",
     "run.yaml: priors.lambda.type: must be one of ARD, horseshoe, got 'horseshoes'; did you mean 'horseshoe'?"),
    (DATA + "posterior: {samples: [Lamda]}\n",
     "run.yaml: posterior.samples[0]: unknown name 'Lamda'; did you mean 'Lambda'?"),
    (DATA + "posterior: {means: [U, U]}\n",
     "run.yaml: posterior.means[1]: 'U' is listed twice; list each name once"),
    (DATA + "model: {fixed: Population}\n", "run.yaml: model.fixed: must be an R-style formula starting "
                                            "with '~' (e.g. '~ 1' or '~ Population'), got 'Population'"),
    # missing required keys
    ("data:\n  kinships: {Line: {file: K.csv}}\n", "run.yaml: data.phenotypes: required key is missing"),
    ("data:\n  phenotypes: {layout: wide}\n  kinships: {Line: {file: K.csv}}\n",
     "run.yaml: data.phenotypes.file: required key is missing"),
    ("data:\n  phenotypes: {file: y.csv}\n", "run.yaml: data.kinships: required key is missing"),
    ("model: {factors: 3}\n", "run.yaml: data: required section is missing; it needs at least "
                              "data.phenotypes.file and data.kinships"),
    (DATA.replace("kinships: {Line: {file: K.csv}}", "kinships: {}"),
     "run.yaml: data.kinships: needs at least one kinship; e.g. kinships: {Line: {file: K.csv}}"),
    (DATA.replace("kinships: {Line: {file: K.csv}}", "kinships: [K.csv]"),
     "run.yaml: data.kinships: must be a mapping from grouping column to kinship, got a list; "
     "e.g. kinships: {Line: {file: K.csv}}"),
    (DATA + "  covariates: {id: Line}\n", "run.yaml: data.covariates.file: required key is missing"),
    # files
    (DATA.replace("y.csv", "nope.csv"), "run.yaml: data.phenotypes.file: file not found: {dir}/nope.csv; "
                                        "paths are relative to the config file's directory ({dir})"),
    (DATA.replace("y.csv", "y.xlsx"), "run.yaml: data.phenotypes.file: must be a .csv, .tsv, .txt or .tab "
                                      "file (tables may be gzip-compressed: .csv.gz), got 'y.xlsx'"),
    (DATA + "  test_cells: {file: missing.tsv}\n", "run.yaml: data.test_cells.file: file not found: "
     "{dir}/missing.tsv; paths are relative to the config file's directory ({dir})"),
    (KIN % "{plink: nope}", "run.yaml: data.kinships.Line.plink: PLINK file not found: {dir}/nope.bed; "
                            "plink is a prefix and nope.bed, .bim and .fam must all exist (paths are "
                            "relative to {dir})"),
    (KIN % "{genotypes: geno.bed}", "run.yaml: data.kinships.Line.genotypes: must be a .csv, .tsv, .txt "
                                    "or .tab file (tables may be gzip-compressed: .csv.gz), got 'geno.bed'"),
    # kinships
    (KIN % "{file: K.csv, plink: geno}",
     "run.yaml: data.kinships.Line: give exactly one of file, plink or genotypes, got file and plink"),
    (KIN % "{identity: false}", "run.yaml: data.kinships.Line: needs one of file, plink or genotypes "
                                "(or identity: true, or null, for independent levels)"),
    (KIN % "{file: K.csv, identity: true}", "run.yaml: data.kinships.Line.identity: identity: true cannot "
     "be combined with file; give either a kinship source or identity: true"),
    (KIN % "{fille: K.csv}", "run.yaml: data.kinships.Line.fille: unknown key; did you mean 'file'?"),
    ("data:\n  phenotypes: {file: y.csv}\n  kinships: {A: null, B: null, C: null, D: null, E: null}\n",
     "run.yaml: data.kinships: at most 4 kinships are supported, got 5"),
    (DATA + "model: {random: [Lines]}\n",
     "run.yaml: model.random[0]: 'Lines' is not a key of data.kinships; did you mean 'Line'?"),
    (DATA + "model: {random: [Env]}\n", "run.yaml: model.random[0]: 'Env' is not a key of data.kinships; "
                                        "allowed: Line"),
    (DATA + "model: {random: []}\n",
     "run.yaml: model.random: must list 1 to 4 grouping columns (keys of data.kinships: Line)"),
    # layouts
    (TALL % "value: Yield",
     "run.yaml: data.phenotypes.trait: required with layout: tall (the column holding the trait names)"),
    (TALL % "trait: Env",
     "run.yaml: data.phenotypes.value: required with layout: tall (the column holding the values)"),
    (TALL % "trait: Env, value: Yield, traits: [a]", "run.yaml: data.phenotypes.traits: only allowed with "
     "layout: wide; with layout: tall the traits are the values of the trait column"),
    (TALL % "trait: Env, value: Env", "run.yaml: data.phenotypes: id, trait and value must be different "
                                      "columns, got Env, Env"),
    (DATA.replace("{file: y.csv}", "{file: y.csv, trait: Env}"), "run.yaml: data.phenotypes.trait: only "
     "allowed with layout: tall; with layout: wide list the trait columns in data.phenotypes.traits"),
    (DATA.replace("{file: y.csv}", "{file: y.csv, layout: long}"),
     "run.yaml: data.phenotypes.layout: must be one of wide, tall, got 'long'"),
    (DATA.replace("{file: y.csv}", "{file: y.csv, traits: [a, b], covariate_columns: [b]}"),
     "run.yaml: data.phenotypes.covariate_columns: b also listed in data.phenotypes.traits; "
     "a column is either a trait or a covariate"),
    # format version, empty file, YAML syntax
    (DATA + f"format_version: {FORMAT_VERSION + 1}\n",
     f"run.yaml: format_version: this config was written for a newer megalmm (format_version "
     f"{FORMAT_VERSION + 1}, this megalmm reads up to {FORMAT_VERSION}); upgrade megalmm"),
    ("", "run.yaml: the config file is empty; it needs at least data.phenotypes.file and "
         "data.kinships (see docs/config.md)"),
    ("# only a comment\n", "run.yaml: the config file is empty; it needs at least data.phenotypes.file "
                           "and data.kinships (see docs/config.md)"),
    (DATA + "mcmc:\n  thin: 2\n   samples: 10\n", "run.yaml: line 6, column 11: invalid YAML (mapping "
     "values are not allowed here); check indentation, colons and quoting there"),
    (DATA + "model: {factors: 3\n", "run.yaml: line 5, column 1: invalid YAML (expected ',' or '}', "
     "but got '<stream end>'); check indentation, colons and quoting there"),
    (DATA + "mcmc:\n  thin: 2\n  thin: 3\n", "run.yaml: line 6, column 3: invalid YAML (duplicate key "
     "'thin'); check indentation, colons and quoting there"),
]


@pytest.mark.parametrize("text, message", BAD, ids=[m.split(":")[1].strip() for _, m in BAD])
def test_bad_config_message(project, text, message):
    assert error_of(text) == message.replace("{dir}", str(project))


def test_missing_config_file(project):
    with pytest.raises(UserError, match=r"^nope\.yaml: config file not found"):
        load_config("nope.yaml")


def test_error_names_the_path_as_given(project):
    (project / "sub").mkdir()
    text = DATA.replace("y.csv", "../y.csv").replace("K.csv", "../K.csv") + "mcmc: {chains: 0}\n"
    (project / "sub" / "exp.yaml").write_text(text)
    with pytest.raises(UserError) as info:
        load_config("sub/exp.yaml")
    assert str(info.value) == "sub/exp.yaml: mcmc.chains: must be an integer >= 1, got 0"


# --- documentation -----------------------------------------------------------------------------

def key_paths(plain: dict, prefix: str = "") -> list[str]:
    """Dotted key paths of config_to_dict, with kinship names written as <column>."""
    paths = []
    for key, value in plain.items():
        path = prefix + ("<column>" if prefix == "data.kinships." else key)
        paths.append(path)
        if isinstance(value, dict):
            paths.extend(key_paths(value, path + "."))
    return paths


def test_every_key_is_documented(project):
    docs = DOCS.read_text()
    config = load_config(write(FULL))
    paths = set(key_paths(config_to_dict(config)))
    assert {"data.kinships.<column>.plink", "priors.lambda.delta_1.shape", "mcmc.thin"} <= paths
    undocumented = sorted(p for p in paths if f"`{p}`" not in docs)
    assert not undocumented
    assert "samples // thin" in docs


def test_docs_example_loads(project):
    """The full example in docs/config.md is a valid config."""
    blocks = re.findall(r"```yaml\n(.*?)```", DOCS.read_text(), re.S)
    example = next(b for b in blocks if "posterior:" in b)
    config = load_config(write(example))
    assert isinstance(config, Config)
    assert config.model.random == ("Line",)
