"""prepare: outputs, idempotence, rebuilds, memory refusal, interrupted runs."""

from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from megalmm_cli import FORMAT_VERSION
from megalmm_cli.config import load_config
from megalmm_cli.errors import UserError
from megalmm_cli.prepare import load_model, prepared_path, run_prepare
from megalmm_cli.simulate import simulate_data, write_simulation


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("prep")
    write_simulation(simulate_data(50, 8, 2, missing=0.2, seed=3, n_markers=200, n_new=4), out)
    return out


def config_at(data_dir, tmp_path, **model):
    raw = yaml.safe_load((data_dir / "config.yaml").read_text())
    raw["run"]["output_dir"] = str(tmp_path / "run")
    raw["model"].update(model)
    path = data_dir / f"cfg_{tmp_path.name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_config(path)


def test_prepare_writes_model_with_attributes(data_dir, tmp_path):
    cfg = config_at(data_dir, tmp_path)
    messages = []
    assert run_prepare(cfg, echo=messages.append) is True
    with h5py.File(prepared_path(cfg), "r") as f:
        assert f.attrs["format_version"] == FORMAT_VERSION and len(f.attrs["config_hash"]) == 64
        assert "package_version" in f.attrs
    model = load_model(cfg)
    assert len(model.ids) == 50 and model.n == 46 and model.t == 8
    assert model.x1_names == ("Intercept", "Population[T.P2]", "x")
    # standardised training data: mean 0, sd 1 per trait over observed cells
    assert np.allclose(np.nanmean(model.y_std, axis=0), 0, atol=1e-12)
    assert np.allclose(np.nanstd(model.y_std, axis=0, ddof=1), 1)
    # test cells are hidden from training
    heldout = (data_dir / "heldout_cells.csv").read_text().strip().splitlines()[1:]
    assert int(np.isnan(model.y_std).sum()) == len(heldout)
    assert "memory estimate" in messages[0]


def test_second_prepare_does_no_work_and_changes_rebuild(data_dir, tmp_path):
    cfg = config_at(data_dir, tmp_path)
    assert run_prepare(cfg, echo=lambda m: None)
    stamp = prepared_path(cfg).stat().st_mtime_ns
    said = []
    assert run_prepare(cfg, echo=said.append) is False
    assert "up to date" in said[0] and prepared_path(cfg).stat().st_mtime_ns == stamp
    # the number of factors does not change prepare's output
    assert run_prepare(config_at(data_dir, tmp_path, factors=3), echo=lambda m: None) is False
    # a changed model does
    assert run_prepare(config_at(data_dir, tmp_path, h2_divisions=10), echo=lambda m: None) is True
    assert run_prepare(config_at(data_dir, tmp_path, h2_divisions=10), force=True, echo=lambda m: None)


def test_stale_prepared_file_is_refused_by_sample_side(data_dir, tmp_path):
    cfg = config_at(data_dir, tmp_path)
    run_prepare(cfg, echo=lambda m: None)
    with pytest.raises(UserError, match="different config"):
        load_model(config_at(data_dir, tmp_path, h2_divisions=10))


def test_memory_limit_refuses_with_the_figure(data_dir, tmp_path):
    cfg = config_at(data_dir, tmp_path)
    with pytest.raises(UserError, match=r"prepare needs about .* but the limit is .*--max-memory"):
        run_prepare(cfg, max_memory=1000, echo=lambda m: None)
    assert not prepared_path(cfg).exists()


def test_interrupted_prepare_leaves_no_complete_looking_file(data_dir, tmp_path, monkeypatch):
    cfg = config_at(data_dir, tmp_path)
    import megalmm_cli.prepare as prep

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(prep, "build_model", crash)
    with pytest.raises(KeyboardInterrupt):
        run_prepare(cfg, echo=lambda m: None)
    assert not prepared_path(cfg).exists()
    # a leftover temporary file from a killed run is ignored and replaced
    prepared_path(cfg).parent.mkdir(parents=True, exist_ok=True)
    Path(str(prepared_path(cfg)) + ".tmp").write_bytes(b"partial")
    monkeypatch.undo()
    assert run_prepare(cfg, echo=lambda m: None) is True
    assert load_model(cfg).t == 8
