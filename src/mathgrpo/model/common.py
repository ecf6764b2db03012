"""What every model backend shares: the error type, device and dtype rules, adapter folders, tokenizer padding.

`loading` (transformers + PEFT) and `unsloth_backend` both build on these, so neither imports the other's
helpers and the optional backend stays a leaf.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Optional

import torch

from ..errors import Error


class ModelError(Error, RuntimeError):
    """A model or adapter cannot be loaded; the message says what was tried and what to do."""


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` is the first CUDA device when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"model.device={name} but no CUDA device is visible; use model.device=cpu")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The dtype model.dtype=`name` means on `device`: `auto` is bf16 on a GPU with native bf16 (sm_80+), float16
    on an older GPU, float32 on the CPU (`card.choose_dtype`)."""
    from .card import DTYPES, card_of, choose_dtype

    return DTYPES[name] if name != "auto" else choose_dtype(name, card_of(device))[0]


def is_adapter_dir(path: Path) -> bool:
    """True for a folder holding a PEFT adapter rather than a full model."""
    return (Path(path) / "adapter_config.json").exists()


def prepare_tokenizer(model: Any, tok: Any) -> Any:
    """Left padding and a pad token (eos when it has none), also in the model's generation config."""
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    model.generation_config.pad_token_id = tok.pad_token_id
    return tok


def adapter_base(adapter_dir: Path) -> str:
    """The base model an adapter folder names in its adapter_config.json (a relative path: from the adapter folder)."""
    base_name = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())["base_model_name_or_path"]
    if not base_name:
        raise ModelError(f"{adapter_dir}/adapter_config.json names no base model; pass model.name=<base>")
    if base_name.startswith(("./", "../")) and (Path(adapter_dir) / base_name).is_dir():
        return str((Path(adapter_dir) / base_name).resolve())  # as `mathgrpo export` writes a local base
    return base_name


def local_config(name: str) -> Optional[Any]:
    """The transformers config of a model folder or hub id from local files only (the folder or the hub cache),
    or None (not on this machine, or not a model folder)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(name, local_files_only=True)
    except Exception:  # not cached, an adapter folder without config.json, or no model at all
        return None


def hub_problem(name: str) -> Optional[str]:
    """Why the model `name` cannot be had here, in one line with what to do, when it is a hub id that is neither in
    the hub cache nor on a hub that answers (`hubcheck.hub_status`); None for `tiny`, a local path, or a repo that
    can be had. Asked before a hub id is loaded: the loaders retry an unreachable hub for most of a minute."""
    from ..hubcheck import hub_status

    if name == "tiny" or Path(name).expanduser().exists():
        return None
    if name.startswith(("/", ".", "~")) or name.count("/") > 1:
        return "no such folder (a hub id looks like owner/name)"
    return hub_status(name, "model", "model.name (or --model)")[1]


def quiet_transformers() -> None:
    """No "Loading weights" / "Writing model shards" bars from transformers on every load and save (our own
    bars and lines say what happens); the hub's download bars stay, a long download should show. Nor
    transformers' deprecation notice for `is_gradient_checkpointing`, which PEFT raises on every LoRA model
    (transformers >= 5.25): nothing a user can act on."""
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    from huggingface_hub.utils import enable_progress_bars
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # also turns the hub's off ...
    enable_progress_bars()  # ... which are worth keeping
