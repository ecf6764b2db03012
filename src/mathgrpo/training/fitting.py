"""Which problems a stage can run: those whose prompt leaves room for rollout.max_new_tokens within the token
limit. The warm-up's dev set and GRPO's training and held-out problems pass through the same rule: a longer prompt
would run past the length the memory plan and the model were sized for, and its answer could not be written in
full."""

from __future__ import annotations

from ..config import Config
from ..data.formats import prompts_for
from ..progress import notice


def fitting_problems(problems: list, what: str, cfg: Config, model, tok, fmt) -> list:
    """The problems whose prompt and rollout.max_new_tokens fit the token limit (model.max_seq_length, or the
    model's positions where fewer: `evaluation.benchmark.token_limit`); how many were left out is said in a line,
    and none fitting is a DataError that names what to change. `what` names the set in that line."""
    from ..data import DataError
    from ..evaluation.benchmark import token_limit

    limit, setting = token_limit(cfg, model)
    budget = cfg.rollout.max_new_tokens
    prompts = prompts_for(problems, fmt, tok, cfg.format.template)
    lengths = [len(ids) for ids in tok(prompts, add_special_tokens=False)["input_ids"]] if prompts else []
    kept = [p for p, n in zip(problems, lengths) if n + budget <= limit]
    if len(kept) == len(problems):
        return problems
    longest = max(lengths)
    said = (f"{len(problems) - len(kept)} of {len(problems)} {what} problems have prompts that with "
            f"rollout.max_new_tokens={budget} take more than {setting} (longest prompt {longest} tokens)")
    fixes = f"raise model.max_seq_length to {longest + budget} (if the model allows) or lower rollout.max_new_tokens"
    if not kept:
        raise DataError(f"{said}: none is left; {fixes}")
    notice(f"{said}; they are left out ({fixes} to keep them)")
    return kept
