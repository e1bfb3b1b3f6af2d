"""Test-only fault injection: SIGKILL (or SIGSTOP) the process at a named point.

MEGALMM_TEST_KILL_AT holds one or more comma-separated "point" or "point:N" (the N-th time
the point is reached, default 1), e.g. "commit:state_written:3,sample:iteration:40"; the
process is killed at whichever comes first. MEGALMM_TEST_PAUSE_AT, in the same form, stops
it with SIGSTOP instead, so that a test can wait for the stop (an observable event), signal
the process and let it go on. Both are read at every call, so a test may set them in a
forked process. The writers (storage, the Grid-LMM cache, the output directories) and the
sampling loop call these between the steps of their work; unset (as always outside the
tests) a call costs one environment lookup.
"""

import os
import signal

_hits = {}


def _due(variable: str, name: str) -> bool:
    spec = os.environ.get(variable)
    if not spec:
        return False
    for item in spec.split(","):
        point, _, count = item.rpartition(":")
        if not count.isdigit():
            point, count = item, "1"
        if point == name:
            key = (variable, name)
            _hits[key] = _hits.get(key, 0) + 1
            return _hits[key] == int(count)
    return False


def kill_point(name: str) -> None:
    """SIGKILL this process at the configured hit of `name` (MEGALMM_TEST_KILL_AT)."""
    if _due("MEGALMM_TEST_KILL_AT", name):
        os.kill(os.getpid(), signal.SIGKILL)


def pause_point(name: str) -> None:
    """SIGSTOP this process at the configured hit of `name` (MEGALMM_TEST_PAUSE_AT)."""
    if _due("MEGALMM_TEST_PAUSE_AT", name):
        os.kill(os.getpid(), signal.SIGSTOP)
