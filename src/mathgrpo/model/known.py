"""The shapes of the Qwen3 dense models, keyed by hub id: what preflight estimates memory from when a hub
model's config.json is not on this machine yet, and what the size benchmarks build with random weights.

Written from the models' published config.json files (a base model and its post-trained sibling share one
shape); every size has vocabulary 151,936, 8 key/value heads and head_dim 128. A hub id missing here
and from the local hub cache gets no estimate until it is downloaded.
"""

from __future__ import annotations

from typing import Any, Optional

_COMMON = {"vocab_size": 151936, "num_key_value_heads": 8, "head_dim": 128, "rope_theta": 1e6,
           "max_position_embeddings": 40960}
# size -> (hidden, layers, query heads, intermediate, tied embeddings); parameters as counted by ModelShape
_SIZES = {
    "0.6B": (1024, 28, 16, 3072, True),  # 0.60B
    "1.7B": (2048, 28, 16, 6144, True),  # 1.72B
    "4B": (2560, 36, 32, 9728, True),  # 4.02B
    "8B": (4096, 36, 32, 12288, False),  # 8.19B
    "14B": (5120, 40, 40, 17408, False),  # 14.77B
    "32B": (5120, 64, 64, 25600, False),  # 32.76B
}


def qwen3_kwargs(size: str) -> dict:
    """transformers `Qwen3Config` keyword arguments of one size ('1.7B', '8B', ...)."""
    hidden, layers, heads, intermediate, tied = _SIZES[size]
    return {**_COMMON, "hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
            "intermediate_size": intermediate, "tie_word_embeddings": tied}


# hub id -> size: each post-trained model and, up to 14B, its released base model
KNOWN = {f"Qwen/Qwen3-{size}{suffix}": size for size in _SIZES for suffix in ("", "-Base") if size != "32B" or not suffix}


def known_config(name: str) -> Optional[Any]:
    """The transformers config of a known Qwen3 hub id (no download), or None."""
    size = KNOWN.get(name)
    if size is None:
        return None
    from transformers import Qwen3Config

    return Qwen3Config(**qwen3_kwargs(size))
