"""`megalmm predict`: genetic values and expected phenotypes from all chains of a run."""

from pathlib import Path

import numpy as np
import pandas as pd

from .config import Config
from .errors import UserError
from .posterior import RunningMoments
from .prepare import read_test_cells
from .runinfo import chain_paths, sampling_hash
from .storage import ChainFile


def pooled_moments(config: Config, name: str) -> RunningMoments:
    """Combine one running mean/M2 over every chain of the run (weighted by draw counts)."""
    paths = chain_paths(config)
    if not paths:
        raise UserError(f"{config.path.name}: no chains under {Path(config.run.output_dir) / 'chains'}; "
                        "run `megalmm sample` first")
    expected_hash = sampling_hash(config)
    total = None
    for path in paths:
        chain = ChainFile(path)
        attrs = chain.attrs()
        if attrs.get("config_hash") != expected_hash:
            raise UserError(f"{path}: was sampled with a different config; move it aside or "
                            "re-run `megalmm sample` for it")
        means = chain.read_means()
        if f"{name}.mean" not in means:
            raise UserError(f"{path}: holds no posterior mean of {name}; add it to posterior.means "
                            "and sample again")
        mom = RunningMoments(int(means[f"{name}.count"]), means[f"{name}.mean"], means[f"{name}.m2"])
        if mom.count == 0:
            continue
        if total is None:
            total = mom
        else:
            count = total.count + mom.count
            diff = mom.mean - total.mean
            mean = total.mean + diff * mom.count / count
            m2 = total.m2 + mom.m2 + diff**2 * total.count * mom.count / count
            total = RunningMoments(count, mean, m2)
    if total is None:
        raise UserError(f"{config.path.name}: the chains hold no posterior draws yet; let "
                        "`megalmm sample` run past burn-in")
    return total


def write_matrix(path: Path, ids, traits, values: np.ndarray) -> None:
    frame = pd.DataFrame(values, index=pd.Index(ids, name="id"), columns=list(traits))
    tmp = path.with_name(path.name + ".tmp")
    frame.to_csv(tmp, float_format="%.6g")
    tmp.replace(path)


def test_accuracy(observed, predictions: dict, rows, cols, traits) -> pd.DataFrame:
    """Per trait: n_test and cor(prediction, observation) for each prediction; plus a mean row."""
    records = []
    for j, trait in enumerate(traits):
        sel = np.flatnonzero(cols == j)
        if sel.size == 0:
            continue
        rec = {"trait": trait, "n_test": sel.size}
        for name, pred in predictions.items():
            x, y = pred[rows[sel], j], observed[sel]
            ok = sel.size > 2 and np.std(x) > 0 and np.std(y) > 0
            rec[f"cor_{name}"] = float(np.corrcoef(x, y)[0, 1]) if ok else np.nan
        records.append(rec)
    table = pd.DataFrame(records)
    if len(table):
        mean = {"trait": "mean", "n_test": int(table["n_test"].sum())}
        mean.update({c: table[c].mean() for c in table.columns if c.startswith("cor_")})
        table = pd.concat([table, pd.DataFrame([mean])], ignore_index=True)
    return table


def run_predict(config: Config, echo=print) -> Path:
    ids, traits, rows, cols, values = read_test_cells(config)
    out = Path(config.run.output_dir) / "predictions"
    out.mkdir(parents=True, exist_ok=True)
    genetic = pooled_moments(config, "U")
    write_matrix(out / "U.csv", ids, traits, genetic.mean)
    write_matrix(out / "U_sd.csv", ids, traits, genetic.sd())
    predictions = {"U": genetic.mean}
    try:
        expected = pooled_moments(config, "eta_hat")
        write_matrix(out / "eta_hat.csv", ids, traits, expected.mean)
        predictions["eta_hat"] = expected.mean
    except UserError:
        expected = None
    echo(f"wrote {out / 'U.csv'}, U_sd.csv" + (", eta_hat.csv" if expected is not None else "")
         + f" ({len(ids)} individuals x {len(traits)} traits, {genetic.count} draws)")
    if rows.size:
        table = test_accuracy(values, predictions, rows, cols, traits)
        table.to_csv(out / "test_accuracy.csv", index=False, float_format="%.4f")
        mean = table.iloc[-1]
        echo(f"wrote {out / 'test_accuracy.csv'}: {rows.size} test cells, mean correlation "
             + ", ".join(f"{c[4:]} {mean[c]:.3f}" for c in table.columns if c.startswith("cor_")))
    return out
