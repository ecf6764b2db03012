"""A log-prob pass with each prompt once and no padding: a micro-batch packed into one sequence.

GRPO samples G completions of every prompt. Laid out as [prompt, completion] rows, a pass runs each prompt
G times and each completion out to the widest one. Packed (`pack`), the micro-batch is one sequence: every
distinct prompt once, then the real tokens of each of its completions, each completion's positions starting
where its prompt ends. The layers' projections, norms and MLPs see only real tokens; attention alone needs
to know the layout. `attention` registers a transformers attention function (`packed_attention`) and points
the model at it while a packed pass may run, its forward and its backward (checkpointed layers run their
forward again there). That function runs attention as variable-length sequences, each prompt over itself and
each completion over its prompt and itself (never a sibling): on a GPU in half precision one call of the flash
kernel's variable-length form a layer, elsewhere a per-sequence SDPA loop. Other passes in that time (a mask
that is not a `PackedAttention`) go to the model's own function.

Each prompt's last hidden state predicts the first token of all its completions, so its gradient sums
theirs, as the gradients of G copies of it would sum in the row layout: the same log-probs and gradients.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import torch
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from ..model.loading import unwrap

ATTENTION_PREFIX = "mathgrpo_packed_"  # + the model's own attention implementation
# Architectures whose decoder takes its masks as a dict (how a packed layout reaches the attention) and applies
# RoPE from position ids; a config with sliding-window layers is refused in `supported` all the same.
MODEL_TYPES = frozenset({"qwen3", "qwen2"})


@dataclass
class PackedAttention:
    """The attention of a packed pass as variable-length sequences: each one's queries are a run of the packed
    tokens (a prompt, or one completion), its keys gathered from them (the prompt itself, or the completion's
    prompt and then the completion); causal, aligned at the end (a sequence's last query sees all its keys).
    Handed to the model in place of its attention mask."""

    cu_q: torch.Tensor  # [n + 1] int32 query offsets (the sequences cover the packed tokens in order)
    cu_k: torch.Tensor  # [n + 1] int32 key offsets into `keys`
    max_q: int
    max_k: int
    keys: torch.Tensor  # [Tk] the packed position of every sequence's keys, one sequence after another
    bounds: list  # [(q0, q1, k0, k1)] the same offsets on the host


@dataclass
class PackedPass:
    """A micro-batch as one packed sequence, and where its completion tokens' log-probs come from and go."""

    input_ids: torch.Tensor  # [1, T]
    position_ids: torch.Tensor  # [1, T]
    attention: PackedAttention
    predictors: torch.Tensor  # [M] the packed position whose hidden state predicts each real completion token
    targets: torch.Tensor  # [M] those tokens
    rows: torch.Tensor  # [M] their row in the micro-batch
    cols: torch.Tensor  # [M] and column among its completion tokens


def _real_parts(ids: list, mask: list, prompt_width: int) -> tuple:
    """(prompt tokens, completion tokens) of one row of a left-padded / right-padded batch."""
    prompt = [t for t, m in zip(ids[:prompt_width], mask[:prompt_width]) if m]
    completion = [t for t, m in zip(ids[prompt_width:], mask[prompt_width:]) if m]
    return prompt, completion


def pack(input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_width: int) -> Optional[PackedPass]:
    """The packed pass of a batch laid out as `token_logprobs` takes it ([N, P + C], prompts left-padded to P,
    completions right-padded); rows with the same prompt tokens share one copy of it. None when a row has no
    prompt token or no completion token is real (nothing to pack)."""
    ids, mask = input_ids.tolist(), attention_mask.tolist()
    tokens, positions, groups = [], [], {}  # groups: prompt tuple -> (start, length)
    blocks = []  # (row, start, length, prompt start, prompt length)
    for row, (r_ids, r_mask) in enumerate(zip(ids, mask)):
        prompt, completion = _real_parts(r_ids, r_mask, prompt_width)
        if not prompt:
            return None
        key = tuple(prompt)
        if key not in groups:
            groups[key] = (len(tokens), len(prompt))
            tokens += prompt
            positions += range(len(prompt))
        start, p = groups[key]
        if completion:
            blocks.append((row, len(tokens), len(completion), start, p))
            tokens += completion
            positions += range(p, p + len(completion))
    if not blocks:
        return None
    device = input_ids.device
    predictors, targets, rows, cols = [], [], [], []
    for row, start, c, g_start, p in blocks:
        predictors += [g_start + p - 1] + list(range(start, start + c - 1))
        targets += tokens[start : start + c]
        rows += [row] * c
        cols += range(c)
    as_tensor = lambda x: torch.tensor(x, dtype=torch.long, device=device)  # noqa: E731
    return PackedPass(as_tensor([tokens]), as_tensor([positions]), _attention(list(groups.values()), blocks, device),
                      as_tensor(predictors), as_tensor(targets), as_tensor(rows), as_tensor(cols))


def _attention(prompts: list, blocks: list, device: torch.device) -> PackedAttention:
    """The sequences of a packed pass in packed order: each prompt over itself, each completion over its prompt
    and itself. prompts: [(start, length)]; blocks: [(row, start, length, prompt start, prompt length)]."""
    spans = sorted([(start, p, start, p) for start, p in prompts] + [(start, c, g, p) for _, start, c, g, p in blocks])
    keys, bounds, k0 = [], [], 0
    for start, n, g_start, p in spans:  # a prompt is its own "prompt" with nothing after it
        own = [] if start == g_start else list(range(start, start + n))
        keys += list(range(g_start, g_start + p)) + own
        bounds.append((start, start + n, k0, len(keys)))
        k0 = len(keys)
    cu_q = torch.tensor([0] + [q1 for _, q1, _, _ in bounds], dtype=torch.int32, device=device)
    cu_k = torch.tensor([0] + [k1 for *_, k1 in bounds], dtype=torch.int32, device=device)
    return PackedAttention(cu_q, cu_k, max(q1 - q0 for q0, q1, _, _ in bounds), max(k1 - k0 for _, _, k0, k1 in bounds),
                           torch.tensor(keys, dtype=torch.long, device=device), bounds)


def _flash_ready(query: torch.Tensor) -> bool:
    """Whether the flash kernel's variable-length attention serves `query` (CUDA, half precision)."""
    return query.is_cuda and query.dtype in (torch.float16, torch.bfloat16) and hasattr(torch.ops.aten, "_flash_attention_forward")


@torch.compiler.disable  # compiled layers (model.compile_layers) run this loop over sequences as it is
def _reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: PackedAttention, scale: Optional[float]) -> torch.Tensor:
    """The same attention one sequence at a time through SDPA with an end-aligned causal mask (CPU, float32)."""
    rep = q.shape[1] // k.shape[1]
    outs = []
    for q0, q1, k0, k1 in layout.bounds:
        nq, nk = q1 - q0, k1 - k0
        causal = torch.ones((nq, nk), dtype=torch.bool, device=q.device).tril(nk - nq)
        out = torch.nn.functional.scaled_dot_product_attention(
            q[q0:q1].transpose(0, 1), k[k0:k1].transpose(0, 1).repeat_interleave(rep, dim=0),
            v[k0:k1].transpose(0, 1).repeat_interleave(rep, dim=0), attn_mask=causal, scale=scale)
        outs.append(out.transpose(0, 1))
    return torch.cat(outs)


def packed_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, layout: PackedAttention,
                     scaling: Optional[float] = None, dropout: float = 0.0, **kwargs: Any) -> tuple:
    """Attention over a packed sequence, as transformers calls an attention function: query [1, h, T, d], key
    and value [1, kv heads, T, d]; returns ([1, T, h, d], None). On a GPU in half precision the flash kernel's
    variable-length form (grouped-query heads as they are); elsewhere `_reference`."""
    q = query[0].transpose(0, 1)  # [T, h, d]
    k = key[0].transpose(0, 1)[layout.keys]  # [Tk, kv heads, d]
    v = value[0].transpose(0, 1)[layout.keys]
    if _flash_ready(q):
        out = torch.ops.aten._flash_attention_forward(q.contiguous(), k, v, layout.cu_q, layout.cu_k, layout.max_q, layout.max_k,
                                                      dropout, True, False, scale=scaling)[0]
    else:
        out = _reference(q, k, v, layout, scaling)
    return out[None], None


def supported(model: Any) -> Optional[str]:
    """None when `model`'s passes can be packed; else why not (architecture, sliding window, or an attention
    forward that is not transformers' own, as Unsloth's)."""
    config = getattr(unwrap(model), "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in MODEL_TYPES:
        return f"model type {model_type!r} is not one packed passes know ({', '.join(sorted(MODEL_TYPES))})"
    if any(t != "full_attention" for t in getattr(config, "layer_types", None) or ()) or getattr(config, "use_sliding_window", False):
        return "the model has sliding-window layers"
    for sub in unwrap(model).modules():
        if type(sub).__name__.endswith("Attention"):
            forward = getattr(type(sub), "forward", None)
            if not getattr(forward, "__module__", "").startswith("transformers."):
                return f"its attention forward comes from {getattr(forward, '__module__', '?')}, not transformers"
            break
    return None


def _own_function(module: Any, own: str) -> Callable:
    """The attention function `module` runs under the implementation `own` (eager: its modeling file's)."""
    if own in ALL_ATTENTION_FUNCTIONS:
        return ALL_ATTENTION_FUNCTIONS[own]
    return sys.modules[type(module).__module__].eager_attention_forward


def _register(own: str) -> str:
    """Register (once) the function that runs packed passes and hands every other call to `own`; its name."""
    name = ATTENTION_PREFIX + own

    def attend(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: Any, **kwargs: Any):
        if isinstance(attention_mask, PackedAttention):
            return packed_attention(module, query, key, value, attention_mask, **kwargs)
        return _own_function(module, own)(module, query, key, value, attention_mask, **kwargs)

    if name not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(name, attend)
        if own in ALL_MASK_ATTENTION_FUNCTIONS:  # masks made meanwhile: as the model's own
            AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[own])
    return name


def active(model: Any) -> bool:
    """True inside `attention(model)`: the body's passes may be packed."""
    config = getattr(unwrap(model), "config", None)
    return str(getattr(config, "_attn_implementation", "")).startswith(ATTENTION_PREFIX)


@contextmanager
def attention(model: Any) -> Iterator[bool]:
    """Within: `model` runs packed passes' attention (forward and backward); yields whether it can (see
    `supported`; nothing changes where it cannot). Re-entrant."""
    if supported(model) is not None or active(model):
        yield active(model)
        return
    config = unwrap(model).config
    own = config._attn_implementation or "sdpa"
    config._attn_implementation = _register(own)
    try:
        yield True
    finally:
        config._attn_implementation = own
