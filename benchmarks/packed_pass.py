"""The GRPO training passes packed (each prompt once, no padding; `mathgrpo.training.packing`) against rows, on
the GPU.

Subject: the Qwen3-4B shape with random bf16 weights, LoRA r32 / alpha 64 on all projections (B drawn non-zero),
Liger where installed, checkpointed layers keeping their products (what the memory plan picks on an 80 GB card)
or only their inputs, or compiled (`--ways`). A step's batch: 8 prompts x 8 completions, either every prompt 256 tokens and
every completion 256 (the GRPO step benchmark's shape) or prompts of 193-256 and completions of 32-256 tokens
(`ragged`). Micro-batches of 16 completions cut as the trainer cuts them (rows: longest first; packed: by prompt).
For each layout: the tokens the layers run, forward + backward of the whole batch (CUDA events, mean of 5 after
3 warm-up calls), peak memory; between the two, the largest log-prob difference at real completion tokens and
the cosine of the LoRA gradients (bf16 both ways, so not zero).

    PYTHONPATH=src python3 benchmarks/packed_pass.py --out $OUT
"""

from __future__ import annotations

import argparse
import json
from contextlib import nullcontext
from pathlib import Path

import torch

from _subject import QWEN3_4B, cuda_ms, kernel_profile

R, PROMPTS, G, MICRO = 32, 8, 8, 16


def build(keep: bool, compiled: bool = False):
    """The LoRA-wrapped Qwen3-4B-shaped model in train mode: checkpointed (products kept or not), or with its layers
    compiled and not checkpointed (`model.compile_layers`: the compiler keeps the products; no Liger, whose kernels
    the compiler generates itself)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from mathgrpo.config import LoraConfig, ModelConfig
    from mathgrpo.model.fused_lora import fuse_lora
    from mathgrpo.model.compiled import compile_layers
    from mathgrpo.model.loading import add_lora, apply_liger, checkpoint_layers

    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Qwen3ForCausalLM(Qwen3Config(**QWEN3_4B)).to(torch.bfloat16)
    model.set_attn_implementation("sdpa")
    if not compiled:
        apply_liger(model, ModelConfig())
    model = add_lora(model, LoraConfig(r=R, alpha=2 * R))
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.02)
    fuse_lora(model)  # as the trainer runs it (model.fused_lora)
    if compiled:
        compile_layers(model)
    else:
        checkpoint_layers(model, keep_matmuls=keep)
        model.enable_input_require_grads()
    model.train()
    return model


def step_batch(ragged: bool, seed: int = 0):
    """A RolloutBatch of 8 prompts x 8 completions (see the module docstring), advantages drawn at random."""
    from mathgrpo.training.batch import RolloutBatch

    g = torch.Generator().manual_seed(seed)
    draw = lambda lo, hi: int(torch.randint(lo, hi + 1, (1,), generator=g)) if ragged else hi  # noqa: E731
    P, C = 256, 256
    ids = torch.zeros((PROMPTS * G, P + C), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i in range(PROMPTS):
        p = draw(193, 256)
        prompt = torch.randint(3, 150_000, (p,), generator=g)
        for j in range(G):
            row, c = i * G + j, draw(32, 256)
            ids[row, P - p : P] = prompt
            ids[row, P : P + c] = torch.randint(3, 150_000, (c,), generator=g)
            mask[row, P - p : P + c] = 1
    adv = torch.randn(PROMPTS * G, generator=g)
    return RolloutBatch(ids.cuda(), mask.cuda(), P, mask[:, P:].float().cuda(), adv.cuda())


def run_layout(model, batch, packed: bool) -> dict:
    """Time, memory, log-probs and LoRA gradients of forward + backward over `batch` laid out one way."""
    from mathgrpo.config import ModelConfig
    from mathgrpo.model.compiled import training_passes
    from mathgrpo.model.loading import training_attention
    from mathgrpo.training import packing
    from mathgrpo.training.logprobs import PassLayout, model_parts, token_logprobs

    layout = PassLayout(pack=packed)
    micros = batch.micro_batches(MICRO, by_prompt=packed)
    tokens = []

    def pass_(grad: bool = True):
        out = []
        for m in micros:
            logp = token_logprobs(model, m.input_ids, m.attention_mask, m.prompt_width, 1.0, 1024, layout)
            if grad:
                (logp * m.advantages[:, None] * m.completion_mask).sum().backward()
            out.append(logp.detach())
        return out

    with training_attention(ModelConfig(), torch.device("cuda")), training_passes(model), \
            (packing.attention(model) if packed else nullcontext()):
        hook = model_parts(model)[0].register_forward_pre_hook(lambda mod, a, k: tokens.append(k["input_ids"].numel()), with_kwargs=True)
        with torch.no_grad():
            logps = pass_(grad=False)
        hook.remove()
        model.zero_grad(set_to_none=True)
        pass_()
        grads = torch.cat([p.grad.float().flatten() for p in model.parameters() if p.requires_grad])
        torch.cuda.reset_peak_memory_stats()
        ms = cuda_ms(pass_, iters=5)
        peak = torch.cuda.max_memory_allocated() / 2**30
    model.zero_grad(set_to_none=True)
    return {"tokens": sum(tokens), "ms": ms, "peak_gib": peak, "_logps": logps, "_grads": grads}


def compare(batch, rows: dict, packed: dict) -> dict:
    """Largest and mean |log-prob difference| at real tokens, and the cosine of the LoRA gradients."""
    full = {}
    for key, res in (("rows", rows), ("packed", packed)):
        out = torch.zeros(batch.completion_mask.shape, device="cuda")
        order = torch.cat(batch.micro_indices(MICRO, by_prompt=key == "packed"))
        at = 0
        for logp in res["_logps"]:
            n = logp.shape[0]
            out[order[at : at + n], : logp.shape[1]] = logp.float()
            at += n
        full[key] = out
    real = batch.completion_mask.bool()
    diff = (full["rows"] - full["packed"])[real].abs()
    cos = torch.nn.functional.cosine_similarity(rows["_grads"], packed["_grads"], dim=0).item()
    return {"logp_diff_max": diff.max().item(), "logp_diff_mean": diff.mean().item(), "grad_cosine": cos}


def profile(out: Path, way: str = "kept") -> None:
    """Kernel time by category of one micro-batch (MICRO completions, 256 + 256) forward + backward, rows and
    packed, the top kernels to files; and the host time of packing it."""
    import time

    from mathgrpo.config import ModelConfig
    from mathgrpo.model.compiled import training_passes
    from mathgrpo.model.loading import training_attention
    from mathgrpo.training import packing
    from mathgrpo.training.logprobs import PassLayout, token_logprobs

    model, batch = build(way == "kept", way == "compiled"), step_batch(False)
    micro = batch.micro_batches(MICRO, by_prompt=True)[0]
    t = time.perf_counter()
    packing.pack(micro.input_ids, micro.attention_mask, micro.prompt_width)
    report = {"way": way, "micro": MICRO, "pack_host_ms": (time.perf_counter() - t) * 1000}
    for packed in (False, True):
        run = lambda: (token_logprobs(model, micro.input_ids, micro.attention_mask, micro.prompt_width, 1.0, 1024,  # noqa: E731
                                      PassLayout(pack=packed)) * micro.completion_mask).sum().backward()
        with training_attention(ModelConfig(), torch.device("cuda")), training_passes(model), \
                (packing.attention(model) if packed else nullcontext()):
            name = f"{way}_{'packed' if packed else 'rows'}"
            report["packed" if packed else "rows"] = kernel_profile(run, out / f"profile_{name}.txt")
    print(json.dumps(report, indent=1))
    (out / f"packed_profile_{way}.json").write_text(json.dumps(report, indent=1))


WAYS = {"kept": "checkpointed, products kept", "plain": "checkpointed inputs", "compiled": "compiled layers"}


def main() -> None:
    global MICRO
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--ways", nargs="+", default=["kept"], choices=sorted(WAYS),
                    help="how the layers run: " + "; ".join(f"{k}: {v}" for k, v in WAYS.items()))
    ap.add_argument("--micro", type=int, default=MICRO, help="completions a micro-batch")
    ap.add_argument("--profile", action="store_true", help="only: kernel time of one micro-batch's forward + backward each way")
    args = ap.parse_args()
    MICRO = args.micro
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.profile:
        for way in args.ways:
            profile(out, way)
        return
    results, first = [], {}  # first: the first way's rows per batch, which the others' gradients are compared with
    for way in args.ways:
        model = build(way == "kept", way == "compiled")
        for ragged in (False, True):
            batch = step_batch(ragged)
            rows, packed = run_layout(model, batch, False), run_layout(model, batch, True)
            row = {"way": way, "micro": MICRO, "ragged": ragged, **compare(batch, rows, packed)}
            for key, res in (("rows", rows), ("packed", packed)):
                row.update({f"{key}_{k}": v for k, v in res.items() if not k.startswith("_")})
            row["speedup"] = rows["ms"] / packed["ms"]
            base = first.setdefault(ragged, rows)
            row["rows_grad_cosine_vs_first_way"] = torch.nn.functional.cosine_similarity(
                base["_grads"], rows["_grads"], dim=0).item()
            results.append(row)
            print(json.dumps(row), flush=True)
        del model, rows, packed
        torch.cuda.empty_cache()
    name = "packed_pass.json" if args.ways == ["kept"] and MICRO == 16 else f"packed_pass_{'_'.join(args.ways)}_{MICRO}.json"
    (out / name).write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": results}, indent=1))
    print(f"{'way':>8} {'micro':>5} {'ragged':>6} {'rows tok':>9} {'packed tok':>10} {'rows ms':>8} {'packed ms':>9} "
          f"{'x':>5} {'rows GiB':>8} {'packed GiB':>10} {'dlogp max':>9} {'grad cos':>8}")
    for r in results:
        print(f"{r['way']:>8} {r['micro']:>5} {r['ragged']!s:>6} {r['rows_tokens']:>9} {r['packed_tokens']:>10} "
              f"{r['rows_ms']:>8.1f} {r['packed_ms']:>9.1f} {r['speedup']:>5.2f} {r['rows_peak_gib']:>8.1f} "
              f"{r['packed_peak_gib']:>10.1f} {r['logp_diff_max']:>9.4f} {r['grad_cosine']:>8.5f}")


if __name__ == "__main__":
    main()
