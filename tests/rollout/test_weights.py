"""The native engine's view of the weights: what a forward reads, and which tensors keep their addresses."""

import torch

from mathgrpo.rollout.weights import collect, rope_table
from mathgrpo.model.tiny import build_tiny


def test_a_float32_rotary_table_is_the_model_buffer_itself():
    model, _ = build_tiny(0)
    w = collect(model, lowrank=False)
    assert w.inv_freq is model.model.rotary_emb.inv_freq


def test_a_converted_rotary_table_is_reused_until_its_source_changes():
    model, _ = build_tiny(0)
    model.to(torch.bfloat16)
    first = collect(model, lowrank=False)
    again = collect(model, lowrank=False, previous=first)
    assert again.inv_freq is first.inv_freq and again.fingerprint() == first.fingerprint()
    assert torch.equal(first.inv_freq, model.model.rotary_emb.inv_freq.float())
    model.model.rotary_emb.inv_freq.mul_(2)  # an in-place write bumps the version: convert again
    changed = collect(model, lowrank=False, previous=again)
    assert torch.equal(changed.inv_freq, model.model.rotary_emb.inv_freq.float())
    assert not torch.equal(changed.inv_freq, first.inv_freq)


def test_rope_table_converts_without_a_previous_result():
    buffer = torch.arange(4, dtype=torch.bfloat16)
    table = rope_table(buffer, torch.device("cpu"))
    assert table.dtype == torch.float32 and table.data_ptr() != buffer.data_ptr()


def test_fingerprint_covers_every_tensor_the_forward_reads():
    model, _ = build_tiny(0)
    w = collect(model, lowrank=False)
    ptrs = set(w.fingerprint())
    for t in [w.embed, w.norm, w.inv_freq, w.lm_head.weight] + [l.ln1 for l in w.layers] + [l.q_norm for l in w.layers]:
        assert t.data_ptr() in ptrs
    per_layer = 2 + 2 + 7  # two norms, q/k norms, seven projections (no biases in Qwen3)
    assert len(w.tensors()) == 3 + per_layer * len(w.layers) + 1
