"""LoRA linear layers as one autograd function: the low-rank update, with the base GEMM accumulated onto it.

PEFT computes `base(x) + lora_B(lora_A(x)) * scale` with the adapter weights in fp32 (it upcasts
bf16 adapters), so on a bf16 model every projection casts its input to fp32, runs two fp32 GEMMs,
and writes the sum through fp32 temporaries before casting back: several full passes over
activation-sized tensors per projection, forward, recompute and backward. Here the adapters are
cast to the compute dtype once per call (they are tiny), `x A^T` is one small GEMM, and nothing
activation-sized is in fp32. The low-rank product `s (x A^T) B^T` is written first and the base GEMM
accumulates onto it (`addmm_`, beta 1): the large GEMM reads the small one's output in its epilogue,
where the other order costs a separate memory-bound read and write of the whole output (2-5% of a
forward + backward of the Qwen3-4B shape on an H100); `dx` is built the same way in backward. Adapter
gradients come out of bf16 GEMMs (fp32 accumulation) and are stored in the adapters' own dtype, as
under `torch.autocast`.

The PEFT modules stay as they are (same parameters, same save format); only their forward is
swapped, and it falls back to PEFT's own whenever the call is not the plain case (adapter
disabled or merged, several or mixed adapters, dropout, DoRA and other variants, a trainable base).
"""

from __future__ import annotations

import types
from typing import Any, Optional

import torch


class LoraLinear(torch.autograd.Function):
    """y = x W^T + b + scale * (x A^T) B^T with W and b frozen; gradients for x, A and B."""

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scale):
        """The low-rank update first, then the base GEMM accumulated onto it."""
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])  # [T, in]
        a, b = lora_a.to(x2.dtype), lora_b.to(x2.dtype)  # [r, in], [out, r]
        xa = (x2 @ a.t()) * scale  # [T, r], scaled where it is small; not in place: `checkpointing` may keep x2 @ a.t()
        out = torch.addmm(bias, xa, b.t()) if bias is not None else xa @ b.t()
        out.addmm_(x2, weight.t())
        ctx.save_for_backward(x2, weight, a, b, xa)
        ctx.scale, ctx.shape, ctx.adapter_dtypes = scale, shape, (lora_a.dtype, lora_b.dtype)
        return out.view(*shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        """Gradients for x, A and B from four GEMMs; none for the frozen base."""
        x2, weight, a, b, xa = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1]).to(x2.dtype)  # [T, out]
        g_xa = (g @ b).mul_(ctx.scale)  # [T, r]
        dx = da = db = None
        if ctx.needs_input_grad[0]:
            dx = (g_xa @ a).addmm_(g, weight).view(ctx.shape)
        if ctx.needs_input_grad[3]:
            da = (g_xa.t() @ x2).to(ctx.adapter_dtypes[0])
        if ctx.needs_input_grad[4]:
            db = (g.t() @ xa).to(ctx.adapter_dtypes[1])
        return dx, None, None, da, db, None


def _plain_adapter(module: Any, x: torch.Tensor, kwargs: dict) -> Optional[str]:
    """The single active adapter when this call is the plain LoRA case the fused path computes, else None."""
    if kwargs or module.disable_adapters or module.merged:
        return None
    active = [a for a in module.active_adapters if a in module.lora_A]
    if len(active) != 1:
        return None
    name = active[0]
    base = module.base_layer
    if (type(base) is not torch.nn.Linear or base.weight.requires_grad or x.dtype != base.weight.dtype
            or (base.bias is not None and base.bias.requires_grad)):
        return None
    if (name in getattr(module, "lora_variant", {}) or getattr(module, "use_dora", {}).get(name)
            or not isinstance(module.lora_dropout[name], torch.nn.Identity) or module.lora_B[name].bias is not None):
        return None
    return name


def _fused_forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """Forward of a patched PEFT LoRA Linear: the fused function in the plain case, PEFT's own otherwise."""
    name = None if args else _plain_adapter(self, x, kwargs)
    if name is None:
        return self._peft_forward(x, *args, **kwargs)
    base = self.base_layer
    return self._fused_function.apply(x, base.weight, base.bias, self.lora_A[name].weight, self.lora_B[name].weight,
                                      self.scaling[name])


def fuse_lora(model: Any, function: type = LoraLinear) -> int:
    """Route every PEFT LoRA Linear of `model` through `function` (an autograd Function with LoraLinear's
    arguments; benchmarks pass others to compare); returns how many were newly patched (patching again swaps the
    function and patches nothing twice)."""
    try:
        from peft.tuners.lora.layer import Linear as PeftLoraLinear
    except ImportError:
        return 0
    count = 0
    for module in model.modules():
        if type(module) is not PeftLoraLinear:
            continue
        module._fused_function = function
        if not hasattr(module, "_peft_forward"):
            module._peft_forward = module.forward
            module.forward = types.MethodType(_fused_forward, module)
            count += 1
    return count
