"""Every setting of mathgrpo as dataclasses: defaults, help strings, YAML recipes and `a.b=c` overrides.

A recipe is a YAML file whose keys mirror `Config`; overrides on the command line use dotted keys
(`grpo.lr=1e-4`). OmegaConf merges them over the structured defaults, so unknown keys and values of
the wrong type fail with the key named. `validate` then checks the values against each other.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import Error

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
DEFAULT_RECIPE = "tiny-cpu"


class ConfigError(Error, ValueError):
    """A setting is missing, unknown or out of range; the message names it and says what to do."""


def _f(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with a help string (lists and dicts get a factory)."""
    if isinstance(default, (list, dict)):
        value = default
        return field(default_factory=lambda: type(value)(value), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


@dataclass
class ModelConfig:
    name: str = _f("tiny", "Base model: a hub id (Qwen/Qwen3-4B-Base), a local folder, or `tiny` (built in, CPU).")
    init: str = _f("pretrained", "pretrained (load the weights) or random (only the folder's config.json: speed and memory benchmarks).")
    backend: str = _f("transformers", "How the model is loaded: `transformers` (+PEFT) or `unsloth` (optional extra).")
    dtype: str = _f("auto", "Weights dtype: auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16.")
    device: str = _f("auto", "auto (cuda if available), cpu, cuda, cuda:N.")
    trust_remote_code: bool = _f(False, "Run model code shipped with a hub repo. Off unless you trust it.")
    attn_implementation: str = _f("auto", "auto, eager, sdpa, flash_attention_2.")
    gradient_checkpointing: bool = _f(True, "Recompute activations in backward to save memory (GPU only).")
    load_in_4bit: bool = _f(False, "Unsloth backend only: load the frozen base in 4-bit.")
    max_seq_length: int = _f(2048, "Longest prompt + completion the run may use, in tokens.")
    fused_lora: bool = _f(
        True,
        "Run LoRA projections as one fused function (base GEMM, low-rank update added in place, bf16 on a "
        "bf16 model) instead of PEFT's forward (fp32 adapter branch); same adapters and save format.",
    )
    offload_checkpoints: Optional[bool] = _f(
        None,
        "With gradient checkpointing on a GPU, keep each layer's saved input in pinned host memory "
        "(copied on a side stream) instead of on the GPU: GPU memory traded for as much host memory. null = GRPO turns it on when its memory plan cannot fit the micro-batch a step "
        "wants at model.max_seq_length (its completions, at most grpo.micro_batch_tokens); true/false = always/never.",
    )
    checkpoint_matmuls: Optional[bool] = _f(
        None,
        "With gradient checkpointing on a GPU, also keep each layer's GEMM and attention outputs, so backward "
        "recomputes only its norms, rotary and activation (a third fewer GEMMs; ~15x the checkpoint memory). "
        "null = GRPO turns it on when its memory plan still fits the micro-batch a step wants with them kept "
        "(--dry-run's memory line says which); true/false = always/never. Not with offloaded checkpoints.",
    )
    compile_layers: Optional[bool] = _f(
        False,
        "Compile each decoder layer for training passes (torch.compile, Triton; sm_80+ GPUs): fused norms, rotary "
        "and activation, and far less Python launching kernels. Where checkpointing would keep the products, the "
        "layers run without it (the compiler keeps them). The first steps compile (tens of seconds). null = on "
        "where it can run; true = required; false = off. Not with model.backend=unsloth.",
    )
    cudnn_attention: bool = _f(
        True,
        "Let PyTorch's SDPA use its cuDNN backend while training on a GPU. Training batches run without a mask "
        "(rows rotated past their padding); a batch that still needs one (a row with a hole in its mask) gets "
        "8 more masked columns at sequence lengths of 64 mod 128, where the backend's masked backward returns "
        "NaN gradients (pytorch/pytorch#196678). false = the backend off (slower; docs/performance.md).",
    )
    use_liger: Optional[bool] = _f(
        None,
        "Liger kernels (RMSNorm, SwiGLU, RoPE) for Qwen3 models: null = on when liger-kernel is installed "
        "and the model is on a GPU; true = required; false = off. Its fused cross-entropy is never used "
        "(the trainer computes chunked log-probs itself).",
    )


# Every attention and MLP projection of a Qwen3 / Llama decoder layer.
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class LoraConfig:
    enabled: bool = _f(True, "Train LoRA adapters (PEFT). Off trains every weight (tiny models only).")
    r: int = _f(32, "LoRA rank.")
    alpha: int = _f(64, "LoRA alpha; the update is scaled by alpha / r.")
    dropout: float = _f(0.0, "Dropout on the LoRA branch.")
    target_modules: list = _f(
        list(PROJECTIONS),
        "Module names that get adapters (all attention and MLP projections by default).",
    )


@dataclass
class FormatConfig:
    preset: str = _f("reasoning", "Reasoning format: reasoning ([REASONING]/[ANSWER]), think, unsloth, boxed.")
    system_prompt: Optional[str] = _f(None, "Replace the preset's system prompt.")
    template: str = _f(
        "auto",
        "Prompt layout: auto (the tokenizer's chat template if it has one, else ours), chat, plain "
        "(system and question as text), or bare (the question alone; tiny models).",
    )
    instruction: str = _f(
        "system",
        "Where the format's instruction (its system prompt) goes: system (a system message; the first line of a "
        "plain prompt) or user (after the question in the user turn, no system message: DeepSeekMath's prompt).",
    )


@dataclass
class DataConfig:
    source: str = _f(
        "gsm8k",
        "Training problems: gsm8k, math500, hub:<id>[:config][@split], a local .jsonl/.json/.parquet/.csv "
        "file, or procedural:<name> (reasoning-gym, or the built-in `arith`).",
    )
    split: str = _f("train", "Split for bundled and hub sources.")
    question_field: Optional[str] = _f(None, "Column holding the question (local files and unknown hub sets).")
    answer_field: Optional[str] = _f(None, "Column holding the final answer.")
    solution_field: Optional[str] = _f(None, "Column holding a worked solution (for the warm-up).")
    size: int = _f(10000, "Problems to draw from a procedural source.")
    limit: Optional[int] = _f(None, "Use at most this many problems (after a seeded shuffle).")
    seed: int = _f(0, "Seed for shuffling and procedural generation.")
    strict: bool = _f(False, "Stop at the first bad row instead of counting and skipping it.")
    heldout_source: Optional[str] = _f(None, "Held-out problems for accuracy during training (default: same source, separate seed).")
    heldout_size: int = _f(200, "Held-out problems evaluated at start, every eval_every steps, and at the end.")


@dataclass
class RewardConfig:
    preset: str = _f("default", "Reward preset: default (correct 1.0 + format 0.1) or unsloth (the reference notebook's scale).")
    weights: dict = _f({}, "Override weights by reward name, e.g. {correct: 2.0, overlong: 0.5}; 0 disables one.")
    overlong_buffer: int = _f(64, "Tokens before max_new_tokens where the soft overlong penalty starts (DAPO).")
    model: Optional[str] = _f(
        None,
        "A learned reward beside the preset's: a hub id or local folder of a sequence-classification model (e.g. an "
        "outcome reward model for math) that scores each completion with its question, in its tokenizer's chat "
        "template when it has one (user: question, assistant: completion), else as `question\\n\\ncompletion`. "
        "Score: a one-label head's logit, or logit[1] - logit[0] of a two-label head. Loaded on the policy's device "
        "(bf16 on a GPU, fp32 on the CPU) and counted in the memory plan; its raw score is logged as "
        "rewards/reward_model. null = none.",
    )
    model_weight: float = _f(1.0, "Weight of the reward model's (normalised) score in the total reward.")
    model_normalize: str = _f(
        "group",
        "What the weight multiplies: none (the raw score), group (the score minus its group's mean over the group's "
        "std + 1e-4; a group is one prompt's num_generations completions) or batch (the same over the step's "
        "completions; each rank's share under torchrun). The logged part is the raw score either way.",
    )
    model_batch_size: int = _f(8, "Completions the reward model scores per forward pass.")
    model_max_length: int = _f(
        2048, "Tokens of question + completion the reward model reads; longer texts lose their start (the answer is kept)."
    )


@dataclass
class RolloutConfig:
    engine: str = _f("auto", "Generation engine: auto (native on GPU, hf elsewhere), hf (transformers generate), native.")
    max_new_tokens: int = _f(1024, "Longest completion, in tokens.")
    temperature: float = _f(1.0, "Sampling temperature (0 = greedy).")
    top_p: float = _f(1.0, "Nucleus sampling mass.")
    top_k: int = _f(0, "Keep the k most likely tokens (0 = off).")
    min_p: float = _f(0.0, "Drop tokens below min_p x the top probability (0 = off).")
    batch_size: int = _f(0, "Sequences generated at once (0 = decided by the memory budget).")
    lora: str = _f(
        "merge",
        "Native engine with LoRA: merge (the adapter added into the base weights for the rollout, restored exactly "
        "after; fastest; in bf16 the merged weights round differently from the learner's separate adapter terms) or "
        "lowrank (the adapter's low-rank terms applied beside each projection, as the learner does).",
    )
    hf_cache: str = _f(
        "auto",
        "hf engine's key/value cache: dynamic (transformers' default, grown a token at a time), static (allocated "
        "once at its full length per generate call, no compile: fewer reallocations near a card's memory limit) "
        "or auto (static on a GPU, dynamic on the CPU, where static is slower).",
    )
    device_snapshots: Optional[bool] = _f(
        None,
        "Native engine with LoRA: keep a copy of the projections on the GPU: the engine's own merged copies, "
        "q|k|v and gate|up packed (the model's weights are then left alone), instead of merging in place and "
        "restoring from pinned host memory (a transfer of every merged projection). null = on when the memory "
        "plan still fits the rollout batch in one generate call beside them; true/false = always/never.",
    )
    precision: str = _f(
        "auto",
        "Native engine: the precision of the projection weights a rollout reads. auto or bf16: the model's dtype. "
        "fp8: copies in float8 (e4m3) with a scale per output channel, remade from the merged weights every "
        "rollout, activations quantized per token (half the bytes a decode step reads; GPUs of compute capability "
        "8.9+, e.g. L4, H100; refused with the reason elsewhere; needs rollout.lora=merge). fp8-kv: that and the "
        "KV cache in float8 with a scale per position and head (half the cache's bytes too). The sampler then "
        "differs more from the learner; grpo.sampler_correction=tis corrects for it.",
    )
    skinny_gemm: bool = _f(
        True,
        "Native engine on a GPU of compute capability 9.0+: its packed copies (rollout.device_snapshots) in the "
        "model's dtype (bf16 / fp16) multiply through the Triton skinny-GEMM kernel in decode steps of at most 16 "
        "rows instead of cuBLAS (measured in docs/performance.md); --dry-run says when it acts. Elsewhere it has no "
        "effect. false: cuBLAS at every row count. The FP8 precisions pick their kernel themselves.",
    )


@dataclass
class SFTConfig:
    enabled: bool = _f(True, "Run the supervised format warm-up before GRPO (in `mathgrpo train`).")
    source: Optional[str] = _f(None, "Worked solutions to learn from (default: data.source).")
    steps: int = _f(200, "Optimizer steps.")
    lr: float = _f(2e-4, "Peak learning rate (AdamW).")
    batch_size: int = _f(8, "Sequences per optimizer step.")
    micro_batch_size: int = _f(0, "Sequences per forward pass (0 = batch_size).")
    weight_decay: float = _f(0.0, "AdamW weight decay.")
    warmup_steps: int = _f(0, "Linear learning-rate warm-up steps.")
    full_finetune: bool = _f(False, "Train every weight in the warm-up (a model trained from scratch) instead of LoRA.")
    stop_at_accuracy: Optional[float] = _f(None, "Stop once greedy held-out accuracy reaches this fraction.")
    eval_every: int = _f(20, "Held-out evaluation interval (steps) for stop_at_accuracy.")
    max_grad_norm: float = _f(1.0, "Gradient clipping norm.")


@dataclass
class GRPOConfig:
    enabled: bool = _f(True, "Run GRPO (in `mathgrpo train`).")
    steps: int = _f(100, "Optimizer steps (one batch of rollouts each, times num_iterations).")
    prompts_per_step: int = _f(8, "Distinct problems per step.")
    num_generations: int = _f(8, "Completions per problem: the group size G.")
    lr: float = _f(5e-6, "Peak learning rate (AdamW).")
    weight_decay: float = _f(0.0, "AdamW weight decay.")
    lr_scheduler: str = _f("constant", "constant, linear or cosine decay after warm-up.")
    warmup_steps: int = _f(0, "Linear learning-rate warm-up steps.")
    max_grad_norm: float = _f(1.0, "Gradient clipping norm.")
    micro_batch_size: int = _f(0, "Completions per forward/backward pass (0 = decided by the memory budget).")
    micro_batch_tokens: int = _f(
        16384,
        "When the memory budget sizes micro-batches: at most this many tokens (completions x padded width) a "
        "pass (larger passes use more memory and are hardly faster; docs/performance.md). 0 = no limit.",
    )
    packed_passes: bool = _f(
        False,
        "Log-prob passes with each prompt once and no padding: a micro-batch as one sequence, a prompt's "
        "completions side by side (transformers backend, Qwen3 / Qwen2 decoders; others run rows). Less memory a "
        "pass; not faster on an H100 as measured (docs/performance.md).",
    )
    scale_rewards: str = _f(
        "group",
        "Advantage scaling: group (divide by the group's std, GRPO, Shao et al. 2024), batch (the batch's std, "
        "Hu et al. 2025 REINFORCE++-style), none (only subtract the group mean; Dr. GRPO, Liu et al. 2025).",
    )
    loss_type: str = _f(
        "dapo",
        "Loss normalisation: grpo (mean over each sequence's tokens, then over sequences; Shao et al. 2024), "
        "dr_grpo (sum over tokens / (sequences x max_new_tokens); Liu et al. 2025), dapo (mean over all tokens "
        "of the batch; Yu et al. 2025).",
    )
    epsilon_low: float = _f(0.2, "Lower clip of the importance ratio (1 - eps_low), PPO/GRPO.")
    epsilon_high: float = _f(0.28, "Upper clip (1 + eps_high); above epsilon_low is DAPO's clip-higher (Yu et al. 2025).")
    importance_sampling_level: str = _f(
        "token", "token (GRPO) or sequence (GSPO, Zheng et al. 2025: one length-normalised ratio per sequence)."
    )
    beta: float = _f(0.0, "KL penalty to the base model (k3 estimator); the base is the adapter switched off. 0 = off (DAPO, Dr. GRPO).")
    num_iterations: int = _f(1, "Optimizer steps per batch of rollouts (mu in GRPO); >1 needs the old-policy log-probs.")
    mask_truncated: bool = _f(False, "Exclude completions cut at max_new_tokens from the loss (DAPO's overlong filtering).")
    dynamic_sampling: bool = _f(False, "Drop groups whose rewards are all equal (zero advantage; DAPO).")
    sampler_correction: str = _f(
        "tis",
        "none, or tis: weight each token's policy-gradient term by min(exp(learner - sampler log-prob), "
        "grpo.tis_cap), truncated importance sampling as TRL and veRL apply it to vLLM rollouts, so that what the "
        "rollout engine's arithmetic differs from the learner's does not bias the update.",
    )
    tis_cap: float = _f(2.0, "Upper bound of the truncated importance weight (grpo.sampler_correction=tis).")
    max_memory_gb: Optional[float] = _f(
        None,
        "Memory budget in GiB that sizes grpo.micro_batch_size and rollout.batch_size when they are 0 "
        "(default: 95% of the GPU's memory; on CPU, without it, whole batches). See mathgrpo/training/memory.py.",
    )


@dataclass
class EvalConfig:
    bench: str = _f("gsm8k", "Comma-separated benchmarks: gsm8k, math500, or any data source.")
    limit: Optional[int] = _f(None, "At most this many problems per benchmark (seeded subset).")
    seed: int = _f(0, "Seed for subsets and sampling.")
    n: int = _f(1, "Samples per problem (1 = greedy pass@1; >1 samples at rollout.temperature).")
    k: list = _f([1], "k values for pass@k and maj@k.")
    shots: int = _f(0, "Few-shot worked examples in the prompt (base models: 4, as the Qwen3 report).")
    shots_source: str = _f(
        "gsm8k",
        "Where few-shot examples come from: the first eval.shots problems with a worked solution of this "
        "source's train split (gsm8k train for every benchmark by default: MATH has no bundled train split).",
    )
    output_dir: Optional[str] = _f(None, "Results folder (default: results/<model>-<benchmarks>-n<n>-<shots>shot; rerun to resume).")
    references: bool = _f(True, "Show published figures for the same benchmark beside the results (report and --compare), marked as not measured here.")
    model_prompt: bool = _f(
        True,
        "Prompt a model the way its card asks when its tokenizer's chat template is a known one (DeepSeekMath: boxed "
        "answer, instruction after the question, no system prompt); false keeps format.* as set. Not for run folders.",
    )


@dataclass
class RunConfig:
    name: Optional[str] = _f(None, "Run folder name under output_dir (default: recipe name + time).")
    output_dir: str = _f("runs", "Where run folders go.")
    seed: int = _f(0, "Seed for model init, sampling and data order.")
    threads: int = _f(0, "CPU threads for torch (0 = leave torch's default). Fix it for repeatable CPU runs.")
    sample_every: int = _f(10, "Log a few completions every N steps.")
    eval_every: int = _f(50, "Held-out accuracy every N GRPO steps (and at start and end).")
    checkpoint_every: int = _f(50, "Checkpoint interval (steps).")
    keep_last: int = _f(2, "Checkpoints kept.")
    report_to: list = _f(["jsonl"], "Metric sinks: jsonl (always), tensorboard, wandb.")
    progress: bool = _f(True, "Show progress bars.")
    parallel: str = _f(
        "ddp",
        "Under torchrun: ddp (every rank holds the whole model; trainable gradients all-reduced) or fsdp "
        "(FSDP2: each decoder layer's weights, gradients and optimizer state sharded across ranks; rollouts "
        "then use the hf engine).",
    )


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    format: FormatConfig = field(default_factory=FormatConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rewards: RewardConfig = field(default_factory=RewardConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


CHOICES = {
    "model.backend": ("transformers", "unsloth"),
    "model.init": ("pretrained", "random"),
    "run.parallel": ("ddp", "fsdp"),
    "model.dtype": ("auto", "float32", "bfloat16", "float16"),
    "format.template": ("auto", "chat", "plain", "bare"),
    "format.instruction": ("system", "user"),
    "grpo.scale_rewards": ("group", "batch", "none"),
    "grpo.loss_type": ("grpo", "dr_grpo", "dapo"),
    "grpo.importance_sampling_level": ("token", "sequence"),
    "grpo.sampler_correction": ("none", "tis"),
    "rollout.lora": ("merge", "lowrank"),
    "rollout.hf_cache": ("auto", "dynamic", "static"),
    "rollout.precision": ("auto", "bf16", "fp8", "fp8-kv"),
    "grpo.lr_scheduler": ("constant", "linear", "cosine"),
    "rewards.model_normalize": ("none", "group", "batch"),
    # Names the stages define: the formats of data/formats.py (PRESETS), the reward presets of grading/rewards.py
    # (PRESETS), the engines of rollout/__init__.py (make_engine). Each registry holds exactly these names
    # (tests/test_config.py), so a setting is checked here without importing the stage that reads it.
    "format.preset": ("reasoning", "think", "unsloth", "boxed"),
    "rewards.preset": ("default", "unsloth"),
    "rollout.engine": ("auto", "hf", "native"),
}

POSITIVE = (
    "lora.r", "lora.alpha", "rollout.max_new_tokens", "sft.batch_size", "grpo.prompts_per_step",
    "grpo.num_generations", "grpo.num_iterations", "run.keep_last", "run.eval_every",
    "run.checkpoint_every", "run.sample_every", "model.max_seq_length", "sft.eval_every", "eval.n",
    "sft.steps", "grpo.steps", "data.heldout_size", "data.size", "rewards.model_batch_size", "rewards.model_max_length",
)
NON_NEGATIVE = (
    "sft.micro_batch_size", "sft.warmup_steps", "sft.weight_decay", "grpo.micro_batch_size", "grpo.warmup_steps",
    "grpo.weight_decay", "rollout.batch_size", "rollout.top_k", "rewards.overlong_buffer", "run.threads",
    "lora.dropout",
)
POSITIVE_REAL = ("sft.lr", "grpo.lr", "sft.max_grad_norm", "grpo.max_grad_norm")


def _get(cfg: Config, dotted: str) -> Any:
    """Read a dotted key (`grpo.lr`) from a Config."""
    section, key = dotted.split(".")
    return getattr(getattr(cfg, section), key)


def check_numbers(cfg: Config) -> None:
    """Every number finite; counts, rates and sizes in range (negative steps or a NaN rate never start a run)."""
    for section in dataclasses.fields(cfg):
        for f in dataclasses.fields(getattr(cfg, section.name)):
            value = getattr(getattr(cfg, section.name), f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{section.name}.{f.name}={value} must be a finite number")
    for key in POSITIVE:
        stage = key.split(".")[0]
        if key.endswith(".steps") and not _get(cfg, f"{stage}.enabled"):
            continue  # a stage that is off may say 0 steps
        if _get(cfg, key) < 1:
            hint = f" (to skip the stage: {stage}.enabled=false)" if key.endswith(".steps") else ""
            raise ConfigError(f"{key}={_get(cfg, key)} must be at least 1{hint}")
    for key in NON_NEGATIVE:
        if _get(cfg, key) < 0:
            raise ConfigError(f"{key}={_get(cfg, key)} must be >= 0")
    for key in POSITIVE_REAL:
        if _get(cfg, key) <= 0:
            raise ConfigError(f"{key}={_get(cfg, key)} must be > 0")
    if cfg.lora.dropout >= 1:
        raise ConfigError(f"lora.dropout={cfg.lora.dropout} must be in [0, 1)")
    if cfg.data.limit is not None and cfg.data.limit < 1:
        raise ConfigError(f"data.limit={cfg.data.limit} must be at least 1 (or null for every problem)")


def validate(cfg: Config) -> Config:
    """Check values against their allowed ranges and each other; raise ConfigError naming the key."""
    for key, allowed in CHOICES.items():
        if _get(cfg, key) not in allowed:
            raise ConfigError(f"{key}={_get(cfg, key)!r} is not one of {', '.join(allowed)}")
    check_numbers(cfg)
    if cfg.rollout.temperature < 0:
        raise ConfigError(f"rollout.temperature={cfg.rollout.temperature} must be >= 0")
    if not 0 < cfg.rollout.top_p <= 1:
        raise ConfigError(f"rollout.top_p={cfg.rollout.top_p} must be in (0, 1]")
    if not 0 <= cfg.rollout.min_p < 1:
        raise ConfigError(f"rollout.min_p={cfg.rollout.min_p} must be in [0, 1)")
    if cfg.grpo.num_generations < 2:
        raise ConfigError("grpo.num_generations must be at least 2: advantages compare completions within a group")
    if cfg.grpo.epsilon_low < 0 or cfg.grpo.epsilon_high < 0:
        raise ConfigError("grpo.epsilon_low and grpo.epsilon_high must be >= 0")
    if not cfg.grpo.tis_cap >= 1:
        raise ConfigError(f"grpo.tis_cap={cfg.grpo.tis_cap} must be at least 1 (weights above it are cut to it)")
    if cfg.grpo.beta < 0:
        raise ConfigError(f"grpo.beta={cfg.grpo.beta} must be >= 0")
    if cfg.grpo.beta > 0 and not cfg.lora.enabled:
        raise ConfigError("grpo.beta > 0 needs lora.enabled=true: the reference model is the base with the adapter switched off")
    if cfg.run.parallel == "fsdp" and (not cfg.lora.enabled or (cfg.sft.enabled and cfg.sft.full_finetune)):
        raise ConfigError("run.parallel=fsdp shards LoRA training; full fine-tuning (lora.enabled=false or "
                          "sft.full_finetune=true, the tiny recipe's warm-up) runs with run.parallel=ddp")
    if cfg.run.parallel == "fsdp" and cfg.grpo.dynamic_sampling:
        raise ConfigError("grpo.dynamic_sampling leaves ranks with different numbers of sequences, which FSDP's "
                          "collective passes cannot take; use run.parallel=ddp with it")
    check_reward_model(cfg.rewards)
    if cfg.model.checkpoint_matmuls and cfg.model.backend != "transformers":
        raise ConfigError("model.checkpoint_matmuls=true needs model.backend=transformers (Unsloth checkpoints its layers "
                          "its own way): set model.checkpoint_matmuls=false")
    if cfg.model.checkpoint_matmuls and not cfg.model.gradient_checkpointing:
        raise ConfigError("model.checkpoint_matmuls=true keeps what checkpointed layers compute: set "
                          "model.gradient_checkpointing=true, or model.checkpoint_matmuls=false")
    if cfg.model.checkpoint_matmuls and cfg.model.offload_checkpoints:
        raise ConfigError("model.checkpoint_matmuls=true keeps products on the GPU, model.offload_checkpoints=true moves "
                          "layer inputs to the host: set one of them to false (or null)")
    if cfg.model.compile_layers and cfg.model.backend != "transformers":
        raise ConfigError("model.compile_layers=true needs model.backend=transformers (Unsloth compiles its own layers): "
                          "set model.compile_layers=false")
    if cfg.model.compile_layers and cfg.run.parallel == "fsdp":
        raise ConfigError("model.compile_layers=true is not tried with run.parallel=fsdp (sharded layers): use "
                          "run.parallel=ddp, or model.compile_layers=false")
    if cfg.model.load_in_4bit and cfg.model.backend != "unsloth":
        raise ConfigError("model.load_in_4bit needs model.backend=unsloth")
    if cfg.model.backend == "unsloth" and (not cfg.lora.enabled or cfg.sft.full_finetune):
        raise ConfigError("model.backend=unsloth trains LoRA adapters only: set lora.enabled=true and sft.full_finetune=false, "
                          "or use model.backend=transformers")
    if cfg.grpo.micro_batch_tokens < 0:
        raise ConfigError(f"grpo.micro_batch_tokens={cfg.grpo.micro_batch_tokens} must be >= 0 (0 = no limit)")
    if cfg.grpo.max_memory_gb is not None and cfg.grpo.max_memory_gb <= 0:
        raise ConfigError(f"grpo.max_memory_gb={cfg.grpo.max_memory_gb} must be > 0 (or null for the card's size)")
    if cfg.sft.stop_at_accuracy is not None and not 0 < cfg.sft.stop_at_accuracy <= 1:
        raise ConfigError(f"sft.stop_at_accuracy={cfg.sft.stop_at_accuracy} must be a fraction in (0, 1]")
    if cfg.eval.shots < 0:
        raise ConfigError(f"eval.shots={cfg.eval.shots} must be >= 0 (0 = zero-shot)")
    if cfg.eval.limit is not None and cfg.eval.limit < 1:
        raise ConfigError(f"eval.limit={cfg.eval.limit} must be at least 1 (or null for every problem)")
    if any(k < 1 for k in cfg.eval.k):
        raise ConfigError(f"eval.k={list(cfg.eval.k)} must hold k values >= 1 (pass@k and maj@k)")
    check_run_name(cfg.run.name)
    unknown = set(cfg.run.report_to) - {"jsonl", "tensorboard", "wandb"}
    if unknown:
        raise ConfigError(f"run.report_to has unknown sinks {sorted(unknown)}; use jsonl, tensorboard, wandb")
    return cfg


def check_reward_model(rewards: RewardConfig) -> None:
    """rewards.model names a model (not `tiny`, not empty) with a weight that counts; its part is weighted by
    rewards.model_weight, not in rewards.weights."""
    if "reward_model" in rewards.weights:
        raise ConfigError("rewards.weights names reward_model, the reward model's part: set rewards.model=<folder "
                          "or hub id> and its weight with rewards.model_weight")
    if rewards.model is None:
        return
    if not rewards.model.strip() or rewards.model == "tiny":
        raise ConfigError(f"rewards.model={rewards.model!r} must be a hub id or a local folder of a sequence-"
                          "classification model (or null for none)")
    if rewards.model_weight == 0:
        raise ConfigError("rewards.model_weight=0 would load rewards.model for nothing; set rewards.model=null instead")


def check_run_name(name: Optional[str]) -> None:
    """A run name is one folder name under run.output_dir: no separators, no `..`, not absolute."""
    if name is None:
        return
    if name in ("", ".", "..") or "/" in name or "\\" in name or Path(name).is_absolute():
        raise ConfigError(f"run.name={name!r} must be a plain folder name (no '/', '\\' or '..'); "
                          "set run.output_dir for where run folders go")


def recipe_path(recipe: str) -> Path:
    """Resolve a recipe name (`tiny-cpu`) or a path to a YAML file."""
    path = Path(recipe)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    candidate = RECIPES_DIR / f"{recipe}.yaml"
    if candidate.exists():
        return candidate
    known = ", ".join(sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")))
    raise ConfigError(f"recipe {recipe!r} is neither a YAML file nor a known recipe ({known})")


def _one_line(err: OmegaConfBaseException) -> str:
    """OmegaConf's message without its detail lines (reference_type=..., object_type=...), led by the key."""
    text = (err.msg or str(err)).splitlines()[0].strip()
    key = getattr(err, "full_key", None)
    return f"{key}: {text}" if key else text


def read_recipe(path: Path) -> DictConfig:
    """A recipe or saved config.yaml as OmegaConf; bad YAML or a file that is not a mapping fails in one line."""
    try:
        data = OmegaConf.load(path)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}:" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}:{where} not valid YAML ({problem}); fix the file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot be read ({err}); pass a YAML recipe") from None
    if not isinstance(data, DictConfig):
        raise ConfigError(f"{path}: a recipe is a mapping of sections (model:, data:, grpo:, ...), "
                          f"not a {'list' if isinstance(data, ListConfig) else type(data).__name__}; see src/mathgrpo/recipes/tiny-cpu.yaml")
    return data


def load_config(recipe: Optional[str] = DEFAULT_RECIPE, overrides: Optional[list] = None) -> Config:
    """Defaults, then the recipe's YAML, then `a.b=c` overrides; validated."""
    merged = OmegaConf.structured(Config)
    try:
        if recipe:
            path = recipe_path(recipe)
            try:
                merged = OmegaConf.merge(merged, read_recipe(path))
            except OmegaConfBaseException as err:
                raise ConfigError(f"{path}: {_one_line(err)}") from None
        for item in overrides or []:
            if "=" not in item:
                raise ConfigError(f"override {item!r} must look like key.sub=value (e.g. grpo.lr=1e-5)")
        if overrides:
            try:
                merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
            except OmegaConfBaseException as err:
                raise ConfigError(f"override {_one_line(err)}") from None
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise ConfigError(_one_line(err)) from None
    return validate(cfg)


def to_dict(cfg: Config) -> dict:
    """Plain nested dict of a Config (for saving next to a run)."""
    return dataclasses.asdict(cfg)


def write_atomic(path: Path, text: str) -> None:
    """Write `text` through a temporary file and a rename: never a half-written file after a crash."""
    import os

    from .diskio import writing

    tmp = Path(path).with_name(f".{Path(path).name}.tmp")
    with writing(path, tmp):
        tmp.write_text(text)
        os.replace(tmp, path)


def config_yaml(cfg: Config) -> str:
    """A Config as the YAML text that `load_config` reads back."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def save_config(cfg: Config, path: Path) -> None:
    """Write a Config as YAML that `load_config` reads back (atomically)."""
    write_atomic(path, config_yaml(cfg))


def help_table(cfg: Optional[Config] = None) -> list:
    """(key, value, help) for every setting: the values of `cfg`, or the defaults; `mathgrpo config` prints it."""
    cfg = cfg or Config()
    rows = []
    for section in dataclasses.fields(cfg):
        values = getattr(cfg, section.name)
        for f in dataclasses.fields(values):
            rows.append((f"{section.name}.{f.name}", getattr(values, f.name), f.metadata.get("help", "")))
    return rows


def _yaml_value(value: Any) -> str:
    """One setting's value as it would be written in a recipe (null, true, [a, b], 1.0e-05 ...)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    return text[: -len("...")].strip() if text.endswith("...") else text


def settings_text(cfg: Config) -> str:
    """Every setting of `cfg` with its value and, indented under it, what it does."""
    lines = []
    for key, value, help_text in help_table(cfg):
        lines += [f"{key} = {_yaml_value(value)}", f"    {help_text}"]
    return "\n".join(lines)

