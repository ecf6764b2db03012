"""Rollout throughput on the GPU against the bandwidth floor: the native engine in bf16 (the model's tensors read
in place, and packed copies), in FP8, and transformers `generate`, in one run, correctness checked first.

Subject: a Qwen3-4B-shaped model with random bf16 weights built on the GPU; 256-token prompts, 1,024 new tokens
forced (no stop ids), temperature 1; 8 prompts x 8 samples (64 rows) and the reference recipe's 4 x 4 (16 rows).
The floor is the bytes each decode step must read (every weight once, each prompt's KV once per group, every
row's generated KV) over a device-to-device copy bandwidth measured in the same run; the FP8 floor reads the
projections at a byte a weight. Phases (`--phases`), each on its own so one failure keeps the rest, none started
within its estimated length of `--deadline`:

- correctness: a small random Qwen3 (sharp weights) through each engine path against transformers (greedy tokens,
  sampled-token log-probs); FP8 projections against the float product, each FP8 GEMM way against the emulation;
- gemm: the 4B layer's projections at 64 and 16 rows, one CUDA graph of 36 calls each: bf16 separate / packed,
  FP8 `rowwise` / `unit` / `triton`; the fastest FP8 way is used for the rest of the run;
- attention: the split-K decode kernel's launch settings timed inside CUDA graphs; the fastest is used;
- rows: tok/s, floor fractions and peak memory per path and shape; the sampler gap of the 16-row rows against a
  transformers forward of the same tokens; a kernel profile of a short call per path;
- hf, variants, lora: the older comparison rows (transformers generate, SDPA / eager layers, LoRA merge vs lowrank).

    PYTHONUNBUFFERED=1 PYTHONPATH=src python3 benchmarks/rollout.py --out $OUT --deadline 450
    PYTHONPATH=src python benchmarks/rollout.py --smoke --out /tmp/rollout-smoke   # tiny shapes on CPU: the script runs
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
import traceback
from pathlib import Path

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from mathgrpo.rollout.base import SamplingParams
from mathgrpo.rollout.native import NativeEngine

T0 = time.perf_counter()


def qwen3_4b_config(smoke: bool) -> Qwen3Config:
    """The Qwen3-4B shape (or a tiny one for --smoke)."""
    if smoke:
        return Qwen3Config(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, head_dim=32, tie_word_embeddings=True, rope_theta=1e6)
    from _subject import QWEN3_4B

    return Qwen3Config(**QWEN3_4B)


def build(cfg: Qwen3Config, device: str, dtype: torch.dtype, std: float = 0.02) -> Qwen3ForCausalLM:
    """Random weights, built directly on the device (normal(0, std); norms at 1)."""
    with torch.device(device):
        model = Qwen3ForCausalLM(cfg).to(dtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.normal_(0, std)
    model.eval()
    model.generation_config.pad_token_id = 0
    return model


def copy_bandwidth(device: str) -> float:
    """Bytes read + written per second by a large device-to-device copy (median of 20)."""
    if device != "cuda":
        return 50e9
    src = torch.randn(1024 * 1024 * 1024 // 2, device=device, dtype=torch.bfloat16)  # 1 GiB
    dst = torch.empty_like(src)
    times = []
    for _ in range(25):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        dst.copy_(src)
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    del src, dst
    return 2 * 1024**3 / sorted(times[5:])[len(times[5:]) // 2]


def weight_bytes(model, precision: str = "bf16") -> int:
    """Bytes of weights a decode step reads: every parameter in its dtype, the decoder's projections at one byte
    a weight plus a float32 scale a row in FP8."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    if not precision.startswith("fp8"):
        return total
    from mathgrpo.rollout.packed import packed_bytes

    return total - packed_bytes(model, fp8_weights=False) + packed_bytes(model, fp8_weights=True)


def floor_seconds(model, rows: int, prompt: int, new: int, bandwidth: float, group: int = 8, precision: str = "bf16") -> float:
    """Bandwidth floor: each of the new-1 decode steps reads all weights once, each prompt's KV once
    (its `group` samples share it) and every row's generated KV (fp8-kv: a byte a value and a float32 scale
    per position and head)."""
    cfg = model.config
    weights = weight_bytes(model, precision)
    per_head = cfg.head_dim + 4 if precision == "fp8-kv" else cfg.head_dim * 2
    kv_per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * per_head
    total = 0
    for step in range(1, new):
        total += weights + (rows // group * prompt + rows * step) * kv_per_token
    return (total + weights) / bandwidth  # + one weight read for the prefill


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def peak_reset(device: str) -> None:
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: str) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else 0.0


def native_row(model, prompts, n, new, device, bandwidth, label, cold_too=True, **engine_kw) -> dict:
    """Time the native engine: a cold call (compile + capture + run) then a warm one; tok/s from the warm one.

    Without `cold_too` only one call runs and its graph capture time is taken out of the timed wall. Floor
    fractions: against the bf16 floor (`floor_frac`) and against the floor of the row's own precision.
    """
    engine = NativeEngine(model, None, [], seed=0, **engine_kw)
    params = SamplingParams(max_new_tokens=new, temperature=1.0)
    peak_reset(device)
    row = {"engine": label, "rows": len(prompts) * n, "prompt": len(prompts[0]), "new_tokens": new, **{k: str(v) for k, v in engine_kw.items()}}
    start = time.perf_counter()
    out = engine.generate_ids(prompts, n, params)
    sync(device)
    row["cold_s"] = time.perf_counter() - start
    row["capture_warmup_s"] = engine.last_stats["capture_s"]
    wall = row["cold_s"] - engine.last_stats["capture_s"]
    if cold_too:
        start = time.perf_counter()
        out = engine.generate_ids(prompts, n, params)
        sync(device)
        wall = time.perf_counter() - start
    tokens = sum(len(g.token_ids) for g in out)
    assert tokens == len(prompts) * n * new, "forced length not reached"
    precision = engine_kw.get("precision", "bf16")
    floor = {p: floor_seconds(model, tokens // new, len(prompts[0]), new, bandwidth, n, p) for p in ("bf16", precision)}
    row.update(
        wall_s=wall, tokens=tokens, tok_s=tokens / wall, prefill_s=engine.last_stats["prefill_s"],
        decode_s=engine.last_stats["decode_s"], recapture_s=engine.last_stats["capture_s"], peak_gib=peak_gib(device),
        floor_frac=floor["bf16"] / wall, floor_frac_own=floor[precision] / wall, floor_s=floor["bf16"], floor_own_s=floor[precision],
        ms_per_step=1e3 * engine.last_stats["decode_s"] / max(1, engine.last_stats["decode_steps"]),
        held_gib=engine.held_bytes() / 2**30,
    )
    row["_engine"], row["_out"] = engine, out
    return row


def hf_row(model, prompts, n, new, device, bandwidth, cache: str) -> dict:
    """transformers `generate`, sampling at temperature 1, `new` tokens forced; the second call is timed."""
    ids = torch.tensor([p for p in prompts for _ in range(n)], device=device)
    kwargs = dict(attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0, top_k=None, top_p=None,
                  max_new_tokens=new, min_new_tokens=new, eos_token_id=None, pad_token_id=0)
    if cache == "static":
        kwargs["cache_implementation"] = "static"
    peak_reset(device)
    row = {"engine": f"hf-{cache}", "rows": ids.shape[0], "prompt": ids.shape[1], "new_tokens": new}
    start = time.perf_counter()
    model.generate(ids, **kwargs)
    sync(device)
    row["cold_s"] = time.perf_counter() - start
    start = time.perf_counter()
    out = model.generate(ids, **kwargs)
    sync(device)
    wall = time.perf_counter() - start
    tokens = (out.shape[1] - ids.shape[1]) * ids.shape[0]
    row.update(wall_s=wall, tokens=tokens, tok_s=tokens / wall, peak_gib=peak_gib(device),
               floor_frac=floor_seconds(model, ids.shape[0], ids.shape[1], new, bandwidth, n) / wall)
    return row


def engine_paths(device: str, fp8_gemm: str) -> dict:
    """The native engine's paths to check: label -> NativeEngine keyword arguments."""
    if device != "cuda":
        return {"math": {}, "math-packed": {"pack": True}, "math-fp8": {"precision": "fp8", "fp8_gemm": "emulate"}}
    return {"triton": {"attention": "triton", "use_compile": True}, "sdpa": {"attention": "sdpa", "use_compile": False},
            "triton-packed": {"attention": "triton", "use_compile": True, "pack": True},
            "triton-fp8": {"attention": "triton", "use_compile": True, "precision": "fp8", "fp8_gemm": fp8_gemm},
            "triton-fp8-kv": {"attention": "triton", "use_compile": True, "precision": "fp8-kv", "fp8_gemm": fp8_gemm}}


def correctness(device: str, dtype: torch.dtype, fp8_gemm: str) -> dict:
    """Native vs transformers on a small random Qwen3 in the benchmark dtype, for every engine path: greedy tokens
    (length of the common prefix per row) and sampled tokens' log-probs (filtered and unfiltered) against a
    transformers forward of the same tokens."""
    from mathgrpo.rollout.sampling import filter_logits

    cfg = Qwen3Config(vocab_size=1024, hidden_size=256, intermediate_size=512, num_hidden_layers=3, num_attention_heads=8,
                      num_key_value_heads=2, head_dim=64, tie_word_embeddings=True, rope_theta=1e6)
    model = build(cfg, device, dtype, std=0.15)
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(1, 1024, (length,), generator=gen).tolist() for length in (37, 120, 5, 64)]
    result = {}
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts], device=device)
    mask = (torch.arange(width)[None] >= torch.tensor([width - len(p) for p in prompts])[:, None]).long().to(device)
    ref = model.generate(ids, attention_mask=mask, max_new_tokens=32, do_sample=False, eos_token_id=None, pad_token_id=0,
                         temperature=None, top_p=None, top_k=None)[:, width:].tolist()
    filtered = SamplingParams(temperature=1.0, top_p=0.9)
    for label, kw in engine_paths(device, fp8_gemm).items():
        try:
            engine = NativeEngine(model, None, [], **kw)
            out = engine.generate_ids(prompts, 1, SamplingParams(max_new_tokens=32, temperature=0))
            result[f"greedy_match_prefix_{label}"] = [next((i for i, (a, b) in enumerate(zip(g.token_ids, r)) if a != b), len(r))
                                                      for g, r in zip(out, ref)]
            sampled = engine.generate_ids(prompts, 4, SamplingParams(max_new_tokens=16, temperature=1.0, top_p=0.9))
            diffs, policy_diffs, boundary = [], [], 0
            for g in sampled:
                seq = torch.tensor([g.prompt_ids + g.token_ids], device=device)
                with torch.no_grad():
                    logits = model(seq).logits[0, len(g.prompt_ids) - 1 : -1].float()
                picked = torch.tensor(g.token_ids, device=device)[:, None]
                ref_lp = torch.log_softmax(filter_logits(logits, filtered), -1).gather(-1, picked)[:, 0]
                kept = torch.isfinite(ref_lp)  # a token at the top-p edge may fall outside the reference's nucleus
                boundary += int((~kept).sum())
                diffs.append((ref_lp - torch.tensor(g.logprobs, device=device))[kept].abs())
                policy = torch.log_softmax(logits, -1).gather(-1, picked)[:, 0]
                policy_diffs.append((policy - torch.tensor(g.policy_logprobs, device=device)).abs())
            diffs, policy_diffs = torch.cat(diffs), torch.cat(policy_diffs)
            result[f"logprob_max_abs_diff_{label}"] = diffs.max().item()
            result[f"policy_logprob_mean_abs_diff_{label}"] = policy_diffs.mean().item()
            result[f"policy_logprob_max_abs_diff_{label}"] = policy_diffs.max().item()
            result[f"tokens_outside_reference_nucleus_{label}"] = boundary
        except Exception as err:  # noqa: BLE001 - one path failing must not hide the others
            result[f"error_{label}"] = f"{type(err).__name__}: {err}"[:500]
        print(f"[{time.perf_counter() - T0:6.1f}s] correctness {label}:",
              {k: v for k, v in result.items() if k.endswith(label)}, flush=True)
    del model
    return result


def projection_check(device: str, gemms: tuple) -> dict:
    """FP8 projection of a 4B-sized MLP input ([64, 2560] x [9728, 2560]^T, std-0.02 weights): relative error
    of each FP8 way against the float32 product and the bf16 one, and of each against the emulation."""
    from mathgrpo.rollout import fp8

    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(64, 2560, device=device, generator=gen).to(torch.bfloat16)
    w = (torch.randn(9728, 2560, device=device, generator=gen) * 0.02).to(torch.bfloat16)
    exact = x.float() @ w.float().t()
    rel = lambda y, ref: ((y.float() - ref).norm() / ref.norm()).item()  # noqa: E731
    q, scale = torch.empty(9728, 2560, device=device, dtype=fp8.E4M3), torch.empty(1, 9728, device=device)
    fp8.quantize_rows(w, q, scale[0])
    result = {"bf16_rel_err": rel(torch.nn.functional.linear(x, w), exact)}
    emulated = fp8.linear(x, q, scale, None, "emulate")
    for gemm in gemms:
        try:
            y = fp8.linear(x, q, scale, None, gemm)
            result[f"fp8_{gemm}_rel_err"] = rel(y, exact)
            result[f"fp8_{gemm}_vs_emulate"] = rel(y, emulated.float())
        except Exception as err:  # noqa: BLE001 - a way this build lacks is reported, the others still run
            result[f"fp8_{gemm}_error"] = f"{type(err).__name__}: {err}"[:300]
    return result


def verdicts(report: dict) -> dict:
    """PASS / FAIL of the self-checks, each with the numbers it compared."""
    checks = {}
    c, p = report.get("correctness", {}), report.get("projection", {})
    for key, value in p.items():
        if key.endswith("_rel_err") and key.startswith("fp8_"):
            checks[key] = ("PASS" if value < 0.05 else "FAIL", f"{value:.4f} < 0.05")
        if key.endswith("_vs_emulate"):
            checks[key] = ("PASS" if value < 0.01 else "FAIL", f"{value:.5f} < 0.01")
    labels = [k[len("policy_logprob_mean_abs_diff_"):] for k in c if k.startswith("policy_logprob_mean_abs_diff_")]
    base = next((c[f"policy_logprob_mean_abs_diff_{l}"] for l in ("triton", "math") if f"policy_logprob_mean_abs_diff_{l}" in c), None)
    for label in labels:
        gap = c[f"policy_logprob_mean_abs_diff_{label}"]
        factor, slack = (16, 0.05) if "fp8" in label else (2, 0.01)
        if "fp8" in label and (base or 0) < 1e-4:
            checks[f"gap_{label}"] = ("n/a", f"mean {gap:.4f}; the reference path ran in float32 (no bf16 yardstick)")
            continue
        bound = factor * (base or 0) + slack
        checks[f"gap_{label}"] = ("PASS" if gap < bound else "FAIL", f"mean {gap:.4f} < {bound:.4f} (reference path x {factor} + {slack})")
    for key in c:
        if key.startswith("error_"):
            checks[key] = ("FAIL", c[key][:120])
    return checks


def graph_time(fn, reps: int = 36, replays: int = 7) -> float:
    """Seconds per call of fn(i) with `reps` calls (i = 0..reps-1) back to back in one CUDA graph: kernel time
    without Python launch gaps, as inside the engine's captured decode step (median over replays)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for i in range(2):
            fn(i)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(reps):
            fn(i)
    times = []
    for _ in range(replays):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        graph.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    del graph
    return sorted(times)[len(times) // 2] / reps


def gemm_bench(device: str, ways: tuple) -> dict:
    """The 4B layer's projections at 64 and 16 rows, each in a CUDA graph of 36 calls over enough weight copies
    that none is served from L2: bf16 separate and packed, FP8 (activations quantized beforehand) by each way.
    Rows: op, rows, kind, microseconds a call, GB/s of weight bytes. Also the FP8 way with the least total time."""
    from mathgrpo.rollout import fp8, skinny_gemm

    from _subject import QWEN3_4B

    hidden, inter = QWEN3_4B["hidden_size"], QWEN3_4B["intermediate_size"]
    q_out, kv_out = QWEN3_4B["num_attention_heads"] * 128, QWEN3_4B["num_key_value_heads"] * 128
    shapes = {"q": (q_out, hidden), "k": (kv_out, hidden), "v": (kv_out, hidden), "o": (hidden, q_out),
              "gate": (inter, hidden), "up": (inter, hidden), "down": (hidden, inter)}
    ops = {"qkv": ("q", "k", "v"), "o": ("o",), "gate_up": ("gate", "up"), "down": ("down",)}
    rows_out, totals = [], {}

    def copies_for(nbytes: int) -> int:
        return max(2, -(-200 * 2**20 // nbytes))  # 200 MiB of weights per op: four times the H100's L2

    for op, parts in ops.items():
        cols = shapes[parts[0]][1]
        out = sum(shapes[p][0] for p in parts)
        n_copies = copies_for(out * cols * 2)
        bf16 = [torch.randn(out, cols, device=device, dtype=torch.bfloat16) * 0.02 for _ in range(n_copies)]
        fp8_w = []
        for w in bf16:
            q, scale = torch.empty(out, cols, device=device, dtype=fp8.E4M3), torch.empty(1, out, device=device)
            fp8.quantize_rows(w, q, scale[0])
            fp8_w.append((q, scale))
        splits = [shapes[p][0] for p in parts]
        for m in (64, 16):
            x = torch.randn(m, cols, device=device, dtype=torch.bfloat16)
            xq, xs = fp8.quantize_tokens(x)
            one = torch.ones((), device=device)
            kinds = {"bf16 packed": lambda i: torch.nn.functional.linear(x, bf16[i % n_copies])}
            if len(parts) > 1:  # the model's own tensors: one GEMM per projection (row slices of the copies)
                kinds["bf16 separate"] = lambda i: [torch.nn.functional.linear(x, w) for w in bf16[i % n_copies].split(splits)]
            if "rowwise" in ways:
                kinds["fp8 rowwise"] = lambda i: torch._scaled_mm(xq, fp8_w[i % n_copies][0].t(), scale_a=xs,
                                                                  scale_b=fp8_w[i % n_copies][1], out_dtype=torch.bfloat16)
            if "triton" in ways:
                kinds["fp8 triton"] = lambda i: skinny_gemm.matmul(xq, *fp8_w[i % n_copies], xs, torch.bfloat16)
            if "unit" in ways:
                kinds["fp8 unit"] = lambda i: torch._scaled_mm(xq, fp8_w[i % n_copies][0].t(), scale_a=one, scale_b=one,
                                                               out_dtype=torch.float32)
            for kind, fn in kinds.items():
                nbytes = out * cols * (1 if kind.startswith("fp8") else 2)
                try:
                    t = graph_time(fn)
                    rows_out.append({"op": op, "rows": m, "kind": kind, "us": t * 1e6, "GBps": nbytes / t / 1e9})
                    totals[(kind, m)] = totals.get((kind, m), 0.0) + t
                except Exception as err:  # noqa: BLE001
                    rows_out.append({"op": op, "rows": m, "kind": kind, "error": f"{type(err).__name__}: {err}"[:300]})
                    totals[(kind, m)] = float("inf")
                print("gemm", rows_out[-1], flush=True)
        del bf16, fp8_w
        torch.cuda.empty_cache()
    layer_us = {f"{kind} x{m}": t * 1e6 for (kind, m), t in totals.items()}
    return {"rows": rows_out, "layer_us": layer_us, "fp8_gemm": fastest_ways(rows_out)}


def fastest_ways(rows: list) -> dict:
    """{op: the FP8 way with the least time at 64 and 16 rows together} from gemm_bench's rows (an op where none ran
    is left out: the engine's default way)."""
    spent: dict = {}
    for r in rows:
        if r["kind"].startswith("fp8"):
            key = (r["op"], r["kind"][len("fp8 "):])
            spent[key] = spent.get(key, 0.0) + r.get("us", float("inf"))
    ways = {}
    for (op, way), us in sorted(spent.items(), key=lambda kv: kv[1]):
        if us < float("inf"):
            ways.setdefault(op, way)
    return ways


def launch_settings() -> dict:
    """The split-K attention kernel's launch settings in force (SplitKDecode's class attributes), as the sweep names them."""
    from mathgrpo.rollout.decode_attention import SplitKDecode as kernel

    return {"block_n": kernel.BLOCK_N, "num_warps": kernel.NUM_WARPS, "num_stages": kernel.NUM_STAGES,
            "target_programs": kernel.TARGET_PROGRAMS}


def set_launch(setting: dict) -> None:
    """Put `setting` (launch_settings' keys) in force for every SplitKDecode made after."""
    from mathgrpo.rollout.decode_attention import SplitKDecode as kernel

    kernel.BLOCK_N, kernel.NUM_WARPS = setting["block_n"], setting["num_warps"]
    kernel.NUM_STAGES, kernel.TARGET_PROGRAMS = setting["num_stages"], setting["target_programs"]


def tune_attention(device: str, ctx: int = 768, length: int = 1280, width: int = 256) -> list:
    """Time the split-K decode kernel's launch settings at the 4B shape (8 prompts x 8 samples, 8 kv heads,
    4 groups, a `width`-slot prompt, `ctx` filled slots), each inside a CUDA graph (eager launches measured
    Triton's Python launcher as much as the kernel), and set the fastest as the engine's default for this run;
    the best setting is timed again with every row reading its own prompt copy (no sharing).
    Rows: settings, microseconds, GB/s of unique bytes (prompt once per group), error against SDPA."""
    from mathgrpo.rollout import decode_attention
    from mathgrpo.rollout.qwen3_forward import additive_mask, apply_rope, grouped_attention, rms_norm

    if device != "cuda" or not decode_attention.available():
        return []
    cls = decode_attention.SplitKDecode
    rows, n, kv, groups, dim = 64, 8, 8, 4, 128
    k = torch.randn(rows, kv, length, dim, device=device, dtype=torch.bfloat16)
    v = torch.randn_like(k)
    lead = torch.arange(rows, device=device) // n * n
    k[:, :, :width], v[:, :, :width] = k[lead, :, :width], v[lead, :, :width]  # samples share their prompt
    # the engine's layout: each prompt once (a row per group), completion slots per row
    prompt = (k[::n, :, :width].contiguous(), v[::n, :, :width].contiguous(), torch.arange(rows, device=device) // n,
              torch.tensor([width], device=device))
    k_new, v_new = k[:, :, width:].contiguous(), v[:, :, width:].contiguous()
    pad = torch.randint(0, 64, (rows // n,), device=device).repeat_interleave(n)
    slot = torch.tensor([ctx - 1], device=device)
    valid = (torch.arange(ctx, device=device)[None] >= pad[:, None])[:, None, None]
    # as the engine calls it: raw q (a strided view of a packed projection), Qwen3's q / k norms and the rotary in
    # the kernel; the reference attends the normalised and rotated q
    packed = torch.randn(rows, 1, (kv * groups + 2 * kv) * dim, device=device, dtype=torch.bfloat16)
    q_raw = packed[..., : kv * groups * dim]
    angles = torch.rand(rows, 1, dim // 2, device=device) * 6
    cos, sin = (torch.cat((angles, angles), -1).cos().to(torch.bfloat16), torch.cat((angles, angles), -1).sin().to(torch.bfloat16))
    q_w = torch.rand(dim, device=device, dtype=torch.bfloat16) + 0.5
    rotary = (cos, sin, q_w, q_w, 1e-6)
    q = apply_rope(rms_norm(q_raw.view(rows, 1, kv * groups, dim), q_w, 1e-6).transpose(1, 2), cos, sin)
    ref = grouped_attention(q, k[:, :, :ctx], v[:, :, :ctx], additive_mask(valid, torch.bfloat16), True).float()
    per_slot = 2 * dim * 2 * kv  # k and v bytes of one position
    unique = per_slot * (n * (ctx - width) * rows // n + (width * rows // n - pad[::n].sum().item()))

    def timed(attn, shared) -> tuple:
        """(seconds a call inside a CUDA graph, as in the decode step; relative error against SDPA)."""
        call = (lambda: attn(q_raw, k_new, v_new, pad, slot, prompt, rotary=rotary)) if shared else (
            lambda: attn(q_raw, k, v, pad, slot, rotary=rotary))
        err = (call().float() - ref).norm().item() / ref.norm().item()
        return graph_time(lambda i: call(), reps=12, replays=5), err

    defaults = launch_settings()
    results = []
    for block_n in (32, 64):
        for warps in (4, 8):
            for stages in (2, 3, 4):
                for target in (512, 1024, 1536, 2048):  # 1 to 4 splits a row at 64 rows x 8 kv heads
                    setting = {"block_n": block_n, "num_warps": warps, "num_stages": stages, "target_programs": target}
                    set_launch(setting)
                    try:
                        attn = cls(rows, kv, groups, dim, length, device, torch.bfloat16)
                        t, err = timed(attn, True)
                        results.append({**setting, "nsplit": attn.nsplit, "us": t * 1e6, "GBps": unique / t / 1e9, "rel_err": err})
                    except Exception as e:  # noqa: BLE001 - a setting that does not compile is just left out
                        results.append({**setting, "error": str(e)[:200]})
    good = [r for r in results if "us" in r and r["rel_err"] < 2e-2]
    best = min(good, key=lambda r: r["us"]) if good else defaults  # none ran: the engine's defaults stay
    set_launch(best)
    if good:
        chosen = launch_settings()
        t, err = timed(cls(rows, kv, groups, dim, length, device, torch.bfloat16), False)
        results.append({**chosen, "shared_prompt": False, "us": t * 1e6, "GBps": unique / t / 1e9, "rel_err": err})
        results.append({**chosen, "kv_fp8": True, **fp8_cache_timing(cls(rows, kv, groups, dim, length, device, torch.bfloat16),
                                                                   q_raw, prompt, k_new, v_new, pad, slot, ref, unique / 2, rotary)})
    for r in sorted(results, key=lambda r: r.get("us", 1e9))[:8] + results[-1:]:
        print("attn", r, flush=True)
    print(f"attn chosen {best} ({len(good)} of {len(results)} settings ran)", flush=True)
    return results


def fp8_cache_timing(attn, q, prompt, k_new, v_new, pad, slot, ref, nbytes: float, rotary=None) -> dict:
    """The kernel over float8 copies of the same caches (a scale per position and head): microseconds inside a
    CUDA graph, GB/s of `nbytes` (the unique bytes at one byte a value), relative error against the bf16 reference.
    rotary: as SplitKDecode takes it (q raw)."""
    from mathgrpo.rollout import fp8

    (pk, pks), (pv, pvs), (k, ks), (v, vs) = (fp8.quantize_tokens(t) for t in (prompt[0], prompt[1], k_new, v_new))
    scales = tuple(s[..., 0].contiguous() for s in (ks, vs, pks, pvs))
    call = lambda: attn(q, k, v, pad, slot, (pk, pv, prompt[2], prompt[3]), None, scales, rotary)  # noqa: E731
    err = (call().float() - ref).norm().item() / ref.norm().item()
    t = graph_time(lambda i: call(), reps=12, replays=5)
    return {"us": t * 1e6, "GBps": nbytes / t / 1e9, "rel_err": err}


def profile_kernels(engine, prompts, n, new, device) -> dict:
    """Sum of GPU kernel time vs wall time over one warm call (do the kernels or the gaps dominate?)."""
    if device != "cuda":
        return {}
    from torch.profiler import ProfilerActivity, profile

    params = SamplingParams(max_new_tokens=new, temperature=1.0)
    engine.generate_ids(prompts, n, params)
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        engine.generate_ids(prompts, n, params)
        sync(device)
        wall = time.perf_counter() - start
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    busy = sum(e.device_time for e in kernels) / 1e6
    by_name: dict = {}
    for e in kernels:
        spent, count = by_name.get(e.name, (0.0, 0))
        by_name[e.name] = (spent + e.device_time / 1e6, count + 1)
    top = sorted(by_name.items(), key=lambda kv: -kv[1][0])[:30]
    steps = max(1, engine.last_stats["decode_steps"])
    return {"wall_s": wall, "kernel_s": busy, "kernel_frac": busy / wall, "steps": steps, "kernels_per_step": len(kernels) / steps,
            "top_kernels_s": [[name[:90], round(t, 4), round(count / steps, 2)] for name, (t, count) in top]}


def sampler_gap(model, gens: list, device: str, chunk: int = 2) -> dict:
    """|engine policy log-prob - transformers forward log-prob| of every sampled token (temperature 1, no filters)
    of `gens` (rows of one prompt length): the gap the trainer logs as sampler_gap_*, here against the model's
    own bf16 forward."""
    diffs = []
    for i in range(0, len(gens), chunk):
        part = gens[i : i + chunk]
        width = len(part[0].prompt_ids)
        seq = torch.tensor([g.prompt_ids + g.token_ids for g in part], device=device)
        with torch.no_grad():
            logits = model(seq).logits[:, width - 1 : -1].float()
        lp = torch.log_softmax(logits, -1).gather(-1, seq[:, width:, None])[..., 0]
        del logits
        diffs.append((lp - torch.tensor([g.policy_logprobs for g in part], device=device)).abs().flatten())
    d = torch.cat(diffs)
    return {"mean": d.mean().item(), "max": d.max().item(), "p99": d.quantile(0.99).item() if d.numel() < 2**24 else None,
            "tokens": d.numel()}


PATHS = {  # row label -> NativeEngine keyword arguments (fp8_gemm filled in from the gemm phase)
    "bf16": {"pack": False},
    "fp8": {"precision": "fp8"},
    "fp8-kv": {"precision": "fp8-kv"},
    "bf16-packed": {"pack": True, "skinny_gemm": False},  # cuBLAS at every row count
    "bf16-skinny": {"pack": True, "skinny_gemm": True},  # rollout.skinny_gemm: the kernel at up to 16 rows
}
SHAPES = {"64x(256+1024)": (8, 8), "16x(256+1024)": (4, 4)}  # label -> (prompts, samples per prompt)
ORDER = [("64x(256+1024)", "bf16-packed"), ("64x(256+1024)", "bf16"), ("64x(256+1024)", "fp8"), ("64x(256+1024)", "fp8-kv"),
         ("16x(256+1024)", "bf16-packed"), ("16x(256+1024)", "bf16-skinny"), ("16x(256+1024)", "bf16"), ("16x(256+1024)", "fp8"),
         ("16x(256+1024)", "fp8-kv")]
NEEDS = {"correctness": 60, "gemm": 40, "attention": 90, "rows": 40, "hf": 90, "variants": 40, "lora": 60}  # seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", "--tiny", action="store_true", help="tiny shapes on CPU, to check the script itself")
    ap.add_argument("--out", default="benchmarks/results", help="folder for rollout.json")
    ap.add_argument("--deadline", "--budget-s", type=float, default=450, help="no phase or row starts past this many seconds")
    ap.add_argument("--phases", nargs="+", default=["correctness", "gemm", "attention", "rows"],
                    choices=["correctness", "gemm", "attention", "rows", "hf", "variants", "lora"])
    ap.add_argument("--paths", nargs="+", default=list(PATHS), choices=list(PATHS))
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--new", type=int, default=1024, help="new tokens of the main rows")
    ap.add_argument("--hf-new", type=int, default=256, help="new tokens for the transformers rows (they are slow)")
    ap.add_argument("--attention-defaults", action="store_true", help="rows with the kernel's default launch settings "
                    "(the attention phase then only reports its sweep)")
    ap.add_argument("--fp8-gemm", choices=["rowwise", "unit", "triton"], help="FP8 GEMM way for every projection (default: the gemm "
                    "phase's fastest per projection, else the engine's default)")
    args = ap.parse_args()
    device = "cpu" if args.smoke else "cuda"
    dtype = torch.float32 if args.smoke else torch.bfloat16
    new, prompt_len, hf_new = (12, 8, 8) if args.smoke else (args.new, 256, args.hf_new)
    report = {"card": torch.cuda.get_device_name() if device == "cuda" else "cpu", "date": datetime.date.today().isoformat(),
              "torch": torch.__version__, "rows": [], "notes": [], "args": vars(args)}
    import transformers

    report["transformers"] = transformers.__version__
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    out_path = out_dir / "rollout.json"

    def save():
        out_path.write_text(json.dumps(report, indent=1, default=str))

    def left() -> float:
        return args.deadline - (time.perf_counter() - T0)

    def phase(name, fn, need=None) -> bool:
        """Run fn() unless the deadline is too near; a failure is noted and the run goes on."""
        need = NEEDS.get(name, 30) if need is None else need
        if left() < need:
            report["notes"].append(f"skipped {name}: {left():.0f} s left, needs ~{need} s")
            print(report["notes"][-1], flush=True)
            return False
        start = time.perf_counter()
        try:
            fn()
            ok = True
        except Exception as err:  # noqa: BLE001 - report and go on to the next phase
            report["notes"].append(f"{name} failed: {type(err).__name__}: {err}"[:600])
            report.setdefault("tracebacks", {})[name] = traceback.format_exc()[-3000:]
            print(report["notes"][-1], flush=True)
            ok = False
        print(f"[{time.perf_counter() - T0:6.1f}s] {name} done in {time.perf_counter() - start:.1f} s", flush=True)
        save()
        return ok

    def add(row):
        row.pop("_engine", None)
        row.pop("_out", None)
        report["rows"].append(row)
        print(f"[{time.perf_counter() - T0:6.1f}s] {row['engine']:>14} rows={row['rows']:3d} new={row['new_tokens']:5d} "
              f"tok/s={row['tok_s']:9.1f} floor={row['floor_frac']:.2f} peak={row['peak_gib']:.1f}GiB cold={row['cold_s']:.1f}s", flush=True)
        save()

    report["copy_bandwidth_Bps"] = bandwidth = copy_bandwidth(device)
    print(f"copy bandwidth {bandwidth / 1e12:.2f} TB/s (read+write)", flush=True)
    from mathgrpo.model.card import card_of
    from mathgrpo.rollout import fp8, skinny_gemm

    card = card_of(torch.device(device))
    reason = fp8.unsupported_reason(card)
    ways = () if reason else ("rowwise", "unit") + (("triton",) if skinny_gemm.available() else ())
    report["fp8_unsupported"] = reason
    state = {"fp8_gemm": args.fp8_gemm or ("emulate" if reason else fp8.default_way(card))}
    if "gemm" in args.phases and not reason:
        def run_gemm():
            report["gemm"] = gemm_bench(device, ways)
            if not args.fp8_gemm:
                state["fp8_gemm"] = report["gemm"]["fp8_gemm"]
        phase("gemm", run_gemm)
    report["fp8_gemm"] = state["fp8_gemm"]
    if "correctness" in args.phases:
        def run_correctness():
            report["projection"] = projection_check(device, ways + ("emulate",))
            print("projection", report["projection"], flush=True)
            report["correctness"] = correctness(device, dtype, state["fp8_gemm"])
            report["checks"] = verdicts(report)
            for key, (verdict, detail) in report["checks"].items():
                print(f"CHECK {verdict} {key}: {detail}", flush=True)
        phase("correctness", run_correctness)
    if "attention" in args.phases:
        defaults = launch_settings()
        phase("attention", lambda: report.__setitem__("attention_tuning", tune_attention(device)))
        if args.attention_defaults:  # the rows measure what the engine runs by default, the sweep only reports
            set_launch(defaults)

    model = build(qwen3_4b_config(args.smoke), device, dtype)
    report["weight_bytes"] = {p: weight_bytes(model, p) for p in ("bf16", "fp8")}
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(1, model.config.vocab_size, (prompt_len,), generator=gen).tolist() for _ in range(8)]
    report["attention_launch"] = launch_settings()  # what the rows ran with
    if "rows" in args.phases:  # one row per (shape, path), most important first
        for shape, path in [(shape, path) for shape, path in ORDER if shape in args.shapes and path in args.paths]:
            n_prompts, n = SHAPES[shape]
            kw = dict(PATHS[path], **({"fp8_gemm": state["fp8_gemm"]} if path.startswith("fp8") else {}))
            if path == "fp8-kv" and device != "cuda":
                report["notes"].append(f"rows {shape} fp8-kv skipped: the FP8 cache is read by the Triton kernel (GPU)")
                continue

            def run_row(path=path, kw=kw, n_prompts=n_prompts, n=n, shape=shape):
                row = native_row(model, prompts[:n_prompts], n, new, device, bandwidth, f"native-{path}", **kw)
                row["shape"] = shape
                if n_prompts * n <= 16:  # the sampler gap of the small rows, against transformers' forward
                    row["sampler_gap"] = sampler_gap(model, row["_out"], device)
                if shape == "64x(256+1024)" and device == "cuda" and left() > 90:
                    row["profile_64_new"] = profile_kernels(row["_engine"], prompts[:n_prompts], n, 64, device)
                engine = row["_engine"]
                add(row)
                engine.release()

            phase(f"rows {shape} {path}", run_row, NEEDS["rows"])
            peak_reset(device)
    if "hf" in args.phases:
        for cache in ("dynamic", "static"):
            phase(f"hf-{cache}", lambda cache=cache: add(hf_row(model, prompts, 8, hf_new, device, bandwidth, cache)), NEEDS["hf"])
    if "variants" in args.phases:
        variants = [("native-sdpa-buckets", dict(attention="sdpa")), ("native-no-compile", dict(use_compile=False))]
        for label, kw in variants if device == "cuda" else variants[:0]:
            phase(label, lambda label=label, kw=kw: add(native_row(model, prompts, 8, new // 4, device, bandwidth, label, **kw)))
    if "lora" in args.phases:
        phase("lora", lambda: lora_rows(model, prompts, new // 4, device, bandwidth, add, report))
    save()
    print_table(report)


def lora_rows(model, prompts, new, device, bandwidth, add, report) -> None:
    """LoRA r32 on every projection: merge-and-restore against low-rank terms in the forward."""
    from peft import LoraConfig, get_peft_model

    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    peft_model = get_peft_model(model, LoraConfig(r=32, lora_alpha=64, target_modules=targets, lora_dropout=0.0))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.01)
    for mode in ("merge", "lowrank"):
        try:
            add(native_row(peft_model, prompts, 8, new, device, bandwidth, f"native-lora-{mode}", lora=mode))
        except Exception as err:  # noqa: BLE001
            report["notes"].append(f"lora {mode} failed: {type(err).__name__}: {err}")
            print(report["notes"][-1], flush=True)


def print_table(report: dict) -> None:
    """The short table the run ends with: checks, rows with their floor fractions, FP8 against bf16."""
    print(f"\n{report['card']}  copy bw {report['copy_bandwidth_Bps'] / 1e12:.2f} TB/s  torch {report['torch']}  "
          f"fp8 gemm {report.get('fp8_gemm')}  fp8: {report.get('fp8_unsupported') or 'supported'}")
    for key, (verdict, detail) in report.get("checks", {}).items():
        print(f"  check {verdict:4} {key}: {detail}")
    gemm = report.get("gemm", {}).get("layer_us")
    if gemm:
        print("  one layer's projections, us (36 per step): " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(gemm.items())))
    print(f"{'engine':>18} {'shape':>14} {'tok/s':>8} {'floor bf16':>10} {'floor own':>9} {'ms/step':>8} {'peak GiB':>8} "
          f"{'gap mean/max':>13} {'cold s':>7}")
    for r in report["rows"]:
        gap = r.get("sampler_gap")
        gap = f"{gap['mean']:.3f}/{gap['max']:.2f}" if gap else ""
        print(f"{r['engine']:>18} {r.get('shape', str(r['rows']) + 'x' + str(r['new_tokens'])):>14} {r['tok_s']:>8.0f} "
              f"{r['floor_frac']:>10.2f} {r.get('floor_frac_own', r['floor_frac']):>9.2f} {r.get('ms_per_step', float('nan')):>8.2f} "
              f"{r['peak_gib']:>8.1f} {gap:>13} {r['cold_s']:>7.1f}")
    by = {(r["engine"], r.get("shape")): r["tok_s"] for r in report["rows"]}
    for shape in SHAPES:
        base = by.get(("native-bf16", shape))
        for path in ("fp8", "fp8-kv", "bf16-packed"):
            if base and (f"native-{path}", shape) in by:
                print(f"  {path} / bf16 at {shape}: {by[(f'native-{path}', shape)] / base:.2f}x")
    for note in report["notes"]:
        print("note:", note)


if __name__ == "__main__":
    main()
