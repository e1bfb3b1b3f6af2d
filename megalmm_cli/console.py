"""What the commands print: messages, warnings and tqdm progress bars on stderr."""

import sys
from contextlib import contextmanager

import click


def progress_enabled(flag) -> bool:
    return sys.stderr.isatty() if flag is None else flag


def echo(message: str) -> None:
    click.echo(message)


def warn(message: str) -> None:
    click.echo(f"megalmm: warning: {message}", err=True)


def progress_bar(flag, desc, total=None, initial=0, unit="it"):
    if not progress_enabled(flag):
        return None
    from tqdm import tqdm

    class Bar(tqdm):
        def update_to(self, done, total=None, desc=None):
            if desc is not None and desc != self.desc:
                self.set_description(desc, refresh=False)
                self.reset(total)
            if total is not None:
                self.total = total
            self.update(done - self.n)

    return Bar(desc=desc, total=total, initial=initial, unit=unit, file=sys.stderr, dynamic_ncols=True)


@contextmanager
def stage_bar(flag, desc: str, unit: str):
    """A progress bar driven by callback(done, total, description); yields the callback, or
    None when bars are off."""
    bar = progress_bar(flag, desc, unit=unit)
    if bar is None:
        yield None
        return

    def stage(done, total, description):
        bar.total = total
        bar.set_description(description, refresh=False)
        bar.update(done - bar.n)

    try:
        yield stage
    finally:
        bar.close()
