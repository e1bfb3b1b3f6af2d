"""Posterior storage: an HDF5 chain file (and an in-memory twin for tests).

Layout of chains/chain_<N>.h5:
    attrs                 format_version, package_version, numpy_version, config_hash, chain,
                          n_draws, iteration, active (which state buffer is current)
    /samples/<param>      (draw, ...) chunked, resizable, gzip
    /state_a, /state_b    two checkpoint buffers: parameters, Generator states, running means

A checkpoint appends the new draws beyond the committed count, writes the inactive state
buffer, and only then updates n_draws / iteration / active, so an interrupted write leaves
the previous checkpoint intact; on resume, draws beyond n_draws are discarded.
"""

import json
import os
from dataclasses import dataclass, field

import h5py
import numpy as np

from . import FORMAT_VERSION, __version__
from .errors import UserError


@dataclass
class Checkpoint:
    """Everything needed to resume: flat arrays (lists as name/index), Generator states, means."""

    iteration: int
    n_draws: int
    arrays: dict                     # name -> array, or name -> list of arrays
    rng_states: dict                 # name -> bit_generator.state
    means: dict                      # name -> array (running means / M2 and counts)
    elapsed: float = 0.0


@dataclass
class MemoryChain:
    """In-memory storage with the same interface as ChainFile (for tests)."""

    samples: dict = field(default_factory=dict)
    checkpoint: Checkpoint | None = None

    def commit(self, slab: dict, checkpoint: Checkpoint) -> None:
        for name, values in slab.items():
            old = self.samples.get(name)
            self.samples[name] = values.copy() if old is None else np.concatenate([old, values])
        self.checkpoint = _copy_checkpoint(checkpoint)

    def load(self) -> Checkpoint | None:
        return None if self.checkpoint is None else _copy_checkpoint(self.checkpoint)


def _copy_checkpoint(cp: Checkpoint) -> Checkpoint:
    def copy(v):
        return [a.copy() for a in v] if isinstance(v, list) else np.array(v, copy=True)

    return Checkpoint(cp.iteration, cp.n_draws, {k: copy(v) for k, v in cp.arrays.items()},
                      json.loads(json.dumps(cp.rng_states)), {k: copy(v) for k, v in cp.means.items()},
                      cp.elapsed)


class ChainFile:
    """One chain's HDF5 file."""

    def __init__(self, path):
        self.path = os.fspath(path)

    # -- creation -----------------------------------------------------------------------
    def create(self, attrs: dict, sample_shapes: dict, draws_per_chunk: int) -> None:
        """Write an empty chain file (atomically: temporary name, then rename)."""
        tmp = self.path + ".tmp"
        with h5py.File(tmp, "w") as f:
            f.attrs.update({
                "format_version": FORMAT_VERSION, "package_version": __version__,
                "numpy_version": np.__version__, "n_draws": 0, "iteration": 0, "active": "",
                "elapsed_seconds": 0.0,
            })
            f.attrs.update(attrs)
            samples = f.create_group("samples")
            for name, shape in sample_shapes.items():
                per_draw = max(1, int(np.prod(shape)))
                chunk_draws = max(1, min(draws_per_chunk, (1 << 20) // (8 * per_draw)))
                samples.create_dataset(
                    name, shape=(0, *shape), maxshape=(None, *shape), dtype="f8",
                    chunks=(chunk_draws, *shape) if per_draw * chunk_draws > 0 else None,
                    compression="gzip", compression_opts=1, shuffle=True,
                )
        os.replace(tmp, self.path)

    def exists(self) -> bool:
        return os.path.exists(self.path)

    def sample_names(self) -> list:
        """Names of the sampled parameters this file has datasets for."""
        with self._open("r") as f:
            return list(f["samples"].keys()) if "samples" in f else []

    def attrs(self) -> dict:
        with self._open("r") as f:
            return dict(f.attrs)

    def _open(self, mode):
        try:
            return h5py.File(self.path, mode)
        except OSError as exc:
            raise UserError(
                f"{self.path}: cannot open the chain file ({exc}); if it is corrupted (truncated "
                "by a crash or a full disk), move it aside to start this chain again"
            ) from None

    # -- checkpoints ----------------------------------------------------------------------
    def commit(self, slab: dict, checkpoint: Checkpoint) -> None:
        """Append draws and write a checkpoint; the commit marker attributes are written last.

        A failed write (disk full, permissions, quota) leaves the previous checkpoint as the
        committed one and is reported as a UserError saying so.
        """
        previous = None
        try:
            with self._open("r+") as f:
                previous = int(f.attrs["iteration"])
                self._write_checkpoint(f, slab, checkpoint)
        except OSError as exc:
            kept = (f"the previous checkpoint (iteration {previous}) is intact"
                    if previous is not None else "nothing was written")
            raise UserError(
                f"{self.path}: could not write the checkpoint of iteration {checkpoint.iteration} "
                f"({exc}); {kept}: free disk space or fix permissions, then re-run the same "
                "command to resume") from None

    @staticmethod
    def _write_checkpoint(f, slab: dict, checkpoint: Checkpoint) -> None:
        committed = int(f.attrs["n_draws"])
        for name, values in slab.items():
            dset = f["samples"][name]
            dset.resize(committed + values.shape[0], axis=0)
            dset[committed:] = values
        target = "state_b" if f.attrs["active"] == "state_a" else "state_a"
        group = f.require_group(target)
        _write_tree(group.require_group("arrays"), checkpoint.arrays)
        _write_tree(group.require_group("means"), checkpoint.means)
        group.attrs["rng_states"] = json.dumps(checkpoint.rng_states)
        group.attrs["iteration"] = checkpoint.iteration
        group.attrs["n_draws"] = checkpoint.n_draws
        group.attrs["elapsed_seconds"] = checkpoint.elapsed
        group.attrs["contents"] = json.dumps({"arrays": sorted(checkpoint.arrays),
                                              "means": sorted(checkpoint.means)})
        f.flush()
        f.attrs["n_draws"] = checkpoint.n_draws
        f.attrs["iteration"] = checkpoint.iteration
        f.attrs["elapsed_seconds"] = checkpoint.elapsed
        f.attrs["active"] = target
        f.flush()

    def load(self) -> Checkpoint | None:
        """The last committed checkpoint (None for a chain with no checkpoint yet)."""
        with self._open("r+") as f:
            active = f.attrs["active"]
            if not active:
                return None
            n_draws = int(f.attrs["n_draws"])
            try:
                for dset in f["samples"].values():
                    if dset.shape[0] != n_draws:  # draws of an interrupted checkpoint
                        dset.resize(n_draws, axis=0)
                return _read_checkpoint(f[active], int(f.attrs["iteration"]), n_draws,
                                        float(f.attrs["elapsed_seconds"]))
            except (OSError, KeyError, ValueError) as exc:
                raise self._damaged(exc) from None

    def read_samples(self, name: str) -> np.ndarray:
        with self._open("r") as f:
            n = int(f.attrs["n_draws"])
            try:
                return f["samples"][name][:n]
            except KeyError:
                raise
            except (OSError, ValueError) as exc:
                raise self._damaged(exc) from None

    def read_means(self) -> dict:
        with self._open("r") as f:
            if not f.attrs["active"]:
                return {}
            group = f[f.attrs["active"]]
            try:
                means = _read_tree(group["means"])
                if "contents" in group.attrs:
                    missing = set(json.loads(group.attrs["contents"])["means"]) - set(means)
                    if missing:
                        raise KeyError(f"checkpoint lacks {', '.join(sorted(missing))}")
                return means
            except (OSError, KeyError, ValueError) as exc:
                raise self._damaged(exc) from None

    def _damaged(self, exc) -> UserError:
        try:
            kept, _ = self.recoverable()
            what = (f"{kept.n_draws} draws up to iteration {kept.iteration} are recoverable"
                    if kept is not None else "no checkpoint is recoverable")
        except Exception:  # the damage may also stop the inspection itself
            what = "the recoverable draws could not be determined"
        return UserError(
            f"{self.path}: the chain file is damaged ({exc}); {what}: run `megalmm repair CONFIG` "
            "to keep every intact checkpointed draw")

    # -- damage and repair ----------------------------------------------------------------
    def recoverable(self) -> tuple[Checkpoint | None, dict]:
        """The newest readable checkpoint whose draws are all readable, and per sample dataset
        the number of readable draws. (None, ...) when no checkpoint can be recovered."""
        with self._open("r") as f:
            readable = {name: _readable_draws(dset) for name, dset in f["samples"].items()}
            limit = min(readable.values()) if readable else 0
            active = f.attrs["active"]
            order = [active, "state_b" if active == "state_a" else "state_a"] if active else []
            for name in order:
                if name not in f:
                    continue
                group = f[name]
                if name == active:
                    n_draws, elapsed = int(f.attrs["n_draws"]), float(f.attrs["elapsed_seconds"])
                    iteration = int(f.attrs["iteration"])
                elif "n_draws" in group.attrs:
                    n_draws, elapsed = int(group.attrs["n_draws"]), float(group.attrs["elapsed_seconds"])
                    iteration = int(group.attrs["iteration"])
                else:
                    continue
                if n_draws > limit:
                    continue
                try:
                    return _read_checkpoint(group, iteration, n_draws, elapsed), readable
                except (OSError, KeyError, ValueError):
                    continue
            return None, readable

    def repair(self) -> tuple[Checkpoint, str]:
        """Rewrite the chain with every intact checkpointed draw; the damaged file is kept
        beside it as <name>.damaged. Returns the kept checkpoint and the damaged file's path."""
        checkpoint, _ = self.recoverable()
        if checkpoint is None:
            raise UserError(
                f"{self.path}: no checkpoint in this chain file can be read; move it aside and "
                "sample the chain again")
        with self._open("r") as f:
            attrs = {k: v for k, v in f.attrs.items()
                     if k not in ("n_draws", "iteration", "active", "elapsed_seconds")}
            shapes = {name: dset.shape[1:] for name, dset in f["samples"].items()}
            chunk = max([dset.chunks[0] for dset in f["samples"].values() if dset.chunks] or [1])
            slab = {name: dset[:checkpoint.n_draws] for name, dset in f["samples"].items()}
        fixed = ChainFile(self.path + ".repaired")
        fixed.create(attrs, shapes, chunk)
        fixed.commit(slab, checkpoint)
        damaged = self.path + ".damaged"
        os.replace(self.path, damaged)
        os.replace(fixed.path, self.path)
        return checkpoint, damaged


def _read_checkpoint(group, iteration: int, n_draws: int, elapsed: float) -> Checkpoint:
    """Read a checkpoint buffer; KeyError when any part it was written with is missing."""
    arrays, means = _read_tree(group["arrays"]), _read_tree(group["means"])
    if "contents" in group.attrs:
        contents = json.loads(group.attrs["contents"])
        missing = sorted(set(contents["arrays"]) - set(arrays)) + sorted(set(contents["means"]) - set(means))
        if missing:
            raise KeyError(f"checkpoint lacks {', '.join(missing)}")
    return Checkpoint(iteration=iteration, n_draws=n_draws, arrays=arrays,
                      rng_states=json.loads(group.attrs["rng_states"]), means=means, elapsed=elapsed)


def _readable_draws(dset) -> int:
    """How many leading draws of a dataset can be read (chunk by chunk)."""
    step = dset.chunks[0] if dset.chunks else max(1, dset.shape[0])
    for start in range(0, dset.shape[0], step):
        try:
            dset[start:start + step]
        except (OSError, ValueError):
            return start
    return dset.shape[0]


def _write_tree(group, arrays: dict) -> None:
    """Write name -> array (or list of arrays) in place, reusing datasets of the same shape."""
    for name, value in arrays.items():
        items = {name: value} if not isinstance(value, list) else None
        if items is None:
            sub = group.require_group(name)
            sub.attrs["length"] = len(value)
            for i, arr in enumerate(value):
                _write_array(sub, str(i), arr)
        else:
            _write_array(group, name, value)


def _write_array(group, name, value) -> None:
    value = np.asarray(value)
    if name in group and (group[name].shape != value.shape or group[name].dtype != value.dtype):
        del group[name]
    if name in group:
        group[name][...] = value
    else:
        group.create_dataset(name, data=value)


def _read_tree(group) -> dict:
    out = {}
    for name, item in group.items():
        if isinstance(item, h5py.Group):
            out[name] = [item[str(i)][()] for i in range(int(item.attrs["length"]))]
        else:
            out[name] = item[()]
    return out
