"""Checkpointed layers that keep their products: the gradients of plain checkpointing (and of none), with no
GEMM or attention run again in backward; plain checkpointing's arguments unchanged."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mathgrpo.config import LoraConfig
from mathgrpo.model.checkpointing import KEPT_OPS, checkpoint_kwargs, matmul_keeping_contexts
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
    model.set_attn_implementation("sdpa")  # the attention GPU runs train with (the tiny model's own is eager)
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
    assert kept["use_reentrant"] is False and kept["context_fn"] is matmul_keeping_contexts


class CacheSpy:
    """The tensors the selective checkpointing cache holds after a forward (PyTorch's own cache, read through its
    caching mode, so a change of that private API fails here rather than passing)."""

    def __init__(self, monkeypatch) -> None:
        from torch.utils import checkpoint

        self.held: list = []
        caching = checkpoint._CachingTorchDispatchMode
        original = caching.__torch_dispatch__

        def spy(mode, func, types, args=(), kwargs=None):
            out = original(mode, func, types, args, kwargs)
            entry = mode.storage[checkpoint._sac_storage_key(func, args)][mode.func_counter[func] - 1]
            if entry is not checkpoint._RECOMPUTE:
                self.held += [w.val for w in torch.utils._pytree.tree_leaves(entry) if isinstance(w.val, torch.Tensor)]
            return out

        monkeypatch.setattr(caching, "__torch_dispatch__", spy)

    def nbytes(self) -> int:
        """Bytes of distinct storage held (the fused LoRA's product and its in-place sum share one)."""
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in self.held}
        return sum(storages.values())


@pytest.mark.parametrize("path", ["fused LoRA", "PEFT's forward", "full fine-tuning"])
def test_the_memory_plan_counts_what_the_cache_holds(path, monkeypatch):
    """A bf16 Qwen3 layer stack with SDPA: the cache holds exactly `kept_products` 16-bit values a token and layer
    (the plan's count), for each way a projection runs."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from mathgrpo.config import PROJECTIONS
    from mathgrpo.training.memory import ModelShape

    config = Qwen3Config(vocab_size=128, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=16)
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(config).to(torch.bfloat16)
    model.set_attn_implementation("sdpa")
    r = 0 if path == "full fine-tuning" else 4
    if r:
        model = add_lora(model, LoraConfig(r=r, alpha=8))
        if path == "fused LoRA":
            fuse_lora(model)
    else:
        model.requires_grad_(True)
    checkpoint_layers(model, keep_matmuls=True)
    model.enable_input_require_grads()
    model.train()
    spy = CacheSpy(monkeypatch)
    tokens = 2 * 32
    model(input_ids=torch.randint(0, 128, (2, 32))).logits.float().sum().backward()
    values = ModelShape.from_config(config).kept_products(r, PROJECTIONS, peft_forward=path == "PEFT's forward")
    assert spy.nbytes() == 2 * values * tokens * config.num_hidden_layers


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
