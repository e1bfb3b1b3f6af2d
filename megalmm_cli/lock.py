"""One `megalmm sample` per chain: a lock file next to the chain file.

chains/chain_N.h5.lock is created atomically (O_CREAT | O_EXCL) and holds JSON with the
holder's host, pid, start time and command. A lock left by a dead process on this host is
stale and taken over with a warning; a lock from another host is never judged stale
automatically (its pid cannot be checked from here): the user deletes it if that job is dead.
"""

import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from .errors import UserError


def lock_path(chain_file) -> Path:
    return Path(os.fspath(chain_file) + ".lock")


def read_lock(chain_file) -> dict | None:
    """The lock's holder ({} when the lock file is unreadable), or None when unlocked."""
    try:
        text = lock_path(chain_file).read_text()
    except FileNotFoundError:
        return None
    try:
        info = json.loads(text)
        return info if isinstance(info, dict) else {}
    except ValueError:
        return {}


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def is_stale(info: dict) -> bool:
    """True only for a lock from this host whose process no longer exists."""
    pid = info.get("pid")
    return (info.get("host") == socket.gethostname() and isinstance(pid, int) and pid > 0
            and not pid_alive(pid))


def describe(info: dict) -> str:
    return f"pid {info.get('pid')} on host {info.get('host')} since {info.get('started')}"


def _create(lock: Path, info: dict) -> bool:
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump(info, f)
    return True


def _take_over(lock: Path, seen: str) -> None:
    """Move a stale lock aside, unless another process replaced it meanwhile."""
    aside = lock.with_name(f"{lock.name}.stale.{os.getpid()}")
    try:
        os.rename(lock, aside)
    except FileNotFoundError:
        return  # someone else moved it: retry the create
    if aside.read_text() != seen:  # it was a fresh lock: put it back
        try:
            os.link(aside, lock)
        except FileExistsError:
            pass
    aside.unlink()


@contextmanager
def chain_lock(chain_file):
    """Hold the chain file's lock for the block; UserError when another process holds it."""
    chain_file = Path(chain_file)
    lock = lock_path(chain_file)
    mine = {"host": socket.gethostname(), "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "command": " ".join(sys.argv)}
    for _ in range(3):
        if _create(lock, mine):
            break
        try:
            seen = lock.read_text()
        except FileNotFoundError:
            continue
        if not seen:  # being written by a process that has just created it
            time.sleep(0.2)
            continue
        info = read_lock(chain_file)
        if info == {}:
            raise UserError(f"{chain_file}: its lock file {lock} is unreadable; if no megalmm "
                            "sample is running on this chain, delete the lock file")
        if info is None:
            continue
        if is_stale(info):
            print(f"megalmm: warning: taking over the stale lock of {chain_file} "
                  f"({describe(info)}: that process no longer exists)", file=sys.stderr)
            _take_over(lock, seen)
            continue
        if info.get("host") != socket.gethostname():
            raise UserError(
                f"{chain_file} is being sampled by {describe(info)}; wait for it or stop it "
                f"(a lock from another host is never treated as stale: if that job is dead, "
                f"delete {lock})")
        raise UserError(f"{chain_file} is being sampled by {describe(info)}; wait for it or stop it")
    else:
        raise UserError(f"{chain_file}: could not take its lock {lock}; try again")
    try:
        yield
    finally:
        if read_lock(chain_file) == mine:
            lock.unlink(missing_ok=True)
