"""Where a run's files live, and what identifies a chain's config."""

import hashlib
import json
from pathlib import Path

from .config import Config, config_to_dict
from .errors import UserError


def chains_dir(config: Config) -> Path:
    return Path(config.run.output_dir) / "chains"


def chain_path(config: Config, chain: int) -> Path:
    return chains_dir(config) / f"chain_{chain}.h5"


def chain_number(path) -> int | None:
    """The chain number of a chain file's path (chain_<N>.h5), or None."""
    suffix = Path(path).stem.split("_", 1)[-1]
    return int(suffix) if suffix.isdigit() else None


def chain_paths(config: Config) -> list[Path]:
    """Existing chain files, by chain number."""
    found = [(chain_number(path), path) for path in chains_dir(config).glob("chain_*.h5")]
    return [p for _, p in sorted(item for item in found if item[0] is not None)]


def sampling_hash(config: Config) -> str:
    """Hash of everything a chain's draws depend on, apart from its length."""
    plain = config_to_dict(config)
    mcmc = {key: plain["mcmc"][key] for key in ("burn_in", "thin", "reorder_every")}
    keyed = {"data": plain["data"], "model": plain["model"], "priors": plain["priors"],
             "missing_data": plain["missing_data"], "seed": plain["run"]["seed"], "mcmc": mcmc}
    return hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()


def check_chain_number(config: Config, number: int) -> None:
    """Chains are numbered 1..mcmc.chains; sample, predict and summarize all keep to that."""
    if not 1 <= number <= config.mcmc.chains:
        raise UserError(
            f"--chain {number}: {config.path.name} has mcmc.chains: {config.mcmc.chains}, so its "
            f"chains are 1..{config.mcmc.chains}; raise mcmc.chains to sample more chains (predict "
            "and summarize read chains 1..mcmc.chains)")


def require_prepared(config: Config) -> None:
    """A one-line error when `prepare` has not been run for this config's output directory."""
    if not (Path(config.run.output_dir) / "prepared.h5").exists():
        raise UserError(
            f"{config.path.name}: nothing is prepared in {config.run.output_dir} yet; run "
            f"`megalmm prepare {config.path}` and then `megalmm sample {config.path}` first")


def chains_for_reading(config: Config, warn=None) -> list[Path]:
    """The chain files predict and summarize read: chains 1..mcmc.chains that exist, each
    checked to be sampled with this config. `warn` gets one line naming chains that do not
    exist yet and chain files beyond mcmc.chains (which are not read)."""
    require_prepared(config)
    wanted = range(1, config.mcmc.chains + 1)
    present = {chain_number(p): p for p in chain_paths(config)}
    paths = [present[c] for c in wanted if c in present]
    if not paths:
        raise UserError(f"{config.path.name}: no chains under {chains_dir(config)} yet; run "
                        f"`megalmm sample {config.path}` first")
    missing = [c for c in wanted if c not in present]
    extra = sorted(c for c in present if c not in wanted)
    if warn is not None and (missing or extra):
        parts = []
        if missing:
            parts.append(f"chain(s) {', '.join(map(str, missing))} not sampled yet")
        if extra:
            parts.append(f"chain file(s) {', '.join(map(str, extra))} beyond mcmc.chains "
                         f"({config.mcmc.chains}) are not read")
        warn(f"{'; '.join(parts)}; using chain(s) {', '.join(str(c) for c in wanted if c in present)}")
    expected = sampling_hash(config)
    from .storage import ChainFile

    for path in paths:
        if ChainFile(path).attrs().get("config_hash") != expected:
            raise UserError(
                f"{path}: was sampled with a different config (data, model, priors, seed or "
                f"burn_in/thin/reorder_every changed since); restore the config it was sampled "
                f"with, or move {chains_dir(config)} aside and run `megalmm sample {config.path}` "
                "to sample anew")
    return paths
