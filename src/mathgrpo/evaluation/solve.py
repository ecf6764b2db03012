"""One question answered greedily by a model, read in a reasoning format: what `mathgrpo solve` and
`mathgrpo.solve` run."""

from __future__ import annotations

from typing import Optional

from ..config import ModelConfig, load_config
from ..data.formats import get_format, parse_completion, render_prompt
from ..model.loading import load_any, stop_token_ids
from ..progress import notice
from ..rollout import SamplingParams, make_engine
from ..runs import resolve_model, run_recipe


def solve_settings(ref: str, fmt: Optional[str], template: Optional[str], max_new_tokens: Optional[int],
                   changed_by: str) -> tuple:
    """(format preset, template, completion tokens) to answer with: those given, else a training run's own (when
    `ref` lies in a run folder; a line says so, naming what the caller accepts to change them: `changed_by`),
    else reasoning, auto and 1024."""
    recipe = run_recipe(ref, changed_by=changed_by) if None in (fmt, template, max_new_tokens) else None
    saved = load_config(recipe) if recipe else None
    return (fmt or (saved.format.preset if saved else "reasoning"),
            template or (saved.format.template if saved else "auto"),
            max_new_tokens or (saved.rollout.max_new_tokens if saved else 1024))


def solve(question: str, ref: str, fmt_preset: str = "reasoning", template: str = "auto", max_new_tokens: int = 1024,
          device: str = "auto") -> tuple:
    """Answer one question greedily with `ref` (a run folder: its latest model): (the completion parsed in the
    format, the raw `Generation`)."""
    resolved = resolve_model(ref)
    notice(f"model: {resolved.path}")  # a run or checkpoint folder stands for a model inside it: say which
    model, tok = load_any(resolved.path, ModelConfig(device=device))
    fmt = get_format(fmt_preset)
    engine = make_engine("auto", model, tok, stop_token_ids(tok))
    prompt = render_prompt(question, fmt, tok, template)
    gen = engine.generate([prompt], 1, SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0))[0]
    return parse_completion(gen.text, fmt), gen
