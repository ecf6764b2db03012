"""A trained model as files others can load: its adapter, a merged model, a GGUF file.

Export writes the PEFT adapter and, with `merged`, a merged safetensors model that plain transformers
loads without PEFT, in the base model's own dtype unless `dtype` says otherwise; with `gguf_quant`,
the merged model also as one GGUF file (`gguf_export`). It is given a model or adapter folder (or hub
id) and the folder to write; which of a run's models that is, and where it goes by default, is the
caller's business (`runs.resolve_model`, `runs.export_dir`).
An adapter's base stays as it is named when that is a hub id or a model folder of the user's; a base
that lives inside a run folder (a full-weight warm-up, as in the tiny recipe, trained in what is often
a temporary place) is copied beside the adapter as `base/` when asked (`copy_base`), and the adapter
names it `../base`, a path relative to the adapter folder, so the export works wherever it is moved.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Optional

import torch

from ..config import ModelConfig
from ..diskio import writing
from .common import adapter_base, is_adapter_dir
from .loading import load_any, publish_model

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def base_dtype(name: str) -> str:
    """The dtype the base model `name` (hub id, model or adapter folder) was saved in; float32 if it says none."""
    from transformers import AutoConfig

    if Path(name).is_dir() and is_adapter_dir(Path(name)):
        return base_dtype(adapter_base(Path(name)))
    if name == "tiny":
        return "float32"
    config = AutoConfig.from_pretrained(name)
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    dtype = str(dtype).replace("torch.", "") if dtype is not None else "float32"
    return dtype if dtype in DTYPES else "float32"


def export_adapter(src: Path, out_dir: Path, copy_base: bool = False) -> None:
    """Copy the adapter to `out_dir/adapter`; with `copy_base`, its base model to `out_dir/base`, named `../base`."""
    tmp = out_dir / ".adapter-tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    with writing(out_dir / "adapter", tmp):
        shutil.copytree(src, tmp)
        if copy_base:
            shutil.rmtree(out_dir / ".base-tmp", ignore_errors=True)
            with writing(out_dir / "base", out_dir / ".base-tmp"):
                shutil.copytree(adapter_base(src), out_dir / ".base-tmp")
                shutil.rmtree(out_dir / "base", ignore_errors=True)
                (out_dir / ".base-tmp").rename(out_dir / "base")
            config = json.loads((tmp / "adapter_config.json").read_text())
            config["base_model_name_or_path"] = "../base"
            (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
        shutil.rmtree(out_dir / "adapter", ignore_errors=True)
        tmp.rename(out_dir / "adapter")


def merge(model: Any, dtype: torch.dtype = torch.bfloat16) -> Any:
    """The adapter folded into the base weights, cast to `dtype` (a plain transformers model)."""
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    return model.to(dtype)


def export(src: str, out_dir: Path, merged: bool, dtype: Optional[str] = None, gguf_quant: Optional[str] = None,
           copy_base: bool = False) -> dict:
    """Write `adapter/` (+ `base/` with `copy_base`) when the model `src` has one and, with `merged`, `merged/` under
    `out_dir`; returns what was written by kind (adapter, base, gguf, merged) with the merged dtype under `dtype`.

    dtype: of the merged weights; None keeps the base model's.
    gguf_quant: also write the merged model as `model-<quant>.gguf` (q8_0 or f16; see `gguf_export`).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, tok = load_any(src, ModelConfig(device="cpu", dtype="float32"))
    written: dict = {}
    if is_adapter_dir(Path(src)):
        export_adapter(Path(src), out_dir, copy_base)
        written["adapter"] = out_dir / "adapter"
        written["base"] = out_dir / "base" if (out_dir / "base").is_dir() else adapter_base(Path(src))
    plain = merge(model, torch.float32) if merged or gguf_quant else None
    if gguf_quant:  # from the float32 merge, before the merged folder's cast
        from .gguf_export import write_gguf

        written["gguf"] = out_dir / f"model-{gguf_quant}.gguf"
        write_gguf(plain, tok, written["gguf"], gguf_quant)
    if merged:
        written["dtype"] = dtype or base_dtype(src)
        written["merged"] = out_dir / "merged"
        publish_model(plain.to(DTYPES[written["dtype"]]), tok, written["merged"])
    return written
