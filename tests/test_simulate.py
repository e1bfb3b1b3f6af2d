"""Tests for megalmm_cli.simulate: determinism, shapes, missingness, truth, written files."""

from __future__ import annotations

import dataclasses

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml

from megalmm_cli import __version__
from megalmm_cli.errors import UserError
from megalmm_cli.kinship import vanraden
from megalmm_cli.simulate import Simulation, simulate_data, write_simulation

ARRAY_FIELDS = [f.name for f in dataclasses.fields(Simulation)
                if f.name not in ("ids", "traits", "n_new", "missing", "seed")]


@pytest.fixture(scope="module")
def small():
    return simulate_data(n=120, t=30, k=3, missing=0.25, seed=7, n_markers=300, n_new=10)


@pytest.fixture(scope="module")
def large():
    """Large n, few traits: for moment checks against the stored truth."""
    return simulate_data(n=2000, t=5, k=2, missing=0.0, seed=11, n_markers=400)


@pytest.fixture(scope="module")
def large_eigen(large):
    """(w, Q): the positive eigenvalues of the large kinship and their eigenvectors (n, r),
    from a thin SVD of the centred markers (K = W W' / scale, cheaper than eigh(K))."""
    geno = large.markers.astype(float)
    freq = geno.mean(axis=0) / 2
    Q, sv, _ = np.linalg.svd(geno - 2 * freq, full_matrices=False)
    keep = sv > 1e-6 * sv[0]
    w = sv[keep] ** 2 / (2 * np.sum(freq * (1 - freq)))
    Q = Q[:, keep]
    np.testing.assert_allclose((Q * w) @ Q.T, large.kinship, atol=1e-8)
    return w, Q


# ---------------------------------------------------------------- determinism and shapes

def test_same_seed_identical_and_other_seed_differs(small):
    again = simulate_data(n=120, t=30, k=3, missing=0.25, seed=7, n_markers=300, n_new=10)
    assert again.ids == small.ids and again.traits == small.traits
    for name in ARRAY_FIELDS:
        np.testing.assert_array_equal(getattr(again, name), getattr(small, name), err_msg=name)
    other = simulate_data(n=120, t=30, k=3, missing=0.25, seed=8, n_markers=300, n_new=10)
    assert not np.allclose(other.Y, small.Y)
    assert not np.array_equal(other.observed, small.observed)


def test_shapes_and_types(small):
    n, t, k, m = 120, 30, 3, 300
    assert small.ids[0] == "ind001" and small.ids[-1] == "ind120" and len(set(small.ids)) == n
    assert small.traits[0] == "trait001" and small.traits[-1] == "trait030"
    assert small.markers.shape == (n, m) and small.markers.dtype == np.int8
    assert set(np.unique(small.markers)) <= {0, 1, 2}
    np.testing.assert_allclose(small.kinship, vanraden(small.markers))
    assert set(small.populations) == {"P1", "P2"}
    assert abs(np.mean(small.populations == "P1") - 0.4) < 0.02
    expected = {
        "populations": (n,), "x": (n,), "kinship": (n, n), "Y": (n, t), "observed": (n, t),
        "Lambda": (k, t), "f_h2": (k,), "F": (n, k), "U_F": (n, k), "resid_h2": (t,),
        "tot_eta_prec": (t,), "U_R": (n, t), "B1": (3, t), "trait_scale": (t,), "G": (t, t),
        "R": (t, t), "h2": (t,), "U": (n, t),
    }
    for name, shape in expected.items():
        assert getattr(small, name).shape == shape, name
    assert small.observed.dtype == bool and small.n_new == 10
    assert np.all((small.f_h2 > 0.1) & (small.f_h2 < 0.9))
    assert np.all((small.resid_h2 >= 0) & (small.resid_h2 < 0.5))
    assert np.all((small.trait_scale >= 0.5) & (small.trait_scale <= 3))
    assert np.all((np.abs(small.Lambda) > 0).any(axis=1))       # every factor loads somewhere


def test_population_structure_in_kinship():
    sim = simulate_data(n=200, t=3, k=1, missing=0.0, seed=3, n_markers=1000)
    same = sim.populations[:, None] == sim.populations[None, :]
    off = ~np.eye(sim.n, dtype=bool)
    assert sim.kinship[same & off].mean() > sim.kinship[~same].mean() + 0.05


# ---------------------------------------------------------------- missingness

def test_missing_fraction_and_new_individuals(small):
    n_pheno = small.n - small.n_new
    assert not small.observed[n_pheno:].any()
    realised = 1.0 - small.observed[:n_pheno].mean()
    assert abs(realised - 0.25) < 0.01
    big = simulate_data(n=300, t=100, k=2, missing=0.4, seed=2, n_markers=200)
    assert abs((1.0 - big.observed.mean()) - 0.4) < 0.005
    assert simulate_data(n=30, t=4, k=1, missing=0.0, seed=1, n_markers=100).observed.all()


@pytest.mark.parametrize("missing", [0.2, 0.9, 0.99])
def test_every_trait_and_individual_keeps_observations(missing):
    sim = simulate_data(n=60, t=40, k=2, missing=missing, seed=5, n_markers=100, n_new=5)
    obs = sim.observed[: sim.n - sim.n_new]
    assert obs.sum(axis=0).min() >= 5
    assert obs.sum(axis=1).min() >= 1
    if missing <= 0.9:
        assert abs((1.0 - obs.mean()) - missing) < 0.02


def test_bad_arguments_are_user_errors():
    with pytest.raises(UserError):
        simulate_data(n=10, t=3, k=1, missing=1.0)
    with pytest.raises(UserError):
        simulate_data(n=10, t=3, k=1, n_new=8)
    with pytest.raises(UserError):
        simulate_data(n=10, t=0, k=1)


# ---------------------------------------------------------------- truth

def test_truth_is_internally_consistent(small):
    s = small
    sigma2 = 1.0 / s.tot_eta_prec
    G = s.Lambda.T @ np.diag(s.f_h2) @ s.Lambda + np.diag(s.resid_h2 / s.tot_eta_prec)
    R = s.Lambda.T @ np.diag(1 - s.f_h2) @ s.Lambda + np.diag((1 - s.resid_h2) * sigma2)
    np.testing.assert_allclose(s.G, G, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(s.R, R, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(s.h2, np.diag(G) / np.diag(G + R))
    np.testing.assert_allclose(s.U, s.U_F @ s.Lambda + s.U_R, atol=1e-10)
    assert np.all(np.linalg.eigvalsh(s.G) > -1e-10) and np.all(np.linalg.eigvalsh(s.R) > 0)
    # residual variances in the written scale are sigma2_0 * c^2 with sigma2_0 ~ U(0.2, 0.6)
    base = sigma2 / s.trait_scale ** 2
    assert np.all((base >= 0.2) & (base <= 0.6))
    # intercepts ~ N(10, 3) before scaling
    assert 5 < np.mean(s.B1[0] / s.trait_scale) < 15


def test_components_have_their_variances(large, large_eigen):
    s = large
    X1 = np.column_stack([np.ones(s.n), s.populations == "P2", s.x])
    np.testing.assert_array_equal(X1, s.X1)
    E_R = s.Y - X1 @ s.B1 - s.F @ s.Lambda - s.U_R                # iid residual
    np.testing.assert_allclose(E_R.var(axis=0, ddof=1), (1 - s.resid_h2) / s.tot_eta_prec,
                               rtol=0.1)
    E_F = s.F - s.U_F
    np.testing.assert_allclose(E_F.var(axis=0, ddof=1), 1 - s.f_h2, rtol=0.1)
    # genetic values ~ N(0, c K): quadratic form in K^+ over its rank
    w, Q = large_eigen
    rot = Q.T @ np.column_stack([s.U_F, s.U_R]) / np.sqrt(w)[:, None]
    expected = np.concatenate([s.f_h2, s.resid_h2 / s.tot_eta_prec])
    np.testing.assert_allclose((rot ** 2).mean(axis=0), expected, rtol=0.25)
    # nothing of U outside the column space of K
    np.testing.assert_allclose(Q @ (Q.T @ s.U), s.U, atol=1e-5)


def test_empirical_covariance_matches_G_plus_R(large, large_eigen):
    s = large
    E = s.Y - s.X1 @ s.B1
    total = s.G + s.R
    sd = np.sqrt(np.diag(total))
    scale = np.outer(sd, sd)
    # centred mean is zero (B1 is in the written scale)
    assert np.all(np.abs(E.mean(axis=0)) < 4 * sd / np.sqrt(s.n))
    emp = np.cov(E, rowvar=False)
    assert np.max(np.abs(emp - total) / scale) < 0.2
    # separately: in the eigenbasis of K row i has covariance s_i G + R (DESIGN section 3);
    # the null space of K (n - rank directions) gives R alone, the rest G.
    w, Q = large_eigen
    rot = Q.T @ E
    n_null = s.n - w.size
    assert n_null > 1000
    R_hat = (E.T @ E - rot.T @ rot) / n_null
    G_hat = (rot.T @ rot - w.size * R_hat) / w.sum()
    assert np.max(np.abs(R_hat - s.R) / scale) < 0.1
    assert np.max(np.abs(G_hat - s.G) / scale) < 0.2


# ---------------------------------------------------------------- files

def test_write_simulation_files(small, tmp_path):
    out = tmp_path / "simdata"
    paths = write_simulation(small, out)
    names = {"phenotypes": "phenotypes.csv", "covariates": "covariates.csv",
             "genotypes": "genotypes.csv", "kinship": "kinship.csv",
             "heldout_cells": "heldout_cells.csv", "truth": "truth.h5", "config": "config.yaml"}
    assert set(paths) == set(names)
    for key, fname in names.items():
        assert paths[key] == out / fname and paths[key].is_file()

    n_pheno = small.n - small.n_new
    pheno = pd.read_csv(paths["phenotypes"], keep_default_na=False, na_values=["NA"])
    assert list(pheno.columns) == ["id", "Population"] + list(small.traits)
    assert list(pheno["id"]) == list(small.ids[:n_pheno])
    assert list(pheno["Population"]) == list(small.populations[:n_pheno])
    vals = pheno[list(small.traits)].to_numpy()
    np.testing.assert_array_equal(~np.isnan(vals), small.observed[:n_pheno])
    obs = small.observed[:n_pheno]
    np.testing.assert_allclose(vals[obs], small.Y[:n_pheno][obs], rtol=1e-5)
    assert "NA" in paths["phenotypes"].read_text()

    cov = pd.read_csv(paths["covariates"])
    assert list(cov.columns) == ["id", "Population", "x"]
    assert list(cov["id"]) == list(small.ids)
    assert list(cov["Population"]) == list(small.populations)
    np.testing.assert_allclose(cov["x"], small.x, rtol=1e-7)

    geno = pd.read_csv(paths["genotypes"])
    assert list(geno.columns) == ["id"] + [f"m{j:04d}" for j in range(1, 301)]
    assert list(geno["id"]) == list(small.ids)
    np.testing.assert_array_equal(geno.iloc[:, 1:].to_numpy(), small.markers)

    kin = pd.read_csv(paths["kinship"])
    assert list(kin.columns) == ["id"] + list(small.ids)
    assert list(kin["id"]) == list(small.ids)
    np.testing.assert_allclose(kin.iloc[:, 1:].to_numpy(), small.kinship, rtol=1e-7, atol=1e-9)

    with h5py.File(paths["truth"], "r") as h5:
        for name in ("Lambda", "f_h2", "F", "U_F", "resid_h2", "tot_eta_prec", "U_R", "B1",
                     "trait_scale", "G_extra", "R_extra", "h2", "U", "observed", "Y"):
            np.testing.assert_array_equal(h5[name][()], getattr(small, name), err_msg=name)
        assert "G" not in h5 and "R" not in h5   # t x t: rebuilt from the parts when needed
        lam, f_h2 = h5["Lambda"][()], h5["f_h2"][()]
        np.testing.assert_allclose((lam.T * f_h2) @ lam + np.diag(h5["G_extra"][()]), small.G)
        assert [v.decode() for v in h5["ids"][()]] == list(small.ids)
        assert [v.decode() for v in h5["traits"][()]] == list(small.traits)
        attrs = dict(h5.attrs)
        assert (attrs["n"], attrs["t"], attrs["k"], attrs["seed"]) == (120, 30, 3, 7)
        assert attrs["missing"] == 0.25
        assert attrs["megalmm_version"] == __version__


def test_heldout_cells_are_exactly_the_missing_cells(small, tmp_path):
    paths = write_simulation(small, tmp_path / "d")
    held = pd.read_csv(paths["heldout_cells"])
    assert list(held.columns) == ["id", "trait", "value"]
    n_pheno = small.n - small.n_new
    rows, cols = np.nonzero(~small.observed[:n_pheno])
    expected = {(small.ids[i], small.traits[j]): small.Y[i, j] for i, j in zip(rows, cols)}
    got = {(i, tr): v for i, tr, v in held.itertuples(index=False)}
    assert len(held) == len(expected) == len(got)
    assert set(got) == set(expected)
    np.testing.assert_allclose([got[key] for key in expected], list(expected.values()),
                               rtol=1e-9)
    assert not set(held["id"]) & set(small.ids[n_pheno:])       # new individuals: predict only


def test_config_yaml(small, tmp_path):
    out = tmp_path / "mysim"
    paths = write_simulation(small, out)
    cfg = yaml.safe_load(paths["config"].read_text())
    assert list(cfg) == ["run", "data", "model", "missing_data", "mcmc", "posterior"]
    assert cfg["run"] == {"name": "mysim", "output_dir": "run", "seed": 1}
    assert cfg["data"] == {
        "phenotypes": {"file": "phenotypes.csv", "layout": "wide", "id": "id",
                       "covariate_columns": ["Population"]},
        "covariates": {"file": "covariates.csv", "id": "id"},
        "kinships": {"id": {"file": "kinship.csv"}},
        "test_cells": {"file": "heldout_cells.csv"},
    }
    for sub in cfg["data"].values():
        files = [sub["file"]] if "file" in sub else [v["file"] for v in sub.values()]
        assert all((out / f).is_file() for f in files)
    assert cfg["model"] == {"fixed": "~ Population + x", "random": ["id"], "factors": 8,
                            "h2_divisions": 20}
    assert cfg["missing_data"] == {"max_groups": "auto"}
    assert cfg["mcmc"] == {"burn_in": 500, "reorder_every": 100, "samples": 1000, "thin": 2,
                           "checkpoint_every": 100, "chains": 1}
    assert cfg["posterior"] == {"samples": ["Lambda", "f_h2", "resid_h2", "tot_eta_prec", "B1"],
                                "means": ["U", "eta_hat"]}
    again = write_simulation(small, tmp_path / "other", factors=4)
    assert yaml.safe_load(again["config"].read_text())["model"]["factors"] == 4


def test_config_without_missing_cells_has_no_test_cells(tmp_path):
    sim = simulate_data(n=30, t=4, k=5, missing=0.0, seed=1, n_markers=100)
    paths = write_simulation(sim, tmp_path)
    cfg = yaml.safe_load(paths["config"].read_text())
    assert "test_cells" not in cfg["data"]
    assert cfg["model"]["factors"] == 4                            # max(2k, k + 5), at most t
    assert len(pd.read_csv(paths["heldout_cells"])) == 0
