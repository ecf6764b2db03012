"""What identifies a model's weights, so that results made by other weights are never reused.

A local folder (model or adapter) is identified by the SHA-256 of its files' contents; an adapter
also by its base model's identity. A hub id is identified by the commit of the copy in the local
hub cache (or, before the first download, the commit the hub serves), the built-in tiny model by
its seed. Hashing a 4B model's 8 GB takes seconds, so the
digest of each file is remembered with its size and modification time (`known`) and reused while
those are unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Optional

CHUNK = 1 << 24  # bytes read at a time


def file_digest(path: Path, known: dict) -> str:
    """SHA-256 of one file, taken from `known` (updated in place) while its size and mtime are the same."""
    stat = path.stat()
    key = str(path.resolve())
    entry = known.get(key)
    if entry and entry[:2] == [stat.st_size, stat.st_mtime_ns]:
        return entry[2]
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            digest.update(block)
    known[key] = [stat.st_size, stat.st_mtime_ns, digest.hexdigest()]
    return digest.hexdigest()


def folder_digest(folder: Path, known: dict) -> str:
    """One digest of every file directly in `folder` (names and contents; hidden files left out)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).iterdir() if p.is_file() and not p.name.startswith(".")):
        digest.update(f"{path.name}\0{file_digest(path, known)}\n".encode())
    return digest.hexdigest()


def hub_revision(hub_id: str) -> Optional[str]:
    """The commit of `hub_id`: the one in the local hub cache (refs/main), else the one the hub serves
    now (what a download would fetch); None when neither is known."""
    from huggingface_hub import constants, model_info

    ref = Path(constants.HF_HUB_CACHE) / f"models--{hub_id.replace('/', '--')}" / "refs" / "main"
    if ref.is_file():
        return ref.read_text().strip()
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return None
    try:
        return model_info(hub_id, timeout=5).sha
    except Exception:  # no network, unknown or gated repo: the load will say so
        return None


def weights_fingerprint(name: str, seed: int, known: dict) -> str:
    """A short string that changes whenever the weights (or tokenizer) `name` loads change.

    name: what `model.load_base` gets (hub id, model folder, adapter folder or `tiny`).
    seed: the seed the built-in tiny model is built with.
    """
    if name == "tiny":
        return f"tiny:seed={seed}"
    path = Path(name)
    if not path.is_dir():
        return f"hub:{name}@{hub_revision(name) or 'not-cached'}"
    own = folder_digest(path, known)[:16]
    config = path / "adapter_config.json"
    if config.is_file():
        base = json.loads(config.read_text()).get("base_model_name_or_path") or ""
        return f"adapter:{own}+{weights_fingerprint(base, seed, known)}"
    return f"sha256:{own}"
