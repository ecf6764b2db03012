"""`mathgrpo export` and `mathgrpo solve`: a trained run as files others can load, and one question answered.

Export writes the PEFT adapter and, with `--merged`, a merged safetensors model that plain
transformers loads without PEFT, in the base model's own dtype unless `--dtype` says otherwise;
with `--gguf`, the merged model also as one GGUF file (`gguf_export`).
An adapter's base stays as it is named when that is a hub id or a model folder of the user's; a
base that lives inside the run folder (a full-weight warm-up, as in the tiny recipe, trained in
what is often a temporary place) is copied beside the adapter as `base/`, and the adapter names it
`../base`, a path relative to the adapter folder, so the export works wherever it is moved.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Optional

import torch

from ..config import ModelConfig
from ..diskio import writing
from .common import adapter_base, is_adapter_dir
from .loading import load_base, load_with_adapter, publish_model, stop_token_ids
from ..runs import is_run_dir, resolve_model


def load_any(ref: str, cfg: Optional[ModelConfig] = None) -> tuple:
    """(model, tokenizer) for a hub id, model folder, adapter folder or run folder."""
    cfg = cfg or ModelConfig()
    path = resolve_model(ref).path
    if Path(path).exists() and is_adapter_dir(Path(path)):
        return load_with_adapter(Path(path), cfg)
    return load_base(ModelConfig(**{**cfg.__dict__, "name": path}))


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


def in_run_folder(path: Path) -> bool:
    """Whether `path` is a model a training run wrote into its own folder (`<run>/sft/model`)."""
    return path.is_dir() and path.name == "model" and path.parent.name == "sft" and is_run_dir(path.parent.parent)


def export_adapter(src: Path, out_dir: Path) -> None:
    """Copy the adapter to `out_dir/adapter`, its base named so that it loads anywhere (see the module doc)."""
    import json

    base = adapter_base(src)
    tmp = out_dir / ".adapter-tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    with writing(out_dir / "adapter", tmp):
        shutil.copytree(src, tmp)
        if in_run_folder(Path(base)):
            shutil.rmtree(out_dir / ".base-tmp", ignore_errors=True)
            with writing(out_dir / "base", out_dir / ".base-tmp"):
                shutil.copytree(base, out_dir / ".base-tmp")
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


def export(ref: str, out: Optional[str], merged: bool, dtype: Optional[str] = None, gguf_quant: Optional[str] = None) -> dict:
    """Write `adapter/` (+ `base/` for a local base) when the model has one and, with `merged`, `merged/` under `out`;
    returns what was written by kind (adapter, base, gguf, merged) with the merged dtype under `dtype`.

    dtype: of the merged weights; None keeps the base model's.
    gguf_quant: also write the merged model as `model-<quant>.gguf` (q8_0 or f16; see `gguf_export`).
    """
    src = resolve_model(ref).path
    out_dir = Path(out) if out else (Path(ref) / "export" if is_run_dir(Path(ref)) else Path(f"{Path(src).name}-export"))
    out_dir.mkdir(parents=True, exist_ok=True)
    model, tok = load_any(ref, ModelConfig(device="cpu", dtype="float32"))
    written: dict = {}
    if is_adapter_dir(Path(src)):
        export_adapter(Path(src), out_dir)
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


def export_main(ref: str, out: Optional[str], merged: bool, dtype: Optional[str] = None, gguf_quant: Optional[str] = None) -> int:
    """`mathgrpo export`: `export`, then where each file went."""
    written = export(ref, out, merged, dtype, gguf_quant)
    if "adapter" in written:
        base = "base/ (a copy of its local base model)" if isinstance(written["base"], Path) else written["base"]
        print(f"adapter: {written['adapter']} (base: {base})")
    if "gguf" in written:
        print(f"GGUF ({gguf_quant}): {written['gguf']}")
    if "merged" in written:
        print(f"merged model ({written['dtype']}): {written['merged']}")
    return 0


def solve(question: str, ref: str, fmt_preset: str = "reasoning", template: str = "auto", max_new_tokens: int = 1024,
          device: str = "auto") -> tuple:
    """Answer one question greedily: (the completion parsed in the format, the raw `Generation`)."""
    from ..data.formats import get_format, parse_completion, render_prompt
    from ..rollout import SamplingParams, make_engine

    model, tok = load_any(ref, ModelConfig(device=device))
    fmt = get_format(fmt_preset)
    engine = make_engine("auto", model, tok, stop_token_ids(tok))
    prompt = render_prompt(question, fmt, tok, template)
    gen = engine.generate([prompt], 1, SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0))[0]
    return parse_completion(gen.text, fmt), gen


def solve_main(question: str, ref: str, fmt_preset: str = "reasoning", template: str = "auto", max_new_tokens: int = 1024, device: str = "auto") -> int:
    """`mathgrpo solve`: `solve`, then the reasoning and the final answer."""
    parsed, gen = solve(question, ref, fmt_preset, template, max_new_tokens, device)
    print(f"reasoning: {parsed.reasoning if parsed.reasoning is not None else '(none)'}")
    print(f"answer: {parsed.answer if parsed.answer is not None else '(none)'}")
    if not parsed.well_formed:
        print(f"(completion not in the {fmt_preset} format; raw: {gen.text!r})")
    return 0
