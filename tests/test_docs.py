"""docs/outputs.md stays true: its Python snippets run on a real run's files, and the
datasets its R snippets name exist in them."""

import re
from pathlib import Path

import h5py
import pytest

from .conftest import run_small_pipeline

DOC = Path(__file__).resolve().parent.parent / "docs" / "outputs.md"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("docs")
    run_small_pipeline(directory, ["prepare", "sample", "predict", "summarize", "export"])
    return directory / "run"


def blocks(language: str) -> list:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.S)


def test_python_snippets_run_on_a_real_run(run_dir):
    snippets = blocks("python")
    assert len(snippets) >= 3
    defined = {}
    for code in snippets:
        code = code.replace("runs/example", str(run_dir))
        namespace = {}
        exec(compile(code, str(DOC), "exec"), namespace)
        defined.update(namespace)
    assert defined["g_block"].shape == (6, 6)  # the matrices.h5 snippet
    assert defined["first_trait"].shape == (2, 10) and defined["rhat"].shape == (6,)  # export


def test_chain_snippet_reads_exactly_the_draws(run_dir):
    namespace = {}
    exec(blocks("python")[0].replace("runs/example", str(run_dir)), namespace)
    with h5py.File(run_dir / "chains" / "chain_1.h5") as f:
        assert namespace["n_draws"] == 10 and namespace["lam"].shape == (10,) + f["samples/Lambda"].shape[1:]


def test_r_snippets_name_existing_datasets(run_dir):
    names = set()
    for code in blocks("r"):
        names |= set(re.findall(r'"(/[A-Za-z0-9_/]+)"', code))
        names |= {"/" + n for n in re.findall(r'h\[\["([A-Za-z0-9_/]+)"\]\]', code)}
    assert {"/commit", "/samples/Lambda", "/samples/resid_h2", "/G", "/posterior/h2"} <= names
    for name in names:
        path = run_dir / ("summary/matrices.h5" if name == "/G" else "posterior.nc"
                          if name.startswith("/posterior") else "chains/chain_1.h5")
        with h5py.File(path) as f:
            assert name in f, name
