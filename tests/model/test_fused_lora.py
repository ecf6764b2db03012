"""The fused LoRA linear equals PEFT's own forward and backward, and steps aside where it does not apply."""

import copy

import torch

from mathgrpo.config import LoraConfig
from mathgrpo.model.fused_lora import LoraLinear, fuse_lora
from mathgrpo.training.logprobs import token_logprobs
from mathgrpo.model.loading import add_lora
from mathgrpo.model.tiny import build_tiny


def _pair(dtype=torch.float32, dropout=0.0):
    """(PEFT model, the same model fused) with non-zero adapter weights."""
    model, _ = build_tiny(seed=5)
    model = add_lora(model.to(dtype), LoraConfig(r=4, alpha=8, dropout=dropout))
    torch.manual_seed(0)
    for n, p in model.named_parameters():
        if "lora_" in n:
            torch.nn.init.normal_(p, std=0.1)
    fused = copy.deepcopy(model)
    return model, fused, fuse_lora(fused)


def _grads(model, ids, mask, weights):
    model.zero_grad(set_to_none=True)
    logp = token_logprobs(model, ids, mask, 4, 1.0)
    (logp * weights).sum().backward()
    return logp.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def _case():
    torch.manual_seed(1)
    ids = torch.randint(3, 90, (3, 10))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    return ids, mask, torch.randn(3, 6)


def test_fused_matches_peft_values_and_gradients():
    """In fp32, log-probs and every adapter gradient agree with PEFT's path; all 14 projections are patched."""
    model, fused, count = _pair()
    assert count == 2 * 7
    ref_logp, ref = _grads(model, *_case())
    got_logp, got = _grads(fused, *_case())
    assert torch.allclose(got_logp, ref_logp, atol=1e-5)
    assert ref.keys() == got.keys() and len(ref) == 2 * 7 * 2
    for name in ref:
        assert got[name].dtype == torch.float32  # PEFT keeps adapters in fp32; so do their gradients
        assert ref[name].abs().max() > 0, name
        assert torch.allclose(got[name], ref[name], atol=1e-5, rtol=1e-4), name


def _relative_error(grads: dict, ref: dict) -> float:
    diff = sum(float((grads[n] - ref[n]).norm() ** 2) for n in ref)
    return (diff / sum(float(ref[n].norm() ** 2) for n in ref)) ** 0.5


def test_fused_bf16_error_is_that_of_bf16_compute():
    """On a bf16 model the fused path computes the low-rank terms in bf16 (as autocast would), not fp32
    as PEFT does: its gradients stay within a few percent of the fp32 ones and within 3x PEFT's bf16 error."""
    ref = _grads(_pair()[0], *_case())[1]
    model, fused, _ = _pair(torch.bfloat16)
    peft_err = _relative_error(_grads(model, *_case())[1], ref)
    fused_err = _relative_error(_grads(fused, *_case())[1], ref)
    assert fused_err < 0.15 and fused_err < 3 * peft_err, (fused_err, peft_err)


def test_fused_path_is_taken_and_falls_back():
    """The fused function runs in the plain case; a disabled adapter and dropout use PEFT's forward."""
    _, fused, _ = _pair()
    proj = fused.base_model.model.model.layers[0].self_attn.q_proj
    x = torch.randn(2, 3, 128, requires_grad=True)
    assert type(proj(x).grad_fn).__name__ == "LoraLinearBackward"
    with fused.disable_adapter():
        plain = proj(x)
        assert type(plain.grad_fn).__name__ != "LoraLinearBackward"
        assert torch.allclose(plain, proj.base_layer(x))
    _, dropped, _ = _pair(dropout=0.1)
    proj = dropped.base_model.model.model.layers[0].self_attn.q_proj
    assert type(proj(x).grad_fn).__name__ != "LoraLinearBackward"


def test_fuse_twice_patches_once():
    """Fusing an already fused model changes nothing."""
    _, fused, _ = _pair()
    assert fuse_lora(fused) == 0


class CountingLinear(LoraLinear):
    """LoraLinear that counts its calls (another function a benchmark might pass)."""

    calls = 0

    @staticmethod
    def forward(ctx, *args):
        CountingLinear.calls += 1
        return LoraLinear.forward(ctx, *args)


def test_fusing_again_with_another_function_swaps_it_on_that_model_only():
    """The function is a per-model choice (no module global is replaced): a second fuse_lora swaps it, and the
    default comes back the same way."""
    _, fused, _ = _pair()
    other = copy.deepcopy(fused)
    x = torch.randn(2, 3, 128)
    proj = fused.base_model.model.model.layers[0].self_attn.q_proj
    want = proj(x)
    assert fuse_lora(fused, CountingLinear) == 0
    got = proj(x)
    assert CountingLinear.calls == 1 and torch.equal(got, want)
    other.base_model.model.model.layers[0].self_attn.q_proj(x)
    assert CountingLinear.calls == 1  # the other model keeps LoraLinear
    fuse_lora(fused)
    proj(x)
    assert CountingLinear.calls == 1


def test_lora_linear_with_bias_and_any_scale_matches_the_formula():
    """LoraLinear on its own, with a bias and a scale that is not a power of two: values and the gradients of
    x, A and B equal autograd through x W^T + b + s (x A^T) B^T in float64."""
    from mathgrpo.model.fused_lora import LoraLinear

    gen = torch.Generator().manual_seed(3)
    x, w, bias = (torch.randn(2, 5, 16, generator=gen, dtype=torch.float64), torch.randn(12, 16, generator=gen, dtype=torch.float64),
                  torch.randn(12, generator=gen, dtype=torch.float64))
    a, b = torch.randn(4, 16, generator=gen, dtype=torch.float64), torch.randn(12, 4, generator=gen, dtype=torch.float64)
    g = torch.randn(2, 5, 12, generator=gen, dtype=torch.float64)
    leaves = [t.clone().requires_grad_() for t in (x, a, b)]
    LoraLinear.apply(leaves[0], w, bias, leaves[1], leaves[2], 0.7).backward(g)
    ref = [t.clone().requires_grad_() for t in (x, a, b)]
    out = ref[0] @ w.t() + bias + 0.7 * (ref[0] @ ref[1].t()) @ ref[2].t()
    out.backward(g)
    assert torch.allclose(LoraLinear.apply(x, w, bias, a, b, 0.7), out.detach())
    for got, want in zip(leaves, ref):
        assert torch.allclose(got.grad, want.grad)
