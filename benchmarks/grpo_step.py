"""One GRPO step on the GPU: our trainer against TRL's GRPOTrainer (with PEFT, and on an Unsloth model).

Subject: a Qwen3-4B-shaped model (hidden 2560, 36 layers, 32/8 heads, head_dim 128, intermediate
9728, vocab 151,936, tied embeddings) with random bf16 weights, built on the GPU once and saved to a
local folder so that every path loads the same weights by path; a word-level tokenizer over 151,936
made-up tokens; LoRA r32 / alpha 64 on all projections; 8 prompts x 8 samples, 256-token prompts,
completions forced to their full length (no stop ids in our engine).

Each phase runs in its own process (Unsloth must be imported before transformers; memory caps and
Liger's patches must not leak) and appends its rows to the JSON files as soon as it finishes, so a
run cut short still reports what it measured. Phases past the deadline are skipped and say so.

    PYTHONUNBUFFERED=1 PYTHONPATH=src python3 benchmarks/grpo_step.py --out $OUT --deadline 420
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

T0 = time.perf_counter()
MODEL_DIR = "/tmp/q4b-random"
PROMPT, NEW, PROMPTS, G, R = 256, 1024, 8, 8, 32
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LAYOUT = None  # this phase's log-prob layout (mathgrpo.training.logprobs.PassLayout) set by main from --masked /
# --width-multiple / --rows; None: the default layout


# ---- shared helpers (run inside each phase's process) ------------------------------------------

def build_tokenizer(vocab: int):
    """A word-level tokenizer over `vocab` made-up tokens: text 't5 t17' is ids [5, 17] and back.

    The special tokens get names that are no prefix of a word ('t1' as eos would split 't123').
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {"<pad>": 0, "<eos>": 1, "<unk>": 2, **{f"t{i}": i for i in range(3, vocab)}}
    core = Tokenizer(models.WordLevel(vocab=words, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    tok.padding_side = "left"
    return tok


def build_and_save() -> dict:
    """Random Qwen3-4B-shaped weights made on the GPU and saved with the tokenizer (once per machine)."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    if (Path(MODEL_DIR) / "config.json").exists():
        return {"saved": MODEL_DIR, "reused": True}
    from _subject import QWEN3_4B

    cfg = Qwen3Config(**QWEN3_4B, pad_token_id=0, eos_token_id=1, bos_token_id=None)
    with torch.device("cuda"):
        model = Qwen3ForCausalLM(cfg).to(torch.bfloat16)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.normal_(0, 0.02)
    model.save_pretrained(MODEL_DIR)
    build_tokenizer(cfg.vocab_size).save_pretrained(MODEL_DIR)
    return {"saved": MODEL_DIR, "params": sum(p.numel() for p in model.parameters())}


def prompts(n: int, length: int = PROMPT, seed: int = 0, ragged: bool = False) -> list:
    """`n` prompts of exactly `length` made-up tokens; `ragged`: prompt i is (i * 37) % 64 tokens shorter, so
    rollout batches are left-padded as real ones are."""
    import random

    rng = random.Random(seed)
    return [" ".join(f"t{rng.randrange(3, 151936)}" for _ in range(length - (i * 37 % 64 if ragged else 0))) for i in range(n)]


def peak_reset() -> None:
    import torch

    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()


def peak_gib() -> float:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30


def cap(gb: float) -> None:
    """Cap this process's CUDA allocations at `gb` GiB (what a smaller card would allow)."""
    import torch

    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(gb * 2**30 / total)


# ---- phases ---------------------------------------------------------------------------------------

def ours_run(backend: str, new: int, prompts_n: int, g: int, extra: list, ragged: bool = False):
    """A GRPORun on the saved model with the benchmark's settings (`ragged`: prompts of varying length)."""
    from mathgrpo.config import load_config
    from mathgrpo.data.problem import Problem
    from mathgrpo.training.grpo import GRPORun

    over = [f"model.name={MODEL_DIR}", f"model.backend={backend}", "model.dtype=bfloat16", f"model.max_seq_length={PROMPT + new}",
            f"lora.r={R}", f"lora.alpha={2 * R}", "lora.enabled=true", "sft.full_finetune=false", "format.template=bare",
            f"rollout.max_new_tokens={new}", "rollout.temperature=1.0", f"grpo.prompts_per_step={prompts_n}",
            f"grpo.num_generations={g}", "run.progress=false", "run.sample_every=100000", "rollout.engine=auto", "model.gradient_checkpointing=true", *extra]
    cfg = load_config("tiny-cpu", over)
    probs = [Problem(id=str(i), question=q, answer="0", source="bench") for i, q in enumerate(prompts(64, ragged=ragged))]
    run = GRPORun(cfg, Path("/tmp/bench-run"), probs, probs[:1])
    run.engine.stop_ids = []  # forced length
    run.update.layout = LAYOUT or run.update.layout
    return run


def phase_ours(args) -> list:
    """Our step: a warm-up step, then timed steps at 256 + 1,024 and (after one step at the new shapes)
    at 256 + 256 for the TRL rows."""
    run = ours_run(args.backend, NEW, PROMPTS, G, args.extra, args.ragged)
    rows = []
    for label, new in (("warm-up (compile, capture)", NEW), ("timed", NEW), ("first at 256", 256), ("timed", 256)):
        run.params = type(run.params)(max_new_tokens=new, temperature=1.0)
        m = run.train_step()
        rows.append(step_row(f"ours ({args.backend})", label, new, PROMPTS * G, m, run))
        rows[-1]["overrides"] = args.extra
        print(rows[-1], flush=True)
    return rows


def phase_ours_fp8(args) -> list:
    """`phase_ours` with FP8 rollouts (rollout.precision=fp8, or --precision fp8-kv)."""
    args.extra = [*args.extra, f"rollout.precision={args.precision}"]
    return phase_ours(args)


def step_row(path: str, label: str, new: int, rows_n: int, m: dict, run=None) -> dict:
    """One table row from a step's metrics."""
    keys = ("step_time", "rollout_time", "reference_time", "logprob_time", "backward_time", "optimizer_time",
            "peak_memory_gb", "micro_batch_size", "completion_length", "tokens_per_s")
    row = {"path": path, "run": label, "prompt": PROMPT, "new_tokens": new, "completions": rows_n, **{k: m.get(k) for k in keys}}
    if run is not None:
        row["engine"] = run.engine.name
        row["rollout_batch"] = getattr(run.engine, "batch_size", None)
        row["snapshots_on_device"] = getattr(run.engine, "snapshots_on_device", None)
        row["chunk_tokens"] = run.sizing.chunk_tokens
        norm = run.model.get_base_model().model.norm
        row["liger"] = "liger" in (type(norm).__name__ + str(getattr(norm, "forward", ""))).lower()
        if run.sizing.plan is not None:
            width = PROMPT + new
            micro = m.get("micro_batch_size") or 1
            row["estimated_train_peak_gib"] = run.sizing.plan.train_bytes(micro, width, run.engine.held_bytes()) / 2**30
    return row


def phase_capped(args) -> list:
    """Our step under set_per_process_memory_fraction at args.cap GiB, the budget set to match: the first
    step of a fresh process, and with --warm also the second (compilation and graph capture done)."""
    cap(args.cap)
    run = ours_run("transformers", args.new, args.prompts, args.g, [f"grpo.max_memory_gb={args.cap}", *args.extra])
    rows = []
    for label in ("first step", "second step")[: 2 if args.warm else 1]:
        try:
            m = run.train_step()
            row = step_row("ours (transformers)", f"capped {args.cap:g} GiB, {label}", args.new, args.prompts * args.g, m, run)
            row["completed"], row["offloaded"] = True, run.sizing.offloaded
        except Exception as err:  # the row records how it failed
            row = {"path": "ours", "run": f"capped {args.cap:g} GiB, {label}", "completed": False,
                   "error": f"{type(err).__name__}: {err}"[:500]}
        print(row, flush=True)
        rows.append(row)
    if args.profile and rows[-1].get("completed"):
        rows.append(profiled_step(run, f"capped {args.cap:g} GiB", args.new, args.prompts * args.g))
    return rows


def profiled_step(run, label: str, new: int, rows_n: int) -> dict:
    """One more step under torch.profiler: its row, and the top kernels and CPU ops written beside the results."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        m = run.train_step()
    row = step_row("ours (transformers)", f"{label}, profiled step", new, rows_n, m, run)
    by = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=by, row_limit=40, max_name_column_width=70)
    cpu = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=70)
    path = Path(os.environ.get("OUT", tempfile.gettempdir())) / f"grpo_step_profile_{label.replace(' ', '_')}.txt"
    path.write_text(f"{row}\n\n== by device time ==\n{table}\n\n== by CPU time ==\n{cpu}\n")
    row["profile"] = str(path)
    print(row, flush=True)
    return row


def completion_loss(model, ids, mask, prompt: int, temperature: float, layout=None):
    """Our chunked log-probs of the completion tokens ids[:, prompt:]: [N, C] (`layout`: the phase's by default)."""
    from mathgrpo.training.logprobs import DEFAULT_LAYOUT, token_logprobs

    return token_logprobs(model, ids, mask, prompt, temperature, chunk_tokens=1024, layout=layout or LAYOUT or DEFAULT_LAYOUT)


def masked_loss(model, ids, mask, prompt: int, temperature: float):
    """`completion_loss` through the masked path: rows not rotated."""
    from dataclasses import replace

    from mathgrpo.training.logprobs import DEFAULT_LAYOUT

    return completion_loss(model, ids, mask, prompt, temperature, replace(LAYOUT or DEFAULT_LAYOUT, rotate=False))


def time_fwdbwd(model, path: str, loss=completion_loss, pad: int = 0, **extra) -> list:
    """Forward + backward tok/s and peak memory at batch 8 and 16 x 1,280 on a LoRA model in train mode.

    loss(model, ids, mask, prompt, temperature): per-token log-probs [N, C] or a scalar loss, over the
    1,024 completion tokens of each row. `pad`: every other row's prompt starts with that many masked
    (left-padding) positions, as in a real rollout batch; tok/s still counts every position.
    """
    import torch

    rows = []
    if pad:
        extra = {**extra, "left_pad": pad}
    for batch in (8, 16):
        ids = torch.randint(3, 151936, (batch, PROMPT + NEW), device="cuda")
        mask = torch.ones_like(ids)
        mask[1::2, :pad] = 0
        adv = torch.randn(batch, 1, device="cuda")
        try:
            times = []
            peak_reset()
            for _ in range(3):
                torch.cuda.synchronize()
                t = time.perf_counter()
                (loss(model, ids, mask, PROMPT, 1.0) * adv).mean().backward()
                torch.cuda.synchronize()
                times.append(time.perf_counter() - t)
            wall = min(times[1:])
            row = {"path": path, **extra, "batch": batch, "seq": PROMPT + NEW, "tok_s": batch * (PROMPT + NEW) / wall,
                   "s_per_iter": wall, "peak_gib": peak_gib(), "peak_gb": peak_gib() * 2**30 / 1e9}
        except torch.cuda.OutOfMemoryError as err:
            row = {"path": path, "batch": batch, "error": f"OOM: {str(err)[:200]}"}
        model.zero_grad(set_to_none=True)
        rows.append(row)
        print(row, flush=True)
    return rows


def phase_fwdbwd(args) -> list:
    """Forward + backward throughput, batch 8 and 16 x 1,280: transformers + PEFT (full logits) vs our chunked path."""
    import torch
    from transformers import AutoModelForCausalLM

    from mathgrpo.config import LoraConfig, ModelConfig
    from mathgrpo.model.fused_lora import fuse_lora
    from mathgrpo.training.logprobs import plain_token_logprobs
    from mathgrpo.model.loading import add_lora, apply_liger, checkpoint_layers

    rows = []
    for path in ("transformers + PEFT", "ours"):
        model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.bfloat16).cuda()
        liger = apply_liger(model, ModelConfig(use_liger=None)) if path == "ours" and not args.no_liger else False
        model = add_lora(model, LoraConfig(r=R, alpha=2 * R, target_modules=TARGETS))
        checkpoint_layers(model)
        model.enable_input_require_grads()
        if path == "ours":
            fuse_lora(model)
        model.train()
        rows += time_fwdbwd(model, path, completion_loss if path == "ours" else plain_token_logprobs, liger=liger)
        del model
        torch.cuda.empty_cache()
    return rows


def trl_args(new: int, out: str, steps: int):
    """GRPOConfig for `steps` optimizer steps over 8 prompts x 8 completions each, keeping only fields this TRL has."""
    import dataclasses

    from trl import GRPOConfig

    wanted = dict(output_dir=out, per_device_train_batch_size=G, gradient_accumulation_steps=PROMPTS, num_generations=G,
                  max_prompt_length=PROMPT, max_completion_length=new, max_steps=steps, learning_rate=5e-6, bf16=True,
                  gradient_checkpointing=True, logging_steps=1, report_to="none", save_strategy="no", beta=0.0,
                  temperature=1.0, use_vllm=False, dataloader_num_workers=0, seed=0)
    known = {f.name for f in dataclasses.fields(GRPOConfig)}
    return GRPOConfig(**{k: v for k, v in wanted.items() if k in known}), sorted(set(wanted) - known)


def trl_step(model, tok, new: int, label: str, peft_config=None, steps: int = 2) -> dict:
    """Time TRL GRPOTrainer steps (generation + loss + backward + optimizer) with a callback: the first
    step (cold) and the last (warm) are reported."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOTrainer

    from _rewards import length_reward

    spans = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            import torch

            torch.cuda.synchronize()
            spans.append([time.perf_counter(), None])

        def on_step_end(self, *a, **k):
            import torch

            torch.cuda.synchronize()
            spans[-1][1] = time.perf_counter()

    args, dropped = trl_args(new, f"/tmp/trl-{label}", steps)
    ds = Dataset.from_dict({"prompt": prompts(PROMPTS * 4, seed=1)})
    trainer = GRPOTrainer(model=model, reward_funcs=[length_reward], args=args, train_dataset=ds, processing_class=tok,
                          peft_config=peft_config, callbacks=[Clock()])
    peak_reset()
    t = time.perf_counter()
    trainer.train()
    import torch

    torch.cuda.synchronize()
    times = [end - begin for begin, end in spans if end is not None]
    return {"path": label, "new_tokens": new, "prompt": PROMPT, "completions": PROMPTS * G,
            "run": "warm step (the second)" if len(times) > 1 else "one step (cold)",
            "step_time": times[-1] if times else None, "step_times": times, "train_call_s": time.perf_counter() - t,
            "peak_memory_gb": peak_gib(), "dropped_config_fields": dropped}


def phase_trl_peft(args) -> list:
    """TRL GRPOTrainer on the transformers model with a PEFT LoRA config."""
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.bfloat16).cuda()
    tok = AutoTokenizer.from_pretrained(MODEL_DIR)
    tok.padding_side = "left"
    peft = LoraConfig(r=R, lora_alpha=2 * R, target_modules=TARGETS, task_type="CAUSAL_LM")
    row = trl_step(model, tok, args.new, "TRL + PEFT", peft, steps=args.steps)
    print(row, flush=True)
    return [row]


def phase_unsloth(args) -> list:
    """Unsloth first: our trainer with backend=unsloth, then TRL on an Unsloth model, in one process."""
    os.environ.setdefault("UNSLOTH_SKIP_TORCHVISION_CHECK", "1")
    rows = []
    t = time.perf_counter()
    import unsloth  # noqa: F401  before transformers
    rows.append({"path": "unsloth import", "seconds": time.perf_counter() - t, "version": getattr(unsloth, "__version__", "?")})
    try:
        run = ours_run("unsloth", args.new, PROMPTS, G, ["model.use_liger=false", f"model.max_seq_length={PROMPT + NEW}", *args.extra])
        for label in ("warm-up", "timed"):
            rows.append(step_row("ours (unsloth)", label, args.new, PROMPTS * G, run.train_step(), run))
            print(rows[-1], flush=True)
        run.model.train()
        rows += time_fwdbwd(run.model, "ours (unsloth backend)")
        del run
    except Exception as err:
        rows.append({"path": "ours (unsloth)", "error": f"{type(err).__name__}: {err}"[:800], "trace": traceback.format_exc()[-1500:]})
    import torch

    torch.cuda.empty_cache()
    if time.perf_counter() - T0 > args.budget:
        rows.append({"path": "TRL on Unsloth", "skipped": "phase time budget spent"})
        return rows
    try:
        from unsloth import FastLanguageModel

        model, tok = FastLanguageModel.from_pretrained(model_name=MODEL_DIR, max_seq_length=PROMPT + args.new, load_in_4bit=False,
                                                       dtype=torch.bfloat16)
        model = FastLanguageModel.get_peft_model(model, r=R, lora_alpha=2 * R, target_modules=TARGETS, lora_dropout=0.0,
                                                 use_gradient_checkpointing="unsloth", random_state=0)
        rows.append(trl_step(model, tok, args.new, "TRL on Unsloth", steps=args.steps))
    except Exception as err:
        rows.append({"path": "TRL on Unsloth", "error": f"{type(err).__name__}: {err}"[:800], "trace": traceback.format_exc()[-1500:]})
    print(rows[-1], flush=True)
    return rows


def phase_unsloth_fwdbwd(args) -> list:
    """Forward + backward on one model loaded and wrapped by our Unsloth backend (bf16 base, LoRA r32, Unsloth's
    offloaded checkpointing), in a fresh process: Unsloth's own loss (its fused cross-entropy, labels on the
    completion tokens only) with Unsloth's LoRA GEMMs as it ships them, then our chunked log-prob loss with
    and without our order of those GEMMs (`reorder_lora_matmul`), and Unsloth's loss with it too."""
    os.environ.setdefault("UNSLOTH_SKIP_TORCHVISION_CHECK", "1")
    import unsloth  # noqa: F401  before transformers
    import torch

    from mathgrpo.config import LoraConfig, ModelConfig
    from mathgrpo.model.unsloth_backend import add_lora_unsloth, load_unsloth

    cfg = ModelConfig(name=MODEL_DIR, backend="unsloth", dtype="bfloat16", max_seq_length=PROMPT + NEW)
    model, _ = load_unsloth(cfg, torch.bfloat16)
    model = add_lora_unsloth(model, LoraConfig(r=R, alpha=2 * R, target_modules=TARGETS), cfg, seed=0)
    model.train()

    def unsloth_loss(model, ids, mask, prompt, temperature):
        labels = ids.masked_fill(torch.arange(ids.shape[1], device=ids.device) < prompt, -100)
        return model(input_ids=ids, attention_mask=mask, labels=labels).loss

    from mathgrpo.training.logprobs import FrozenHeadLogProb, model_parts

    def head_logprobs(model, hidden, ids, prompt, temperature):
        """Our frozen-head log-probs of the completion tokens from the hidden states that predict them [N, C, H]."""
        flat = hidden.reshape(-1, hidden.shape[-1])
        head = model_parts(model)[1]
        return FrozenHeadLogProb.apply(flat, head.weight, ids[:, prompt:].reshape(-1), temperature, 1024).view(ids.shape[0], -1)

    def ours_without_positions(model, ids, mask, prompt, temperature):
        """Our loss with the body called as Unsloth's own forward calls it (no position ids; same positions here)."""
        hidden = model_parts(model)[0](input_ids=ids, attention_mask=mask).last_hidden_state[:, prompt - 1 : -1]
        return head_logprobs(model, hidden, ids, prompt, temperature)

    def unsloth_grpo_call(model, ids, mask, prompt, temperature):
        """The body as Unsloth's GRPO trainer calls it: the causal LM without labels (so a left-padded batch keeps
        its mask), hidden states returned in place of logits (UNSLOTH_RETURN_HIDDEN_STATES); our head loss after."""
        os.environ["UNSLOTH_RETURN_HIDDEN_STATES"] = "1"
        try:
            hidden = model(input_ids=ids, attention_mask=mask).logits[:, prompt - 1 : -1]
        finally:
            del os.environ["UNSLOTH_RETURN_HIDDEN_STATES"]
        return head_logprobs(model, hidden, ids, prompt, temperature)

    from mathgrpo.model.unsloth_backend import reorder_lora_matmul, restore_lora_matmul

    def shipped(measure, *args, **kw):
        """measure(*args, **kw) with Unsloth's LoRA GEMMs as it ships them; our order (the backend's) again after."""
        restore_lora_matmul()
        try:
            return measure(*args, **kw)
        finally:
            reorder_lora_matmul()

    assert reorder_lora_matmul()  # the backend put the low-rank product first when it added the adapters
    rows = shipped(time_fwdbwd, model, "Unsloth, its own loss", unsloth_loss)
    rows += shipped(time_fwdbwd, model, "ours on the Unsloth backend, Unsloth's LoRA GEMM order", lora_order="unsloth")
    rows += time_fwdbwd(model, "ours on the Unsloth backend")
    rows += time_fwdbwd(model, "Unsloth, its own loss, with our LoRA GEMM order", unsloth_loss, lora_order="ours")
    rows += shipped(time_fwdbwd, model, "Unsloth, its own loss (again)", unsloth_loss)
    rows += time_fwdbwd(model, "ours on the Unsloth backend, no position ids", ours_without_positions)
    rows.append(profile_fwdbwd(model, "ours on the Unsloth backend", "unsloth_ours"))
    rows.append(shipped(profile_fwdbwd, model, "Unsloth, its own loss", "unsloth_own", unsloth_loss))
    rows += time_fwdbwd(model, "ours on the Unsloth backend, left-padded rows (rotated, no mask)", pad=37)
    rows += shipped(time_fwdbwd, model, "Unsloth's GRPO call (label-less, hidden states) + our head, left-padded rows",
                    unsloth_grpo_call, pad=37)
    rows += time_fwdbwd(model, "ours on the Unsloth backend, left-padded rows, masked", masked_loss, pad=37)
    from mathgrpo.model.offload import offload_checkpoints

    layers = offload_checkpoints(model)  # our host offload in place of Unsloth's, same layers and kernels
    rows += time_fwdbwd(model, "ours on the Unsloth backend, our offloaded checkpoints", offloaded_layers=layers)
    rows.append(profile_fwdbwd(model, "ours on the Unsloth backend, our offloaded checkpoints", "unsloth_ours_offload"))
    return rows


def profile_fwdbwd(model, path: str, name: str, loss=completion_loss, batch: int = 16) -> dict:
    """Kernel time of one forward + backward at `batch` x 1,280 by category; the top kernels go to
    grpo_step_profile_<name>.txt in $OUT (or the temporary folder)."""
    import torch

    from _subject import kernel_profile

    ids = torch.randint(3, 151936, (batch, PROMPT + NEW), device="cuda")
    mask, adv = torch.ones_like(ids), torch.randn(batch, 1, device="cuda")

    def run():
        (loss(model, ids, mask, PROMPT, 1.0) * adv).mean().backward()
        model.zero_grad(set_to_none=True)

    out = Path(os.environ.get("OUT", tempfile.gettempdir())) / f"grpo_step_profile_{name}.txt"
    row = {"path": path, "profile": str(out), "batch": batch, "seq": PROMPT + NEW, **kernel_profile(run, out)}
    print(row, flush=True)
    return row


PHASES = {"build": lambda a: [build_and_save()], "ours": phase_ours, "ours_fp8": phase_ours_fp8, "capped": phase_capped, "capped_warm": phase_capped,
          "fwdbwd": phase_fwdbwd,
          "trl_peft": phase_trl_peft, "unsloth": phase_unsloth, "unsloth_fwdbwd": phase_unsloth_fwdbwd}


# ---- the driver ---------------------------------------------------------------------------------

def run_phase(name: str, out: Path, timeout: float, *flags: str) -> list:
    """Run one phase in a fresh process; its rows, or one row saying why there are none."""
    result = Path(tempfile.gettempdir()) / f"phase-{name}-{abs(hash(flags)) % 10000}.json"  # $OUT takes 8 files
    result.unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "--phase", name, "--result", str(result), *flags]
    t = time.perf_counter()
    try:
        env = dict(os.environ)
        if name.startswith("unsloth") and os.environ.get("UNSLOTH_SITE"):  # Unsloth's packages only where they are needed
            env["PYTHONPATH"] = os.pathsep.join([env.get("PYTHONPATH", ""), os.environ["UNSLOTH_SITE"]])
        proc = subprocess.run(cmd, timeout=max(timeout, 5), env=env)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    if result.exists():
        return json.loads(result.read_text())
    return [{"phase": name, "flags": list(flags), "error": f"no result (exit {rc}) after {time.perf_counter() - t:.0f} s"}]


def driver(args) -> None:
    """All phases in order of importance, each only if the deadline leaves it room; JSON written after each."""
    import torch

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    card = torch.cuda.get_device_name(0)
    meta = {"card": card, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "settings":
            {"prompts": PROMPTS, "samples": G, "prompt_tokens": PROMPT, "new_tokens": NEW, "lora_r": R, "subject": "Qwen3-4B shape, random bf16"}}
    for mod in ("transformers", "peft", "trl", "datasets", "unsloth", "liger_kernel"):
        try:
            from importlib.metadata import version

            meta[mod] = version(mod if mod != "liger_kernel" else "liger-kernel")
        except Exception as err:
            meta[mod] = f"missing: {err}"
    step, unsloth = {"meta": meta, "rows": []}, {"meta": meta, "rows": []}
    plan = [  # (name, flags, seconds it needs, file)
        ("build", [], 60, step),
        ("ours", [], 90, step),
        ("ours_fp8", ["--precision", "fp8"], 90, step),
        ("ours_fp8", ["--precision", "fp8-kv"], 90, step),
        ("capped_warm", ["--cap", "13", "--new", "256", "--warm", "--profile"], 60, step),
        ("capped_warm", ["--cap", "19", "--new", "1024", "--warm"], 70, step),
        ("capped", ["--cap", "24", "--new", "1792", "--prompts", "8", "--g", "8"], 70, step),
        ("capped", ["--cap", "16", "--new", "1792", "--prompts", "4", "--g", "4"], 40, step),
        ("capped", ["--cap", "13", "--new", "256"], 40, step),
        ("unsloth_fwdbwd", [], 240, unsloth),
        ("unsloth", ["--new", "256", "--budget", "200"], 150, unsloth),
        ("fwdbwd", [], 70, step),
        ("trl_peft", ["--new", "256"], 90, step),
        ("trl_peft", ["--new", "1024", "--steps", "1"], 150, step),
        ("unsloth", ["--new", "1024", "--budget", "300"], 240, unsloth),
    ]
    for name, flags, need, sink in plan:
        if args.only and name not in args.only and f"{name}/{' '.join(flags)}" not in args.only:
            continue
        left = args.deadline - (time.perf_counter() - T0)
        if left < need:
            sink["rows"].append({"phase": name, "flags": flags, "skipped": f"{left:.0f} s left, needs ~{need} s"})
            continue
        t = time.perf_counter()
        passed = [f for f, on in (("--masked", args.masked), ("--ragged", args.ragged), ("--rows", args.rows)) if on] + (["--extra", *args.extra] if args.extra else [])
        passed += ["--width-multiple", str(args.width_multiple)] if args.width_multiple else []
        rows = run_phase(name, out, left - 5, *flags, *(passed if name != "build" else []))
        for r in rows:
            r.setdefault("phase_s", round(time.perf_counter() - t, 1))
        sink["rows"].extend(rows)
        (out / "grpo_step.json").write_text(json.dumps(step, indent=1))
        (out / "unsloth.json").write_text(json.dumps(unsloth, indent=1))
        print(f"[{time.perf_counter() - T0:.0f} s] {name} {' '.join(flags)} done in {time.perf_counter() - t:.0f} s", flush=True)
    print_table(step["rows"] + unsloth["rows"], card)


def print_table(rows: list, card: str) -> None:
    """The short table at the end of the log."""
    print(f"\n{card}")
    for r in rows:
        if "error" in r or "skipped" in r:
            print(f"  {r.get('path', r.get('phase'))}: {r.get('error') or r.get('skipped')}")
        elif "step_time" in r:
            parts = " ".join(f"{k[:-5]} {r[k]:.2f}" for k in ("rollout_time", "reference_time", "logprob_time", "backward_time", "optimizer_time")
                             if isinstance(r.get(k), (int, float)))
            print(f"  {r['path']:<22} {r.get('run', ''):<26} {' '.join(r.get('overrides', []))} new {r.get('new_tokens')}: step {r['step_time']:.2f} s ({parts}) "
                  f"peak {r.get('peak_memory_gb') or 0:.1f} GiB")
        elif "tok_s" in r:
            print(f"  fwd+bwd {r['path']:<20} {r['batch']} x {r['seq']}: {r['tok_s']:,.0f} tok/s, peak {r['peak_gib']:.1f} GiB")
        elif "by_category_ms" in r:
            cats = ", ".join(f"{k} {v:.0f}" for k, v in r["by_category_ms"].items())
            print(f"  profile {r['path']} {r['batch']} x {r['seq']}: kernels {r['kernel_ms']:.0f} ms ({cats})")
    for new in (256, 1024):
        trl = [r["step_time"] for r in rows if r.get("path") == "TRL + PEFT" and r.get("new_tokens") == new and r.get("step_time")]
        for r in rows:
            if trl and r.get("run") == "timed" and r.get("new_tokens") == new and r.get("step_time"):
                print(f"  TRL + PEFT / {r['path']} {' '.join(r.get('overrides', []))} at {new} new tokens: "
                      f"{trl[-1] / r['step_time']:.1f}x ({trl[-1]:.2f} s / {r['step_time']:.2f} s)")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--deadline", type=float, default=420.0, help="seconds for the whole run")
    p.add_argument("--phase")
    p.add_argument("--result")
    p.add_argument("--backend", default="transformers")
    p.add_argument("--cap", type=float, default=0)
    p.add_argument("--new", type=int, default=NEW)
    p.add_argument("--prompts", type=int, default=PROMPTS)
    p.add_argument("--g", type=int, default=G)
    p.add_argument("--budget", type=float, default=1e9)
    p.add_argument("--precision", default="fp8", help="ours_fp8 phase: rollout.precision (fp8 or fp8-kv)")
    p.add_argument("--steps", type=int, default=2, help="TRL steps per peer row (the last one is reported)")
    p.add_argument("--no-liger", action="store_true")
    p.add_argument("--warm", action="store_true", help="capped phases: time a second step too")
    p.add_argument("--profile", action="store_true", help="capped phases: profile one more step")
    p.add_argument("--masked", action="store_true", help="log-probs through the masked path, rows not rotated (A/B; the driver passes it to every phase)")
    p.add_argument("--width-multiple", type=int, default=0, help="round rotated log-prob batches to this many columns instead of WIDTH_MULTIPLE (1 = no rounding; A/B; passed to every phase)")
    p.add_argument("--rows", action="store_true", help="our steps' log-prob passes as rows, not packed (each prompt once, no padding; A/B; passed to every phase)")
    p.add_argument("--ragged", action="store_true", help="our step phase: prompts of 193-256 tokens (left-padded batches; passed to every phase)")
    p.add_argument("--extra", nargs="*", default=[], help="config overrides for our runs (the driver passes them to every phase)")
    p.add_argument("--only", nargs="*", default=[],
                   help="run only these phases, by name or as name/flags ('trl_peft/--new 256'); build is needed on a fresh machine")
    args = p.parse_args()
    if not args.phase:
        return driver(args)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    global LAYOUT
    from mathgrpo.training.logprobs import WIDTH_MULTIPLE, PassLayout

    # --masked: the log-probs' masked path for every batch (no rotation); --width-multiple: another rounding (A/B runs)
    LAYOUT = PassLayout(rotate=not args.masked, width_multiple=args.width_multiple or None, pack=not args.rows)
    try:
        rows = PHASES[args.phase](args)
        for r in rows:
            r["masked_logprobs"], r["ragged_prompts"], r["packed"] = args.masked, args.ragged, not args.rows
            r["width_multiple"] = args.width_multiple or WIDTH_MULTIPLE
    except Exception as err:
        rows = [{"phase": args.phase, "error": f"{type(err).__name__}: {err}"[:800], "trace": traceback.format_exc()[-2000:]}]
        print(rows[0]["trace"], flush=True)
    Path(args.result).write_text(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()
