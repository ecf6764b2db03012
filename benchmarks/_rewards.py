"""Reward functions for TRL's GRPOTrainer in benchmarks/grpo_step.py.

They live in a module, not in the script's `__main__`, because TRL 1.15 with datasets 4.8.5 pickles
(fingerprints) what it is given and a function defined in `__main__` broke that on the GPU machine.
"""


def length_reward(completions, **kwargs):
    """A reward that varies within a group (completion length in characters / 1000), so advantages are non-zero."""
    return [len(c if isinstance(c, str) else str(c)) / 1000.0 for c in completions]
