"""`megalmm export`: an ArviZ InferenceData file whose diagnostics equal ours."""

import sys

import h5py
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from megalmm_cli.cli import main

from .conftest import one_error_line, run_small_pipeline

az = pytest.importorskip("arviz")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    directory = tmp_path_factory.mktemp("export")
    config, results = run_small_pipeline(directory, ["prepare", "sample", "summarize", "export"])
    return directory, config, results["export"]


def test_export_opens_in_arviz_with_named_coordinates(exported):
    directory, config, result = exported
    path = directory / "run" / "posterior.nc"
    assert str(path) in result.output
    data = az.from_netcdf(path)
    post = data.posterior
    assert set(data.groups()) >= {"posterior", "sample_stats"}
    assert list(post.chain.values) == [1, 2] and post.sizes["draw"] == 10
    with h5py.File(directory / "run" / "prepared.h5") as f:
        traits = list(f["traits"].asstr()[()])
        fixed = list(f["x1_names"].asstr()[()])
    assert list(post.trait.values) == traits and list(post.fixed_effect.values) == fixed
    assert post["Lambda"].dims == ("chain", "draw", "factor", "trait")
    assert post["B1"].dims == ("chain", "draw", "fixed_effect", "trait")
    # the draws are the chain files' draws, in order
    with h5py.File(directory / "run" / "chains" / "chain_2.h5") as f:
        np.testing.assert_array_equal(post["Lambda"].values[1], f["samples/Lambda"][:10])
        np.testing.assert_array_equal(post["tot_eta_prec"].values[1], f["samples/tot_eta_prec"][:10])
    stats = data.sample_stats
    assert list(stats["iteration"].values[0]) == list(range(12, 31, 2))
    assert (stats["n_effective_factors"].values >= 1).all()
    # h2 = G_var / (G_var + R_var), per draw
    total = post["G_var"].values + post["R_var"].values
    np.testing.assert_allclose(post["h2"].values, post["G_var"].values / total, rtol=1e-12)


def test_arviz_diagnostics_equal_diagnostics_csv(exported):
    directory, _, _ = exported
    data = az.from_netcdf(directory / "run" / "posterior.nc")
    diag = pd.read_csv(directory / "run" / "summary" / "diagnostics.csv").set_index("param")
    rhat = az.rhat(data, var_names=["h2", "resid_h2", "U_cells"])
    ess = az.ess(data, var_names=["h2", "U_cells"], method="bulk")
    traits = list(data.posterior.trait.values)
    cells = list(data.posterior.u_cell.values)
    np.testing.assert_allclose(rhat["h2"].values, diag.loc[[f"h2[{t}]" for t in traits], "rhat"],
                               atol=1e-6, rtol=0)
    np.testing.assert_allclose(rhat["resid_h2"].values,
                               diag.loc[[f"resid_h2[{t}]" for t in traits], "rhat"], atol=1e-6, rtol=0)
    np.testing.assert_allclose(rhat["U_cells"].values, diag.loc[cells, "rhat"], atol=1e-6, rtol=0)
    np.testing.assert_allclose(ess["h2"].values, diag.loc[[f"h2[{t}]" for t in traits], "ess_bulk"],
                               rtol=1e-6)
    np.testing.assert_allclose(ess["U_cells"].values, diag.loc[cells, "ess_bulk"], rtol=1e-6)


def test_xarray_datatree_opens_it(exported):
    xr = pytest.importorskip("xarray")
    directory, _, _ = exported
    tree = xr.open_datatree(directory / "run" / "posterior.nc", engine="h5netcdf")
    assert tree["posterior"]["h2"].shape[:2] == (2, 10)


def test_export_before_sample_says_what_to_run(tmp_path):
    config, _ = run_small_pipeline(tmp_path, ["prepare"])
    result = CliRunner().invoke(main, ["export", str(config)])
    one_error_line(result, "megalmm sample")


def test_export_without_h5netcdf_is_one_clear_line(exported, monkeypatch):
    _, config, _ = exported
    monkeypatch.setitem(sys.modules, "h5netcdf", None)  # import h5netcdf raises ImportError
    result = CliRunner().invoke(main, ["export", str(config)])
    one_error_line(result, "h5netcdf", "megalmm-cli[arviz]")


def test_export_of_several_random_effects_names_the_effects(tmp_path):
    import yaml

    runner = CliRunner()
    made = runner.invoke(main, ["simulate", str(tmp_path), "--n", "40", "--t", "5", "--k", "2",
                                "--markers", "200", "--blocks", "5"])
    assert made.exit_code == 0, made.output
    config = tmp_path / "config.yaml"
    raw = yaml.safe_load(config.read_text())
    raw["mcmc"] = {"burn_in": 6, "samples": 12, "thin": 2, "checkpoint_every": 10,
                   "reorder_every": 3, "chains": 1}
    config.write_text(yaml.safe_dump(raw))
    for command in ("prepare", "sample", "export"):
        result = runner.invoke(main, [command, str(config)])
        assert result.exit_code == 0, (command, result.output)
    post = az.from_netcdf(tmp_path / "run" / "posterior.nc").posterior
    assert post["f_h2"].dims == ("chain", "draw", "effect", "factor")
    assert post.sizes["effect"] == 2 and post["h2_by_effect"].shape == (1, 6, 2, 5)
    np.testing.assert_allclose(post["h2_by_effect"].values.sum(axis=2), post["h2"].values,
                               rtol=1e-10)
