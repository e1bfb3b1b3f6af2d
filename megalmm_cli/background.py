"""Work in forked processes beside the main one (`megalmm summarize`): a process that runs one
function (Forked), and one that runs jobs in the order they are submitted (JobWorker).

Both are forked (Linux); where fork is not the platform's usual way the work runs in this
process instead, at once. A child dies with its parent (PR_SET_PDEATHSIG), so a killed run
leaves nothing writing into its output directory. An exception in a child is raised in the
parent as itself (a UserError stays a one-line error, a full disk an OSError, Ctrl-C an
interrupt), pickled through a file in the work directory.
"""

import os
import pickle
import signal
import sys
import traceback
from pathlib import Path

FORK = sys.platform.startswith("linux")


class Forked:
    """One function run in a forked process; its result (a dict of arrays) comes back through
    a .npz file in `workdir` (removed when read)."""

    def __init__(self, pid, workdir: Path, result):
        self.pid, self.workdir, self._result = pid, workdir, result

    @classmethod
    def start(cls, work, workdir: Path) -> "Forked":
        """work: callable returning a dict of arrays."""
        if not FORK:
            return cls(None, workdir, work())
        import numpy as np

        pid = os.fork()
        if pid == 0:  # the child never returns into the caller
            code = 1
            try:
                _die_with_parent()
                np.savez(workdir / ".forked.npz", **work())
                code = 0
            except BaseException as exc:
                _save_exception(workdir / ".forked.error", exc)
            finally:
                os._exit(code)
        return cls(pid, workdir, None)

    def result(self) -> dict:
        """Wait for the child; its dict of arrays, or its exception."""
        if self.pid is None:
            return self._result
        import numpy as np

        status = _wait(self)
        path, error = self.workdir / ".forked.npz", self.workdir / ".forked.error"
        if os.waitstatus_to_exitcode(status) != 0 or not path.exists():
            if error.exists():
                raise _load_exception(error)
            raise RuntimeError(f"a background computation failed (wait status {status})")
        with np.load(path) as saved:
            self._result = {name: saved[name] for name in saved.files}
        path.unlink()
        return self._result

    def abandon(self) -> None:
        """Stop the child (the parent failed on its own): kill it and reap it."""
        _kill(self)


class JobWorker:
    """A forked process that runs jobs fn(*args, **kwargs) one after another, in the order
    submitted, while this process goes on. A job's function and arguments are pickled to a file
    in `workdir` and its path sent down a pipe, so that submit() never waits for the worker to
    finish the job before. Jobs return nothing (they write files); the first exception ends the
    worker and is raised by finish(). warm_up runs in the child at once (imports, say)."""

    def __init__(self, workdir: Path, warm_up=None):
        self.workdir, self.pid, self._pipe, self._count = workdir, None, None, 0
        if not FORK:
            return
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(write_end)
            _run_jobs(read_end, workdir, warm_up)  # never returns
        os.close(read_end)
        self.pid, self._pipe = pid, os.fdopen(write_end, "wb", buffering=0)

    def submit(self, fn, *args, **kwargs) -> None:
        if self.pid is None:
            fn(*args, **kwargs)
            return
        path = self.workdir / f".job-{self._count}.pkl"
        self._count += 1
        path.write_bytes(pickle.dumps((fn, args, kwargs), protocol=pickle.HIGHEST_PROTOCOL))
        try:
            self._pipe.write(f"{path}\n".encode())
        except BrokenPipeError:  # the worker ended on an error: raise it
            self.finish()
            raise RuntimeError("the background worker ended early") from None

    def finish(self) -> None:
        """Wait until every job has run; raise the first job's exception, if any."""
        if self.pid is None:
            return
        if self._pipe is not None:
            try:
                self._pipe.close()
            except BrokenPipeError:
                pass
            self._pipe = None
        status = _wait(self)
        error = self.workdir / ".worker.error"
        if error.exists():
            raise _load_exception(error)
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"the background worker failed (wait status {status})")

    def abandon(self) -> None:
        if self._pipe is not None:
            try:
                self._pipe.close()
            except BrokenPipeError:
                pass
            self._pipe = None
        _kill(self)


def _run_jobs(read_end: int, workdir: Path, warm_up) -> None:
    code = 1
    try:
        _die_with_parent()
        if warm_up is not None:
            warm_up()
        with os.fdopen(read_end, "rb") as jobs:
            for line in jobs:
                path = Path(line.decode().rstrip("\n"))
                fn, args, kwargs = pickle.loads(path.read_bytes())
                path.unlink()
                fn(*args, **kwargs)
        code = 0
    except BaseException as exc:
        _save_exception(workdir / ".worker.error", exc)
    finally:
        os._exit(code)


def _wait(job) -> int:
    try:
        _, status = os.waitpid(job.pid, 0)
    except BaseException:  # interrupted while waiting
        _kill(job)
        raise
    job.pid = None
    return status


def _kill(job) -> None:
    if job.pid is None:
        return
    try:
        os.kill(job.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    os.waitpid(job.pid, 0)
    job.pid = None


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent dies."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() == 1:  # the parent died before the call
        os._exit(1)


def _save_exception(path: Path, exc: BaseException) -> None:
    """The exception, pickled; when it cannot be, a RuntimeError with its traceback."""
    text = "".join(traceback.format_exception(exc))
    try:
        data = pickle.dumps(exc)
        pickle.loads(data)
    except Exception:
        data = pickle.dumps(RuntimeError(f"a background computation failed:\n{text}"))
    path.write_bytes(data)


def _load_exception(path: Path) -> BaseException:
    return pickle.loads(path.read_bytes())
