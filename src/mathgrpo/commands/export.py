"""`mathgrpo export` and `mathgrpo solve`: where a run's files went, and one question's reasoning and answer."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from .. import api


def export(model: str, out: Optional[str], merged: bool, dtype: Optional[str], gguf_quant: Optional[str]) -> int:
    """Export (`api.export`) and print where each file went."""
    written = api.export(model, out, merged, gguf_quant, dtype)
    if "adapter" in written:
        base = "base/ (a copy of its local base model)" if isinstance(written["base"], Path) else written["base"]
        print(f"adapter: {written['adapter']} (base: {base})")
    if "gguf" in written:
        print(f"GGUF ({gguf_quant}): {written['gguf']}")
    if "merged" in written:
        print(f"merged model ({written['dtype']}): {written['merged']}")
    return 0


def solve(question: str, model: str, fmt: Optional[str], template: Optional[str], max_new_tokens: Optional[int]) -> int:
    """Answer (`api.solve`, a run folder's own settings where a flag is not given) and print the reasoning and answer."""
    from ..evaluation.solve import solve_settings

    fmt, template, max_new_tokens = solve_settings(model, fmt, template, max_new_tokens,
                                                   changed_by="--format, --template and --max-new-tokens")
    answer = api.solve(question, model, format=fmt, template=template, max_new_tokens=max_new_tokens)
    print(f"reasoning: {answer.reasoning if answer.reasoning is not None else '(none)'}")
    print(f"answer: {answer.answer if answer.answer is not None else '(none)'}")
    if not answer.well_formed:
        print(f"(completion not in the {answer.format} format; raw: {answer.text!r})")
    return 0
