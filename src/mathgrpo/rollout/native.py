"""The `native` engine: static KV cache, one prefill per prompt, a captured decode step, sampling on device.

How one request runs (per chunk of prompts):
1. LoRA is merged into the base weights (exact restore afterwards), or into the engine's own packed copies
   of the projections (q|k|v and gate|up as one matrix each; in FP8 with `precision="fp8"`), or applied as
   low-rank terms.
2. The decode step's CUDA graphs for this batch bucket exist or are captured (GPU only).
3. The distinct prompts are prefilled once, left-padded to a common width P; each prompt's keys and
   values are copied into the cache rows of its n samples, and its last logits give each sample's
   first token.
4. The decode step replays: embed the last token, per layer write k/v at cache slot P+t and attend
   over [pad_b, P+t], sample, record the token and its log-prob, mark rows that produced a stop
   token as done. The host only looks at the `done` mask every `check_every` steps.
5. Token ids, log-probs, lengths and the done mask come back to the host once.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Optional, Union

import torch

from ..config import CHOICES
from ..model.card import card_of
from ..model.loading import unwrap
from ..progress import notice
from . import decode_attention, fp8
from .base import Generation, RolloutEngine, SamplingParams
from .qwen3_forward import DecodeFns, additive_mask, decode_layers, grouped_attention, prefill
from .packed import Packer, fp8_ways, packed_bytes
from .sampling import filters_active, race_pick, sample
from .weights import LoraMerge, ModelWeights, collect, merged_weight_bytes

PRECISIONS = CHOICES["rollout.precision"]  # auto and bf16: the model's own dtype; fp8, fp8-kv

SUPPORTED_TYPES = ("qwen3", "qwen2", "llama")
LENGTH_BUCKET = 256  # SDPA attention reads the cache in slices that grow by this many positions
RECOMPILE_LIMIT = 64  # dynamo compiles the step's parts per batch bucket and the sampler per filter setting; its default is 8


def _rope_type(cfg: Any) -> str:
    params = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    return params.get("rope_type", params.get("type", "default")) if isinstance(params, dict) else "default"


def supports(model: Any) -> Optional[str]:
    """None when the native engine can run `model`, else the reason it cannot (the caller uses hf)."""
    lm = unwrap(model)
    cfg = getattr(lm, "config", None)
    kind = getattr(cfg, "model_type", None)
    if kind not in SUPPORTED_TYPES:
        return f"model_type {kind!r} is not one of {', '.join(SUPPORTED_TYPES)}"
    if getattr(cfg, "use_sliding_window", False) or any(t != "full_attention" for t in (getattr(cfg, "layer_types", None) or [])):
        return "sliding-window attention layers"
    if _rope_type(cfg) in ("dynamic", "longrope"):
        return f"rope type {_rope_type(cfg)!r} changes with sequence length"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"activation {cfg.hidden_act!r} (only silu)"
    inner = getattr(lm, "model", None)
    if inner is None or not hasattr(inner, "layers") or not hasattr(inner, "rotary_emb"):
        return "unexpected module layout (no model.layers / model.rotary_emb)"
    if any(not p.dtype.is_floating_point for p in inner.layers.parameters()):
        return "quantized weights (model.load_in_4bit): the engine reads and merges plain floating-point weights"
    if hasattr(inner.embed_tokens, "lora_A") or hasattr(inner.embed_tokens, "lora_embedding_A"):
        return "LoRA on the embedding layer"
    for module in lm.modules():
        dora = getattr(module, "use_dora", None)
        if isinstance(dora, dict) and any(dora.values()):
            return "DoRA adapters"
    return None


def resolve_attention(attention: str, device: torch.device) -> str:
    """The decode attention `attention` means on `device`: auto is the Triton kernel on a GPU that has it, SDPA on
    another GPU, plain math on the CPU."""
    cuda = device.type == "cuda"
    if attention == "auto":
        attention = "triton" if cuda and decode_attention.available() else ("sdpa" if cuda else "math")
    if attention not in ("triton", "sdpa", "math"):
        raise ValueError(f"attention={attention!r}; use auto, triton, sdpa or math")
    return attention


def snapshot_bytes(model: Any, lora: str, precision: str = "auto", pack: Optional[bool] = None) -> int:
    """Device bytes the engine's copies of the LoRA-merged weights take when the memory plan grants them
    (snapshots_on_device): the packed projections (`pack` None or True), or exact snapshots of the adapted base
    weights (`pack` False). 0 without LoRA merging, and with FP8 rollouts, whose copies are `weight_copy_bytes`."""
    merged = merged_weight_bytes(model) if lora == "merge" and not precision.startswith("fp8") else 0
    if not merged:
        return 0
    return merged if pack is False else packed_bytes(model, fp8_weights=False)


def weight_copy_bytes(model: Any, precision: str) -> int:
    """Device bytes of the weight copies every rollout needs whatever the memory plan: the FP8 projections."""
    return packed_bytes(model, fp8_weights=True) if precision.startswith("fp8") else 0


def compiled(fn: Any) -> Any:
    """`fn` under torch.compile, with dynamo's recompile limit at least RECOMPILE_LIMIT for its own calls only:
    the rest of the process keeps its limit. The limit is read when a call (re)compiles, so it is set around
    every call (a few microseconds; captured graph replays run no Python)."""
    inner = torch.compile(fn, dynamic=False)

    def call(*args: Any, **kwargs: Any) -> Any:
        from torch import _dynamo

        with _dynamo.config.patch(cache_size_limit=max(_dynamo.config.cache_size_limit, RECOMPILE_LIMIT)):
            return inner(*args, **kwargs)

    return call


def _up128(n: int) -> int:
    """n rounded up to a multiple of 128."""
    return -(-n // 128) * 128


class _Slab:
    """The KV cache and decode state for one (batch bucket, prompt width, completion length); graphs captured over them.

    With the Triton kernel the prompt's keys and values are kept once per prompt (`pk`/`pv`, one row
    per group of samples) and `k`/`v` hold only the completion slots, so a group of G samples takes
    one prompt's cache instead of G (for 8 x 8 at 256 + 256 tokens: 2.5 instead of 4.5 GiB on
    Qwen3-4B). The other attention paths read one contiguous row per sample (`pk` is None).
    """

    def __init__(self, w: ModelWeights, batch: int, groups: int, width: int, new: int, stops: list,
                 triton_attention: bool, kv_fp8: bool = False) -> None:
        device, dtype = w.embed.device, w.embed.dtype
        cache_dtype = fp8.E4M3 if kv_fp8 else dtype  # kv_fp8 (Triton layout only): one float32 scale a position
        kv = (len(w.layers), batch, w.n_kv_heads)
        # lengths in steps of 128, so that nearby requests reuse the cache
        prompt_len, new_len = (_up128(width), _up128(new)) if triton_attention else (width, _up128(width + new) - width)
        self.batch, self.groups, self.prompt_len, self.new_len = batch, groups, prompt_len, new_len
        self.length = prompt_len + new_len  # positions a row can attend
        # zeros: padded rows read finite values
        self.pk = self.pv = None
        if triton_attention:
            prompt_shape = (len(w.layers), groups, w.n_kv_heads, prompt_len, w.head_dim)
            self.pk = torch.zeros(prompt_shape, device=device, dtype=cache_dtype)
            self.pv = torch.zeros(prompt_shape, device=device, dtype=cache_dtype)
        row_len = new_len if triton_attention else self.length
        self.k = torch.zeros(kv + (row_len, w.head_dim), device=device, dtype=cache_dtype)
        self.v = torch.zeros(kv + (row_len, w.head_dim), device=device, dtype=cache_dtype)
        self.ks = self.vs = self.pks = self.pvs = None  # [layers, rows, kv, slots] scales of float8 caches
        if kv_fp8:
            self.ks, self.vs = (torch.zeros(kv + (row_len,), device=device) for _ in range(2))
            self.pks, self.pvs = (torch.zeros(prompt_shape[:-1], device=device) for _ in range(2))
        self.tok = torch.zeros(batch, dtype=torch.long, device=device)  # [B] token fed to the next step
        self.pad = torch.zeros(batch, dtype=torch.long, device=device)  # [B] leading pad slots per row
        self.slot = torch.zeros(1, dtype=torch.long, device=device)  # position the next step writes
        self.t = torch.zeros(1, dtype=torch.long, device=device)  # output column the next token goes to
        self.done = torch.zeros(batch, dtype=torch.bool, device=device)  # [B] produced a stop token
        self.nlen = torch.zeros(batch, dtype=torch.long, device=device)  # [B] tokens kept per row
        self.out_tok = torch.zeros(batch, self.length, dtype=torch.long, device=device)  # [B, S]
        self.out_lp = torch.zeros(batch, self.length, dtype=torch.float32, device=device)  # [B, S]
        self.out_plp = torch.zeros(batch, self.length, dtype=torch.float32, device=device)  # [B, S] unfiltered policy
        self.stops = torch.tensor(stops or [-1], dtype=torch.long, device=device)
        self.src = torch.zeros(batch, dtype=torch.long, device=device)  # [B] prompt-cache row of each row's prompt
        self.width = torch.zeros(1, dtype=torch.long, device=device)  # prompt positions [0, width)
        self.splitk = None
        if triton_attention:
            groups_per_kv = w.n_heads // w.n_kv_heads
            self.splitk = decode_attention.SplitKDecode(batch, w.n_kv_heads, groups_per_kv, w.head_dim, self.length, device, dtype)
        self.graphs: dict = {}

    def scales(self, layer: int) -> Optional[tuple]:
        """The float8 caches' scales of one layer as the attention kernel takes them (None: caches in the model's dtype)."""
        if self.ks is None:
            return None
        return self.ks[layer], self.vs[layer], self.pks[layer], self.pvs[layer]

    def rewind(self) -> None:
        """State for a step at position 0 with no prompt (warm-up and capture scribble from there; a
        previous call's width or pads would put the write before the first slot)."""
        for t in (self.slot, self.t, self.width, self.pad):
            t.zero_()

    def fits(self, batch: int, groups: int, width: int, new: int) -> bool:
        """Whether a chunk of `batch` rows in `groups` groups, prompts of `width` and `new` tokens fits this slab."""
        if self.pk is None:
            return self.batch == batch and self.length >= width + new
        return self.batch == batch and self.groups >= groups and self.prompt_len >= width and self.new_len >= new

    def nbytes(self) -> int:
        """Bytes of the cache, the state and the attention scratch."""
        tensors = [t for t in vars(self).values() if isinstance(t, torch.Tensor)]
        if self.splitk is not None:
            tensors += [t for t in vars(self.splitk).values() if isinstance(t, torch.Tensor)]
        return sum(t.numel() * t.element_size() for t in tensors)


class NativeEngine(RolloutEngine):
    """Rollouts through our own decode loop over the model's weights (Qwen3 / Qwen2 / Llama)."""

    name = "native"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        stop_ids: list,
        batch_size: int = 0,
        lora: str = "merge",
        snapshots_on_device: bool = False,
        attention: str = "auto",
        use_graphs: Optional[bool] = None,
        use_compile: Optional[bool] = None,
        seed: Optional[int] = None,
        check_every: int = 16,
        precision: str = "auto",
        pack: Optional[bool] = None,
        fp8_gemm: Union[None, str, dict] = None,
        kv_cache: Optional[str] = None,
        skinny_gemm: bool = True,
    ) -> None:
        """precision: auto / bf16 (the model's dtype), fp8 (packed FP8 copies of the projections) or fp8-kv (that
        and the KV cache in FP8). fp8_gemm: how FP8 projections multiply, one of fp8.GEMMS for all or {packed name:
        way} (fp8.default_way of the card by default; emulate runs anywhere, for tests). pack: read packed copies in
        the model's dtype (True), the model's tensors in place (False), or (None) packed copies exactly when the
        caller grants device memory for base-weight copies (`snapshots_on_device`): then they take its place.
        kv_cache: fp8 keeps the KV cache in FP8 whatever the weights (Triton attention only). skinny_gemm: packed
        copies in the model's dtype multiply through the skinny-GEMM kernel where it serves them (rollout.skinny_gemm)."""
        super().__init__(model, tokenizer, stop_ids, batch_size)
        reason = supports(model)
        if reason:
            raise ValueError(f"native engine cannot run this model: {reason}")
        if lora not in ("merge", "lowrank"):
            raise ValueError(f"lora={lora!r}; use merge or lowrank")
        self.lora = lora
        self.device = next(model.parameters()).device
        self.card = card_of(self.device)
        way = fp8.default_way(self.card)
        ways = fp8_ways(fp8_gemm or way, way)
        self.precision = self._check_precision(precision, set(ways.values()) == {"emulate"}, lora)
        self.pack = pack
        self.fp8_weights = self.precision in ("fp8", "fp8-kv")
        self._packer = Packer(ways if self.fp8_weights else None, skinny_gemm)
        cuda = self.device.type == "cuda"
        self.attention = attention = resolve_attention(attention, self.device)
        self.shares_prompt_cache = attention == "triton"  # the other paths keep one contiguous row per sample
        self.kv_fp8 = kv_cache == "fp8" or self.precision == "fp8-kv"
        if self.kv_fp8 and attention != "triton":
            raise fp8.PrecisionRefused(f"an FP8 KV cache is read by the Triton attention kernel only (attention={attention} here)")
        unsupported = fp8.unsupported_reason(self.card) if self.kv_fp8 and cuda else None  # CPU: the Triton interpreter (tests)
        if unsupported:
            raise fp8.PrecisionRefused(f"an FP8 KV cache: {unsupported}")
        self.use_graphs = cuda if use_graphs is None else use_graphs
        self.use_compile = cuda if use_compile is None else use_compile
        self.check_every = check_every
        # The engine's own stream of random numbers: seeding a call never touches torch's global generators.
        self.generator = torch.Generator(device=self.device)
        if seed is not None:
            self.generator.manual_seed(seed)
        self.pad_id = tokenizer.pad_token_id if tokenizer is not None and tokenizer.pad_token_id is not None else 0
        self._merger = LoraMerge(on_device=snapshots_on_device and cuda)  # memory for speed: see weights.py
        self._cache: Optional[_Slab] = None  # the one KV cache kept between calls
        self._fingerprint = None
        self._weights: Optional[ModelWeights] = None  # what the captured graphs read; kept alive with them
        self._pool = torch.cuda.graph_pool_handle() if cuda and self.use_graphs else None
        # the step's parts around attention, and the sampler's; the Triton kernel normalises and rotates q and k itself
        self._fns, self._pick = DecodeFns(rotate=attention != "triton"), race_pick
        if self.use_compile:
            parts = (DecodeFns.first, DecodeFns.bridge, DecodeFns.last)
            self._fns = DecodeFns(*(compiled(f) for f in parts), rotate=self._fns.rotate)
            self._pick = compiled(race_pick)
        self.last_stats: dict = {}

    def _check_precision(self, precision: str, emulated: bool, lora: str) -> str:
        """`precision` when this engine can run it here, else fp8.PrecisionRefused with the reason in one line."""
        if precision not in PRECISIONS:
            raise ValueError(f"rollout.precision={precision!r}; use one of {', '.join(PRECISIONS)}")
        problem = fp8.precision_problem(precision, "native", lora, self.card, emulated)
        if problem:
            raise fp8.PrecisionRefused(f"rollout.precision={precision}: {problem}")
        return precision

    # ---- public API -------------------------------------------------------------------------

    def generate(self, prompts: list, n: int, params: SamplingParams, seeds: Optional[list] = None) -> list:
        """`n` completions per prompt string, grouped by prompt.

        seeds: the first one seeds the engine's own generator for this call (repeatable runs; torch's global
        generators are left alone; None continues the engine's stream); unlike the hf engine the draws
        depend on the batch, so data-parallel runs match a single process only in distribution.
        """
        if seeds:
            self.generator.manual_seed(int(seeds[0]))
        ids = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        return self.generate_ids(ids, n, params)

    @torch.no_grad()
    def generate_ids(self, prompt_ids: list, n: int, params: SamplingParams) -> list:
        """`n` completions per prompt given as token-id lists, grouped by prompt."""
        if params.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        per_chunk = len(prompt_ids) if not self.batch_size else max(1, self.batch_size // n)
        # Even chunks: every chunk lands in the same batch bucket, so one cache serves them all.
        per_chunk = -(-len(prompt_ids) // -(-len(prompt_ids) // per_chunk)) if prompt_ids else 1
        self.last_stats = {"prefill_rows": 0, "capture_s": 0.0, "prefill_s": 0.0, "decode_s": 0.0, "decode_steps": 0}
        out = []
        with self._policy() as w:
            for start in range(0, len(prompt_ids), per_chunk):
                chunk = prompt_ids[start : start + per_chunk]
                out.extend(self._run_chunk(w, chunk, start, n, params))
        return out

    def held_bytes(self) -> int:
        """Bytes kept on the device for the next call: the KV cache (graphs are captured over it), the
        base-weight snapshots of the LoRA merge when they live there, and the packed copies."""
        cache = self._cache.nbytes() if self._cache is not None else 0
        return cache + self._merger.device_bytes() + self._packer.nbytes()

    @property
    def snapshots_on_device(self) -> bool:
        """Whether the engine keeps a device copy of the weights besides the model's (memory for speed): the LoRA
        merge's exact snapshots of the base weights, or in their place (`pack` None) the packed merged projections."""
        return self._merger.on_device

    @property
    def packs(self) -> bool:
        """Whether rollouts read the engine's packed copies of the projections rather than the model's tensors."""
        if self.fp8_weights:
            return True
        if self.pack is not None:
            return self.pack
        return self.lora == "merge" and self._merger.on_device

    def snapshot_bytes(self) -> int:
        """Device bytes the copies snapshots_on_device keeps take, for the model's active adapters (module-level
        `snapshot_bytes`)."""
        return snapshot_bytes(self.model, self.lora, self.precision, self.pack)

    def weight_copy_bytes(self) -> int:
        """Device bytes of the weight copies every rollout needs whatever the memory plan: the FP8 projections."""
        return weight_copy_bytes(self.model, self.precision)

    def release(self) -> None:
        """Free what held_bytes counts: the cache with its graphs, device snapshots and packed copies; the next
        call allocates and captures again (~0.1 s once compiled) and retakes the copies (a device pass)."""
        if self._merger.on_device:
            self._merger.drop()
        self._packer.drop()
        self._weights = None  # it holds the packed copies too: kept, they sat beside the next step's new ones
        self._release_cache()

    def _release_cache(self) -> None:
        """Drop the cache and its graphs."""
        self._cache = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            if self._pool is not None:
                # The graph pool died with its last graph; capturing into its old handle trips an
                # allocator assertion (seen on the H100 at the second step after a release).
                self._pool = torch.cuda.graph_pool_handle()

    # ---- weights ---------------------------------------------------------------------------

    @contextmanager
    def _policy(self):
        """The weights to decode with, LoRA included; graphs are dropped when their storage moved."""
        if self.packs:
            yield self._checked(self._packer.pack(self.model, collect(self.model, lowrank=False, previous=self._weights)))
        elif self.lora == "merge":
            with self._merger.merged(self.model):
                yield self._checked(collect(self.model, lowrank=False, previous=self._weights))
        else:
            yield self._checked(collect(self.model, lowrank=True, previous=self._weights))

    def _checked(self, w: ModelWeights) -> ModelWeights:
        """`w`, with the cache and its graphs dropped when any tensor they read has moved. The weights are kept
        referenced while graphs exist: a graph reads by address, so nothing it reads may be freed under it."""
        fingerprint = (w.fingerprint(), w.embed.dtype, w.embed.device)
        if fingerprint != self._fingerprint:
            self._cache = None
            self._fingerprint = fingerprint
        self._weights = w
        return w

    # ---- buffers and graphs ------------------------------------------------------------------

    def _bucket(self, rows: int) -> int:
        """Batch rows rounded up so that a few captured graphs serve every request size."""
        if not self.use_graphs:
            return rows
        return 1 << (rows - 1).bit_length() if rows <= 16 else -(-rows // 16) * 16

    def _slab(self, w: ModelWeights, rows: int, n: int, width: int, new: int) -> _Slab:
        """A cache for `rows` rows (groups of n) with prompts up to `width` and `new` tokens, reused across calls."""
        batch = self._bucket(rows)
        groups = -(-batch // n)
        if self._cache is not None and self._cache.fits(batch, groups, width, new):
            return self._cache
        # One cache at a time: a cache held for another batch size would sit beside this one in
        # memory the budget did not plan for (seen: a 16-row cache next to a 48-row one at 24 GiB).
        self._release_cache()
        self._cache = _Slab(w, batch, groups, width, new, self.stop_ids, self.attention == "triton", self.kv_fp8)
        return self._cache

    def _attn_len(self, slab: _Slab, slot: int) -> int:
        """How many cache slots a step at `slot` reads (all filled ones; bucketed when graphs need it)."""
        if self.attention == "triton":
            return slab.length
        if not self.use_graphs:
            return slot + 1
        return min(slab.length, -(-(slot + 1) // LENGTH_BUCKET) * LENGTH_BUCKET)

    def _step(self, w: ModelWeights, slab: _Slab, params: SamplingParams, attn_len: int) -> None:
        """One decode step on the slab's state: forward, sample, record. No host sync."""
        positions = slab.slot - slab.pad
        mask = None
        if slab.splitk is None:
            ar = torch.arange(attn_len, device=slab.pad.device)
            valid = (ar[None] >= slab.pad[:, None]) & (ar[None] <= slab.slot)
            mask = additive_mask(valid[:, None, None], w.embed.dtype)  # [B, 1, 1, L]

        def attend(i, q, k, v, cos, sin):
            kc, vc = slab.k[i], slab.v[i]
            if slab.splitk is not None:  # the kernel normalises and rotates q and k, and writes the new k, v itself
                rotary = (cos, sin, w.layers[i].q_norm, w.layers[i].k_norm, w.eps)
                return slab.splitk(q, kc, vc, slab.pad, slab.slot, (slab.pk[i], slab.pv[i], slab.src, slab.width), (k, v),
                                   slab.scales(i), rotary)
            kc.index_copy_(2, slab.slot, k)
            vc.index_copy_(2, slab.slot, v)
            return grouped_attention(q, kc[:, :, :attn_len], vc[:, :, :attn_len], mask, self.attention == "sdpa")

        logits = decode_layers(w, slab.tok, positions, attend, self._fns)
        self._record(slab, *sample(logits, params, self.generator, self._pick))

    def _record(self, slab: _Slab, tok: torch.Tensor, logprob: torch.Tensor, policy_logprob: torch.Tensor) -> None:
        """Store a sampled token per row (pad once done), count it, mark stops, advance slot and column."""
        tok = tok.masked_fill(slab.done, self.pad_id)
        slab.out_tok.index_copy_(1, slab.t, tok[:, None])
        slab.out_lp.index_copy_(1, slab.t, logprob[:, None])
        if policy_logprob is not logprob:  # the same tensor without filters: out_lp holds it already
            slab.out_plp.index_copy_(1, slab.t, policy_logprob[:, None])
        slab.nlen.add_((~slab.done).long())
        slab.done.logical_or_((tok[:, None] == slab.stops[None, :]).any(-1))
        slab.tok.copy_(tok)
        slab.t.add_(1)
        slab.slot.add_(1)

    @staticmethod
    def _graph_key(params: SamplingParams, attn_len: int) -> tuple:
        """What a captured step depends on besides the slab: the sampling filters and the attention length."""
        return params.temperature, params.top_k, params.top_p, params.min_p, attn_len

    def _capture(self, w: ModelWeights, slab: _Slab, params: SamplingParams, attn_lens: set) -> None:
        """Capture the decode step for each needed attention length (scribbles on the state; reset after).

        The warm-up and capture draw from the engine's generator; its state is put back after, so a call's
        samples depend on its seed and inputs, not on whether this call captured graphs (a resumed run
        captures at another step than the run it resumes)."""
        start = time.perf_counter()
        rng = self.generator.get_state()
        for attn_len in sorted(attn_lens):
            key = self._graph_key(params, attn_len)
            if key in slab.graphs:
                continue
            self._warm_up(w, slab, params, attn_len)
            graph = torch.cuda.CUDAGraph()
            graph.register_generator_state(self.generator)  # replays draw from the engine's generator, reseeded per call
            slab.rewind()
            with torch.cuda.graph(graph, pool=self._pool):
                self._step(w, slab, params, attn_len)
            slab.graphs[key] = graph
        torch.cuda.synchronize()
        self.generator.set_state(rng)
        self.last_stats["capture_s"] += time.perf_counter() - start

    def _warm_up(self, w: ModelWeights, slab: _Slab, params: SamplingParams, attn_len: int) -> None:
        """Run the step eagerly on a side stream (compiles kernels); fall back to eager layers if compile fails."""
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                slab.rewind()
                try:
                    self._step(w, slab, params, attn_len)
                except Exception as err:  # noqa: BLE001 - any compiler failure: keep going without it
                    if self._pick is race_pick:
                        raise
                    notice(f"rollout: torch.compile of the decode layers failed ({type(err).__name__}: {err}); using eager layers")
                    self._fns, self._pick = DecodeFns(rotate=self._fns.rotate), race_pick
                    self._step(w, slab, params, attn_len)
        torch.cuda.current_stream().wait_stream(stream)

    # ---- one chunk ------------------------------------------------------------------------------

    def _prefill(self, w: ModelWeights, slab: _Slab, prompt_ids: list, n: int, width: int) -> tuple:
        """Prefill each distinct prompt once, left-padded to `width`, into its prompt-cache row (or the
        cache rows of its n samples) -> (logits [P, V], pads)."""
        pads = torch.tensor([width - len(p) for p in prompt_ids], dtype=torch.long, device=self.device)
        ids = torch.tensor([[self.pad_id] * (width - len(p)) + list(p) for p in prompt_ids], dtype=torch.long, device=self.device)
        rows = len(prompt_ids) * n

        def store(i, k, v):
            if slab.pks is not None:  # float8 cache: one scale per position and head
                (k, k_scale), (v, v_scale) = fp8.quantize_tokens(k), fp8.quantize_tokens(v)
                slab.pks[i, : len(prompt_ids), :, :width] = k_scale[..., 0]
                slab.pvs[i, : len(prompt_ids), :, :width] = v_scale[..., 0]
            if slab.pk is not None:
                slab.pk[i, : len(prompt_ids), :, :width] = k
                slab.pv[i, : len(prompt_ids), :, :width] = v
                return
            shape = (len(prompt_ids), n) + slab.k.shape[2:]
            slab.k[i, :rows].view(shape)[:, :, :, :width] = k[:, None]
            slab.v[i, :rows].view(shape)[:, :, :, :width] = v[:, None]

        logits = prefill(w, ids, pads, store, fused=self.attention != "math")
        self.last_stats["prefill_rows"] += len(prompt_ids)
        return logits, pads

    def _start(self, slab: _Slab, logits: torch.Tensor, pads: torch.Tensor, width: int, n: int, params: SamplingParams) -> None:
        """Reset the state for a new chunk and record each row's first token (from the prefill logits)."""
        rows = logits.shape[0] * n
        slab.pad.zero_()
        slab.pad[:rows] = pads.repeat_interleave(n)
        slab.src.copy_(torch.arange(slab.batch, device=slab.src.device) // n)  # row r's prompt is prompt r // n
        slab.width.fill_(width)
        slab.slot.fill_(width - 1)
        slab.t.zero_()
        slab.nlen.zero_()
        slab.done.zero_()
        slab.done[rows:] = True
        full = torch.zeros(slab.batch, logits.shape[1], device=logits.device, dtype=logits.dtype)
        full[:rows] = logits.repeat_interleave(n, dim=0)
        self._record(slab, *sample(full, params, self.generator))

    def _run_chunk(self, w: ModelWeights, prompt_ids: list, first_index: int, n: int, params: SamplingParams) -> list:
        """Generate n completions for each prompt of one chunk."""
        width = max(len(p) for p in prompt_ids)
        rows = len(prompt_ids) * n
        steps = params.max_new_tokens - 1
        slab = self._slab(w, rows, n, width, params.max_new_tokens)
        if self.use_graphs:
            self._capture(w, slab, params, {self._attn_len(slab, width + i) for i in range(steps)} or {slab.length})
        start = time.perf_counter()
        logits, pads = self._prefill(w, slab, prompt_ids, n, width)
        self._start(slab, logits, pads, width, n, params)
        self._sync()
        self.last_stats["prefill_s"] += time.perf_counter() - start
        start = time.perf_counter()
        for i in range(steps):
            if i % self.check_every == 0 and bool(slab.done.all()):
                break
            attn_len = self._attn_len(slab, width + i)
            if self.use_graphs:
                slab.graphs[self._graph_key(params, attn_len)].replay()
            else:
                self._step(w, slab, params, attn_len)
            self.last_stats["decode_steps"] += 1
        result = self._collect(slab, prompt_ids, first_index, n, params)
        self.last_stats["decode_s"] += time.perf_counter() - start
        return result

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def _collect(self, slab: _Slab, prompt_ids: list, first_index: int, n: int, params: SamplingParams) -> list:
        """Copy tokens, log-probs, lengths and stop flags to the host once and build Generations."""
        rows, cols = len(prompt_ids) * n, params.max_new_tokens
        tokens = slab.out_tok[:rows, :cols].tolist()
        logprobs = slab.out_lp[:rows, :cols].tolist()
        policy = slab.out_plp[:rows, :cols].tolist() if filters_active(params) else logprobs
        lengths = slab.nlen[:rows].tolist()
        done = slab.done[:rows].tolist()
        out = []
        for r in range(rows):
            ids = tokens[r][: lengths[r]]
            lp = None if params.greedy else logprobs[r][: lengths[r]]
            plp = None if params.greedy else policy[r][: lengths[r]]
            prompt = list(prompt_ids[r // n])
            text = self.decode(ids) if self.tokenizer is not None else ""  # token-only use: benchmarks
            out.append(Generation(first_index + r // n, prompt, ids, text, bool(done[r]), lp, plp))
        return out
