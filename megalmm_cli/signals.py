"""SIGTERM / SIGINT during `megalmm sample` (stdlib only, so it is installed before any
slow import)."""

import signal


class StopSignal(Exception):
    """SIGTERM / SIGINT before sampling started: nothing to save, the command just ends."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class StopRequested:
    """Turns SIGTERM / SIGINT into a flag checked between iterations.

    Installed first thing by `megalmm sample`, before any slow import or set-up; until
    `sampling` is set, a signal ends the command at once (StopSignal), since there is no
    state to save yet.
    """

    def __init__(self):
        self.signal = None
        self.sampling = False
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signal = signum
        if not self.sampling:
            raise StopSignal(signum)

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False
