"""The Grid-LMM cache on disk (grid_cache.h5 beside prepared.h5), safe against a kill at
any instant.

One HDF5 group per cache: "factors" (every training row) and one per missing-data group
that keeps fewer rows ("0", "1", ...). Each holds, for S slices of the grid and n rows,
    transforms (S, n, n)   the slice transforms T_s
    lam (S, n), logdet_a (S,)
    done (S,) uint8        1 once slice s is written
    roots (m, n, n)        each effect's square root, zero-padded; roots_width (1,) its width
    complete (1,) uint8    1 once the roots are written (the cache is whole)
and the file's attrs name the layout (format_version, layout_hash, and per group its rows
and the fingerprint of its inputs).

The file is created whole (rawh5: every dataset allocated, then renamed into place) and
then only written by pwrite: a slice's data first, then its `done` byte; so a prepare killed
anywhere resumes at the first slice not done, and never mistakes a half-written slice for a
finished one. A new layout (other data, groups or grid) gets a new file, into which the
finished slices of unchanged groups are copied before it replaces the old one.
"""

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from . import FORMAT_VERSION
from .errors import UserError
from .faults import kill_point
from .gridcache import GridCache, grid_slices, point_weights
from .rawh5 import (contiguous_dataset, dataset_offset, install, read_at, remove_stale_temporaries,
                    temporary_path, write_at)

CACHE_NAME = "grid_cache.h5"
PARTS = ("transforms", "lam", "logdet_a", "done", "roots", "roots_width", "complete")


@dataclass(frozen=True)
class CacheGroup:
    """One cache of the layout: its key, rows and the fingerprint of its inputs."""

    key: str
    n: int
    fingerprint: str


def fingerprint(kinship_blocks, grid: np.ndarray) -> str:
    """Hash of a cache's inputs (each effect's relationship matrix on its rows, None for
    identity, and the grid): stored slices are reused only for identical inputs."""
    digest = hashlib.sha256(np.ascontiguousarray(grid).tobytes())
    for block in kinship_blocks:
        digest.update(b"identity" if block is None else np.ascontiguousarray(block).tobytes())
    return digest.hexdigest()


def layout_hash(groups, n_slices: int, n_effects: int) -> str:
    plain = [[g.key, g.n, g.fingerprint] for g in groups]
    text = json.dumps({"format": FORMAT_VERSION, "groups": plain, "slices": n_slices,
                       "effects": n_effects})
    return hashlib.sha256(text.encode()).hexdigest()


class CacheFile:
    """grid_cache.h5 for one layout: created (or carried over from an older layout) by
    `for_layout`, then filled slice by slice through `store(key)`."""

    def __init__(self, path: Path, groups, n_slices: int, n_effects: int):
        self.path = Path(path)
        self.groups = {g.key: g for g in groups}
        self.n_slices, self.n_effects = n_slices, n_effects
        self.layout_hash = layout_hash(groups, n_slices, n_effects)
        self._offsets = None

    @classmethod
    def for_layout(cls, path: Path, groups, n_slices: int, n_effects: int) -> "CacheFile":
        """The cache file for this layout, reused when it is already there (a killed prepare
        resumes), else written anew with the finished slices of unchanged groups."""
        cache = cls(path, groups, n_slices, n_effects)
        old = _read_attrs(cache.path)
        if old is None or old.get("layout_hash") != cache.layout_hash:
            cache._create(old)
        return cache

    def _create(self, old_attrs) -> None:
        remove_stale_temporaries(self.path)
        tmp = temporary_path(self.path)
        with h5py.File(tmp, "w") as h5:
            h5.attrs.update({"format_version": FORMAT_VERSION, "layout_hash": self.layout_hash,
                             "n_slices": self.n_slices, "n_effects": self.n_effects})
            for key, g in self.groups.items():
                group = h5.create_group(key)
                group.attrs.update({"n": g.n, "fingerprint": g.fingerprint})
                for name, (shape, dtype) in self._shapes(g.n).items():
                    contiguous_dataset(group, name, shape, dtype)
        kill_point("cache:created")
        if old_attrs is not None and old_attrs.get("format_version") == FORMAT_VERSION:
            self._copy_finished(tmp)
        kill_point("cache:copied")
        install(tmp, self.path)
        self._offsets = None

    def _shapes(self, n: int) -> dict:
        s, m = self.n_slices, self.n_effects
        return {"transforms": ((s, n, n), "<f8"), "lam": ((s, n), "<f8"), "logdet_a": ((s,), "<f8"),
                "done": ((s,), "u1"), "roots": ((m, n, n), "<f8"), "roots_width": ((1,), "<i8"),
                "complete": ((1,), "u1")}

    def _copy_finished(self, tmp: Path) -> None:
        """Copy every part of the groups whose fingerprint and size are unchanged from the
        existing file into `tmp` (the `done` bytes say which slices are finished)."""
        try:
            old = _offsets(self.path)
        except OSError:
            return  # unreadable: nothing to carry over
        new = _offsets(tmp)
        fd_old = os.open(self.path, os.O_RDONLY)
        fd_new = os.open(tmp, os.O_RDWR)
        try:
            for key, g in self.groups.items():
                same = old["groups"].get(key)
                if same is None or same != (g.n, g.fingerprint):
                    continue
                for name in PARTS:
                    path = f"{key}/{name}"
                    offset, size = old["parts"][path]
                    if offset is not None and size == new["parts"][path][1]:
                        write_at(fd_new, new["parts"][path][0], read_at(fd_old, offset, size))
        finally:
            os.close(fd_old)
            os.close(fd_new)

    def offsets(self) -> dict:
        if self._offsets is None:
            self._offsets = _offsets(self.path)
        return self._offsets

    def store(self, key: str) -> "SliceStore":
        g = self.groups[str(key)]
        return SliceStore(self, str(key), g.n)

    def is_complete(self) -> bool:
        return is_complete(self.path, self.layout_hash)


class SliceStore:
    """The writer of one cache group (the protocol gridcache.build_cache expects)."""

    def __init__(self, cache: CacheFile, key: str, n: int):
        self.cache, self.key, self.n = cache, key, n

    def _part(self, name):
        return self.cache.offsets()["parts"][f"{self.key}/{name}"]

    def _read(self, name, dtype, index=None, count=1, width=1):
        offset, _ = self._part(name)
        item = np.dtype(dtype).itemsize * width
        start = offset + (index or 0) * item
        with open(self.cache.path, "rb") as raw:
            return np.frombuffer(read_at(raw.fileno(), start, item * count), dtype=dtype)

    def is_done(self, s: int) -> bool:
        return bool(self._read("done", "u1", s)[0])

    def lam(self, s: int) -> np.ndarray:
        return self._read("lam", "<f8", s, width=self.n).copy()

    def logdet(self, s: int) -> float:
        return float(self._read("logdet_a", "<f8", s)[0])

    def write_slice(self, s: int, transform: np.ndarray, lam: np.ndarray, logdet: float) -> None:
        """Slice s: its data reach the file (and the disk) first, then its `done` byte."""
        fd = os.open(self.cache.path, os.O_RDWR)
        try:
            n = self.n
            write_at(fd, self._part("transforms")[0] + s * n * n * 8, np.ascontiguousarray(transform, "<f8"))
            write_at(fd, self._part("lam")[0] + s * n * 8, np.ascontiguousarray(lam, "<f8"))
            write_at(fd, self._part("logdet_a")[0] + s * 8, np.array([logdet], "<f8"))
            os.fsync(fd)
            kill_point("cache:slice_written")
            write_at(fd, self._part("done")[0] + s, b"\x01")
            kill_point("cache:flag_written")
        finally:
            os.close(fd)

    def save_roots(self, roots: np.ndarray) -> None:
        """The effects' roots (m, n, r), then the group's `complete` byte."""
        m, n, width = roots.shape
        padded = np.zeros((m, n, n))
        padded[:, :, :width] = roots
        fd = os.open(self.cache.path, os.O_RDWR)
        try:
            write_at(fd, self._part("roots")[0], padded)
            write_at(fd, self._part("roots_width")[0], np.array([width], "<i8"))
            os.fsync(fd)
            write_at(fd, self._part("complete")[0], b"\x01")
            os.fsync(fd)
        finally:
            os.close(fd)


def _read_attrs(path: Path):
    try:
        with h5py.File(path, "r") as h5:
            return dict(h5.attrs)
    except (OSError, FileNotFoundError):
        return None


def _offsets(path: Path) -> dict:
    """{"groups": key -> (n, fingerprint), "parts": "key/name" -> (offset, bytes)}."""
    out = {"groups": {}, "parts": {}}
    with h5py.File(path, "r") as h5:
        for key, group in h5.items():
            out["groups"][key] = (int(group.attrs["n"]), str(group.attrs["fingerprint"]))
            for name in PARTS:
                dset = group[name]
                out["parts"][f"{key}/{name}"] = (dataset_offset(dset), int(dset.size) * dset.dtype.itemsize)
    return out


def read_layout_hash(path: Path) -> str:
    """The layout hash of grid_cache.h5 ("" when it is missing or unreadable)."""
    attrs = _read_attrs(path)
    return str(attrs.get("layout_hash", "")) if attrs else ""


def is_complete(path: Path, expected_hash: str) -> bool:
    """True when grid_cache.h5 has this layout and every one of its caches is whole."""
    try:
        with h5py.File(path, "r") as h5:
            if h5.attrs.get("layout_hash") != expected_hash:
                return False
            return all(bool(group["complete"][0]) and bool(np.all(group["done"][()]))
                       for group in h5.values())
    except (OSError, FileNotFoundError, KeyError):
        return False


def read_cache(path: Path, key: str, grid: np.ndarray, in_memory: bool) -> GridCache:
    """One group's GridCache from grid_cache.h5; transforms in memory, or left on disk and
    read one slice at a time (the file then stays open for the life of the cache)."""
    try:
        h5 = h5py.File(path, "r")
    except (OSError, FileNotFoundError):
        raise UserError(f"{path}: cannot be read; run `megalmm prepare --force` to rebuild it") from None
    group = h5.get(key)
    if group is None or not group["complete"][0]:
        h5.close()
        raise UserError(f"{path}: the Grid-LMM cache of group {key} is incomplete; run "
                        "`megalmm prepare` again (it resumes where it stopped)")
    slice_of_point, _ = grid_slices(grid)
    weights, half_logdet = point_weights(grid, slice_of_point, group["lam"][()], group["logdet_a"][()])
    transforms = group["transforms"][()] if in_memory else group["transforms"]
    width = int(group["roots_width"][0])
    roots = np.ascontiguousarray(group["roots"][:, :, :width])
    cache = GridCache(slice_of_point, transforms, weights, half_logdet, roots)
    if in_memory:
        h5.close()
    return cache
