"""Where a run's files live, and what identifies a chain's config."""

import hashlib
import json
from pathlib import Path

from .config import Config, config_to_dict


def chains_dir(config: Config) -> Path:
    return Path(config.run.output_dir) / "chains"


def chain_path(config: Config, chain: int) -> Path:
    return chains_dir(config) / f"chain_{chain}.h5"


def chain_paths(config: Config) -> list[Path]:
    """Existing chain files, by chain number."""
    found = []
    for path in chains_dir(config).glob("chain_*.h5"):
        suffix = path.stem.split("_", 1)[1]
        if suffix.isdigit():
            found.append((int(suffix), path))
    return [p for _, p in sorted(found)]


def sampling_hash(config: Config) -> str:
    """Hash of everything a chain's draws depend on, apart from its length."""
    plain = config_to_dict(config)
    mcmc = {key: plain["mcmc"][key] for key in ("burn_in", "thin", "reorder_every")}
    keyed = {"data": plain["data"], "model": plain["model"], "priors": plain["priors"],
             "missing_data": plain["missing_data"], "seed": plain["run"]["seed"], "mcmc": mcmc}
    return hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()
