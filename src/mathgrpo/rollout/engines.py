"""The rollout engines a setting may name (rollout.engine), without importing any of them."""

ENGINES = ("auto", "hf", "native")
