"""One `megalmm sample` per chain (and one `prepare` per run): a lock file next to the file.

chains/chain_N.h5.lock (prepared.h5.lock) is created atomically, content included (a hard
link to a file already written), and holds JSON with the holder's host, pid, start time and
command. A lock left by a dead process on this host is
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
    """Create the lock with its content in one step: the JSON is written to a file of this
    process, which is then hard-linked to the lock's name (atomic, and refused when the lock
    exists), so a process killed at any instant never leaves an empty lock behind."""
    mine = lock.with_name(f"{lock.name}.new.{os.getpid()}")
    mine.write_text(json.dumps(info))
    try:
        os.link(mine, lock)
        return True
    except FileExistsError:
        return False
    except OSError:  # a file system without hard links: exclusive create, then write
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(info, f)
        return True
    finally:
        mine.unlink(missing_ok=True)


def _remove_leftovers(lock: Path) -> None:
    """Files of lock-taking processes that were killed half-way (their pid is gone)."""
    for path in lock.parent.glob(f"{lock.name}.*"):
        pid = path.name.rsplit(".", 1)[-1]
        if path.name.split(".")[-2] in ("new", "stale") and pid.isdigit() and not pid_alive(int(pid)):
            path.unlink(missing_ok=True)


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
def chain_lock(chain_file, wait: bool = False, what: str = "sampled"):
    """Hold the file's lock for the block. When another live process holds it: a UserError,
    or with `wait`, wait for it (saying so once)."""
    chain_file = Path(chain_file)
    lock = lock_path(chain_file)
    mine = {"host": socket.gethostname(), "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "command": " ".join(sys.argv)}
    _remove_leftovers(lock)
    attempts, told = 0, False
    while True:
        attempts += 1
        if _create(lock, mine):
            break
        if attempts > 3 and not wait:
            raise UserError(f"{chain_file}: could not take its lock {lock}; try again")
        try:
            seen = lock.read_text()
        except FileNotFoundError:
            continue
        info = read_lock(chain_file)
        if info == {}:
            raise UserError(f"{chain_file}: its lock file {lock} is unreadable; if no megalmm "
                            "is running on it, delete the lock file")
        if info is None:
            continue
        if is_stale(info):
            print(f"megalmm: warning: taking over the stale lock of {chain_file} "
                  f"({describe(info)}: that process no longer exists)", file=sys.stderr)
            _take_over(lock, seen)
            continue
        if wait:
            if not told:
                print(f"megalmm: waiting for {describe(info)}, which holds {lock}", file=sys.stderr)
                told = True
            time.sleep(1.0)
            continue
        if info.get("host") != socket.gethostname():
            raise UserError(
                f"{chain_file} is being {what} by {describe(info)}; wait for it or stop it "
                f"(a lock from another host is never treated as stale: if that job is dead, "
                f"delete {lock})")
        raise UserError(f"{chain_file} is being {what} by {describe(info)}; wait for it or stop it")
    try:
        yield
    finally:
        if read_lock(chain_file) == mine:
            lock.unlink(missing_ok=True)


def prepare_lock(prepared_file):
    """One `prepare` at a time per output directory; a second one waits for the first
    (SLURM array tasks that all start with `megalmm prepare`)."""
    return chain_lock(prepared_file, wait=True, what="prepared")
