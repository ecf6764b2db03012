"""A log-prob pass with each prompt once and no padding: a micro-batch packed into one sequence.

GRPO samples G completions of every prompt. Laid out as [prompt, completion] rows, a pass runs each prompt
G times and each completion out to the widest one. Packed (`pack`), the micro-batch is one sequence: every
distinct prompt once, then the real tokens of each of its completions, each completion's positions starting
where its prompt ends. The layers' projections, norms and MLPs see only real tokens; attention alone needs
to know the layout. `attention` registers a transformers attention function (`packed_attention`) and points
the model at it while a packed pass may run, its forward and its backward (checkpointed layers run their
forward again there). That function gathers each prompt, and each completion with its prompt, into padded
tiles and runs SDPA with a mask on them: a completion attends to its prompt and to itself, never to a
sibling. Other passes in that time (a mask that is not a `PackedAttention`) go to the model's own function.

Each prompt's last hidden state predicts the first token of all its completions, so its gradient sums
theirs, as the gradients of G copies of it would sum in the row layout: the same log-probs and gradients.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
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
class Tile:
    """Segments of one kind padded to one shape: for each, the packed positions of its queries and its keys
    and which key each query may see. Padding points at position 0 and is masked (as a key) or dropped (as a
    query); every query row keeps at least one key, so no row of the softmax is empty."""

    queries: torch.Tensor  # [S, Q] packed positions
    keys: torch.Tensor  # [S, K] packed positions
    allowed: torch.Tensor  # [S, Q, K] bool
    _bias: dict = field(default_factory=dict, repr=False)

    def bias(self, dtype: torch.dtype, rep: int) -> torch.Tensor:
        """The additive mask for queries folded as [S, kv heads, rep x Q] (see `packed_attention`). [S, 1, rep*Q, K]"""
        if (dtype, rep) not in self._bias:
            S, Q, K = self.allowed.shape
            zero = torch.zeros((), dtype=dtype, device=self.allowed.device)
            bias = torch.where(self.allowed, zero, torch.finfo(dtype).min)
            self._bias[(dtype, rep)] = bias[:, None, None].expand(S, 1, rep, Q, K).reshape(S, 1, rep * Q, K)
        return self._bias[(dtype, rep)]


@dataclass
class PackedAttention:
    """What `packed_attention` needs of a packed pass; handed to the model in place of its attention mask."""

    tiles: tuple  # of Tile: the prompts, then the completions (each with its prompt's keys)
    inverse: torch.Tensor  # [T] where each packed token's output lies in the tiles' outputs, flattened in order


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


def _rounded(width: int, multiple: int) -> int:
    return width + (-width % multiple)


def _real_parts(ids: list, mask: list, prompt_width: int) -> tuple:
    """(prompt tokens, completion tokens) of one row of a left-padded / right-padded batch."""
    prompt = [t for t, m in zip(ids[:prompt_width], mask[:prompt_width]) if m]
    completion = [t for t, m in zip(ids[prompt_width:], mask[prompt_width:]) if m]
    return prompt, completion


def pack(input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_width: int, multiple: int = 1) -> Optional[PackedPass]:
    """The packed pass of a batch laid out as `token_logprobs` takes it ([N, P + C], prompts left-padded to P,
    completions right-padded); rows with the same prompt tokens share one copy of it. Tiles are padded to a
    multiple of `multiple` positions (on a GPU, so SDPA sees few distinct shapes). None when a row has no
    prompt token or no completion token is real (nothing to pack)."""
    ids, mask = input_ids.tolist(), attention_mask.tolist()
    tokens, positions, groups = [], [], {}  # groups: prompt tuple -> (start, length)
    blocks = []  # (row, start, length, group start, group length)
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
    attention = _attention(list(groups.values()), blocks, len(tokens), multiple, device)
    predictors, targets, rows, cols = [], [], [], []
    for row, start, c, g_start, p in blocks:
        predictors += [g_start + p - 1] + list(range(start, start + c - 1))
        targets += tokens[start : start + c]
        rows += [row] * c
        cols += range(c)
    as_tensor = lambda x: torch.tensor(x, dtype=torch.long, device=device)  # noqa: E731
    return PackedPass(as_tensor([tokens]), as_tensor([positions]), attention, as_tensor(predictors),
                      as_tensor(targets), as_tensor(rows), as_tensor(cols))


def _attention(prompts: list, blocks: list, total: int, multiple: int, device: torch.device) -> PackedAttention:
    """The two tiles of a packed pass: each prompt causal over itself; each completion over its prompt and,
    causally, itself. prompts: [(start, length)]; blocks: [(row, start, length, prompt start, prompt length)]."""
    Pw = _rounded(max(p for _, p in prompts), multiple)
    Cw = _rounded(max(c for _, _, c, _, _ in blocks), multiple)
    p_pos = torch.zeros((len(prompts), Pw), dtype=torch.long)
    p_len = torch.tensor([p for _, p in prompts])
    for i, (start, p) in enumerate(prompts):
        p_pos[i, :p] = torch.arange(start, start + p)
    c_pos = torch.zeros((len(blocks), Cw), dtype=torch.long)
    c_prompt = torch.zeros((len(blocks), Pw), dtype=torch.long)
    c_plen = torch.tensor([p for *_, p in blocks])
    which = {start: i for i, (start, _) in enumerate(prompts)}
    for i, (_, start, c, g_start, _) in enumerate(blocks):
        c_pos[i, :c] = torch.arange(start, start + c)
        c_prompt[i] = p_pos[which[g_start]]
    col_p, col_c = torch.arange(Pw), torch.arange(Cw)
    causal_p = col_p[None, :] <= col_p[:, None]  # [Q, K]
    prompt_tile = causal_p[None] & (col_p[None, None, :] < p_len[:, None, None])
    own = (col_c[None, :] <= col_c[:, None])[None].expand(len(blocks), Cw, Cw)
    seen = (col_p[None, :] < c_plen[:, None])[:, None, :].expand(len(blocks), Cw, Pw)
    completion_tile = torch.cat([seen, own], dim=2)  # keys: the prompt's, then its own
    inverse = torch.empty(total, dtype=torch.long)
    for i, (start, p) in enumerate(prompts):
        inverse[start : start + p] = torch.arange(i * Pw, i * Pw + p)
    base = len(prompts) * Pw
    for i, (_, start, c, _, _) in enumerate(blocks):
        inverse[start : start + c] = torch.arange(base + i * Cw, base + i * Cw + c)
    tiles = (Tile(p_pos.to(device), p_pos.to(device), prompt_tile.to(device)),
             Tile(c_pos.to(device), torch.cat([c_prompt, c_pos], dim=1).to(device), completion_tile.to(device)))
    return PackedAttention(tiles, inverse.to(device))


def packed_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, layout: PackedAttention,
                     scaling: Optional[float] = None, dropout: float = 0.0, **kwargs: Any) -> tuple:
    """Attention over a packed sequence, as transformers calls an attention function: query [1, h, T, d], key
    and value [1, kv heads, T, d]; returns ([1, T, h, d], None).

    Grouped-query heads are folded into the query length ([S, kv heads, rep x Q, d]) so keys and values are
    never repeated; the mask is repeated to match instead.
    """
    h, kvh, d = query.shape[1], key.shape[1], query.shape[3]
    rep = h // kvh
    outs = []
    for tile in layout.tiles:
        S, Q = tile.queries.shape
        q = query[0][:, tile.queries].view(kvh, rep, S, Q, d).permute(2, 0, 1, 3, 4).reshape(S, kvh, rep * Q, d)
        k = key[0][:, tile.keys].transpose(0, 1)  # [S, kvh, K, d]
        v = value[0][:, tile.keys].transpose(0, 1)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=tile.bias(q.dtype, rep),
                                                               dropout_p=dropout, scale=scaling)
        outs.append(out.view(S, kvh, rep, Q, d).permute(0, 3, 1, 2, 4).reshape(S * Q, h, d))
    return torch.cat(outs)[layout.inverse][None], None


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
