"""Per-token log-probabilities of completions without full-vocabulary logits for the whole batch.

The decoder runs once to hidden states; the output head and log-softmax then run over chunks of
completion tokens, so memory grows with chunk x vocab, not with tokens x vocab (151,936 floats per
token for Qwen3). With a frozen head (LoRA) each chunk also computes the log-prob's gradient with
respect to its hidden state, (onehot - softmax) W / temperature, and keeps only that ([T, H]);
backward scales it by the incoming per-token gradient, with no second pass over the vocabulary.
On a GPU with Triton, one kernel pass over each chunk's logits (`head_kernel`) replaces the fp32
softmax. A trainable or sharded head instead checkpoints each chunk and recomputes its logits in backward.
The decoder sees each row rotated past its left padding and no attention mask (`right_aligned`), or,
inside `packing.attention`, the whole micro-batch as one sequence with each prompt once (`packing`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch.utils.checkpoint import checkpoint

from ..model.loading import unwrap
from . import head_kernel, packing


def model_parts(model: Any) -> tuple:
    """(decoder body returning hidden states, output head) of a causal LM, PEFT-wrapped or not."""
    base = unwrap(model)
    body = getattr(base, "model", None)
    head = base.get_output_embeddings()
    if body is None or head is None:
        raise TypeError(f"{type(base).__name__} has no .model body and output head; chunked log-probs need both")
    return body, head


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, so left padding does not shift RoPE. [N, L]"""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


def _chunk_logprobs(head: Any, hidden: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """log p(target) for a [n, H] chunk of hidden states, in fp32."""
    logits = head(hidden).float()
    if temperature not in (0.0, 1.0):
        logits = logits / temperature
    return torch.log_softmax(logits, dim=-1).gather(-1, targets[:, None]).squeeze(-1)


def _chunk_torch(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, scale: float, grad: bool) -> tuple:
    """(log p(target) [n], softmax - onehot [n, V] in the weight's dtype or None) of a [n, H] chunk, through an
    fp32 copy of its logits."""
    t = targets[:, None]
    logits = (hidden @ weight.t()).float()  # [n, V]
    if scale != 1.0:
        logits.div_(scale)
    top = logits.amax(dim=1, keepdim=True)
    picked = logits.gather(1, t) - top
    probs = logits.sub_(top).exp_()  # in place: one fp32 [n, V] buffer per chunk
    total = probs.sum(dim=1, keepdim=True)
    delta = None
    if grad:
        delta = probs.div_(total).scatter_add_(1, t, torch.full_like(picked, -1.0)).to(weight.dtype)  # softmax - onehot
    return (picked - total.log()).squeeze(1), delta


def _chunk_fused(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, scale: float, grad: bool) -> tuple:
    """The same through one Triton pass that turns the logits (model dtype) into softmax - onehot in place."""
    logits = hidden @ weight.t()
    return head_kernel.logprob_grad_(logits, targets, scale, grad), logits if grad else None


class FrozenHeadLogProb(torch.autograd.Function):
    """log p(target) through a frozen output head, chunk by chunk; saves d logp / d hidden, not logits."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature, chunk_tokens, use_kernel=True):
        """Log-probs per chunk, and (when hidden needs a gradient) d logp / d hidden; `use_kernel`: the Triton pass
        where it is available on a GPU, else the torch chunks."""
        # hidden [T, H], weight [V, H], targets [T] -> [T] fp32
        out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        grads = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        scale = temperature if temperature not in (0.0, 1.0) else 1.0
        chunk = _chunk_fused if use_kernel and head_kernel.runs_on(hidden.device) else _chunk_torch
        for lo in range(0, hidden.shape[0], chunk_tokens):
            part = slice(lo, lo + chunk_tokens)
            out[part], delta = chunk(hidden[part], weight, targets[part], scale, grads is not None)
            if delta is not None:  # d logp / d hidden = (onehot - softmax) W / temperature
                torch.mm(delta, weight, out=grads[part]).mul_(-1.0 / scale)
        ctx.save_for_backward(grads)
        return out

    @staticmethod
    def backward(ctx, grad):
        """The saved d logp / d hidden scaled by the incoming per-token gradient."""
        (grads,) = ctx.saved_tensors
        return grads * grad[:, None].to(grads.dtype), None, None, None, None, None


def _frozen_plain_head(head: Any) -> bool:
    """True for an nn.Linear head without bias whose weight is frozen and held whole on this rank."""
    return (type(head) is torch.nn.Linear and head.bias is None and not head.weight.requires_grad
            and type(head.weight.data) is torch.Tensor)  # a sharded (FSDP) weight is a DTensor


# On a GPU, rotated batches are right-padded to a multiple of this many columns: rollout batches change
# width from step to step, and cuDNN's attention builds a plan for every new sequence length (0.2-2.7 s
# each on the H100, measured). On a CPU the extra columns would only add work.
WIDTH_MULTIPLE = 64


def width_multiple(device: torch.device, multiple: Optional[int] = None) -> int:
    """What a rotated batch's width is rounded up to on `device`: `multiple` when given, else
    WIDTH_MULTIPLE on a GPU and 1 elsewhere."""
    if multiple is not None:
        return multiple
    return WIDTH_MULTIPLE if device.type == "cuda" else 1


def pass_width(width: int, device: torch.device, multiple: Optional[int] = None) -> int:
    """The width the body runs a rotated batch of `width` tokens at (what memory planning should count)."""
    return width + (-width % width_multiple(device, multiple))


def safe_attention_width(width: int) -> int:
    """The width to run a masked batch of `width` tokens at: 8 more where width % 128 == 64.

    At those widths cuDNN's SDPA backward returns NaN query gradients when an attention mask is passed
    (pytorch/pytorch#196678, H100/H200, torch 2.11+; measured here at 704 and 1,344, clean at 1,280 and
    1,300). Eight masked columns more avoid them and keep the width a multiple of 8 (one more, an odd
    width, made the pass 3-7% slower on the H100); it costs 8 tokens a row on one width in 128.
    """
    return width + 8 if width % 128 == 64 else width


def right_aligned(attention_mask: torch.Tensor, prompt_width: int) -> Optional[tuple]:
    """(left padding [N], gather index [N, W]) that rotates each row left past its padding, when that
    leaves every row as [real tokens, pads]; None when some row's real tokens are not one run, or its
    prompt is all padding (no position predicts its first completion token).

    Rotated so, causal attention needs no mask and positions are 0, 1, ... as `position_ids_from_mask`
    gives them in place: the same results. Masked attention (any mask with zeros) runs much slower:
    15-19% of a forward + backward on the H100 with every other row padded by 37 of ~1,280 tokens.
    """
    pad = prompt_width - attention_mask[:, :prompt_width].sum(dim=1)
    width = attention_mask.shape[1]
    cols = (torch.arange(width, device=attention_mask.device)[None] + pad[:, None]) % width
    rotated = attention_mask.gather(1, cols)
    if not bool((rotated[:, 1:] <= rotated[:, :-1]).all() & (pad < prompt_width).all()):
        return None
    return pad, cols


@dataclass(frozen=True)
class PassLayout:
    """How `token_logprobs` lays a batch out for the model's pass. The defaults are what training runs;
    benchmarks and tests pass another layout to measure or check the alternatives."""

    rotate: bool = True  # rows rotated past their left padding, no mask, where they allow it (`right_aligned`)
    width_multiple: Optional[int] = None  # rotated widths rounded up to this; None: WIDTH_MULTIPLE on a GPU, 1 elsewhere
    guard_widths: bool = True  # masked batches widened where cuDNN's backward fails (`safe_attention_width`)
    head_kernel: bool = True  # the frozen head's log-probs through the Triton kernel on a GPU (False: torch chunks)
    pack: bool = True  # inside `packing.attention`: each prompt once, no padding (`packing`); else rows

    def aligned(self, attention_mask: torch.Tensor, prompt_width: int) -> Optional[tuple]:
        """`right_aligned` when rows are rotated, else None (the masked path)."""
        return right_aligned(attention_mask, prompt_width) if self.rotate else None

    def masked_width(self, width: int) -> int:
        """The width a masked batch of `width` tokens runs at."""
        return safe_attention_width(width) if self.guard_widths else width


DEFAULT_LAYOUT = PassLayout()


def token_logprobs(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_width: int,
    temperature: float = 1.0,
    chunk_tokens: int = 2048,
    layout: PassLayout = DEFAULT_LAYOUT,
) -> torch.Tensor:
    """Log-probs of the completion tokens input_ids[:, prompt_width:]. Returns [N, C].

    input_ids, attention_mask: [N, P + C], prompts left-padded to P, completions right-padded.
    temperature: the sampling temperature, so the log-probs are those of the sampling distribution.
    layout: how the rows run through the model; by default packed where `packing.attention` is open (each
    prompt once, no padding; 0 where a row has no token), else rotated past their left padding (no mask, see
    `right_aligned`).
    """
    body, head = model_parts(model)
    if layout.pack and packing.active(model):
        packed = packing.pack(input_ids, attention_mask, prompt_width)
        if packed is not None:
            return _packed_logprobs(body, head, packed, input_ids.shape[0], input_ids.shape[1] - prompt_width,
                                    temperature, chunk_tokens, layout)
    hidden = _completion_hidden(body, input_ids, attention_mask, prompt_width, layout)  # [N, C, H] predicts P..P+C-1
    targets = input_ids[:, prompt_width:]  # [N, C]
    return _head_logprobs(head, hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1), temperature, chunk_tokens,
                          layout).view_as(targets)


def _packed_logprobs(body: Any, head: Any, packed: packing.PackedPass, rows: int, width: int, temperature: float,
                     chunk_tokens: int, layout: PassLayout) -> torch.Tensor:
    """Log-probs of a packed pass's completion tokens laid out as the rows' [N, C]; 0 where a row has no token."""
    hidden = body(input_ids=packed.input_ids, position_ids=packed.position_ids,
                  attention_mask={"full_attention": packed.attention}, use_cache=False).last_hidden_state[0]  # [T, H]
    logp = _head_logprobs(head, hidden[packed.predictors], packed.targets, temperature, chunk_tokens, layout)
    out = torch.zeros((rows, width), dtype=logp.dtype, device=logp.device)
    return out.index_put((packed.rows, packed.cols), logp)


def _head_logprobs(head: Any, flat_h: torch.Tensor, flat_t: torch.Tensor, temperature: float, chunk_tokens: int,
                   layout: PassLayout) -> torch.Tensor:
    """log p(target) of [M, H] hidden states through the output head, chunk by chunk. [M]"""
    if _frozen_plain_head(head) and flat_h.dtype == head.weight.dtype:
        return FrozenHeadLogProb.apply(flat_h, head.weight, flat_t, temperature, chunk_tokens, layout.head_kernel)
    pieces = []
    for start in range(0, flat_h.shape[0], chunk_tokens):
        h, t = flat_h[start : start + chunk_tokens], flat_t[start : start + chunk_tokens]
        if torch.is_grad_enabled() and h.requires_grad:
            pieces.append(checkpoint(_chunk_logprobs, head, h, t, temperature, use_reentrant=False))
        else:
            pieces.append(_chunk_logprobs(head, h, t, temperature))
    return torch.cat(pieces)


def _completion_hidden(body: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_width: int,
                       layout: PassLayout) -> torch.Tensor:
    """The body's hidden states at the positions that predict each completion token: [N, C, H]."""
    aligned = layout.aligned(attention_mask, prompt_width)
    if aligned is not None:
        pad, cols = aligned
        rotated = input_ids.gather(1, cols)
        wider = pass_width(rotated.shape[1], rotated.device, layout.width_multiple) - rotated.shape[1]
        last = body(input_ids=torch.nn.functional.pad(rotated, (0, wider)), use_cache=False).last_hidden_state
        completion = input_ids.shape[1] - prompt_width
        at = (prompt_width - 1 - pad)[:, None] + torch.arange(completion, device=input_ids.device)[None]  # [N, C]
        return last.gather(1, at[..., None].expand(-1, -1, last.shape[-1]))
    extra = layout.masked_width(input_ids.shape[1]) - input_ids.shape[1]
    if extra:  # masked columns on the left, before the prompt
        input_ids = torch.nn.functional.pad(input_ids, (extra, 0))
        attention_mask = torch.nn.functional.pad(attention_mask, (extra, 0))
        prompt_width += extra
    out = body(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids_from_mask(attention_mask),
               use_cache=False)
    return out.last_hidden_state[:, prompt_width - 1 : -1]


def plain_token_logprobs(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_width: int, temperature: float = 1.0) -> torch.Tensor:
    """The same log-probs through the full logits (the reference the chunked path is checked against)."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids_from_mask(attention_mask),
                   use_cache=False).logits
    logits = logits[:, prompt_width - 1 : -1].float() / (temperature if temperature > 0 else 1.0)
    return torch.log_softmax(logits, dim=-1).gather(-1, input_ids[:, prompt_width:, None]).squeeze(-1)
