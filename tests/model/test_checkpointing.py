"""Checkpointed layers that keep their products: the gradients of plain checkpointing (and of none), with no
GEMM or attention run again in backward; plain checkpointing's arguments unchanged."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mathgrpo.config import LoraConfig
from mathgrpo.model.checkpointing import KEPT_OPS, checkpoint_kwargs
from mathgrpo.model.fused_lora import fuse_lora
from mathgrpo.model.loading import add_lora, checkpoint_layers
from mathgrpo.model.tiny import build_tiny
from mathgrpo.training.logprobs import token_logprobs


class OpCounter(TorchDispatchMode):
    """Counts the kept ops (products, attention) and their backward kernels as they run."""

    def __init__(self) -> None:
        super().__init__()
        self.products = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.products += func in KEPT_OPS
        return func(*args, **(kwargs or {}))


def _grads(checkpointing, fused: bool) -> tuple:
    """Adapter gradients of one log-prob loss, and how many products ran in its backward; `checkpointing`: None
    (off), "plain" or "keep"."""
    model, _ = build_tiny(seed=5)
    model = add_lora(model, LoraConfig(r=4, alpha=8))
    torch.manual_seed(0)
    for n, p in model.named_parameters():
        if "lora_" in n:  # both, from this seed (add_lora's own draw depends on what ran before)
            torch.nn.init.normal_(p, std=0.1)
    if fused:
        fuse_lora(model)
    if checkpointing:
        checkpoint_layers(model, keep_matmuls=checkpointing == "keep")
    model.enable_input_require_grads()  # as checkpointing needs; every run computes the same input gradients
    model.train()
    torch.manual_seed(1)
    ids = torch.randint(3, 90, (3, 12))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    loss = (token_logprobs(model, ids, mask, 4, 1.0) * torch.randn(3, 8)).sum()
    with OpCounter() as counter:
        loss.backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])
    return grads, counter.products


@pytest.mark.parametrize("fused", [True, False], ids=["fused LoRA", "PEFT's forward"])
def test_kept_products_give_the_same_gradients_without_running_them_again(fused):
    """Keeping the products: gradients equal to plain checkpointing's and to no checkpointing's, and backward runs
    exactly the products it runs without checkpointing (the recompute takes them from the cache)."""
    none, products_none = _grads(None, fused)
    plain, products_plain = _grads("plain", fused)
    kept, products_kept = _grads("keep", fused)
    assert products_plain > products_none  # plain checkpointing runs the forward's products again
    assert products_kept == products_none
    torch.testing.assert_close(plain, none, rtol=0, atol=0)
    torch.testing.assert_close(kept, none, rtol=0, atol=0)


def test_checkpoint_kwargs():
    """Plain checkpointing: non-reentrant and nothing else; keeping products adds the selective contexts."""
    assert checkpoint_kwargs() == {"use_reentrant": False}
    kept = checkpoint_kwargs(keep_matmuls=True)
    assert kept["use_reentrant"] is False
    forward, recompute = kept["context_fn"]()
    assert forward is not recompute
    assert torch.ops.aten.mm.default in KEPT_OPS and torch.ops.aten.addmm_.default in KEPT_OPS


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=4, num_key_value_heads=2))


def test_models_whose_rotary_writes_into_kept_products_are_refused(monkeypatch):
    """Liger's rotary on a model without q/k norms rotates the kept q/k projection outputs in place: refused with
    what to do (auto keeps plain checkpointing there); transformers' own rotary, or Qwen3's q/k norms, are fine."""
    from transformers.models.llama import modeling_llama

    from mathgrpo.model.checkpointing import keep_refusal, rotates_in_place

    llama = _tiny_llama()
    assert not rotates_in_place(llama) and keep_refusal(llama) is None

    def liger_like(q, k, cos, sin, position_ids=None, unsqueeze_dim=1):
        return q, k

    liger_like.__module__ = "liger_kernel.transformers.rope"  # what apply_liger_kernel_to_llama patches in
    monkeypatch.setattr(modeling_llama, "apply_rotary_pos_emb", liger_like)
    assert rotates_in_place(llama)
    assert "model.use_liger=false" in keep_refusal(llama)
    qwen3, _ = build_tiny()
    assert not rotates_in_place(qwen3)  # q_norm / k_norm write new tensors before the rotary
