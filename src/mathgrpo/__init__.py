"""mathgrpo: make small open LLMs better at step-by-step math (format warm-up, GRPO on LoRA, benchmarks).

The Python API (`mathgrpo.train`, `evaluate`, `compare`, `solve`, `export`, `grade`, `check`) lives in
`mathgrpo.api`; it is imported on first use, so `import mathgrpo` stays light.
"""

from .errors import Error

__version__ = "0.1.0"
API = ("train", "evaluate", "compare", "solve", "export", "grade", "check", "Run", "Results", "Comparison", "Answer", "Plan")
__all__ = ["Error", "__version__", *API]


def __getattr__(name: str):
    if name in API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'mathgrpo' has no attribute {name!r}")
