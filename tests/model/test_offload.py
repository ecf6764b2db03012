"""Offloaded checkpointing gives the gradients of plain backward; layers it cannot take fall back."""

import copy

import torch

from mathgrpo.config import LoraConfig
from mathgrpo.model.fused_lora import fuse_lora
from mathgrpo.training.logprobs import token_logprobs
from mathgrpo.model.loading import add_lora, checkpoint_layers
from mathgrpo.model.offload import Offloader, offload_checkpoints
from mathgrpo.model.tiny import build_tiny


def _lora_model():
    model, _ = build_tiny(seed=6)
    model = add_lora(model, LoraConfig(r=4, alpha=8))
    torch.manual_seed(0)
    for n, p in model.named_parameters():
        if "lora_" in n:
            torch.nn.init.normal_(p, std=0.1)
    return model


def _grads(model):
    torch.manual_seed(2)
    ids = torch.randint(3, 90, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    model.train()
    model.zero_grad(set_to_none=True)
    (token_logprobs(model, ids, mask, 3, 1.0) * torch.randn(2, 6)).sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def _checkpointed(model):
    checkpoint_layers(model)
    model.enable_input_require_grads()
    return model


def test_offloaded_recompute_matches_plain_backward():
    """Every adapter gradient equals the one without checkpointing, PEFT or fused projections."""
    plain = _lora_model()
    ref = _grads(plain)
    for fused in (False, True):
        model = _checkpointed(copy.deepcopy(plain))
        if fused:
            fuse_lora(model)
        assert offload_checkpoints(model) == 2
        offloader = model.base_model.model.model.layers[0]._gradient_checkpointing_func
        got = _grads(model)
        assert offloader.last is not None and offloader.last.host is None  # parked, then taken back
        for name in ref:
            assert torch.allclose(got[name], ref[name], atol=1e-5), name
        buffers = {b.data_ptr() for b in offloader.pool.free}
        again = _grads(model)  # a second pass reuses the same host buffers
        assert {b.data_ptr() for b in offloader.pool.free} == buffers and offloader.pool.allocated == 2
        for name in ref:
            assert torch.allclose(again[name], ref[name], atol=1e-5), name


def test_host_pool_reuses_and_replaces_buffers():
    """Free buffers are reused when big enough; a larger request replaces the largest too-small one."""
    from mathgrpo.model.offload import HostPool

    pool = HostPool()
    a, b = pool.take(100, pinned=False), pool.take(400, pinned=False)
    pool.give(a)
    pool.give(b)
    assert pool.take(90, pinned=False) is a and pool.take(450, pinned=False) is b  # 400 + a quarter holds 450
    pool.give(a)
    pool.give(b)
    c = pool.take(1000, pinned=False)
    assert c.numel() >= 1000 and [id(x) for x in pool.free] == [id(a)] and pool.allocated == 3


def test_other_calls_fall_back_to_torch_checkpoint():
    """Several positional inputs, or an input without gradient, go through torch's own checkpoint."""
    offloader = Offloader()
    x = torch.randn(3, 4, requires_grad=True)
    y = torch.randn(3, 4)
    out = offloader(lambda a, b: (a * b).sin(), x, y)
    out.sum().backward()
    assert offloader.last is None
    assert torch.allclose(x.grad, y * (x * y).cos())
