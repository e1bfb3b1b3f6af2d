"""`megalmm predict --new-kinship`: conditional mean of new individuals given the modelled ones."""

import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from megalmm_cli.cli import main
from megalmm_cli.config import load_config
from megalmm_cli.predict import pooled_moments
from megalmm_cli.simulate import simulate_data, write_simulation

N_NEW = 6
MCMC = {"burn_in": 40, "samples": 400, "thin": 1, "checkpoint_every": 50, "reorder_every": 10,
        "chains": 2}


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _pipeline(cfg):
    for command in ("prepare", "sample", "predict"):
        result = invoke(command, cfg)
        assert result.exit_code == 0, (command, result.output, result.stderr)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("newkin")
    sim = simulate_data(60, 4, 2, missing=0.2, seed=3, n_markers=400, n_new=N_NEW)
    ids = list(sim.ids)
    n_pheno = sim.n - N_NEW
    K = pd.DataFrame(sim.kinship, index=pd.Index(ids, name="id"), columns=ids)

    full = root / "full"
    write_simulation(sim, full, factors=3)
    raw = yaml.safe_load((full / "config.yaml").read_text())
    raw["mcmc"] = MCMC
    (full / "config.yaml").write_text(yaml.safe_dump(raw))
    _pipeline(full / "config.yaml")

    part = root / "part"
    write_simulation(sim, part, factors=3)
    K.iloc[:n_pheno, :n_pheno].to_csv(part / "kinship.csv", float_format="%.17g")
    (part / "config.yaml").write_text(yaml.safe_dump(raw))
    _pipeline(part / "config.yaml")
    new_ids = ids[n_pheno:]
    block = K.loc[new_ids, ids[:n_pheno] + new_ids]
    block.to_csv(part / "new_kinship.csv", float_format="%.17g")
    return {"sim": sim, "K": K, "full": full, "part": part, "new_ids": new_ids,
            "pheno_ids": ids[:n_pheno]}


def test_new_individuals_match_closed_form_and_in_model(runs):
    part = runs["part"]
    result = invoke("predict", part / "config.yaml", "--new-kinship", part / "new_kinship.csv")
    assert result.exit_code == 0, (result.output, result.stderr)
    assert "U_new.csv" in result.output
    u_new = pd.read_csv(part / "run" / "predictions" / "U_new.csv", index_col=0)
    assert list(u_new.index) == runs["new_ids"]

    config = load_config(part / "config.yaml")
    u_mean = pooled_moments(config, "U").mean
    u_model = pd.read_csv(part / "run" / "predictions" / "U.csv", index_col=0)
    modelled = list(u_model.index)
    K = runs["K"]
    expected = K.loc[runs["new_ids"], modelled].to_numpy() @ np.linalg.solve(
        K.loc[modelled, modelled].to_numpy(), u_mean)
    np.testing.assert_allclose(u_new.to_numpy(), expected, rtol=1e-5, atol=1e-8)
    # exact (no CSV rounding) through the function itself
    from megalmm_cli.predict import conditional_map
    A = conditional_map(K.loc[runs["new_ids"], modelled].to_numpy(), K.loc[modelled, modelled].to_numpy())
    np.testing.assert_allclose(A @ u_mean, expected, rtol=0, atol=1e-8)

    # the same individuals predicted inside a model whose kinship included them
    in_model = pd.read_csv(runs["full"] / "run" / "predictions" / "U.csv", index_col=0)
    a = in_model.loc[runs["new_ids"]].to_numpy()
    b = u_new.to_numpy()
    a = (a - a.mean(0)) / a.std(0)
    b = (b - b.mean(0)) / b.std(0)
    r = np.corrcoef(a.ravel(), b.ravel())[0, 1]
    print("correlation", r)
    assert r > 0.95

    # expected phenotypes: covariates of the new ids are in covariates.csv and B1 draws are stored
    eta = pd.read_csv(part / "run" / "predictions" / "eta_hat_new.csv", index_col=0)
    assert list(eta.index) == runs["new_ids"] and np.isfinite(eta.to_numpy()).all()


def _write(path, frame):
    frame.to_csv(path, float_format="%.10g")
    return path


@pytest.mark.parametrize("case", ["unknown", "missing", "nonnumeric", "duplicated", "no_new_block"])
def test_bad_new_kinship_is_a_one_line_user_error(runs, case):
    part, K = runs["part"], runs["K"]
    new_ids, pheno_ids = runs["new_ids"], runs["pheno_ids"]
    block = K.loc[new_ids, pheno_ids + new_ids].copy()
    if case == "unknown":
        block["stranger"] = 0.1
    elif case == "missing":
        block = block.drop(columns=pheno_ids[:2])
    elif case == "nonnumeric":
        block = block.astype(object)
        block.iloc[1, 3] = "abc"
    elif case == "duplicated":
        block = pd.concat([block, block.iloc[[0]]])
    elif case == "no_new_block":
        block = block.drop(columns=new_ids)
    path = _write(part / f"bad_{case}.csv", block)
    result = invoke("predict", part / "config.yaml", "--new-kinship", path)
    assert result.exit_code == 2, (result.output, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("megalmm: error: ") and path.name in lines[0], lines
    assert "Traceback" not in result.output
