"""HDF5 files that a kill at any instant cannot break.

HDF5 rewrites its own metadata (object headers, B-trees, the superblock) whenever a file
opened for writing changes, and a process killed in the middle of that leaves a file the
library cannot open. The files megalmm updates in place (chain files, the Grid-LMM cache)
therefore use HDF5 only to *create* a file: every dataset that will ever be written is
created up front, contiguous and allocated, the file is closed, fsynced and renamed into
place. From then on the file is only changed by plain writes (pwrite) into the byte ranges
of those datasets; HDF5's metadata is never touched again, so whatever instant a writer
dies at, the file stays a valid HDF5 file that h5py, R's rhdf5/hdf5r and h5dump read.
Which of the written bytes count is decided by small markers with checksums (storage.py,
cachefile.py), each written by one pwrite after the data it vouches for.
"""

import os
import zlib
from pathlib import Path

import h5py
import numpy as np

from .faults import kill_point


def contiguous_dataset(group, name: str, shape, dtype) -> h5py.Dataset:
    """An allocated, contiguous, never-filled dataset (its bytes are written by pwrite).
    Zero-size datasets get no storage; scalars are not supported (use shape (1,))."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_layout(h5py.h5d.CONTIGUOUS)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    return group.create_dataset(name, shape=tuple(int(s) for s in shape), dtype=np.dtype(dtype),
                                dcpl=dcpl)


def dataset_offset(dset: h5py.Dataset) -> int | None:
    """Byte offset of a contiguous dataset's data in its file (None when it has no storage)."""
    return dset.id.get_offset()


def write_at(fd: int, offset: int, data) -> None:
    """Write all of `data` (bytes or a C-contiguous array) at `offset`."""
    view = memoryview(np.ascontiguousarray(data) if isinstance(data, np.ndarray) else data).cast("B")
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)


def read_at(fd: int, offset: int, size: int) -> bytes:
    chunks, done = [], 0
    while done < size:
        chunk = os.pread(fd, size - done, offset + done)
        if not chunk:
            break
        chunks.append(chunk)
        done += len(chunk)
    return b"".join(chunks)


def fsync_dir(path: Path) -> None:
    """Make a rename in `path`'s directory durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(os.fspath(Path(path).parent), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temporary_path(path: Path) -> Path:
    """A temporary name beside `path`, unique to this process."""
    path = Path(path)
    return path.with_name(f"{path.name}.tmp{os.getpid()}")


def install(tmp: Path, path: Path, point: str = "") -> None:
    """Make the complete file `tmp` durable and move it to `path` in one atomic rename."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    if point:
        kill_point(point)
    os.replace(tmp, path)
    fsync_dir(path)


def remove_stale_temporaries(path: Path) -> None:
    """Delete the temporaries of `path` that killed writers left. Only the holder of the
    file's lock (the one writer there can be) calls this, so every other temporary is stale."""
    path = Path(path)
    for stale in path.parent.glob(f"{path.name}.tmp*"):
        if stale.name[len(path.name) + 4:].isdigit():
            try:
                stale.unlink()
            except OSError:
                pass


class Marker:
    """A small int64 record with a CRC32, written by one pwrite (torn writes are detected).

    The record is `width` int64 values; the last holds the CRC of the others.
    """

    def __init__(self, width: int):
        self.width = width

    def pack(self, values) -> bytes:
        body = np.zeros(self.width, dtype="<i8")
        body[: len(values)] = values
        body[-1] = zlib.crc32(body[:-1].tobytes())
        return body.tobytes()

    def unpack(self, raw: bytes) -> np.ndarray | None:
        """The values (without the CRC), or None when the record is torn or empty."""
        if len(raw) != 8 * self.width:
            return None
        body = np.frombuffer(raw, dtype="<i8")
        if not body.any() or int(body[-1]) != zlib.crc32(body[:-1].tobytes()):
            return None
        return body[:-1].copy()
