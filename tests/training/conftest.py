"""Shared fixtures of the training tests."""

import pytest
from transformers import Qwen3Config

from mathgrpo.training.memory import ModelShape


@pytest.fixture
def qwen3_4b() -> ModelShape:
    """Qwen3-4B's shape: 36 layers, hidden 2560, 32 query and 8 key/value heads of 128, intermediate 9728,
    vocabulary 151,936, tied embeddings."""
    config = Qwen3Config(hidden_size=2560, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8,
                         head_dim=128, intermediate_size=9728, vocab_size=151936, tie_word_embeddings=True)
    return ModelShape.from_config(config)
