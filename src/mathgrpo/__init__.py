"""mathgrpo: make small open LLMs better at step-by-step math (format warm-up, GRPO on LoRA, benchmarks)."""

__version__ = "0.1.0"
