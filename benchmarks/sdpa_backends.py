"""Training with and without PyTorch's cuDNN attention backend: are the adapter gradients finite, and
how fast is forward + backward?

Why: pytorch/pytorch#196678 reports NaN query gradients from the cuDNN SDPA backward on H100/H200
(torch 2.11+) when an attention mask is passed, the sequence length is 64 mod 128 and some query
row's log-sum-exp is very negative (a fully masked row is). Our rollout micro-batches are left-padded.
The log-probs now rotate each row past its padding and pass no mask at all (`right_aligned`; the
default row below); a batch that cannot be rotated is passed masked, and at such widths 8 columns
wider (`safe_attention_width`); `model.cudnn_attention=false` turns the backend off. This script checks
each on the Qwen3-4B shape (random bf16 weights, LoRA r32 fused, gradient checkpointing, Liger when
installed) at widths that are and are not 64 mod 128: rotated without a mask (the default), masked
with cuDNN without the wider batches (the bug), masked with them, masked with cuDNN off; and times each.

    PYTHONPATH=src python3 benchmarks/sdpa_backends.py --out $OUT/sdpa_backends.json
    PYTHONPATH=src python benchmarks/sdpa_backends.py --smoke     # tiny shapes on CPU: checks the script runs
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from _subject import QWEN3_4B

WIDTHS = (1280, 1344, 1300, 704)  # 1344 and 704 are 64 mod 128
BATCH, PAD = 8, 37  # every other row left-padded by PAD tokens


def build(smoke: bool):
    """The LoRA model training uses (fused projections, checkpointing), on the GPU or, for --smoke, the CPU."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from mathgrpo.config import LoraConfig, ModelConfig
    from mathgrpo.model.fused_lora import fuse_lora
    from mathgrpo.model.loading import add_lora, apply_liger, enable_checkpointing

    torch.manual_seed(0)
    shape = dict(QWEN3_4B)
    if smoke:
        shape.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=16, vocab_size=512)
    device = "cpu" if smoke else "cuda"
    with torch.device(device):
        model = Qwen3ForCausalLM(Qwen3Config(**shape)).to(torch.float32 if smoke else torch.bfloat16)
    apply_liger(model, ModelConfig())
    model = add_lora(model, LoraConfig(r=32, alpha=64))
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.02)
    enable_checkpointing(model, ModelConfig())
    fuse_lora(model)
    model.train()
    return model, shape["vocab_size"], device


def one_pass(model, vocab: int, width: int, device: str, layout) -> tuple:
    """Forward + backward of the log-prob loss on a left-padded batch laid out by `layout`: (seconds, all adapter grads finite)."""
    from mathgrpo.training.logprobs import token_logprobs

    g = torch.Generator(device=device).manual_seed(width)
    ids = torch.randint(3, vocab, (BATCH, width), device=device, generator=g)
    mask = torch.ones_like(ids)
    mask[::2, :PAD] = 0
    adv = torch.randn(BATCH, 1, device=device, generator=g)
    model.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    (token_logprobs(model, ids, mask, width // 4, 1.0, 1024, layout) * adv).mean().backward()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t
    finite = all(bool(torch.isfinite(p.grad).all()) for p in model.parameters() if p.grad is not None)
    return seconds, finite


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="benchmarks/results/sdpa_backends.json")
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args()
    model, vocab, device = build(args.smoke)
    widths = (64, 72) if args.smoke else WIDTHS
    from mathgrpo.training.logprobs import PassLayout

    rows = []
    for cudnn, guard, rotate in ((True, True, True), (True, False, False), (True, True, False), (False, True, False)):
        torch.backends.cuda.enable_cudnn_sdp(cudnn)
        layout = PassLayout(rotate=rotate, guard_widths=guard)  # rotate=False: the masked path
        for width in widths:
            one_pass(model, vocab, width, device, layout)  # warm-up: kernels, plans
            times, finite = [], True
            for _ in range(3):
                seconds, ok = one_pass(model, vocab, width, device, layout)
                times.append(seconds)
                finite = finite and ok
            rows.append({"rotated_no_mask": rotate, "cudnn_sdp": cudnn, "wider_at_64_mod_128": guard, "width": width, "width_mod_128": width % 128, "grads_finite": finite,
                         "tok_s": BATCH * width / min(times), "s_per_pass": min(times)})
            print(rows[-1], flush=True)
    report = {"card": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d"), "batch": BATCH, "left_pad": PAD, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"\n{report['card']}  torch {report['torch']}")
    print(f"{'rotated':>7} {'cuDNN':>6} {'wider':>6} {'width':>6} {'mod 128':>7} {'finite':>7} {'tok/s':>9}")
    for r in rows:
        print(f"{str(r['rotated_no_mask']):>7} {str(r['cudnn_sdp']):>6} {str(r['wider_at_64_mod_128']):>6} {r['width']:>6} {r['width_mod_128']:>7} "
              f"{str(r['grads_finite']):>7} {r['tok_s']:>9,.0f}")


if __name__ == "__main__":
    main()
