"""Greedy accuracy on a fixed held-out set: the number training reports before, during and after."""

from __future__ import annotations

from typing import Any

from .formats import Format, render_prompt
from .rollout import RolloutEngine, SamplingParams


def prompts_for(problems: list, fmt: Format, tokenizer: Any, template: str) -> list:
    """The prompt text of each problem."""
    return [render_prompt(p.question, fmt, tokenizer, template) for p in problems]


def heldout_accuracy(engine: RolloutEngine, problems: list, fmt: Format, template: str, max_new_tokens: int) -> dict:
    """Greedy pass@1, format rate and mean completion length over `problems`."""
    from .grading import grade

    if not problems:
        return {"accuracy": float("nan"), "format_rate": float("nan"), "length": float("nan")}
    prompts = prompts_for(problems, fmt, engine.tokenizer, template)
    gens = engine.generate(prompts, 1, SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0))
    verdicts = [grade(g.text, problems[g.prompt_index], fmt) for g in gens]
    n = len(verdicts)
    return {
        "accuracy": sum(v.correct for v in verdicts) / n,
        "format_rate": sum(v.well_formed for v in verdicts) / n,
        "length": sum(len(g.token_ids) for g in gens) / n,
    }
