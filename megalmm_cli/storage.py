"""Posterior storage: a chain's HDF5 file, safe against a kill at any instant (and an
in-memory twin for tests).

Layout of chains/chain_<N>.h5 (docs/outputs.md shows how to read it):
    attrs                 format_version, package_version, numpy_version, config_hash, chain,
                          seed, burn_in, thin, capacity (rows of /samples), state_signature
    /commit               int64 (8,): magic, seq, active buffer (0 none, 1 state_a, 2 state_b),
                          iteration, n_draws, target iterations, capacity, CRC32
    /samples/<param>      (capacity, ...) the draws; rows [0, n_draws) are committed
    /state_a, /state_b    two checkpoint buffers, each: arrays/<name>[/<group>] (the sampler
                          state), means/<name> (running means), rng (Generator states as JSON
                          bytes), crc (CRC32 of each part), header (magic, seq, iteration,
                          n_draws, elapsed microseconds, JSON length, microseconds spent in
                          the first iteration of each run, runs, CRC of crc, CRC)

The file is created whole (rawh5: every dataset allocated, then an atomic rename) and from
then on changed only by pwrite into those datasets. Each draw is written into its row
beyond n_draws as it is made (nothing is held in memory until the checkpoint); a checkpoint
writes the whole state into the inactive buffer (its header last), flushes to disk, then
writes the commit record: killed anywhere before the commit record, the previous checkpoint stays
the committed one, and its draws are untouched. A buffer whose checksums fail (a torn write
after a power cut, a bad block) is skipped for the other one, which resumes the same chain
exactly. Changing the number of rows or the state's shapes rewrites the file under a
temporary name and renames it over the old one.

This module is the chain's interface (ChainFile, and MemoryChain for tests); the byte-level
format, the commit record, buffers, checksums and raw copies, is in chainformat.py.
"""

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from . import FORMAT_VERSION, __version__
from .chainformat import (BUFFERS, COMMIT, HEADER, MAGIC, RNG_BYTES, BufferState, Checkpoint,
                          buffer_header, commit_record, copy_buffer, copy_rows,
                          flatten_checkpoint, read_buffer, read_layout, state_signature,
                          stored_shape, write_buffer)
from .errors import UserError
from .faults import kill_point
from .rawh5 import (contiguous_dataset, install, read_at, remove_stale_temporaries,
                    temporary_path, write_at)

__all__ = ["Checkpoint", "ChainFile", "MemoryChain", "Progress"]


@dataclass(frozen=True)
class Progress:
    """Where a chain stands: its committed checkpoint and the target it samples towards."""

    iteration: int
    n_draws: int
    target: int            # iterations to reach (0: not recorded)
    capacity: int          # rows of /samples
    elapsed: float = 0.0   # seconds of sampling up to the checkpoint
    first_seconds: float = 0.0   # of which in the first iteration of each run
    runs: int = 0

    @property
    def seconds_per_iteration(self) -> float | None:
        """Sampling time per iteration without each run's first (compiling) iteration."""
        rest = self.iteration - self.runs
        if rest <= 0 or self.elapsed <= 0:
            return None
        return (self.elapsed - self.first_seconds) / rest


@dataclass
class MemoryChain:
    """In-memory storage with the same interface as ChainFile (for tests)."""

    samples: dict = field(default_factory=dict)
    checkpoint: Checkpoint | None = None
    dtype: str = "f8"
    pending: dict = field(default_factory=dict)   # row -> draw, until committed

    def append(self, row: int, values: dict) -> None:
        self.pending[row] = {name: np.array(v, dtype=self.dtype) for name, v in values.items()}

    def commit(self, checkpoint: Checkpoint) -> None:
        for row in sorted(r for r in self.pending if r < checkpoint.n_draws):
            for name, value in self.pending.pop(row).items():
                old = self.samples.get(name)
                self.samples[name] = value[None] if old is None else np.concatenate([old, value[None]])
        self.checkpoint = _copy_checkpoint(checkpoint)

    def load(self) -> Checkpoint | None:
        return None if self.checkpoint is None else _copy_checkpoint(self.checkpoint)

    def close(self) -> None:
        pass


def _copy_checkpoint(cp: Checkpoint) -> Checkpoint:
    def copy(v):
        return [a.copy() for a in v] if isinstance(v, list) else np.array(v, copy=True)

    return Checkpoint(cp.iteration, cp.n_draws, {k: copy(v) for k, v in cp.arrays.items()},
                      json.loads(json.dumps(cp.rng_states)), {k: copy(v) for k, v in cp.means.items()},
                      cp.elapsed, cp.first_seconds, cp.runs)


class ChainFile:
    """One chain's HDF5 file (see the module docstring for the layout and write protocol)."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self._layout = None          # offsets of the datasets, read once per file version
        self._layout_inode = None
        self._current = None         # the state the chain continues from (after load/commit)
        self._writer = None          # (fd, inode) the draws are appended through
        self.fell_back = None        # why the newest checkpoint was skipped, if it was

    # -- creation -----------------------------------------------------------------------
    def create(self, attrs: dict, sample_shapes: dict, capacity: int, dtype="f8",
               target: int = 0) -> None:
        """Write an empty chain file (atomically: temporary name, then rename).

        sample_shapes: name -> shape of one draw; capacity: rows of each /samples dataset;
        dtype: the draws' type (float32 or float64); target: iterations the chain aims at.
        """
        remove_stale_temporaries(Path(self.path))
        tmp = temporary_path(Path(self.path))
        attrs = dict(attrs)
        attrs.update({"format_version": FORMAT_VERSION, "package_version": __version__,
                      "numpy_version": np.__version__})
        self._build(tmp, attrs, sample_shapes, capacity, np.dtype(dtype), signature="")
        fd = os.open(tmp, os.O_RDWR)
        try:
            layout = read_layout(tmp)
            write_at(fd, layout.offsets["commit"], COMMIT.pack([MAGIC, 0, 0, 0, 0, target, capacity]))
        finally:
            os.close(fd)
        install(tmp, Path(self.path), "create:before_rename")
        self._layout = self._current = None

    @staticmethod
    def _build(path, attrs: dict, sample_shapes: dict, capacity: int, dtype, signature: str) -> None:
        """An HDF5 file with every dataset allocated: the commit record, two state buffers
        for parts of the given signature, and the /samples datasets."""
        with h5py.File(path, "w") as f:
            f.attrs.update(attrs)
            f.attrs["capacity"] = capacity
            f.attrs["state_signature"] = signature
            contiguous_dataset(f, "commit", (COMMIT.width,), "<i8")
            if signature:
                sig = json.loads(signature)
                for buffer in BUFFERS:
                    group = f.create_group(buffer)
                    contiguous_dataset(group, "header", (HEADER.width,), "<i8")
                    contiguous_dataset(group, "crc", (len(sig["parts"]) + 1,), "<i8")
                    contiguous_dataset(group, "rng", (RNG_BYTES,), "u1")
                    for path, shape, part_dtype in sig["parts"]:
                        contiguous_dataset(group, path, stored_shape(shape), part_dtype)
            samples = f.create_group("samples")
            for name in sorted(sample_shapes):
                contiguous_dataset(samples, name, (capacity, *sample_shapes[name]),
                                   np.dtype(dtype).newbyteorder("<"))

    def exists(self) -> bool:
        return os.path.exists(self.path)

    def _open(self, mode="r"):
        try:
            return h5py.File(self.path, mode)
        except OSError as exc:
            raise UserError(
                f"{self.path}: cannot open the chain file ({exc}); if it is corrupted (truncated, "
                "or damaged on disk), move it aside to start this chain again"
            ) from None

    def sample_names(self) -> list:
        """Names of the sampled parameters this file has datasets for."""
        with self._open() as f:
            return list(f["samples"].keys()) if "samples" in f else []

    def attrs(self) -> dict:
        with self._open() as f:
            return dict(f.attrs)

    def layout(self):
        """Offsets of the file's datasets, read again whenever the file was replaced."""
        inode = os.stat(self.path).st_ino if self.exists() else None
        if self._layout is None or self._layout_inode != inode:
            with self._open() as f:
                version = f.attrs.get("format_version")
            if version != FORMAT_VERSION:
                raise UserError(
                    f"{self.path}: was written by another megalmm version (chain format {version}, "
                    f"this megalmm writes {FORMAT_VERSION}); finish it with that version, or move "
                    "it aside to sample this chain anew")
            self._layout = read_layout(self.path)
            self._layout_inode = inode
        return self._layout

    @contextmanager
    def _reader(self):
        """(fd, layout) of the same version of the file, though another process may rename
        a rewritten file over it at any moment."""
        while True:
            with open(self.path, "rb") as raw:
                layout = self.layout()
                if os.fstat(raw.fileno()).st_ino == self._layout_inode:
                    yield raw.fileno(), layout
                    return

    # -- progress -------------------------------------------------------------------------
    def progress(self) -> Progress:
        """The committed iteration and draws (from the commit record, or from the newest
        intact buffer header when the record is torn), the target and the sampling time."""
        with self._reader() as (fd, layout):
            commit = commit_record(fd, layout)
            active = int(commit[2])
            header = buffer_header(fd, layout, BUFFERS[active - 1]) if active else None
        timing = (0.0, 0.0, 0)
        if header is not None and header[1] == commit[1]:
            timing = (int(header[4]) / 1e6, int(header[6]) / 1e6, int(header[7]))
        return Progress(int(commit[3]), int(commit[4]), int(commit[5]), int(commit[6]), *timing)

    def set_target(self, target: int, capacity: int) -> None:
        """Record the iterations this chain samples towards; resize /samples to `capacity`
        rows (a rewrite of the file) when that differs from what it has."""
        progress = self.progress()
        if capacity < progress.n_draws:
            raise ValueError("capacity below the committed draws")
        if capacity != progress.capacity:
            self._rewrite(capacity=capacity, target=target)
        elif target != progress.target:
            self._write_commit_record(target=target)

    def fit_samples(self, shapes: dict) -> None:
        """Give /samples/<name> the per-draw shape shapes[name] where it has another one (k was
        chosen during burn-in); only while no draw is committed. A rewrite of the file."""
        layout = self.layout()
        changed = {name: tuple(shape) for name, shape in shapes.items()
                   if f"samples/{name}" in layout.shapes
                   and tuple(layout.shapes[f"samples/{name}"][1:]) != tuple(shape)}
        if not changed:
            return
        if self.progress().n_draws:
            raise ValueError("the draws' shapes cannot change once draws are committed")
        self._rewrite(sample_shapes=changed)

    # -- draws and checkpoints ----------------------------------------------------------------
    def append(self, row: int, values: dict) -> None:
        """Write one draw into row `row` of /samples (beyond the committed ones: it counts
        once a checkpoint with n_draws > row is committed), in the file's float type."""
        layout = self.layout()
        try:
            fd = self._writer_fd(layout)
            for name, value in values.items():
                path = f"samples/{name}"
                if path not in layout.offsets:
                    continue
                if row >= layout.capacity:
                    raise ValueError(f"{name}: draw {row + 1} does not fit in {layout.capacity} rows")
                data = np.ascontiguousarray(value, dtype=layout.dtypes[path].newbyteorder("<"))
                if layout.offsets[path] is not None and data.size:
                    write_at(fd, layout.offsets[path] + row * data.nbytes, data)
            kill_point("append:draw_written")
        except OSError as exc:
            raise self._write_failed(row, exc) from None

    def _writer_fd(self, layout) -> int:
        if self._writer is not None and self._writer[1] != self._layout_inode:
            os.close(self._writer[0])  # the file was rewritten: write into the new one
            self._writer = None
        if self._writer is None:
            self._writer = (os.open(self.path, os.O_RDWR), self._layout_inode)
        return self._writer[0]

    def close(self) -> None:
        if self._writer is not None:
            os.close(self._writer[0])
            self._writer = None

    def _write_failed(self, what, exc) -> UserError:
        current = self._current
        kept = (f"the previous checkpoint (iteration {current.iteration}) is intact"
                if current is not None else "nothing was committed")
        return UserError(
            f"{self.path}: could not write the checkpoint of iteration {what} ({exc}); {kept}: "
            "free disk space or fix permissions, then re-run the same command to resume")

    def commit(self, checkpoint: Checkpoint) -> None:
        """Write a checkpoint whose draws (rows below checkpoint.n_draws) were appended; the
        commit record is written last.

        A failed write (disk full, permissions, quota) leaves the previous checkpoint as the
        committed one and is reported as a UserError saying so.
        """
        if self._current is None:
            self._current = self._newest_state(read_parts=False)
        try:
            parts = flatten_checkpoint(checkpoint)
            if state_signature(parts) != self.layout().signature:
                self._rewrite(checkpoint=checkpoint)
            else:
                self._commit_in_place(checkpoint, parts)
        except OSError as exc:
            raise self._write_failed(checkpoint.iteration, exc) from None

    def _commit_in_place(self, checkpoint: Checkpoint, parts: dict) -> None:
        """The buffer the chain did not resume from, then (with the draws) to disk, then the
        commit record."""
        layout = self.layout()
        current = self._current
        fd = os.open(self.path, os.O_RDWR)
        try:
            commit = commit_record(fd, layout)
            seq = max(int(commit[1]), current.seq if current is not None else 0) + 1
            kill_point("commit:draws_written")
            buffer = BUFFERS[0] if current is None or current.buffer == BUFFERS[1] else BUFFERS[1]
            write_buffer(fd, layout, buffer, parts, checkpoint, seq)
            kill_point("commit:state_written")
            os.fsync(fd)
            record = [MAGIC, seq, BUFFERS.index(buffer) + 1, checkpoint.iteration,
                      checkpoint.n_draws, int(commit[5]), layout.capacity]
            write_at(fd, layout.offsets["commit"], COMMIT.pack(record))
            kill_point("commit:marker_written")
            os.fsync(fd)
        finally:
            os.close(fd)
        self._current = BufferState(buffer, seq, checkpoint.iteration, checkpoint.n_draws, None)

    def _write_commit_record(self, target: int) -> None:
        layout = self.layout()
        fd = os.open(self.path, os.O_RDWR)
        try:
            commit = commit_record(fd, layout)
            commit[5] = target
            write_at(fd, layout.offsets["commit"], COMMIT.pack(list(commit)))
            os.fsync(fd)
        finally:
            os.close(fd)

    def _rewrite(self, capacity: int | None = None, target: int | None = None,
                 checkpoint: Checkpoint | None = None, sample_shapes: dict | None = None) -> None:
        """Write the chain anew under a temporary name, then rename it over this file.

        capacity/target: new rows of /samples and target; both buffers and the committed
        draws are copied as they are. checkpoint: a commit whose state has other shapes than
        the buffers (the first commit, or a changed model): the new file holds its draws
        (appended to this file) and this state in state_a. sample_shapes: new per-draw shapes
        of some /samples datasets (their rows are not copied).
        """
        current = self._current
        layout = self.layout()
        progress = self.progress()
        capacity = layout.capacity if capacity is None else capacity
        target = progress.target if target is None else target
        parts = flatten_checkpoint(checkpoint) if checkpoint is not None else None
        signature = state_signature(parts) if parts is not None else layout.signature
        remove_stale_temporaries(Path(self.path))
        tmp = temporary_path(Path(self.path))
        with self._open() as old:
            attrs = {k: v for k, v in old.attrs.items() if k not in ("capacity", "state_signature")}
            shapes = {name: d.shape[1:] for name, d in old["samples"].items()}
            dtype = np.dtype(next(iter(old["samples"].values())).dtype) if shapes else np.dtype("f8")
        reshaped = set(sample_shapes or ())
        shapes.update(sample_shapes or {})
        self._build(tmp, attrs, shapes, capacity, dtype, signature)
        new_layout = read_layout(tmp)
        fd_old = os.open(self.path, os.O_RDONLY)
        fd = os.open(tmp, os.O_RDWR)
        try:
            if checkpoint is None:
                commit = commit_record(fd_old, layout)
                seq, active, iteration, n_draws = (int(commit[i]) for i in (1, 2, 3, 4))
                written = max([n_draws] + [int(h[3]) for h in
                                           (buffer_header(fd_old, layout, b) for b in BUFFERS) if h is not None])
                for name in sorted(set(shapes) - reshaped):
                    copy_rows(fd_old, layout, fd, new_layout, name, min(written, capacity))
                for buffer in layout.buffers:
                    copy_buffer(fd_old, layout, fd, new_layout, buffer)
                state = None
            else:
                for name in sorted(set(shapes) - reshaped):
                    copy_rows(fd_old, layout, fd, new_layout, name, checkpoint.n_draws)
                seq = max(int(commit_record(fd_old, layout)[1]),
                          current.seq if current is not None else 0) + 1
                write_buffer(fd, new_layout, BUFFERS[0], parts, checkpoint, seq)
                active, iteration, n_draws = 1, checkpoint.iteration, checkpoint.n_draws
                state = BufferState(BUFFERS[0], seq, iteration, n_draws, None)
            write_at(fd, new_layout.offsets["commit"],
                     COMMIT.pack([MAGIC, seq, active, iteration, n_draws, target, capacity]))
        finally:
            os.close(fd)
            os.close(fd_old)
        install(tmp, Path(self.path), "rewrite:before_rename")
        self._layout = None
        if state is not None:
            self._current = state

    def load(self) -> Checkpoint | None:
        """The last committed checkpoint (None for a chain with no checkpoint yet); later
        commits through this object continue from it."""
        state = self._newest_state(read_parts=True)
        self._current = state
        return None if state is None else state.checkpoint

    def _newest_state(self, read_parts: bool):
        """The committed buffer (or, when its checksums fail, the other one), or None when
        nothing is committed. Raises a UserError when no buffer is intact."""
        self.fell_back = None
        with self._reader() as (fd, layout):
            commit = COMMIT.unpack(read_at(fd, layout.offsets["commit"], 8 * COMMIT.width))
            if commit is not None and int(commit[0]) == MAGIC:
                if int(commit[2]) == 0:
                    return None
                active = BUFFERS[int(commit[2]) - 1]
                order = [active] + [b for b in BUFFERS if b != active]
                seqs = {active: int(commit[1]), order[1]: -int(commit[1])}  # older than active
            else:
                headers = {b: buffer_header(fd, layout, b) for b in layout.buffers}
                order = sorted((b for b in headers if headers[b] is not None),
                               key=lambda b: -int(headers[b][1]))
                seqs = {b: int(headers[b][1]) for b in order}
                if not order:
                    return None
                self.fell_back = "the commit record is torn"
            problems = []
            for buffer in order:
                if buffer not in layout.buffers:
                    continue
                try:
                    state = read_buffer(fd, layout, buffer, seqs[buffer], read_parts)
                except (OSError, ValueError, KeyError) as exc:
                    problems.append(f"{buffer}: {exc}")
                    continue
                if buffer != order[0]:
                    self.fell_back = f"the newest checkpoint is damaged ({problems[0]})"
                return state
        raise UserError(
            f"{self.path}: no checkpoint in this chain file is intact ({'; '.join(problems)}); "
            "run `megalmm repair CONFIG` to keep what can be read, or move the file aside to "
            "sample this chain again")

    def read_samples(self, name: str) -> np.ndarray:
        n = self.progress().n_draws
        with self._open() as f:
            if name not in f["samples"]:
                raise KeyError(name)
            return f["samples"][name][:n]

    def read_state_array(self, name: str) -> np.ndarray | None:
        """One array of the committed checkpoint's state (None before the first checkpoint or
        when the state has no such array), read alone and without its checksum: for display
        (status, report), never for resuming."""
        with self._reader() as (fd, layout):  # one version of the file throughout
            active = int(commit_record(fd, layout)[2])
            path = f"{BUFFERS[active - 1]}/arrays/{name}" if active else None
            if path is None or path not in layout.offsets:
                return None
            size = layout.nbytes[path] if layout.offsets[path] is not None else 0
            raw = read_at(fd, layout.offsets[path], size) if size else b""
            return np.frombuffer(raw, dtype=layout.dtypes[path]).reshape(layout.shapes[path]).copy()

    def read_means(self) -> dict:
        cp = self.load()
        return {} if cp is None else cp.means

    # -- damage and repair ----------------------------------------------------------------
    def check(self) -> tuple[bool, Checkpoint | None, str]:
        """(intact, the checkpoint that would be resumed, what is wrong)."""
        try:
            cp = self.load()
        except UserError as exc:
            return False, None, str(exc)
        return self.fell_back is None, cp, self.fell_back or ""

    def repair(self) -> tuple[Checkpoint, str]:
        """Rewrite the chain from its newest intact checkpoint into a fresh file; the damaged
        file is kept beside it as <name>.damaged. Returns the kept checkpoint and that path."""
        _, checkpoint, problem = self.check()
        if checkpoint is None:
            raise UserError(
                f"{self.path}: no checkpoint in this chain file can be read ({problem}); move it "
                "aside and sample the chain again")
        progress = self.progress()
        with self._open() as f:
            attrs = {k: v for k, v in f.attrs.items() if k not in ("capacity", "state_signature")}
            shapes = {name: d.shape[1:] for name, d in f["samples"].items()}
            dtype = next(iter(f["samples"].values())).dtype if shapes else "f8"
            fixed = ChainFile(self.path + ".repaired")
            fixed.create(attrs, shapes, progress.capacity, dtype, target=progress.target)
            for row in range(checkpoint.n_draws):
                fixed.append(row, {name: f["samples"][name][row] for name in shapes})
        fixed.commit(checkpoint)
        fixed.close()
        damaged = self.path + ".damaged"
        os.replace(self.path, damaged)
        os.replace(fixed.path, self.path)
        self._layout = None
        return checkpoint, damaged
