"""Output directories (predictions/, summary/) replaced whole or not at all.

A command writes its files into a fresh temporary directory beside the final one; only when
everything is written does the temporary take the final name, in one atomic exchange of the
two directories where the system has it (Linux renameat2 RENAME_EXCHANGE), else by two
renames. A command that fails or is killed half-way leaves the previous outputs whole; a
kill between the two renames of the fallback is repaired by the next run (`restore`).
"""

import ctypes
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from .faults import kill_point

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _libc():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc if hasattr(libc, "renameat2") else None
    except OSError:
        return None


_LIBC = _libc()


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths atomically; False where the system cannot (or a test asks
    for the other path)."""
    if _LIBC is None or os.environ.get("MEGALMM_TEST_NO_RENAME_EXCHANGE"):
        return False
    result = _LIBC.renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return result == 0


def _old_name(final: Path) -> Path:
    return final.with_name(f".{final.name}.old")


def restore(final: Path) -> None:
    """Finish a replacement that was killed between its two renames, and remove the
    leftovers of killed runs (their temporary directories)."""
    final = Path(final)
    old = _old_name(final)
    if old.exists() and not final.exists():
        os.replace(old, final)
    elif old.exists():
        shutil.rmtree(old, ignore_errors=True)
    for stale in final.parent.glob(f".{final.name}.tmp*"):
        pid = stale.name.rsplit("tmp", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def replaced_directory(final: Path):
    """Yield an empty temporary directory; when the block ends without an error it becomes
    `final` (the previous `final`, if any, is removed). On an error it is removed and
    `final` is left as it was."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    restore(final)
    tmp = final.with_name(f".{final.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    kill_point("outputs:before_rename")
    if final.exists() and _exchange(tmp, final):
        shutil.rmtree(tmp, ignore_errors=True)  # now the previous outputs
        return
    old = _old_name(final)
    if final.exists():
        os.replace(final, old)
        kill_point("outputs:between_renames")
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
