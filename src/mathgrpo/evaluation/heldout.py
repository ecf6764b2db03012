"""Greedy accuracy on a fixed held-out set: the number training reports before, during and after.

Under torchrun each rank answers its share of the problems and the verdicts are gathered, so
every rank reports the same accuracy.
"""

from __future__ import annotations

from .. import dist
from ..data.formats import Format, prompts_for
from ..rollout import RolloutEngine, SamplingParams


def heldout_accuracy(engine: RolloutEngine, problems: list, fmt: Format, template: str, max_new_tokens: int) -> dict:
    """Greedy pass@1, format rate and mean completion length over `problems` (all ranks)."""
    from ..grading.judge import grade

    if not problems:
        return {"accuracy": float("nan"), "format_rate": float("nan"), "length": float("nan")}
    mine = dist.strided(problems)
    gens = engine.generate(prompts_for(mine, fmt, engine.tokenizer, template), 1,
                           SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0))
    local = []
    for g in gens:
        v = grade(g.text, mine[g.prompt_index], fmt)
        local.append((v.correct, v.well_formed, len(g.token_ids)))
    rows = dist.gather_concat(local)
    n = len(rows)
    return {
        "accuracy": sum(r[0] for r in rows) / n,
        "format_rate": sum(r[1] for r in rows) / n,
        "length": sum(r[2] for r in rows) / n,
    }
