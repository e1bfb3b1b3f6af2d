"""The byte-level format of a chain file (storage.py has the layout and the write protocol):
the commit record, each state buffer's parts, Generator states, checksums and header, and the
raw copies of rows and buffers when a file is rewritten. Everything here reads and writes
with pread/pwrite at the datasets' byte offsets, never through HDF5's metadata.
"""

import json
import zlib
from dataclasses import dataclass

import h5py
import numpy as np

from .faults import kill_point
from .rawh5 import Marker, dataset_offset, read_at, write_at

MAGIC = 0x6D65_676C_6D6D_0001
COMMIT = Marker(8)     # magic, seq, active, iteration, n_draws, target, capacity | crc
HEADER = Marker(10)    # magic, seq, iteration, n_draws, elapsed_us, rng_len, first_us, runs,
                       # crc of crc | crc
BUFFERS = ("state_a", "state_b")
RNG_BYTES = 16384
COPY_BYTES = 1 << 26   # rows copied at a time when a file is rewritten


@dataclass
class Checkpoint:
    """Everything needed to resume: flat arrays (lists as name/index), Generator states, means."""

    iteration: int
    n_draws: int
    arrays: dict                     # name -> array, or name -> list of arrays
    rng_states: dict                 # name -> bit_generator.state
    means: dict                      # name -> array (running means / M2 and counts)
    elapsed: float = 0.0             # seconds of sampling, every run together
    first_seconds: float = 0.0       # of which in the first iteration of each run (compilation)
    runs: int = 0                    # `sample` runs that made at least one iteration


# ------------------------------------------------------------------ checkpoint <-> flat parts


def flatten_checkpoint(cp: Checkpoint) -> dict:
    """path -> array for every part of a checkpoint's state, in a fixed order."""
    parts = {}
    for name in sorted(cp.arrays):
        value = cp.arrays[name]
        if isinstance(value, list):
            for i, arr in enumerate(value):
                parts[f"arrays/{name}/{i}"] = np.asarray(arr)
        else:
            parts[f"arrays/{name}"] = np.asarray(value)
    for name in sorted(cp.means):
        parts[f"means/{name}"] = np.asarray(cp.means[name])
    return parts


def state_signature(parts: dict) -> str:
    """The shapes and types of a state's parts (buffers are allocated for exactly these)."""
    lists = sorted({p.rsplit("/", 1)[0] for p in parts if p.count("/") == 2})
    return json.dumps({"parts": [[p, list(a.shape), np.dtype(a.dtype).newbyteorder("<").str]
                                 for p, a in parts.items()], "lists": lists})


def unflatten_parts(parts: dict, lists) -> tuple[dict, dict]:
    arrays, means = {}, {}
    for path, arr in parts.items():
        kind, rest = path.split("/", 1)
        if kind == "means":
            means[rest] = arr
        elif f"arrays/{rest.split('/')[0]}" in lists:
            arrays.setdefault(rest.split("/")[0], []).append(arr)
        else:
            arrays[rest] = arr
    return arrays, means


def stored_shape(shape) -> tuple:
    return tuple(shape) if len(shape) else (1,)   # HDF5 allocates no storage for scalars


# ----------------------------------------------------------------------- raw reads and writes


@dataclass(frozen=True)
class Layout:
    offsets: dict          # dataset path -> byte offset (None: no storage)
    nbytes: dict           # dataset path -> bytes
    shapes: dict           # dataset path -> shape
    dtypes: dict           # dataset path -> numpy dtype
    capacity: int
    signature: str
    buffers: tuple         # the state buffers present


def read_layout(path) -> Layout:
    offsets, nbytes, shapes, dtypes = {}, {}, {}, {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                offsets[name] = dataset_offset(obj)
                nbytes[name] = int(obj.size) * obj.dtype.itemsize
                shapes[name] = obj.shape
                dtypes[name] = obj.dtype
        f.visititems(visit)
        return Layout(offsets, nbytes, shapes, dtypes, int(f.attrs["capacity"]),
                       str(f.attrs["state_signature"]), tuple(b for b in BUFFERS if b in f))


def commit_record(fd, layout: Layout) -> np.ndarray:
    """The commit record's values; a torn record is rebuilt from the newest intact header."""
    commit = COMMIT.unpack(read_at(fd, layout.offsets["commit"], 8 * COMMIT.width))
    if commit is not None and int(commit[0]) == MAGIC:
        return commit
    headers = [(b, h) for b, h in ((b, buffer_header(fd, layout, b)) for b in layout.buffers) if h is not None]
    if not headers:
        return np.array([MAGIC, 0, 0, 0, 0, 0, layout.capacity], dtype=np.int64)
    buffer, newest = max(headers, key=lambda bh: bh[1][1])
    return np.array([MAGIC, newest[1], BUFFERS.index(buffer) + 1, newest[2], newest[3], 0,
                     layout.capacity], dtype=np.int64)


def write_buffer(fd, layout: Layout, buffer: str, parts: dict, cp: Checkpoint, seq: int) -> None:
    """Every part, the Generator states and their checksums, then the header."""
    crcs = []
    for i, (path, arr) in enumerate(parts.items()):
        full = f"{buffer}/{path}"
        data = np.ascontiguousarray(arr, dtype=layout.dtypes[full]).reshape(-1)
        if layout.offsets[full] is not None and data.size:
            write_at(fd, layout.offsets[full], data)
        crcs.append(zlib.crc32(memoryview(data).cast("B")))
        if i == len(parts) // 2:
            kill_point("commit:state_half_written")
    rng = json.dumps(cp.rng_states, sort_keys=True).encode()
    if len(rng) > RNG_BYTES:
        raise ValueError("Generator states do not fit their buffer")
    write_at(fd, layout.offsets[f"{buffer}/rng"], rng)
    crcs.append(zlib.crc32(rng))
    crc_array = np.array(crcs, dtype="<i8")
    write_at(fd, layout.offsets[f"{buffer}/crc"], crc_array)
    header = [MAGIC, seq, cp.iteration, cp.n_draws, int(round(cp.elapsed * 1e6)), len(rng),
              int(round(cp.first_seconds * 1e6)), cp.runs, zlib.crc32(crc_array.tobytes())]
    write_at(fd, layout.offsets[f"{buffer}/header"], HEADER.pack(header))


def buffer_header(fd, layout: Layout, buffer: str):
    if buffer not in layout.buffers:
        return None
    header = HEADER.unpack(read_at(fd, layout.offsets[f"{buffer}/header"], 8 * HEADER.width))
    return header if header is not None and int(header[0]) == MAGIC else None


@dataclass
class BufferState:
    buffer: str
    seq: int
    iteration: int
    n_draws: int
    checkpoint: Checkpoint | None


def read_buffer(fd, layout: Layout, buffer: str, seq: int, read_parts: bool) -> BufferState:
    """A buffer whose header, sequence number and checksums are right (ValueError if not)."""
    header = buffer_header(fd, layout, buffer)
    if header is None:
        raise ValueError("its header is torn or empty")
    # seq > 0: exactly that checkpoint; seq <= 0: any checkpoint older than -seq
    if (seq > 0 and int(header[1]) != seq) or (seq <= 0 and int(header[1]) >= -seq):
        raise ValueError(f"it holds checkpoint {int(header[1])}, not the expected one")
    iteration, n_draws, elapsed, rng_len = (int(header[i]) for i in (2, 3, 4, 5))
    crc_path = f"{buffer}/crc"
    crc_array = np.frombuffer(read_at(fd, layout.offsets[crc_path], layout.nbytes[crc_path]), "<i8")
    if zlib.crc32(crc_array.tobytes()) != int(header[8]):
        raise ValueError("its checksums are damaged")
    if not read_parts:
        return BufferState(buffer, seq, iteration, n_draws, None)
    sig = json.loads(layout.signature)
    parts = {}
    for i, (path, shape, _) in enumerate(sig["parts"]):
        full = f"{buffer}/{path}"
        size = layout.nbytes[full] if layout.offsets[full] is not None else 0
        raw = read_at(fd, layout.offsets[full], size) if size else b""
        if len(raw) != size or zlib.crc32(raw) != int(crc_array[i]):
            raise ValueError(f"{path} is damaged")
        parts[path] = np.frombuffer(raw, dtype=layout.dtypes[full]).reshape(shape).copy()
    rng = read_at(fd, layout.offsets[f"{buffer}/rng"], rng_len)
    if zlib.crc32(rng) != int(crc_array[-1]):
        raise ValueError("the Generator states are damaged")
    arrays, means = unflatten_parts(parts, set(sig["lists"]))
    cp = Checkpoint(iteration, n_draws, arrays, json.loads(rng), means, elapsed / 1e6,
                    int(header[6]) / 1e6, int(header[7]))
    return BufferState(buffer, seq, iteration, n_draws, cp)


def copy_rows(fd_old, old: Layout, fd_new, new: Layout, name: str, rows: int) -> None:
    path = f"samples/{name}"
    if old.offsets.get(path) is None or new.offsets.get(path) is None or rows == 0:
        return
    row_bytes = old.nbytes[path] // max(1, old.capacity)
    step = max(1, COPY_BYTES // max(1, row_bytes))
    for start in range(0, rows, step):
        count = min(step, rows - start)
        data = read_at(fd_old, old.offsets[path] + start * row_bytes, count * row_bytes)
        write_at(fd_new, new.offsets[path] + start * row_bytes, data)


def copy_buffer(fd_old, old: Layout, fd_new, new: Layout, buffer: str) -> None:
    for path in old.offsets:
        if path.startswith(buffer + "/") and old.offsets[path] is not None:
            size = old.nbytes[path]
            for start in range(0, size, COPY_BYTES):
                data = read_at(fd_old, old.offsets[path] + start, min(COPY_BYTES, size - start))
                write_at(fd_new, new.offsets[path] + start, data)
