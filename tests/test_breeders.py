"""What breeders read from a run: reliabilities and fixed effects, through the command line."""

import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from megalmm_cli.cli import main


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """120 individuals (20 genotyped only) x 20 traits, 30% missing, 200 draws."""
    data = tmp_path_factory.mktemp("breeders")
    runner = CliRunner()
    made = runner.invoke(main, ["simulate", str(data), "--n", "120", "--t", "20", "--k", "3",
                                "--missing", "0.3", "--n-new", "20", "--markers", "500"])
    assert made.exit_code == 0, made.output
    config = data / "config.yaml"
    raw = yaml.safe_load(config.read_text())
    raw["model"]["factors"] = 5
    raw["missing_data"] = {"max_groups": 3}
    raw["mcmc"] = {"burn_in": 200, "samples": 400, "thin": 2, "checkpoint_every": 300,
                   "reorder_every": 50, "chains": 1}
    config.write_text(yaml.safe_dump(raw))
    for command in ("prepare", "sample", "predict", "summarize"):
        result = runner.invoke(main, [command, str(config)])
        assert result.exit_code == 0, (command, result.output, result.stderr)
    return data


def test_reliability_of_every_individual_is_ordered_as_the_truth(run):
    import h5py

    rel = pd.read_csv(run / "run" / "predictions" / "reliability.csv", index_col=0)
    u_hat = pd.read_csv(run / "run" / "predictions" / "U.csv", index_col=0)
    with h5py.File(run / "truth.h5") as h5:
        ids = list(h5["ids"].asstr()[()])
        truth = pd.DataFrame(h5["U"][()], index=ids, columns=u_hat.columns).loc[u_hat.index]
        genetic_var = (h5["Lambda"][()] ** 2).T @ h5["f_h2"][()] + h5["G_extra"][()]
    assert rel.shape == u_hat.shape and list(rel.index) == list(u_hat.index)
    values = rel.to_numpy()
    assert np.isfinite(values).all() and ((values >= 0) & (values <= 1)).all()
    assert np.mean(values > 0) > 0.9
    new = [f"ind{i:03d}" for i in range(101, 121)]
    phenotyped = [i for i in rel.index if i not in new]
    assert rel.loc[new].to_numpy().mean() < rel.loc[phenotyped].to_numpy().mean() - 0.05
    # groups of individuals by their reliability: the realised accuracy, 1 - squared error /
    # genetic variance (what reliability predicts), rises with it
    squared_error = (u_hat - truth) ** 2 / genetic_var[None, :]
    mean_rel = rel.mean(axis=1).sort_values()
    groups = np.array_split(mean_rel.index.to_numpy(), 4)
    realised = [1.0 - squared_error.loc[g].to_numpy().mean() for g in groups]
    reliability = [mean_rel[g].mean() for g in groups]
    assert np.corrcoef(reliability, realised)[0, 1] > 0.5, (reliability, realised)


def test_fixed_effects_table(run):
    table = pd.read_csv(run / "run" / "summary" / "fixed_effects.csv")
    assert list(table.columns) == ["effect", "trait", "mean", "sd", "hpd_low", "hpd_high"]
    assert set(table.effect) == {"Intercept", "Population[T.P2]", "x"} and len(table) == 60
    assert (table.hpd_low <= table["mean"]).all() and (table["mean"] <= table.hpd_high).all()
    assert (table.sd > 0).all()
    # on the traits' scale: intercepts near the traits' means
    pheno = pd.read_csv(run / "phenotypes.csv", index_col=0)
    means = pheno[[c for c in pheno.columns if c.startswith("trait")]].mean()
    intercept = table[table.effect == "Intercept"].set_index("trait")["mean"]
    assert np.corrcoef(intercept[means.index], means)[0, 1] > 0.95


def test_report_has_accuracy_timing_and_draws(run):
    report = (run / "run" / "summary" / "report.md").read_text()
    assert "## Prediction accuracy on the test cells" in report and "cor_U" not in report
    assert "without the first iteration of each run" in report
    assert "| chain | iterations | stored draws |" in report and "| 1 | 600 | 200 |" in report
