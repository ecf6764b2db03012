"""One Triton pass over a chunk of output-head logits for the frozen-head log-probs (GPU).

Given a chunk's logits [n, V] in the model's dtype and each row's target, the kernel writes log
p(target) (fp32) and, when the gradient is wanted, overwrites the logits in place with
softmax - onehot in the same dtype: what `FrozenHeadLogProb` multiplies by the head's weight.
The torch path it replaces makes an fp32 copy of the chunk and runs six passes over it (max,
exp, sum, divide, scatter, cast back): about 38 bytes of memory traffic and 8 bytes of space per
logit, against 6 and 2 here. One program per row reads the row twice (running max and sum of
exponentials, then the probabilities), computing in fp32.
Triton is optional: without it `available()` is False and the torch path runs.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs
    triton = None

BLOCK = 4096  # vocabulary entries a program handles per step


def available() -> bool:
    """True when Triton can be imported (the kernel is meant for CUDA; tests run it interpreted)."""
    return triton is not None


def runs_on(device: torch.device) -> bool:
    """Whether training uses the kernel on `device`: Triton importable and a GPU of capability 8.0+ (`model.card`)."""
    from ..model.card import card_of

    return available() and device.type == "cuda" and card_of(device).kernels


if triton is not None:

    @triton.jit
    def _logprob_grad_kernel(X, T, OUT, stride_x, V, inv_temp, WRITE_GRAD: tl.constexpr, BLOCK_V: tl.constexpr):
        """Row `program_id`: OUT = log_softmax(X / temp)[T]; with WRITE_GRAD, X <- softmax(X / temp) - onehot(T)."""
        row = tl.program_id(0).to(tl.int64)
        x_row = X + row * stride_x
        offs = tl.arange(0, BLOCK_V)
        m_vec = tl.full([BLOCK_V], float("-inf"), tl.float32)
        s_vec = tl.zeros([BLOCK_V], tl.float32)
        for start in range(0, V, BLOCK_V):
            valid = start + offs < V
            x = tl.load(x_row + start + offs, mask=valid, other=float("-inf")).to(tl.float32) * inv_temp
            m_new = tl.maximum(m_vec, x)
            alpha = tl.where(m_vec == m_new, 1.0, tl.exp(m_vec - m_new))  # no inf - inf on lanes still empty
            s_vec = s_vec * alpha + tl.where(valid, tl.exp(x - m_new), 0.0)
            m_vec = m_new
        m = tl.max(m_vec, 0)
        lse = m + tl.log(tl.sum(s_vec * tl.exp(m_vec - m), 0))
        target = tl.load(T + row)
        picked = tl.load(x_row + target).to(tl.float32) * inv_temp
        tl.store(OUT + row, picked - lse)
        if WRITE_GRAD:
            for start in range(0, V, BLOCK_V):
                idx = start + offs
                valid = idx < V
                x = tl.load(x_row + idx, mask=valid, other=0.0).to(tl.float32) * inv_temp
                p = tl.exp(x - lse) - tl.where(idx == target, 1.0, 0.0)
                tl.store(x_row + idx, p.to(X.dtype.element_ty), mask=valid)


def logprob_grad_(logits: torch.Tensor, targets: torch.Tensor, temperature: float, grad: bool) -> torch.Tensor:
    """log p(target) of each row of `logits` / temperature ([n] fp32); with `grad`, logits becomes softmax - onehot.

    logits: [n, V], last dimension contiguous; targets: [n] integer ids.
    """
    n, vocab = logits.shape
    if logits.stride(1) != 1:
        raise ValueError("logits must be contiguous along the vocabulary")
    out = torch.empty(n, dtype=torch.float32, device=logits.device)
    if n:
        _logprob_grad_kernel[(n,)](logits, targets.contiguous(), out, logits.stride(0), vocab, 1.0 / temperature,
                                   WRITE_GRAD=grad, BLOCK_V=min(BLOCK, triton.next_power_of_2(vocab)))
    return out
