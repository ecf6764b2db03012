"""The built-in tiny model: a character-level tokenizer and a small Qwen3, built offline in a second.

Used by the default run (`mathgrpo train` with no arguments) and by the tests (with a tiny sequence
classifier of the same shape as a stand-in reward model). The tokenizer
knows printable ASCII one character per token plus the format markers as whole tokens, so the
same tiny model can read GSM8K questions in tests. The markers are ordinary added tokens, not
special ones: decoding with special tokens skipped must not delete them.
"""

from __future__ import annotations

import string

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM, Qwen3ForSequenceClassification

from ..data.formats import PRESETS

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"


def _markers() -> list:
    """Every marker of every format preset that is longer than one character, longest first."""
    tags = {t for fmt in PRESETS.values() for t in fmt.markers if len(t) > 1}
    return sorted(tags, key=lambda t: (-len(t), t))


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Character-level tokenizer over printable ASCII, with format markers as single tokens."""
    chars = [c for c in string.printable if c not in "\x0b\x0c\r"]
    vocab = {tok: i for i, tok in enumerate([PAD, EOS, UNK] + chars)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD, eos_token=EOS, unk_token=UNK)
    tok.add_tokens(_markers())
    tok.padding_side = "left"
    return tok


def tiny_config(vocab_size: int) -> Qwen3Config:
    """0.5M-parameter Qwen3: hidden 128, 2 layers, 4 query heads over 2 key/value heads."""
    return Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        # rotary positions, no learned table: this only bounds the prompt + completion transformers allows,
        # and one character a token makes GSM8K / MATH-500 prompts up to ~3,300 tokens long with 4 shots
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        rope_theta=10000.0,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
    )


def build_tiny(seed: int = 0) -> tuple:
    """(model, tokenizer): a freshly initialised tiny Qwen3 (fp32, eager attention) and its tokenizer."""
    tok = build_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3ForCausalLM(tiny_config(len(tok)))
    model.config.use_cache = True
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.bos_token_id = None
    model.set_attn_implementation("eager")
    return model, tok


def build_tiny_classifier(seed: int = 0, num_labels: int = 1) -> tuple:
    """(model, tokenizer): a freshly initialised tiny Qwen3 sequence classifier (a `num_labels` head) over the tiny
    tokenizer, the shape of the tiny model: a stand-in reward model for tests and the CPU benchmark."""
    tok = build_tokenizer()
    config = tiny_config(len(tok))
    config.num_labels = num_labels
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3ForSequenceClassification(config)
    model.set_attn_implementation("eager")
    return model, tok
