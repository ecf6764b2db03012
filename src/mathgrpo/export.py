"""`mathgrpo export` and `mathgrpo solve`: a trained run as files others can load, and one question answered.

Export writes the PEFT adapter and, with `--merged`, a merged 16-bit safetensors model that plain
transformers loads without PEFT.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Optional

import torch

from .config import ModelConfig
from .model import is_adapter_dir, load_base, load_with_adapter, publish_model, stop_token_ids
from .runs import is_run_dir, resolve_model


def load_any(ref: str, cfg: Optional[ModelConfig] = None) -> tuple:
    """(model, tokenizer) for a hub id, model folder, adapter folder or run folder."""
    cfg = cfg or ModelConfig()
    path = resolve_model(ref).path
    if Path(path).exists() and is_adapter_dir(Path(path)):
        return load_with_adapter(Path(path), cfg)
    return load_base(ModelConfig(**{**cfg.__dict__, "name": path}))


def merge(model: Any, dtype: torch.dtype = torch.bfloat16) -> Any:
    """The adapter folded into the base weights, cast to `dtype` (a plain transformers model)."""
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    return model.to(dtype)


def export_main(ref: str, out: Optional[str], merged: bool, dtype: str = "bfloat16") -> int:
    """Write `adapter/` (when the model has one) and, with `merged`, `merged/` under `out`."""
    src = resolve_model(ref).path
    out_dir = Path(out) if out else (Path(ref) / "export" if is_run_dir(Path(ref)) else Path(f"{Path(src).name}-export"))
    out_dir.mkdir(parents=True, exist_ok=True)
    model, tok = load_any(ref, ModelConfig(device="cpu", dtype="float32"))
    if is_adapter_dir(Path(src)):
        tmp = out_dir / ".adapter-tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp)
        shutil.rmtree(out_dir / "adapter", ignore_errors=True)
        tmp.rename(out_dir / "adapter")
        print(f"adapter: {out_dir / 'adapter'}")
    if merged:
        target = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[dtype]
        publish_model(merge(model, target), tok, out_dir / "merged")
        print(f"merged model ({dtype}): {out_dir / 'merged'}")
    return 0


def solve_main(question: str, ref: str, fmt_preset: str = "reasoning", template: str = "auto", max_new_tokens: int = 1024, device: str = "auto") -> int:
    """Answer one question greedily and print the reasoning and the final answer."""
    from .formats import get_format, parse_completion, render_prompt
    from .rollout import SamplingParams, make_engine

    model, tok = load_any(ref, ModelConfig(device=device))
    fmt = get_format(fmt_preset)
    engine = make_engine("auto", model, tok, stop_token_ids(tok))
    prompt = render_prompt(question, fmt, tok, template)
    gen = engine.generate([prompt], 1, SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0))[0]
    parsed = parse_completion(gen.text, fmt)
    print(f"reasoning: {parsed.reasoning if parsed.reasoning is not None else '(none)'}")
    print(f"answer: {parsed.answer if parsed.answer is not None else '(none)'}")
    if not parsed.well_formed:
        print(f"(completion not in the {fmt.name} format; raw: {gen.text!r})")
    return 0
