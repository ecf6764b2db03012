"""Rollout throughput on the GPU: the native engine against transformers `generate`, in one run.

Subject: a Qwen3-4B-shaped model with random bf16 weights built on the GPU, 8 prompts x 8 samples,
prompt 256 tokens, 1,024 new tokens forced (no stop ids), and a second native row with 2,048 in
total. The floor is the bytes each decode step must read (every weight once plus the filled part
of the KV cache of every row) over a device-to-device copy bandwidth measured in the same run.

    PYTHONUNBUFFERED=1 PYTHONPATH=src python3 benchmarks/rollout.py --out $OUT/rollout.json
    PYTHONPATH=src python benchmarks/rollout.py --smoke     # tiny shapes on CPU: checks the script runs
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
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


def floor_seconds(model, rows: int, prompt: int, new: int, bandwidth: float, group: int = 8) -> float:
    """Bandwidth floor: each of the new-1 decode steps reads all weights once, each prompt's KV once
    (its `group` samples share it) and every row's generated KV."""
    cfg = model.config
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    kv_per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * 2
    total = 0
    for step in range(1, new):
        total += weight_bytes + (rows // group * prompt + rows * step) * kv_per_token
    return (total + weight_bytes) / bandwidth  # + one weight read for the prefill


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

    Without `cold_too` only one call runs and its graph capture time is taken out of the timed wall.
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
    row.update(
        wall_s=wall, tokens=tokens, tok_s=tokens / wall, prefill_s=engine.last_stats["prefill_s"],
        decode_s=engine.last_stats["decode_s"], recapture_s=engine.last_stats["capture_s"], peak_gib=peak_gib(device),
        floor_frac=floor_seconds(model, tokens // new, len(prompts[0]), new, bandwidth) / wall,
        ms_per_step=1e3 * engine.last_stats["decode_s"] / max(1, engine.last_stats["decode_steps"]),
    )
    row["_engine"] = engine
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
               floor_frac=floor_seconds(model, ids.shape[0], ids.shape[1], new, bandwidth) / wall)
    return row


def correctness(device: str, dtype: torch.dtype) -> dict:
    """Native vs transformers on a small random Qwen3 in the benchmark dtype: greedy tokens and logprobs."""
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
    for attention in (["triton", "sdpa"] if device == "cuda" else ["math"]):
        engine = NativeEngine(model, None, [], attention=attention, use_compile=attention == "triton")
        out = engine.generate_ids(prompts, 1, SamplingParams(max_new_tokens=32, temperature=0))
        prefix = []
        for g, r in zip(out, ref):
            same = next((i for i, (a, b) in enumerate(zip(g.token_ids, r)) if a != b), len(r))
            prefix.append(same)
        result[f"greedy_match_prefix_{attention}"] = prefix
        sampled = engine.generate_ids(prompts, 1, SamplingParams(max_new_tokens=16, temperature=1.0, top_p=0.9))
        diffs, policy_diffs, boundary = [], [], 0
        for g in sampled:
            seq = torch.tensor([g.prompt_ids + g.token_ids], device=device)
            with torch.no_grad():
                logits = model(seq).logits[0, len(g.prompt_ids) - 1 : -1].float()
            from mathgrpo.rollout.sampling import filter_logits

            picked = torch.tensor(g.token_ids, device=device)[:, None]
            logp = torch.log_softmax(filter_logits(logits, SamplingParams(temperature=1.0, top_p=0.9)), -1)
            ref_lp = logp.gather(-1, picked)[:, 0]
            kept = torch.isfinite(ref_lp)  # a token at the top-p edge may fall outside the reference's nucleus (bf16)
            boundary += int((~kept).sum())
            diffs.append((ref_lp - torch.tensor(g.logprobs, device=device))[kept].abs().max().item())
            policy = torch.log_softmax(logits, -1).gather(-1, picked)[:, 0]
            policy_diffs.append((policy - torch.tensor(g.policy_logprobs, device=device)).abs().max().item())
        result[f"logprob_max_abs_diff_{attention}"] = max(diffs)
        result[f"policy_logprob_max_abs_diff_{attention}"] = max(policy_diffs)
        result[f"tokens_outside_reference_nucleus_{attention}"] = boundary
    del model
    return result


def tune_attention(device: str, ctx: int = 768, length: int = 1280, width: int = 256) -> list:
    """Time the split-K decode kernel's launch settings at the 4B shape (8 prompts x 8 samples, 8 kv heads,
    4 groups, a `width`-slot prompt, `ctx` filled slots) and set the fastest as the engine's default for
    this run; the best setting is timed again with every row reading its own prompt copy (no sharing).
    Rows: settings, microseconds, GB/s of unique bytes (prompt once per group), error against SDPA."""
    from mathgrpo.rollout import decode_attention
    from mathgrpo.rollout.qwen3_forward import additive_mask, grouped_attention

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
    q = torch.randn(rows, kv * groups, 1, dim, device=device, dtype=torch.bfloat16)
    pad = torch.randint(0, 64, (rows // n,), device=device).repeat_interleave(n)
    slot = torch.tensor([ctx - 1], device=device)
    valid = (torch.arange(ctx, device=device)[None] >= pad[:, None])[:, None, None]
    ref = grouped_attention(q, k[:, :, :ctx], v[:, :, :ctx], additive_mask(valid, torch.bfloat16), True).float()
    per_slot = 2 * dim * 2 * kv  # k and v bytes of one position
    unique = per_slot * (n * (ctx - width) * rows // n + (width * rows // n - pad[::n].sum().item()))

    def timed(attn, shared) -> tuple:
        call = (lambda: attn(q, k_new, v_new, pad, slot, prompt)) if shared else (lambda: attn(q, k, v, pad, slot))
        err = (call().float() - ref).norm().item() / ref.norm().item()
        times = []
        for _ in range(30):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            call()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) / 1e3)
        return sorted(times[5:])[len(times[5:]) // 2], err

    results = []
    for block_n in (32, 64, 128):
        for warps in (4, 8):
            for stages in (2, 3):
                for target in (1024, 2048, 4096):
                    cls.BLOCK_N, cls.NUM_WARPS, cls.NUM_STAGES, cls.TARGET_PROGRAMS = block_n, warps, stages, target
                    setting = {"block_n": block_n, "num_warps": warps, "num_stages": stages, "target_programs": target}
                    try:
                        attn = cls(rows, kv, groups, dim, length, device, torch.bfloat16)
                        t, err = timed(attn, True)
                        results.append({**setting, "nsplit": attn.nsplit, "us": t * 1e6, "GBps": unique / t / 1e9, "rel_err": err})
                    except Exception as e:  # noqa: BLE001 - a setting that does not compile is just left out
                        results.append({**setting, "error": str(e)[:200]})
    good = [r for r in results if "us" in r and r["rel_err"] < 2e-2]
    best = min(good, key=lambda r: r["us"]) if good else {"block_n": 64, "num_warps": 8, "num_stages": 2, "target_programs": 1024}
    cls.BLOCK_N, cls.NUM_WARPS, cls.NUM_STAGES, cls.TARGET_PROGRAMS = (best["block_n"], best["num_warps"], best["num_stages"],
                                                                      best["target_programs"])
    if good:
        t, err = timed(cls(rows, kv, groups, dim, length, device, torch.bfloat16), False)
        results.append({**{k: best[k] for k in ("block_n", "num_warps", "num_stages", "target_programs")}, "shared_prompt": False,
                        "us": t * 1e6, "GBps": unique / t / 1e9, "rel_err": err})
    for r in sorted(results, key=lambda r: r.get("us", 1e9))[:8] + results[-1:]:
        print("attn", r, flush=True)
    print(f"attn chosen {best} ({len(good)} of {len(results)} settings ran)", flush=True)
    return results


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
        by_name[e.name] = by_name.get(e.name, 0.0) + e.device_time / 1e6
    top = sorted(by_name.items(), key=lambda kv: -kv[1])[:12]
    return {"wall_s": wall, "kernel_s": busy, "kernel_frac": busy / wall, "steps": engine.last_stats["decode_steps"],
            "top_kernels_s": [[name[:90], round(t, 4)] for name, t in top]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on CPU, to check the script itself")
    ap.add_argument("--out", default="benchmarks/results/rollout.json")
    ap.add_argument("--hf-new", type=int, default=256, help="new tokens for the transformers rows (they are slow)")
    ap.add_argument("--native-only", action="store_true", help="skip the transformers and variant rows")
    ap.add_argument("--budget-s", type=float, default=470, help="skip the remaining rows after this many seconds")
    args = ap.parse_args()
    device = "cpu" if args.smoke else "cuda"
    dtype = torch.float32 if args.smoke else torch.bfloat16
    new, long_new, prompt_len, hf_new = (16, 24, 8, 8) if args.smoke else (1024, 1792, 256, args.hf_new)
    report = {"card": torch.cuda.get_device_name() if device == "cuda" else "cpu", "date": datetime.date.today().isoformat(),
              "torch": torch.__version__, "rows": [], "notes": []}
    import transformers

    report["transformers"] = transformers.__version__
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)

    def save():
        out_path.write_text(json.dumps(report, indent=1, default=str))

    def add(row):
        row.pop("_engine", None)
        report["rows"].append(row)
        print(f"[{time.perf_counter() - T0:6.1f}s] {row['engine']:>14} new={row['new_tokens']:5d} tok/s={row['tok_s']:9.1f} "
              f"floor={row['floor_frac']:.2f} peak={row['peak_gib']:.1f}GiB cold={row['cold_s']:.1f}s", flush=True)
        save()

    report["copy_bandwidth_Bps"] = bandwidth = copy_bandwidth(device)
    print(f"copy bandwidth {bandwidth / 1e12:.2f} TB/s (read+write)", flush=True)
    report["correctness"] = correctness(device, dtype)
    print("correctness", report["correctness"], flush=True)
    save()

    try:
        report["attention_tuning"] = tune_attention(device)
    except Exception as err:  # noqa: BLE001 - keep the defaults and go on
        report["notes"].append(f"attention tuning failed: {type(err).__name__}: {err}")
    save()
    model = build(qwen3_4b_config(args.smoke), device, dtype)
    report["weight_bytes"] = sum(p.numel() * p.element_size() for p in model.parameters())
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(1, model.config.vocab_size, (prompt_len,), generator=gen).tolist() for _ in range(8)]

    def over_budget(what):
        if time.perf_counter() - T0 > args.budget_s:
            report["notes"].append(f"skipped {what}: time budget")
            print(f"skipping {what}", flush=True)
            return True
        return False

    main_row = native_row(model, prompts, 8, new, device, bandwidth, "native")
    engine = main_row["_engine"]
    add(main_row)
    if not over_budget("profile"):
        report["profile_native_256"] = profile_kernels(engine, prompts, 8, 256 if not args.smoke else 8, device)
        print("profile", {k: v for k, v in report["profile_native_256"].items() if k != "top_kernels_s"}, flush=True)
        save()
    del engine, main_row
    if not over_budget("native 2048 total"):
        add(native_row(model, prompts, 8, long_new, device, bandwidth, "native", cold_too=False))
    add(native_row(model, prompts, 8, hf_new, device, bandwidth, "native"))
    for cache in ("dynamic", "static") if not args.native_only else ():
        if not over_budget(f"hf-{cache}"):
            try:
                add(hf_row(model, prompts, 8, hf_new, device, bandwidth, cache))
            except Exception as err:  # noqa: BLE001 - report and go on to the next row
                report["notes"].append(f"hf-{cache} failed: {type(err).__name__}: {err}")
                print(report["notes"][-1], flush=True)
    variants = [("native-sdpa-buckets", dict(attention="sdpa")), ("native-no-compile", dict(use_compile=False))]
    if device == "cpu":
        variants = [("native-lowrank", dict(lora="lowrank"))]
    for label, kw in variants if not args.native_only else ():
        if not over_budget(label):
            try:
                add(native_row(model, prompts, 8, new // 4, device, bandwidth, label, **kw))
            except Exception as err:  # noqa: BLE001
                report["notes"].append(f"{label} failed: {type(err).__name__}: {err}")
                print(report["notes"][-1], flush=True)
    if not args.native_only and not over_budget("lora rows"):
        lora_rows(model, prompts, new // 4, device, bandwidth, add, report)
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
    """The short table the run ends with."""
    print(f"\n{report['card']}  copy bw {report['copy_bandwidth_Bps'] / 1e12:.2f} TB/s  torch {report['torch']}")
    print(f"{'engine':>20} {'rows':>4} {'new':>5} {'tok/s':>9} {'floor':>6} {'ms/step':>8} {'peak GiB':>8} {'capture s':>9} {'cold s':>7}")
    for r in report["rows"]:
        print(f"{r['engine']:>20} {r['rows']:>4} {r['new_tokens']:>5} {r['tok_s']:>9.0f} {r['floor_frac']:>6.2f} "
              f"{r.get('ms_per_step', float('nan')):>8.2f} {r['peak_gib']:>8.1f} {r.get('capture_warmup_s', float('nan')):>9.1f} {r['cold_s']:>7.1f}")
    for note in report["notes"]:
        print("note:", note)


if __name__ == "__main__":
    main()
