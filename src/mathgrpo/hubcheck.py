"""Whether a hub repo (a model or a data set) can be had on this machine, answered in seconds.

The local caches first (the hub cache, `datasets`' own cache); when the repo is not there and HF_HUB_OFFLINE is
not set, the hub is asked once with a short time limit. The hub client's own loaders retry an unreachable hub
for most of a minute before they fail, so a command that loads a hub id asks here first and fails at once with
what to do (`preflight` checks every input of a run this way, `model.common.hub_problem` a model about to load).
"""

from __future__ import annotations

import os
from pathlib import Path

HUB_TIMEOUT_S = 5.0


def offline() -> bool:
    """Whether HF_HUB_OFFLINE forbids asking the hub."""
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def hub_status(repo: str, repo_type: str, setting: str = "model.name") -> tuple:
    """(where, problem) for a hub repo: the local hub cache, else the hub itself if it answers in time.
    setting: the model setting to point at a local folder instead."""
    from huggingface_hub import constants, repo_info

    prefix = "models" if repo_type == "model" else "datasets"
    if (Path(constants.HF_HUB_CACHE) / f"{prefix}--{repo.replace('/', '--')}").is_dir():
        return "local hub cache", None
    if repo_type == "dataset" and _datasets_cache_has(repo):
        return "local datasets cache", None
    todo = (f"download it where there is network (huggingface-cli download {repo}) or set {setting} to a local folder"
            if repo_type == "model" else
            f"put a copy laid out like the hub repo in MATHGRPO_HUB_ROOT/{repo}, or download it where there is "
            f"network (huggingface-cli download --repo-type dataset {repo})")
    if offline():
        return None, f"not in the local hub cache and HF_HUB_OFFLINE=1; {todo}"
    try:
        repo_info(repo, repo_type=repo_type, timeout=HUB_TIMEOUT_S)
    except Exception as err:  # no network, unknown repo, gated repo: the hub client raises many types
        reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        return None, f"not in the local hub cache and the hub did not answer ({reason}); {todo}"
    return "the hub (downloaded on first use)", None


def _datasets_cache_has(repo: str) -> bool:
    """Whether `datasets` has a prepared copy of `repo` in its own cache."""
    try:
        from datasets import config
    except ImportError:
        return False
    return (Path(config.HF_DATASETS_CACHE) / repo.replace("/", "___")).is_dir()
