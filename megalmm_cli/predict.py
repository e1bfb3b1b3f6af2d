"""`megalmm predict`: genetic values and expected phenotypes from all chains of a run."""

import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from . import FORMAT_VERSION, __version__
from .config import Config
from .csvout import write_matrix_csv
from .errors import UserError
from .posterior import RunningMoments
from .prepare import read_effect_names, read_test_cells
from .outputs import replaced_directory
from .runinfo import chains_for_reading
from .storage import ChainFile


def pooled_moments(config: Config, name: str, paths=None) -> RunningMoments:
    """Combine one running mean/M2 over the chains of the run (weighted by draw counts).
    paths: the chain files (default: runinfo.chains_for_reading)."""
    paths = chains_for_reading(config) if paths is None else paths
    total = None
    for path in paths:
        chain = ChainFile(path)
        means = chain.read_means()
        if f"{name}.mean" not in means:
            raise UserError(f"{path}: holds no posterior mean of {name}; add it to posterior.means "
                            "and sample again")
        mom = RunningMoments(int(means[f"{name}.count"]), means[f"{name}.mean"], means.get(f"{name}.m2"))
        if mom.count == 0:
            continue
        if total is None:
            total = mom
        else:
            count = total.count + mom.count
            diff = mom.mean - total.mean
            mean = total.mean + diff * mom.count / count
            m2 = (None if total.m2 is None or mom.m2 is None
                  else total.m2 + mom.m2 + diff**2 * total.count * mom.count / count)
            total = RunningMoments(count, mean, m2)
    if total is None:
        raise UserError(f"{config.path.name}: the chains hold no posterior draws yet; let "
                        "`megalmm sample` run past burn-in")
    return total


def write_matrix(path: Path, ids, traits, values: np.ndarray, progress=None) -> int:
    """An individuals x traits CSV (first column `id`); returns the bytes written."""
    return write_matrix_csv(path, "id", list(ids), list(traits), values, "%.6g", progress)


def write_predictions_h5(path: Path, tables: dict, traits, ids) -> None:
    """predictions.h5: every table as a chunked float32 dataset (rows, traits); its attribute
    `rows` names the dataset of its row ids: `ids` (every modelled individual) or `new_ids`
    (the individuals of --new-kinship)."""
    str_dt = h5py.string_dtype()
    ids = list(ids)
    with h5py.File(path, "w") as h5:
        h5.attrs.update({"format_version": FORMAT_VERSION, "package_version": __version__,
                         "units": "the traits' original units"})
        h5.create_dataset("traits", data=np.array(list(traits), dtype=object), dtype=str_dt)
        h5.create_dataset("ids", data=np.array(ids, dtype=object), dtype=str_dt)
        for name, (row_ids, matrix) in tables.items():
            rows_name = "ids" if list(row_ids) == ids else "new_ids"
            if rows_name not in h5:
                h5.create_dataset(rows_name, data=np.array(list(row_ids), dtype=object), dtype=str_dt)
            rows, cols = matrix.shape
            dset = h5.create_dataset(name.removesuffix(".csv"), data=matrix.astype(np.float32),
                                     chunks=(min(rows, 256), min(cols, 4096)) if rows and cols else None)
            dset.attrs["rows"] = rows_name


def test_accuracy(observed, predictions: dict, rows, cols, traits) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per trait: n_test and cor(prediction, observation) for each prediction; and a
    one-row table of the totals: n_traits, n_test and the mean correlations."""
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
    mean = {"n_traits": len(table), "n_test": int(table["n_test"].sum()) if len(table) else 0}
    mean.update({c: table[c].mean() for c in table.columns if c.startswith("cor_")})
    return table, pd.DataFrame([mean])


def reliabilities(config: Config, ids, traits, genetic: RunningMoments, paths) -> np.ndarray | None:
    """(N, t) reliability of every individual's genetic value in every trait, phenotyped or
    not: 1 - PEV / prior variance, with PEV = U_sd^2 (from the draws) and the prior variance
    K_ii E[G_jj] (the kinship's diagonal times the posterior mean genetic variance, from the
    stored draws), clipped to [0, 1] (below 0: the data say nothing beyond the prior, and the
    Monte Carlo estimate of PEV landed above it). One random effect over individuals only
    (None otherwise, or without the draws G needs)."""
    from .covariance import chain_draws, trait_diagonals
    from .data import reorder_kinship
    from .kinship import load_kinship

    if len(config.model.random) != 1 or genetic.count < 2:
        return None
    kin_cfg = next(k for k in config.data.kinships if k.name == config.model.random[0])
    kinship = load_kinship(kin_cfg, config.data.psd_tolerance)
    if kinship.matrix is None or not set(ids) <= set(kinship.ids):
        return None
    diagonal = np.diag(reorder_kinship(kinship, list(ids)))
    total, count = np.zeros(len(traits)), 0
    for path in paths:
        chain = ChainFile(path)
        if not {"Lambda", "f_h2", "resid_h2", "tot_eta_prec"} <= set(chain.sample_names()):
            return None
        for d in chain_draws(chain):
            total += trait_diagonals(d)["G_var"].sum(axis=0)
            count += d.lam.shape[0]
    if count == 0:
        return None
    prior = diagonal[:, None] * (total / count)[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(prior > 0, np.clip(1.0 - genetic.sd() ** 2 / prior, 0.0, 1.0), np.nan)


def read_test_file(path, ids, traits) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, cols, values) of a tall id,trait,value file of cells to score."""
    from types import SimpleNamespace

    from .data import load_test_cells

    cells = load_test_cells(SimpleNamespace(file=Path(path), id="id", trait="trait", value="value"),
                            ids, traits)
    if np.isnan(cells.values).any():
        raise UserError(f"{Path(path).name}: --test needs a 'value' column with the observed value "
                        "of every cell (columns id,trait,value)")
    return cells.rows, cells.cols, cells.values


def run_predict(config: Config, echo=print, new_kinship=None, test_file=None, warn=None,
                progress=None) -> Path:
    """Write predictions/ from the chains: every input is read and checked and every table
    computed first; the directory is then replaced whole (a failed or killed run leaves the
    previous predictions as they were). progress: callable(rows done, rows, description)."""
    paths = chains_for_reading(config, warn)
    ids, traits, rows, cols, values = read_test_cells(config)
    if test_file is not None:
        rows, cols, values = read_test_file(test_file, ids, traits)
    genetic = pooled_moments(config, "U", paths)
    tables = {"U.csv": (ids, genetic.mean), "U_sd.csv": (ids, genetic.sd())}
    predictions = {"U": genetic.mean}
    try:
        expected = pooled_moments(config, "eta_hat", paths)
        tables["eta_hat.csv"] = (ids, expected.mean)
        predictions["eta_hat"] = expected.mean
    except UserError:
        expected = None
    notes = ["wrote {out}/U.csv, U_sd.csv" + (", eta_hat.csv" if expected is not None else "")
             + f" ({len(ids)} individuals x {len(traits)} traits, {genetic.count} draws)"]
    names = read_effect_names(config)
    if len(names) > 1:
        by_effect = pooled_moments(config, "U_by_effect", paths)
        for e, name in enumerate(names):
            tables[f"U_{name}.csv"] = (ids, by_effect.mean[e])
            tables[f"U_{name}_sd.csv"] = (ids, by_effect.sd()[e])
        notes.append("wrote the genetic values of each random effect: "
                     + ", ".join(f"U_{name}.csv" for name in names) + " (and their _sd.csv); they sum to U")
    accuracy = None
    if rows.size:
        accuracy, mean = test_accuracy(values, predictions, rows, cols, traits)
        notes.append(f"wrote {{out}}/test_accuracy.csv and test_accuracy_mean.csv: {rows.size} test "
                     "cells, mean correlation "
                     + ", ".join(f"{c[4:]} {mean[c].iloc[0]:.3f}" for c in mean.columns if c.startswith("cor_")))
    reliability = reliabilities(config, ids, traits, genetic, paths)
    if reliability is not None:
        tables["reliability.csv"] = (ids, reliability)
        notes.append("wrote {out}/reliability.csv: 1 - U_sd^2 / (K_ii G_jj) per individual and trait")
    if new_kinship is not None:
        new_tables, new_notes = predict_new(config, new_kinship, genetic.mean)
        tables.update(new_tables)
        notes += new_notes
    final = Path(config.run.output_dir) / "predictions"
    total_rows = sum(len(row_ids) for row_ids, _ in tables.values())
    started, written, done = time.perf_counter(), 0, 0
    with replaced_directory(final) as out:
        for name, (row_ids, matrix) in tables.items():
            step = None if progress is None else (
                lambda rows, base=done, name=name: progress(base + rows, total_rows, f"predict: {name}"))
            written += write_matrix(out / name, row_ids, traits, matrix, step)
            done += len(row_ids)
        seconds = time.perf_counter() - started
        write_predictions_h5(out / "predictions.h5", tables, traits, ids)
        if accuracy is not None:
            accuracy.to_csv(out / "test_accuracy.csv", index=False, float_format="%.4f")
            mean.to_csv(out / "test_accuracy_mean.csv", index=False, float_format="%.4f")
    for note in notes:
        echo(note.replace("{out}", str(final)))
    echo(f"wrote {final}/predictions.h5 (the same matrices, float32); CSV at "
         f"{written / max(seconds, 1e-9) / 1e6:.0f} MB/s ({written / 1e6:.0f} MB in {seconds:.1f} s)")
    return final


# ----------------------------------------------------------------------------- new individuals


def read_new_kinship(path, modelled_ids, training_ids) -> tuple[list, list, np.ndarray, np.ndarray]:
    """Kinship block of new individuals (rows) against modelled ones (and among themselves).

    Header: label + column ids; first column: row ids (the new individuals). Columns must
    include every training id and every row id; other columns must be modelled ids.
    Returns (new_ids, cond_ids, K_nm (n_new, n_cond), K_nn (n_new, n_new)), cond_ids being
    the modelled ids among the columns, in model order.
    """
    from .tables import check_unique_ids, first_names, numeric_matrix, read_table, table_ids

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found; check the --new-kinship path")
    table = read_table(path, None)
    source = path.name
    new_ids = [str(x) for x in table_ids(table)]
    check_unique_ids(new_ids, source, "each new individual must appear once in the first column")
    columns = [c for c in table.frame.columns if c != table.id_column]
    modelled = set(modelled_ids)
    already = [x for x in new_ids if x in modelled]
    if already:
        raise UserError(f"{source}: {len(already)} row ids are already in the model (first: "
                        f"{first_names(already)}); their predictions are in predictions/U.csv, drop these rows")
    new_set = set(new_ids)
    unknown = [c for c in columns if c not in modelled and c not in new_set]
    if unknown:
        raise UserError(f"{source}: {len(unknown)} column ids are neither modelled ids nor row ids "
                        f"(first: {first_names(unknown)}); columns must be modelled ids or the new ids")
    have = set(columns)
    absent = [x for x in training_ids if x not in have]
    if absent:
        raise UserError(f"{source}: {len(absent)} modelled (training) ids are missing from the header "
                        f"(first: {first_names(absent)}); the columns must cover every training individual")
    absent_new = [x for x in new_ids if x not in have]
    if absent_new:
        raise UserError(f"{source}: {len(absent_new)} new ids have no column (first: "
                        f"{first_names(absent_new)}); include the block among the new individuals")
    values = numeric_matrix(table, columns, fix="use a number")
    if not np.all(np.isfinite(values)):
        i, j = np.argwhere(~np.isfinite(values))[0]
        raise UserError(f"{source}: {table.where(i)}, column '{columns[j]}': missing or infinite value;"
                        " every kinship value must be a finite number")
    position = {c: j for j, c in enumerate(columns)}
    cond_ids = [x for x in modelled_ids if x in have]
    k_nm = values[:, [position[x] for x in cond_ids]]
    k_nn = values[:, [position[x] for x in new_ids]]
    if not np.allclose(k_nn, k_nn.T, rtol=1e-6, atol=1e-8):
        raise UserError(f"{source}: the block among the new individuals is not symmetric; fix the file")
    return new_ids, cond_ids, k_nm, k_nn


def modelled_kinship(config: Config, ids) -> np.ndarray:
    """The config's kinship (of the model's random effect) on `ids`, in that order."""
    from .data import check_covers, reorder_kinship
    from .kinship import load_kinship

    if len(config.model.random) != 1:
        raise UserError(f"{config.path.name}: model.random: predicting new individuals needs one "
                        "random effect")
    kin_cfg = next(k for k in config.data.kinships if k.name == config.model.random[0])
    kinship = load_kinship(kin_cfg, config.data.psd_tolerance)
    if kinship.matrix is None:
        raise UserError(f"{config.path.name}: the random effect '{kin_cfg.name}' has no kinship "
                        "(identity): new individuals cannot be predicted from relatives")
    check_covers(kinship, ids, "modelled ids", "the kinship changed since `megalmm prepare`; "
                  "prepare again")
    return reorder_kinship(kinship, list(ids))


def conditional_map(k_nm: np.ndarray, k_mm: np.ndarray, rel_tol: float = 1e-10) -> np.ndarray:
    """A = K_nm K_mm^+ (pseudo-inverse by eigh, eigenvalues <= rel_tol * max dropped)."""
    values, vectors = np.linalg.eigh((k_mm + k_mm.T) / 2)
    keep = values > rel_tol * max(values.max(), 0.0)
    if not keep.any():
        return np.zeros((k_nm.shape[0], k_mm.shape[0]))
    v = vectors[:, keep]
    return ((k_nm @ v) / values[keep][None, :]) @ v.T


def _b1_mean(config: Config):
    """Posterior mean of B1 (original units) over the stored draws of every chain, or None."""
    import h5py

    total, count = None, 0
    for path in chains_for_reading(config):
        with h5py.File(path, "r") as f:
            if "samples" not in f or "B1" not in f["samples"]:
                return None
        draws = ChainFile(path).read_samples("B1")
        if draws.shape[0] == 0:
            continue
        total = draws.sum(axis=0) if total is None else total + draws.sum(axis=0)
        count += draws.shape[0]
    return None if total is None else total / count


def _new_design(config: Config, model, new_ids) -> np.ndarray | None:
    """X1 rows of the new individuals, built as prepare builds X1; None if it cannot match."""
    from .data import load_covariates, load_phenotypes
    from .design import fixed_design, formula_variables

    data = config.data
    covariate_vars = formula_variables(config.model.fixed) + formula_variables(config.model.factor_fixed)
    covariates = load_phenotypes(data.phenotypes, extra_covariate_columns=covariate_vars).covariates
    if data.covariates is not None:
        extra = load_covariates(data.covariates)
        covariates = extra.combine_first(covariates.reindex(extra.index.union(covariates.index)))
    needed = formula_variables(config.model.fixed)
    if needed:
        frame = covariates.reindex(list(new_ids))
        if not frame[needed].notna().all(axis=None):
            return None
    ids = list(model.ids) + list(new_ids)
    try:
        x1, names = fixed_design(config.model.fixed, covariates, ids, model.n_train, "model.fixed")
    except UserError:
        return None
    N = len(model.ids)
    if tuple(names) != tuple(model.x1_names) or not np.allclose(x1[:model.n_train], model.x1_all[:model.n_train]):
        return None
    return x1[N:]


def predict_new(config: Config, kinship_file, genetic_mean: np.ndarray) -> tuple[dict, list]:
    """U_new = K_nm K_mm^+ E[U_m] (and eta_hat_new = X1_new E[B1] + U_new when possible).
    Returns the tables ({file name: (ids, matrix)}) and the lines to report."""
    from .prepare import load_model

    model = load_model(config)
    training = model.ids[: model.n_train]
    new_ids, cond_ids, k_nm, _ = read_new_kinship(kinship_file, model.ids, training)
    index = {x: i for i, x in enumerate(model.ids)}
    rows = np.array([index[x] for x in cond_ids], dtype=np.int64)
    k_mm = modelled_kinship(config, [model.ids[i] for i in rows])
    u_new = conditional_map(k_nm, k_mm) @ genetic_mean[rows]
    tables = {"U_new.csv": (new_ids, u_new)}
    notes = [f"wrote {{out}}/U_new.csv ({len(new_ids)} new individuals x {len(model.traits)} traits, "
             f"conditioned on {len(cond_ids)} modelled individuals); U_sd and reliability need the "
             "individuals' joint draws: put them in the kinship before `megalmm prepare` (as "
             "genotyped-only individuals) to get both"]
    if model.x2_all.shape[1]:
        return tables, notes + ["note: eta_hat_new.csv not written: model.factor_fixed is set"]
    b1 = _b1_mean(config)
    if b1 is None:
        return tables, notes + ["note: eta_hat_new.csv not written: no stored B1 draws (add B1 to "
                                "posterior.samples)"]
    x1_new = _new_design(config, model, new_ids)
    if x1_new is None:
        return tables, notes + ["note: eta_hat_new.csv not written: the new individuals lack "
                                "covariates of model.fixed (or their levels differ from the training ones)"]
    eta = x1_new @ b1 + u_new
    if "Intercept" not in model.x1_names:
        eta = eta + model.trait_mean[None, :]
    tables["eta_hat_new.csv"] = (new_ids, eta)
    return tables, notes + ["wrote {out}/eta_hat_new.csv"]
