"""The memory estimator: Qwen3-4B's sizes, what fits a 24 GB and a 16 GB card (the decisions a run takes from it:
test_sizing.py)."""

import pytest

from mathgrpo.config import load_config
from mathgrpo.training.memory import GIB, LOGIT_BYTES, ModelShape, chunk_tokens_for, device_budget, plan_memory, plan_for_model
from mathgrpo.model.tiny import build_tiny

ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def test_qwen3_4b_sizes(qwen3_4b):
    """Parameter count, LoRA r32 size and KV bytes per token match the published shape."""
    s = qwen3_4b
    assert 4.00e9 < s.params < 4.05e9  # Qwen3-4B: 4.02B with tied embeddings
    assert s.lora_params(32, ALL) == 36 * 32 * (2 * (2560 + 4096) + 2 * (2560 + 1024) + 3 * (2560 + 9728))
    assert s.kv_bytes_per_token() == 2 * 36 * 8 * 128 * 2  # 144 KiB


def test_count_params_matches_a_real_model():
    """The formula counts exactly what transformers builds (tiny Qwen3, tied embeddings)."""
    model, _ = build_tiny()
    assert ModelShape.from_config(model.config).params == sum(p.numel() for p in model.parameters())


def test_reference_recipe_fits_24gb(qwen3_4b):
    """Qwen3-4B, LoRA r32, 2,048 tokens in 24 GB: at least one sequence per micro-batch, within the budget."""
    plan = plan_memory(qwen3_4b, 24 * GIB, lora_r=32, lora_targets=ALL)
    micro = plan.micro_batch(2048)
    assert micro >= 1
    assert plan.train_bytes(micro, 2048) <= 24 * GIB < plan.train_bytes(micro + 1, 2048)
    assert plan.rollout_batch(2048) >= 16  # the recipe's 4 prompts x 4 samples in one generate call
    assert plan.chunk_tokens * 151936 * LOGIT_BYTES <= 24 * GIB / 25


def test_budget_orders_batch_sizes(qwen3_4b):
    """More memory never means smaller batches; 4-bit weights leave more room; no checkpointing leaves less."""
    s = qwen3_4b
    small, big = plan_memory(s, 16 * GIB), plan_memory(s, 80 * GIB)
    assert 1 <= small.micro_batch(2048) < big.micro_batch(2048)
    assert small.rollout_batch(2048) < big.rollout_batch(2048)
    assert plan_memory(s, 16 * GIB, load_in_4bit=True).micro_batch(2048) > small.micro_batch(2048)
    assert plan_memory(s, 16 * GIB, gradient_checkpointing=False).micro_batch(2048) < small.micro_batch(2048)
    assert plan_memory(s, 16 * GIB, offload_checkpoints=True).micro_batch(2048) > small.micro_batch(2048)
    assert plan_memory(s, 16 * GIB, fused_lora=False).micro_batch(2048) < small.micro_batch(2048)


def test_kept_products_grow_the_plan_by_what_every_layer_keeps(qwen3_4b):
    """model.checkpoint_matmuls adds kept_products a token in each of 36 layers (about 2.5 MB a token for Qwen3-4B
    at r32: 16 x 1,280 tokens in an 80 GiB card, not in 24), more through PEFT's own forward (its fp32 low-rank
    products), nothing without checkpoints. What the cache really holds: tests/model/test_checkpointing.py."""
    s = qwen3_4b
    plain, kept = plan_memory(s, 80 * GIB), plan_memory(s, 80 * GIB, keep_matmuls=True)
    assert kept.train_per_token - plain.train_per_token == 2 * 36 * s.kept_products(32, ALL) == 2 * 36 * 35104
    assert kept.micro_batch(1280) >= 16 > plan_memory(s, 24 * GIB, keep_matmuls=True).micro_batch(1280) >= 1
    assert s.kept_products(32, ALL, peft_forward=True) > s.kept_products(32, ALL) > s.kept_products(8, ALL[:2])
    assert plan_memory(s, 80 * GIB, keep_matmuls=True, fused_lora=False).train_per_token > kept.train_per_token
    assert plan_memory(s, 80 * GIB, keep_matmuls=True, gradient_checkpointing=False).train_per_token == \
        plan_memory(s, 80 * GIB, gradient_checkpointing=False).train_per_token


def test_prompt_cached_once_per_group_fits_more_rollouts(qwen3_4b):
    """With the prompt's keys kept once per group, 8 x 8 at 256 + 256 tokens fits one generate call at 13 GiB
    (it does not with a copy per sample); a group of 1 is the per-sample count."""
    plan = plan_memory(qwen3_4b, 13 * GIB)
    assert plan.rollout_batch(512) < 64 <= plan.rollout_batch(512, 256, 8)
    assert plan.rollout_batch(512, 256, 1) == plan.rollout_batch(512)
    assert plan.rollout_batch(512, 256, 2) <= plan.rollout_batch(512, 256, 8) <= plan.rollout_batch(512, 128, 8)
    per_seq = (256 + 32) * plan.rollout_per_token + plan.rollout_per_sequence
    assert plan.rollout_batch(512, 256, 8) == (plan.budget - plan.resident) // per_seq


def test_too_small_budget_fits_nothing(qwen3_4b):
    """A budget below the weights gives 0, which the trainer turns into a clear stop."""
    plan = plan_memory(qwen3_4b, 8 * GIB)
    assert plan.micro_batch(2048) == 0 and plan.rollout_batch(2048) == 0


def test_chunk_tokens_bounds():
    assert chunk_tokens_for(151936, 80 * GIB) == 2048  # 2.5 GB of logits work space, 3% of the budget
    assert chunk_tokens_for(151936, 1 * GIB) == 128
    assert chunk_tokens_for(100, 1 * GIB) == 4096


def test_cpu_has_no_budget_unless_asked():
    import torch

    assert device_budget(None, torch.device("cpu")) is None
    assert device_budget(2.5, torch.device("cpu")) == int(2.5 * GIB)


def test_plan_for_model_from_config():
    """A run's settings reach the plan: budget, LoRA rank and chunking."""
    import torch

    model, _ = build_tiny()
    cfg = load_config("tiny-cpu", ["grpo.max_memory_gb=0.25", "lora.r=4"])
    plan = plan_for_model(model, cfg, torch.device("cpu"))
    assert plan.budget == int(0.25 * GIB)
    assert plan.micro_batch(64) > 50  # a 0.5M-parameter model fits many 64-token sequences in 0.25 GiB
    assert plan_for_model(model, load_config("tiny-cpu"), torch.device("cpu")) is None


def test_nonpositive_budget_refused():
    from mathgrpo.config import ConfigError

    with pytest.raises(ConfigError, match="grpo.max_memory_gb"):
        load_config("tiny-cpu", ["grpo.max_memory_gb=0"])


def test_held_bytes_shrink_the_rollout_batch(qwen3_4b):
    """Bytes an engine keeps (weight snapshots) come out of the rollout's share of the budget."""
    need = 7 * GIB
    plan = plan_memory(qwen3_4b, 20 * GIB)
    assert plan.rollout_batch(512, 256, 8, held=need) < plan.rollout_batch(512, 256, 8)


def test_4bit_weights_keep_the_embedding_and_head_in_16_bit(qwen3_4b):
    """bitsandbytes quantizes the projections only: the tied 4B embedding stays bf16; an untied head doubles it."""
    from dataclasses import replace

    embed = 151936 * 2560
    assert qwen3_4b.weight_bytes(2) == 2 * qwen3_4b.params
    assert qwen3_4b.weight_bytes(2, load_in_4bit=True) == int((qwen3_4b.params - embed) * 0.5625) + 2 * embed
    untied = replace(qwen3_4b, tied=False, params=qwen3_4b.params + embed)
    assert untied.weight_bytes(2, load_in_4bit=True) == int((qwen3_4b.params - embed) * 0.5625) + 4 * embed
    plan = plan_memory(qwen3_4b, 24 * GIB, load_in_4bit=True)
    assert plan.floor(2048) == plan.resident + max(plan.logits_chunk + 2048 * plan.train_per_token,
                                                   2048 * plan.rollout_per_token + plan.rollout_per_sequence)
