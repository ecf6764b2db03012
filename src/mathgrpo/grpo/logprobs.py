"""Per-token log-probabilities of completions without full-vocabulary logits for the whole batch.

The decoder runs once to hidden states; the output head and log-softmax then run over chunks of
completion tokens. With gradients on, each chunk is checkpointed, so backward keeps the hidden
states and recomputes one chunk of logits at a time: memory grows with chunk x vocab, not with
tokens x vocab (151,936 floats per token for Qwen3).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from ..model import unwrap


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


def token_logprobs(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_width: int,
    temperature: float = 1.0,
    chunk_tokens: int = 2048,
) -> torch.Tensor:
    """Log-probs of the completion tokens input_ids[:, prompt_width:]. Returns [N, C].

    input_ids, attention_mask: [N, P + C], prompts left-padded to P, completions right-padded.
    temperature: the sampling temperature, so the log-probs are those of the sampling distribution.
    """
    body, head = model_parts(model)
    out = body(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids_from_mask(attention_mask))
    hidden = out.last_hidden_state[:, prompt_width - 1 : -1]  # [N, C, H] predicts tokens P..P+C-1
    targets = input_ids[:, prompt_width:]  # [N, C]
    flat_h = hidden.reshape(-1, hidden.shape[-1])
    flat_t = targets.reshape(-1)
    pieces = []
    for start in range(0, flat_h.shape[0], chunk_tokens):
        h, t = flat_h[start : start + chunk_tokens], flat_t[start : start + chunk_tokens]
        if torch.is_grad_enabled() and h.requires_grad:
            pieces.append(checkpoint(_chunk_logprobs, head, h, t, temperature, use_reentrant=False))
        else:
            pieces.append(_chunk_logprobs(head, h, t, temperature))
    return torch.cat(pieces).view_as(targets)


def plain_token_logprobs(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_width: int, temperature: float = 1.0) -> torch.Tensor:
    """The same log-probs through the full logits (the reference the chunked path is checked against)."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids_from_mask(attention_mask)).logits
    logits = logits[:, prompt_width - 1 : -1].float() / (temperature if temperature > 0 else 1.0)
    return torch.log_softmax(logits, dim=-1).gather(-1, input_ids[:, prompt_width:, None]).squeeze(-1)
