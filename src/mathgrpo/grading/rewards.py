"""Rewards: pure functions `(completion, problem, ctx) -> float` in a name registry, combined by weights.

Each part is logged on its own (unweighted) so a run shows which part moved. `correct` goes through
`judge.grade`, the same judge evaluation uses. Rewards never touch a model: what they need to
know about the generation (its length, whether it was cut off) comes in a `RewardContext`.

A learned reward (`rewards.model`, a sequence-classification model) joins any preset as the part
`reward_model`: a batch scorer given to `build_rewards`, since it scores a whole batch at once.

Presets:
  default  correct 1.0 + format_exact 0.1 (the tiny run's reward)
  unsloth  the scale of Unsloth's Qwen3 (4B) GRPO notebook: format_exact +3, per-tag +0.5/-1,
           answer +5 / +3.5 / +2 / +1.5 / -2.5 / -4.5 (no answer -2), first number +3.5 / -1.5
           (none -2.5), written here over our formats and parser.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Optional

from . import judge
from ..data.formats import Format, parse_completion

RewardFn = Callable[..., float]
REGISTRY: dict = {}
MODEL_PART = "reward_model"  # the learned reward's part (rewards.model; model/reward_model.py), not in REGISTRY

PRESETS = {
    "default": {"correct": 1.0, "format_exact": 0.1},
    "unsloth": {
        "unsloth_format_exact": 1.0,
        "unsloth_format_approx": 1.0,
        "unsloth_answer": 1.0,
        "unsloth_numbers": 1.0,
    },
}


@dataclass(frozen=True)
class RewardContext:
    """What a reward may know about one completion besides its text and problem."""

    fmt: Format
    max_new_tokens: int
    completion_tokens: int
    truncated: bool  # generation stopped at max_new_tokens, not at end-of-sequence
    overlong_buffer: int  # tokens before the limit where the overlong penalty starts (DAPO)
    verdict: Optional[judge.Verdict] = None  # the grader's verdict on this completion, when the caller graded it once


def reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Register a reward function under `name`."""

    def register(fn: RewardFn) -> RewardFn:
        if name in REGISTRY or name == MODEL_PART:
            raise ValueError(f"reward {name!r} is registered twice")
        REGISTRY[name] = fn
        return fn

    return register


def _tags(fmt: Format) -> tuple:
    """The tags a completion must write once each (the boxed preset: `\\boxed{` alone, since its
    closing brace is no tag)."""
    return (fmt.answer_start,) if fmt.boxed else fmt.markers


# --- the default parts ---------------------------------------------------------------------------


@reward("correct")
def correct(completion: str, problem, ctx: RewardContext) -> float:
    """1 when the final answer is equivalent to the gold (the evaluation judge), else 0."""
    verdict = ctx.verdict if ctx.verdict is not None else judge.grade(completion, problem, ctx.fmt)
    return 1.0 if verdict.correct else 0.0


@reward("format_exact")
def format_exact(completion: str, problem, ctx: RewardContext) -> float:
    """1 when the completion is well formed in the configured format, else 0."""
    return 1.0 if parse_completion(completion, ctx.fmt).well_formed else 0.0


@reward("format_soft")
def format_soft(completion: str, problem, ctx: RewardContext) -> float:
    """Share of the format's tags that appear exactly once (0..1): credit on the way to the form."""
    tags = _tags(ctx.fmt)
    return sum(completion.count(t) == 1 for t in tags) / len(tags)


@reward("numeric_close")
def numeric_close(completion: str, problem, ctx: RewardContext) -> float:
    """1 - relative error of a numeric answer (floored at 0); 0 when either side is not a number."""
    answer = judge.extract_answer(completion, ctx.fmt)
    if answer is None:
        return 0.0
    pred, gold = judge.numeric_value(answer), judge.numeric_value(problem.answer)
    if pred is None or gold is None:
        return 0.0
    error = abs(float(pred - gold)) / max(abs(float(gold)), 1e-9)
    return 1.0 - min(1.0, error)


@reward("overlong")
def overlong(completion: str, problem, ctx: RewardContext) -> float:
    """DAPO's soft overlong penalty: 0 up to `max_new_tokens - overlong_buffer`, then linearly to -1
    at `max_new_tokens` (and -1 beyond)."""
    start = ctx.max_new_tokens - ctx.overlong_buffer
    if ctx.overlong_buffer <= 0 or ctx.completion_tokens <= start:
        return 0.0
    return -min(1.0, (ctx.completion_tokens - start) / ctx.overlong_buffer)


# --- the Unsloth notebook's scale ----------------------------------------------------------------

_FIRST_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def _to_float(text: str) -> Optional[float]:
    """float(text) for a plain decimal, else None (the notebook's `float()` on the raw strings)."""
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


@reward("unsloth_format_exact")
def unsloth_format_exact(completion: str, problem, ctx: RewardContext) -> float:
    """+3 when the completion is well formed, else 0."""
    return 3.0 if parse_completion(completion, ctx.fmt).well_formed else 0.0


@reward("unsloth_format_approx")
def unsloth_format_approx(completion: str, problem, ctx: RewardContext) -> float:
    """Per tag of the format: +0.5 when it appears exactly once, -1 otherwise."""
    return sum(0.5 if completion.count(t) == 1 else -1.0 for t in _tags(ctx.fmt))


@reward("unsloth_answer")
def unsloth_answer(completion: str, problem, ctx: RewardContext) -> float:
    """Graded string match: exact +5, equal after stripping +3.5, numeric ratio within 10% +2,
    within 20% +1.5, other numbers -2.5, not a number -4.5; no answer at all -2."""
    guess = parse_completion(completion, ctx.fmt).answer
    if guess is None:
        return -2.0
    gold = problem.answer
    if guess == gold:
        return 5.0
    if guess.strip() == gold.strip():
        return 3.5
    g, t = _to_float(guess), _to_float(gold)
    if g is None or t is None or t == 0:
        return -4.5
    ratio = g / t
    if 0.9 <= ratio <= 1.1:
        return 2.0
    if 0.8 <= ratio <= 1.2:
        return 1.5
    return -2.5


@reward("unsloth_numbers")
def unsloth_numbers(completion: str, problem, ctx: RewardContext) -> float:
    """The first number in the answer equal to the gold as a float +3.5, else -1.5; no number in
    the answer -2.5; a gold that is not a plain number 0."""
    answer = parse_completion(completion, ctx.fmt).answer
    m = _FIRST_NUMBER.search(answer) if answer else None
    if m is None:
        return -2.5
    gold = _to_float(problem.answer.strip())
    if gold is None:
        return 0.0
    return 3.5 if _to_float(m.group().replace(",", "")) == gold else -1.5


# --- combining ------------------------------------------------------------------------------------


class Rewards:
    """Named, weighted reward parts; called on a batch, it returns totals and each part unweighted.

    scorer: a batch scorer beside the per-completion parts (the reward model, `reward_model.py`): called once
    on the whole batch as `scorer(completions, problems) -> (logged values, values its weight multiplies)`,
    with `name` and `weight` attributes; its logged values are a part like the others.
    """

    def __init__(self, weights: dict, scorer: Optional[Any] = None) -> None:
        self.weights = dict(weights)
        self.scorer = scorer
        self.names = list(self.weights) + ([scorer.name] if scorer is not None else [])

    def __call__(self, completions: list, problems: list, ctxs: list) -> tuple:
        """(total per completion, {name: unweighted values}) for parallel lists of one batch."""
        if not len(completions) == len(problems) == len(ctxs):
            raise ValueError(
                f"rewards need one problem and one context per completion: got {len(completions)} "
                f"completions, {len(problems)} problems, {len(ctxs)} contexts"
            )
        parts = {
            name: [REGISTRY[name](c, p, x) for c, p, x in zip(completions, problems, ctxs)] for name in self.weights
        }
        totals = [sum(self.weights[n] * parts[n][i] for n in self.weights) for i in range(len(completions))]
        if self.scorer is not None:
            parts[self.scorer.name], added = self.scorer(completions, problems)
            totals = [t + self.scorer.weight * a for t, a in zip(totals, added)]
        return totals, parts


def build_rewards(preset: str = "default", weights_override: Optional[dict] = None, scorer: Optional[Any] = None) -> Rewards:
    """The preset's weights with `weights_override` applied (a new name adds a part, weight 0 drops one), plus
    `scorer` (the reward model, or None) as one more part."""
    if preset not in PRESETS:
        raise ValueError(f"unknown reward preset {preset!r}; choose one of {', '.join(PRESETS)}")
    weights = dict(PRESETS[preset])
    for name, weight in (weights_override or {}).items():
        if name == MODEL_PART:
            raise ValueError(f"reward {name!r} is the reward model's part: set rewards.model and rewards.model_weight")
        if name not in REGISTRY:
            raise ValueError(f"unknown reward {name!r}; known rewards: {', '.join(sorted(REGISTRY))}")
        weights[name] = float(weight)
    return Rewards({n: w for n, w in weights.items() if w != 0}, scorer)
