"""`megalmm status`: each chain's progress and lock holder, as a plain-text table."""

import os
import socket
from datetime import datetime, timezone

from .config import Config
from .errors import UserError
from .factor_count import describe_path
from .lock import is_stale, read_lock
from .runinfo import chain_path, chains_dir
from .storage import ChainFile

HEADER = ("chain", "iterations", "draws", "factors", "last checkpoint (UTC)", "s/iteration",
          "process")


def _chain_numbers(config: Config) -> list[int]:
    """Chains with a file or a lock (a chain just started may have only its lock)."""
    numbers = set()
    for pattern in ("chain_*.h5", "chain_*.h5.lock"):
        for path in chains_dir(config).glob(pattern):
            suffix = path.name.split(".", 1)[0].split("_", 1)[1]
            if suffix.isdigit():
                numbers.add(int(suffix))
    return sorted(numbers)


def _holder(path) -> str:
    info = read_lock(path)
    if info is None:
        return "-"
    if not info:
        return "unreadable lock file"
    if info.get("host") != socket.gethostname():
        state = "running (other host: not checked)"
    else:
        state = "stale" if is_stale(info) else "running"
    return f"pid {info.get('pid')} on {info.get('host')}, {state}"


def chain_status(config: Config) -> list[dict]:
    """One row per chain: numbers as found, None where unknown."""
    configured = config.mcmc.burn_in + config.mcmc.samples
    rows = []
    for number in _chain_numbers(config):
        path = chain_path(config, number)
        row = {"chain": number, "iteration": 0, "planned": configured, "n_draws": 0,
               "factors": None, "checkpoint": None, "seconds_per_iteration": None, "process": _holder(path)}
        if path.exists():
            chain = ChainFile(path)
            try:
                progress = chain.progress()
            except UserError:  # damaged, or of another megalmm version
                row["iteration"] = row["n_draws"] = None
            else:
                done = progress.iteration
                row["iteration"], row["n_draws"] = done, progress.n_draws
                row["planned"] = max(progress.target or configured, done)
                row["seconds_per_iteration"] = progress.seconds_per_iteration
                try:
                    path_k = chain.read_state_array("factor_path")
                except (UserError, OSError, KeyError):  # being rewritten this instant
                    path_k = None
                row["factors"] = describe_path(path_k) if path_k is not None else None
            row["checkpoint"] = datetime.fromtimestamp(
                os.path.getmtime(path), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        rows.append(row)
    return rows


def _seconds(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def format_status(rows: list[dict]) -> str:
    if not rows:
        return "no chains yet"

    def cell(value, fmt="{}"):
        return "?" if value is None else fmt.format(value)

    table = [HEADER] + [(
        str(r["chain"]), f"{cell(r['iteration'])}/{r['planned']}", cell(r["n_draws"]),
        r.get("factors") or "-", r["checkpoint"] or "-", _seconds(r["seconds_per_iteration"]), r["process"]) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(HEADER))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in table)
