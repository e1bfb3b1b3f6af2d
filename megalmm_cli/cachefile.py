"""The Grid-LMM cache on disk (grid_cache.h5 beside prepared.h5).

One HDF5 group per missing-data group ("0", "1", ...) and one for the factors ("factors"),
each holding the slice transforms (S, n, n) in chunks of one slice, their lam (S, n) and
log|A_s| (S,), a `done` flag per slice and the effects' square roots. `prepare` writes a slice,
then its flag, so an interrupted prepare resumes at the first slice not done; `sample` reads
the transforms into memory or one chunk at a time (see gridcache.GridCache).
"""

import hashlib
from pathlib import Path

import h5py
import numpy as np

from . import FORMAT_VERSION
from .errors import UserError
from .gridcache import GridCache, grid_slices, point_weights

CACHE_NAME = "grid_cache.h5"


def fingerprint(blocks, grid: np.ndarray) -> str:
    """Hash of a group's inputs: a stored slice is reused only for identical inputs."""
    digest = hashlib.sha256(np.ascontiguousarray(grid).tobytes())
    for block in blocks:
        digest.update(np.ascontiguousarray(block).tobytes())
    return digest.hexdigest()


class SliceStore:
    """The datasets of one cache group, written slice by slice (see gridcache.build_cache)."""

    def __init__(self, group: h5py.Group):
        self.group = group
        self.transforms = group["transforms"]
        self._done = group["done"]

    @classmethod
    def open(cls, h5: h5py.File, key: str, n_slices: int, n: int, n_effects: int, stamp: str):
        """The group `key`, kept when its stamp matches (resume), else created afresh."""
        if key in h5:
            old = h5[key]
            if old.attrs.get("fingerprint") == stamp and old["transforms"].shape == (n_slices, n, n):
                return cls(old)
            del h5[key]
        group = h5.create_group(key)
        group.create_dataset("transforms", shape=(n_slices, n, n), dtype="f8",
                             chunks=(1, n, n) if n else None)
        group.create_dataset("lam", shape=(n_slices, n), dtype="f8")
        group.create_dataset("logdet_a", shape=(n_slices,), dtype="f8")
        group.create_dataset("done", shape=(n_slices,), dtype=bool, fillvalue=False)
        group.attrs.update({"fingerprint": stamp, "n_effects": n_effects, "complete": False})
        return cls(group)

    def is_done(self, s: int) -> bool:
        return bool(self._done[s])

    def lam(self, s: int) -> np.ndarray:
        return self.group["lam"][s]

    def logdet(self, s: int) -> float:
        return float(self.group["logdet_a"][s])

    def finish(self, s: int, lam: np.ndarray, logdet: float) -> None:
        """Slice s is written: its data reach the file first, then its flag."""
        self.group["lam"][s] = lam
        self.group["logdet_a"][s] = logdet
        self.group.file.flush()
        self._done[s] = True
        self.group.file.flush()

    def save_roots(self, roots: np.ndarray) -> None:
        if "roots" in self.group:
            del self.group["roots"]
        self.group.create_dataset("roots", data=roots)
        self.group.attrs["complete"] = True
        self.group.file.flush()


def open_for_writing(path: Path, config_hash: str) -> h5py.File:
    """grid_cache.h5 opened to add slices: kept (resume) when from the same config.

    Its stamp is cleared first, so that until prepare writes a prepared.h5 with a new stamp
    and stamps the cache to match (set_stamp), no prepared.h5 takes it for its own: a
    prepare killed half-way through rebuilding some groups never leaves a mixed cache that
    looks complete.
    """
    h5 = None
    if path.exists():
        try:
            h5 = h5py.File(path, "a")
            if (h5.attrs.get("config_hash") != config_hash
                    or h5.attrs.get("format_version") != FORMAT_VERSION):
                h5.close()
                h5 = None
        except OSError:
            h5 = None
        if h5 is None:
            path.unlink()
    if h5 is None:
        h5 = h5py.File(path, "w")
        h5.attrs.update({"config_hash": config_hash, "format_version": FORMAT_VERSION})
    h5.attrs["stamp"] = ""
    h5.flush()
    return h5


def read_stamp(path: Path) -> str:
    """The stamp of grid_cache.h5 ("" while a prepare is building it or when unreadable)."""
    try:
        with h5py.File(path, "r") as h5:
            return str(h5.attrs.get("stamp", ""))
    except (OSError, FileNotFoundError):
        return ""


def set_stamp(path: Path, stamp: str) -> None:
    with h5py.File(path, "a") as h5:
        h5.attrs["stamp"] = stamp


def read_cache(path: Path, key: str, grid: np.ndarray, in_memory: bool) -> GridCache:
    """One group's GridCache from grid_cache.h5; transforms in memory, or left on disk and
    read one slice at a time (the file then stays open for the life of the cache)."""
    try:
        h5 = h5py.File(path, "r")
    except (OSError, FileNotFoundError):
        raise UserError(f"{path}: cannot be read; run `megalmm prepare --force` to rebuild it") from None
    group = h5.get(key)
    if group is None or not group.attrs.get("complete", False):
        h5.close()
        raise UserError(f"{path}: the Grid-LMM cache of group {key} is incomplete; run "
                        "`megalmm prepare` again (it resumes where it stopped)")
    slice_of_point, _ = grid_slices(grid)
    weights, half_logdet = point_weights(grid, slice_of_point, group["lam"][()], group["logdet_a"][()])
    transforms = group["transforms"][()] if in_memory else group["transforms"]
    cache = GridCache(slice_of_point, transforms, weights, half_logdet, group["roots"][()])
    if in_memory:
        h5.close()
    return cache
