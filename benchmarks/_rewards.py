"""Reward functions for TRL's GRPOTrainer in benchmarks/grpo_step.py.

They live in a module, not in the script's `__main__`, because TRL 1.15 with datasets 4.8.5 pickles
(fingerprints) what it is given and a function defined in `__main__` broke that on the GPU machine.
"""


def length_reward(completions, **kwargs):
    """A reward that varies within a group (completion length in characters / 1000), so advantages are non-zero."""
    return [len(c if isinstance(c, str) else str(c)) / 1000.0 for c in completions]


def _graded(completions, answer):
    """mathgrpo's verdicts (the default recipe's reasoning format) for TRL's completions and gold answers."""
    from mathgrpo.data.problem import Problem
    from mathgrpo.data.formats import get_format
    from mathgrpo.grading.judge import grade

    fmt = get_format("reasoning")
    return [grade(c if isinstance(c, str) else str(c), Problem(id="", question="", answer=a, source=""), fmt)
            for c, a in zip(completions, answer)]


def correct_reward(completions, answer, **kwargs):
    """The default preset's `correct` part through mathgrpo's grader: 1 for the right answer, else 0."""
    return [1.0 if v.correct else 0.0 for v in _graded(completions, answer)]


def format_reward(completions, answer, **kwargs):
    """The default preset's `format_exact` part: 1 when the completion is well formed, else 0."""
    return [1.0 if v.well_formed else 0.0 for v in _graded(completions, answer)]
