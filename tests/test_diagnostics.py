"""Convergence diagnostics (arviz-stats wrapper), HPD intervals, and the summarize outputs."""

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from megalmm_cli.cli import main
from megalmm_cli.diagnostics import convergence
from megalmm_cli.covariance import (Draws, SubsetFactors, effective_factors, hpd_interval,
                                   posterior_mean_matrix)


from .conftest import run_small_pipeline


def test_iid_chains_converge_with_full_ess():
    draws = np.random.default_rng(1).normal(size=(4, 1000, 5))
    d = convergence(draws)
    assert d["rhat"].shape == d["ess_bulk"].shape == d["ess_tail"].shape == (5,)
    assert np.all((d["rhat"] > 0.99) & (d["rhat"] < 1.01))
    total = 4 * 1000
    assert np.all((d["ess_bulk"] > 0.8 * total) & (d["ess_bulk"] < 1.2 * total))
    assert np.all(d["ess_tail"] > 0.5 * total)


def test_chains_in_two_modes_have_large_rhat():
    rng = np.random.default_rng(2)
    draws = rng.normal(size=(2, 1000, 3))
    draws[1] += 3.0
    assert np.all(convergence(draws)["rhat"] > 1.1)


def test_autocorrelated_chain_has_small_ess():
    rng = np.random.default_rng(3)
    n, phi = 2000, 0.9
    x = np.empty(n)
    x[0] = rng.normal() / np.sqrt(1 - phi ** 2)
    eps = rng.normal(size=n)
    for i in range(1, n):
        x[i] = phi * x[i - 1] + eps[i]
    d = convergence(x[None, :, None])
    assert d["ess_bulk"][0] < 0.15 * n
    assert np.isfinite(d["rhat"][0])  # one chain still gets a split R-hat


def test_single_parameter_and_single_chain_shapes():
    draws = np.random.default_rng(4).normal(size=(1, 400))
    d = convergence(draws)
    assert np.ndim(d["rhat"]) == 0 and 0.98 < d["rhat"] < 1.03


def test_hpd_of_normal_matches_1_96_sd():
    x = np.random.default_rng(5).normal(2.0, 3.0, size=200_000)
    low, high = hpd_interval(x)
    assert abs(low - (2.0 - 1.96 * 3.0)) < 0.05 and abs(high - (2.0 + 1.96 * 3.0)) < 0.05


def test_hpd_of_skewed_sample_is_shorter_than_equal_tailed():
    x = np.random.default_rng(6).exponential(size=100_000)
    low, high = hpd_interval(x)
    q_low, q_high = np.quantile(x, [0.025, 0.975])
    assert high - low < 0.95 * (q_high - q_low)
    assert low < 0.01  # the mode of the exponential is at 0
    assert abs(np.mean((x >= low) & (x <= high)) - 0.95) < 0.002


def _random_draws(rng, s, k, t, scale=1.0):
    return Draws.from_arrays(rng.normal(size=(s, k, t)) * scale, rng.uniform(size=(s, k)),
                             rng.uniform(size=(s, t)), rng.uniform(1, 2, size=(s, t)))


def _dense(d):
    """Per draw G, R and genetic correlations, the textbook way."""
    from megalmm_cli.posterior import covariances

    out = {"G": [], "R": [], "G_cor": []}
    for lam, f, r, p in zip(d.lam, d.f_h2, d.resid_h2, d.tot_eta_prec):
        cov = covariances(lam, f, r, p)
        sd = np.sqrt(np.diag(cov["G"]))
        out["G"].append(cov["G"])
        out["R"].append(cov["R"])
        out["G_cor"].append(cov["G"] / np.outer(sd, sd))
    return {name: np.stack(v) for name, v in out.items()}


def test_full_matrices_equal_a_dense_computation():
    """Blockwise posterior means (syrk over chunks of draws, negligible factors left out in
    float32) equal the mean of per-draw dense matrices: to 1e-12 in float64, 1e-6 relative
    (to the diagonal scale) in float32."""
    rng = np.random.default_rng(7)
    s, k, t = 30, 6, 11
    d = _random_draws(rng, s, k, t)
    d.lam[:, 4:] *= 1e-9  # factors shrunk to nothing, left out of float32 sums
    dense = {name: v.mean(axis=0) for name, v in _dense(d).items()}
    blocks = [Draws(d.lam[i:i + 8], d.f_h2[i:i + 8], d.resid_h2[i:i + 8], d.tot_eta_prec[i:i + 8])
              for i in range(0, s, 8)]
    for which in ("G", "R", "G_cor"):
        exact, rows64 = posterior_mean_matrix(blocks, which, t, s, "float64")
        np.testing.assert_allclose(exact, dense[which], rtol=1e-12, atol=1e-14, err_msg=which)
        single, rows32 = posterior_mean_matrix(blocks, which, t, s, "float32")
        assert single.dtype == np.float32 and rows64 == s * k and rows32 == s * 4
        scale = np.sqrt(np.outer(np.diag(dense[which]), np.diag(dense[which])))
        assert np.max(np.abs(single - dense[which]) / scale) < 1e-6, which
        np.testing.assert_array_equal(single, single.T)
    wrong = posterior_mean_matrix(blocks, "G", t, s - 1, "float64")[0]  # negative control
    assert not np.allclose(wrong, dense["G"], rtol=1e-3)


def test_subset_summary_equals_the_dense_blocks_and_hpd():
    """Means and HPD bounds of G and R among a subset, formed entry by entry, equal those of
    the dense per-draw matrices; so do the monitored entries' draws."""
    rng = np.random.default_rng(8)
    d = _random_draws(rng, 40, 3, 7)
    dense = _dense(d)
    cols = np.array([1, 4, 6])
    halves = [Draws(d.lam[:25], d.f_h2[:25], d.resid_h2[:25], d.tot_eta_prec[:25]),
              Draws(d.lam[25:], d.f_h2[25:], d.resid_h2[25:], d.tot_eta_prec[25:])]
    subset = SubsetFactors.from_blocks(halves, cols)
    among = subset.summary()
    block = np.ix_(cols, cols)
    for which in ("G", "R"):
        np.testing.assert_allclose(among[which], dense[which].mean(axis=0)[block], rtol=1e-12)
        ref_low, ref_high = hpd_interval(dense[which])
        np.testing.assert_allclose(among[f"{which}_low"], ref_low[block], rtol=1e-12)
        np.testing.assert_allclose(among[f"{which}_high"], ref_high[block], rtol=1e-12)
    rows, others = np.array([0, 1]), np.array([2, 2])
    np.testing.assert_allclose(subset.genetic_entries(rows, others),
                               dense["G"][:, cols[rows], cols[others]], rtol=1e-12)
    shifted = SubsetFactors(subset.lam, subset.f_h2, subset.g_diag * 2, subset.r_diag)  # control
    assert not np.allclose(shifted.summary()["G"], among["G"], rtol=1e-3)


def test_effective_factors():
    lam = np.array([[[10.0, 0.0], [1.0, 0.0], [0.01, 0.0]]])  # shares ~0.99, ~0.0099, 1e-6
    assert effective_factors(lam).tolist() == [1]
    assert effective_factors(np.ones((2, 4, 3))).tolist() == [4, 4]


def invoke(*args):
    return CliRunner().invoke(main, list(args))


def test_summarize_writes_diagnostics_and_g_hpd(tmp_path):
    data = tmp_path / "sim"
    _, results = run_small_pipeline(data, ("prepare", "sample", "summarize"))
    result = results["summarize"]
    assert "worst R-hat" in result.output and "smallest bulk ESS" in result.output
    summary = data / "run" / "summary"
    diag = pd.read_csv(summary / "diagnostics.csv")
    assert list(diag.columns) == ["param", "rhat", "ess_bulk", "ess_tail"]
    traits = pd.read_csv(summary / "h2.csv").trait.tolist()
    t = len(traits)
    params = diag.param.tolist()
    assert params[:t] == [f"h2[{tr}]" for tr in traits]
    assert sum(p.startswith("resid_h2[") for p in params) == t
    assert sum(p.startswith("G[") for p in params) == min(50, t * (t - 1) // 2)
    assert params[-1] == "n_effective_factors"
    numeric = diag.set_index("param")
    # n_effective_factors may be constant over the draws (R-hat undefined); the rest is finite
    assert np.isfinite(numeric.drop(index="n_effective_factors").to_numpy()).all()
    assert np.isfinite(numeric.loc["n_effective_factors", "ess_bulk"])
    mean = pd.read_csv(summary / "G.csv", index_col=0)
    low = pd.read_csv(summary / "G_hpd_low.csv", index_col=0)
    high = pd.read_csv(summary / "G_hpd_high.csv", index_col=0)
    assert low.shape == high.shape == mean.shape == (t, t)
    assert list(low.index) == list(low.columns) == traits
    assert (low.to_numpy() <= high.to_numpy()).all()
    d_low, d_mean, d_high = (np.diag(m.to_numpy()) for m in (low, mean, high))
    assert ((d_low <= d_mean + 1e-5 * abs(d_mean)) & (d_mean <= d_high + 1e-5 * abs(d_mean))).all()
    r_mean = pd.read_csv(summary / "R.csv", index_col=0).to_numpy()
    r_low = pd.read_csv(summary / "R_hpd_low.csv", index_col=0)
    r_high = pd.read_csv(summary / "R_hpd_high.csv", index_col=0)
    assert r_low.shape == r_high.shape == (t, t) and list(r_low.columns) == traits
    d_low, d_mean, d_high = np.diag(r_low.to_numpy()), np.diag(r_mean), np.diag(r_high.to_numpy())
    assert ((d_low <= d_mean + 1e-5 * abs(d_mean)) & (d_mean <= d_high + 1e-5 * abs(d_mean))).all()


def test_u_cell_names_and_indices():
    from megalmm_cli.posterior import u_cell_indices
    from megalmm_cli.summarize import u_cell_names

    traits, ids = ["a", "b", "c"], ["i1", "i2", "i3", "i4", "i5"]
    u_names = u_cell_names(ids, traits, 4)
    rows, cols = u_cell_indices(4, 3)
    assert len(u_names) == 4 * 3 == len(rows)  # fewer than 50 cells: all of them
    assert u_names[0] == f"U[{ids[rows[0]]},{traits[cols[0]]}]"
    rows, cols = u_cell_indices(100, 20)  # 50 cells at most, ids from training rows only
    assert len(rows) == 50 and rows.max() < 100 and cols.max() < 20


def test_summarize_names_u_cells_in_diagnostics(tmp_path):
    """Chains hold U_cells (U among the means), so diagnostics.csv gets rows U[id,trait] for
    the cells posterior.u_cell_indices chooses."""
    import h5py

    from megalmm_cli.posterior import u_cell_indices

    data = tmp_path / "sim"
    run_small_pipeline(data, ("prepare", "sample", "summarize"), n_new=0)
    with h5py.File(data / "run" / "prepared.h5", "r") as f:
        ids = [s.decode() if isinstance(s, bytes) else s for s in f["ids"][()]]
        traits = [s.decode() if isinstance(s, bytes) else s for s in f["traits"][()]]
        n_train = int(f.attrs["n_train"])
    rows, cols = u_cell_indices(n_train, len(traits))
    diag = pd.read_csv(data / "run" / "summary" / "diagnostics.csv")
    u_rows = diag[diag.param.str.startswith("U[")]
    assert u_rows.param.tolist() == [f"U[{ids[i]},{traits[j]}]" for i, j in zip(rows, cols)]
    assert len(u_rows) == 50 and np.isfinite(u_rows[["rhat", "ess_bulk"]].to_numpy()).all()
    assert diag.param.iloc[-1] == "n_effective_factors"


def test_vectorised_diagnostics_equal_arviz_stats():
    """Our R-hat and ESS for many parameters at once equal arviz-stats' (which loops over
    parameters) to 1e-10: AR(1) chains of many autocorrelations, a constant parameter,
    ties, chains that disagree, an odd number of draws, one chain."""
    import warnings

    from arviz_stats.base import array_stats

    rng = np.random.default_rng(1)
    chains, draws, params = 3, 151, 60
    x = np.empty((chains, draws, params))
    phi = rng.uniform(-0.5, 0.99, params)
    for c in range(chains):
        noise, value = rng.standard_normal((draws, params)), np.zeros(params)
        for s in range(draws):
            value = phi * value + noise[s]
            x[c, s] = value
    x[:, :, 5] = 3.0
    x[:, :, 6] = np.round(x[:, :, 6])
    x[1, :, 7] += 2.0
    axes = {"chain_axis": 0, "draw_axis": 1}
    for data, rhat_input in ((x, x), (x[:1], np.stack([x[0, :75], x[0, draws - 75:]]))):
        ours = convergence(data)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = {"rhat": array_stats.rhat(rhat_input, method="rank", **axes),
                      "ess_bulk": array_stats.ess(data, method="bulk", **axes),
                      "ess_tail": array_stats.ess(data, method="tail", prob=0.05, **axes)}
        for key, value in theirs.items():
            np.testing.assert_allclose(ours[key], np.asarray(value, dtype=float), rtol=1e-10,
                                       equal_nan=True, err_msg=key)
    assert np.isnan(convergence(x)["rhat"][5]) and convergence(x)["rhat"][7] > 1.2


def test_subset_csvs_equal_the_hdf5_blocks(tmp_path):
    """summary.top: 3 of 6 traits: the CSV matrices hold exactly the matrices.h5 values of
    those traits; traits.csv covers all six; the report says which traits G covers."""
    import h5py
    import yaml

    data = tmp_path / "sim"
    config, _ = run_small_pipeline(data, ("prepare", "sample"))
    raw = yaml.safe_load(config.read_text())
    raw["summary"] = {"top": 3}
    config.write_text(yaml.safe_dump(raw))
    assert invoke("summarize", str(config)).exit_code == 0
    summary = data / "run" / "summary"
    table = pd.read_csv(summary / "traits.csv")
    assert len(table) == 6 and list(table.columns[:4]) == ["trait", "h2_mean", "h2_low", "h2_high"]
    assert (table.G_var_low <= table.G_var_mean).all() and (table.G_var_mean <= table.G_var_high).all()
    top3 = table.sort_values("h2_mean", ascending=False, kind="stable").trait.head(3)
    with h5py.File(summary / "matrices.h5", "r") as h5:
        traits = list(h5["traits"].asstr()[()])
        index = h5["subset/index"][()]
        assert sorted(traits[i] for i in index) == sorted(top3)
        for name in ("G", "R", "G_cor"):
            block = h5[name][()][np.ix_(index, index)]
            csv = pd.read_csv(summary / f"{name}.csv", index_col=0)
            assert list(csv.index) == list(csv.columns) == [traits[i] for i in index]
            np.testing.assert_array_equal(csv.to_numpy().astype(np.float32), block, err_msg=name)
        assert h5["G"].dtype == np.float32 and h5["G"].shape == (6, 6) and h5["G"].chunks
    assert "3 of 6 traits" in (summary / "report.md").read_text()


def test_forked_work_returns_its_arrays_or_the_childs_error(tmp_path):
    """summarize computes matrices.h5 in a forked process (background.Forked): a dict of
    arrays comes back whole; its exception is raised here as itself (a user's error stays a
    one-line error, a full disk an OSError); when this process fails first, the child is
    stopped and reaped."""
    import errno
    import os

    from megalmm_cli.errors import UserError
    from megalmm_cli.background import Forked

    blocks = {"G": np.arange(6.0).reshape(2, 3), "R": np.eye(2)}
    job = Forked.start(lambda: blocks, tmp_path)
    got = job.result()
    assert set(got) == {"G", "R"} and all(np.array_equal(got[k], blocks[k]) for k in blocks)
    assert list(tmp_path.iterdir()) == []

    def fails(exc):
        def work():
            raise exc
        return work

    for exc in (UserError("chain_1.h5: cannot open the chain file"),
                OSError(errno.ENOSPC, "No space left on device")):
        job = Forked.start(fails(exc), tmp_path)
        with pytest.raises(type(exc)) as raised:
            job.result()
        assert str(raised.value) == str(exc)

    def never_done():
        import signal

        signal.pause()  # until killed

    job = Forked.start(never_done, tmp_path)
    pid = job.pid
    job.abandon()
    assert job.pid is None
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reaped: no zombie left


def _append_line(path, text):
    with open(path, "a") as f:
        f.write(text + "\n")


def _fail(exc):
    raise exc


def test_job_worker_runs_jobs_in_order_and_raises_the_first_error(tmp_path):
    """summarize draws plots and the report in a forked JobWorker: jobs run in the order
    submitted, with their arguments (pickled through files that are then removed); a job's
    exception ends the worker and is raised by finish(); abandon() kills and reaps it."""
    import errno
    import os

    from megalmm_cli.background import JobWorker
    from megalmm_cli.errors import UserError

    log = tmp_path / "log.txt"
    work = tmp_path / "work"
    work.mkdir()
    worker = JobWorker(work, warm_up=lambda: _append_line(log, "warm"))
    for i in range(5):
        worker.submit(_append_line, log, f"job {i}")
    worker.finish()
    assert log.read_text().split("\n")[:-1] == ["warm"] + [f"job {i}" for i in range(5)]
    assert list(work.iterdir()) == []

    for exc in (UserError("plots: cannot write h2.png"),
                OSError(errno.ENOSPC, "No space left on device")):
        worker = JobWorker(work)
        with pytest.raises(type(exc)) as raised:  # from submit() if the worker has ended
            worker.submit(_fail, exc)
            worker.submit(_append_line, log, "never")
            worker.finish()
        assert str(raised.value) == str(exc)
        (work / ".worker.error").unlink()
    assert "never" not in log.read_text()

    worker = JobWorker(work)
    worker.submit(__import__("signal").pause)  # until killed
    pid = worker.pid
    worker.abandon()
    assert worker.pid is None
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
