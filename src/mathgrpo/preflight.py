"""Checks before a training run creates anything: the model, every data source, the device and whether the
device can hold the model, all at once.

Each check answers in seconds without loading weights or data: local folders and files are looked
at, a hub id is looked up in the local hub cache and, when it is not there (and HF_HUB_OFFLINE is
not set), asked of the hub once with a short time limit. The memory check estimates from the model's
shape (its config.json, or for a known Qwen3 hub id not yet downloaded the shape in `model/known.py`)
what the smallest step needs (`MemoryPlan.floor`) and compares it with the GPU's memory, or for a CPU
run the system RAM; when it does not fit it names the settings that would. Every problem is reported together, before
the run folder exists, so a fix-and-retry never meets a folder left behind by the last attempt.
`mathgrpo train --dry-run` prints the same checks with the resolved settings and the memory plan.
"""

from __future__ import annotations

import dataclasses
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .config import Config, ConfigError, config_yaml
from .hubcheck import hub_status

GPU_DTYPES = ("bfloat16", "float16")


class PreflightError(ConfigError):
    """Inputs a run needs are missing; the message lists every one, a line each, with what to do."""


@dataclass(frozen=True)
class Check:
    """One input of a run: which setting, what it names, where it will come from, or what is wrong."""

    setting: str
    value: str
    found: Optional[str]  # where it comes from when usable
    problem: Optional[str] = None  # what is wrong and what to do, when not


def check_model(name: str, setting: str = "model.name") -> Check:
    """The base model (or adapter, and its base): built in, a local folder, or a hub id."""
    if name == "tiny":
        return Check(setting, name, "built in")
    path = Path(name).expanduser()
    if path.is_dir():
        if (path / "adapter_config.json").is_file():
            from .model.common import adapter_base

            base = check_model(adapter_base(path), f"{setting} (adapter base)")
            return Check(setting, name, f"adapter folder, base from {base.found}", base.problem)
        if (path / "config.json").is_file():
            return Check(setting, name, "local folder")
        return Check(setting, name, None, "a folder without config.json or adapter_config.json; pass a model folder")
    if name.startswith(("/", ".", "~")) or name.count("/") != 1:
        return Check(setting, name, None, "no such folder (a hub id looks like owner/name)")
    found, problem = hub_status(name, "model", setting.split(" ")[0])
    return Check(setting, name, found, problem)


def check_reward_model(name: str) -> Check:
    """rewards.model: a local folder or a hub id (found as model.name is) of a sequence classifier with at most two
    labels, as far as its config.json is at hand."""
    from .model.reward_model import config_problem, folder_problem
    from .model.common import local_config

    path = Path(name).expanduser()
    if path.is_dir():
        problem = folder_problem(path)
        return Check("rewards.model", name, None if problem else "local folder", problem)
    found = check_model(name, "rewards.model")
    config = local_config(name) if found.found else None
    return Check("rewards.model", name, found.found, found.problem or (config_problem(config) if config else None))


def check_source(spec: str, split: str, setting: str) -> Check:
    """One data source: bundled, procedural, a local file or a hub data set (names and splits, no rows read)."""
    from .data import DataError, locate_source

    try:
        return Check(setting, spec, locate_source(spec, split))
    except DataError as err:
        return Check(setting, spec, None, str(err))


def check_device(cfg: Config) -> Check:
    """The device: a CUDA device asked for (or implied by a GPU recipe's settings) must be visible."""
    import torch

    m = cfg.model
    have = torch.cuda.is_available()
    if m.device.startswith("cuda") and not have:
        return Check("model.device", m.device, None, "no CUDA device is visible; use model.device=cpu or a GPU machine")
    shape = model_shape(m.name)[0] if m.device == "auto" and not have else None
    gpu_only = [s for s, on in (
        (f"model.name={m.name}: {shape.params / 1e9:.1f}B parameters" if shape else "", bool(shape and shape.params > 1e9)),
        (f"model.dtype={m.dtype}", m.dtype in GPU_DTYPES), (f"model.backend={m.backend}", m.backend == "unsloth"),
        ("model.load_in_4bit=true", m.load_in_4bit), (f"rollout.engine={cfg.rollout.engine}", cfg.rollout.engine == "native"),
    ) if on]
    if m.device == "auto" and not have and gpu_only:
        return Check("model.device", m.device, None, f"this recipe is made for a GPU ({', '.join(gpu_only)}) and none is "
                     "visible; run it on a GPU machine, or add model.device=cpu to run it on the CPU anyway (slowly)")
    return Check("model.device", m.device, f"cuda ({torch.cuda.get_device_name(0)})" if have and m.device != "cpu" else "cpu")


def check_precision(cfg: Config) -> Check:
    """rollout.precision=fp8 / fp8-kv: the native engine, merged LoRA, a card that multiplies FP8 (8.9+), and for
    fp8-kv the Triton attention kernel."""
    from .rollout import precision_refusal

    r = cfg.rollout
    device, card, engine, _ = rollout_choice(cfg)
    problem = precision_refusal(r.precision, engine, r.lora, card, device)
    return Check("rollout.precision", r.precision, None if problem else f"rollouts in {r.precision}", problem)


GIB = 1024**3


@dataclass(frozen=True)
class Memory:
    """What a run may use: bytes, where they are (for the message), and whether that is a GPU's memory."""

    bytes: int
    where: str
    gpu: bool
    device: int = 0  # what the device has when grpo.max_memory_gb allows less (0: not capped)


def _size(n: float) -> str:
    return f"{n / GIB:.1f} GiB" if n >= GIB / 10 else f"{n / 2**20:.1f} MiB"


def machine_memory(cfg: Config) -> Memory:
    """The memory this machine gives the run: 95% of the GPU's (as the trainer plans) or the system RAM for a
    CPU run, and grpo.max_memory_gb when it sets less."""
    import torch

    from .model.common import resolve_device

    try:
        device = resolve_device(cfg.model.device)
    except Exception:  # a CUDA device asked for and none visible: check_device says so
        device = torch.device("cpu")
    if device.type == "cuda":
        total = torch.cuda.mem_get_info(device)[1]
        have = Memory(int(total * 0.95), f"95% of the GPU's memory ({torch.cuda.get_device_name(device)}, {_size(total)})", True)
    else:
        have = Memory(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine's RAM for a CPU run", False)
    cap = cfg.grpo.max_memory_gb
    if cap is not None and cap * GIB < have.bytes:
        return Memory(int(cap * GIB), f"grpo.max_memory_gb={cap:g} (of the device's {_size(have.bytes)})", have.gpu, have.bytes)
    return have


def model_shape(name: str) -> tuple:
    """(ModelShape, where its sizes came from) of a model, from local files or the known Qwen3 sizes; (None, why) if neither."""
    from .model.known import known_config
    from .training.memory import ModelShape

    path = Path(name).expanduser()
    if path.is_dir() and (path / "adapter_config.json").is_file():
        from .model.common import adapter_base

        name = adapter_base(path)
    config = _model_config(name)
    if config is not None:
        return ModelShape.from_config(config), "its config.json"
    config = known_config(name)
    if config is not None:
        return ModelShape.from_config(config), "the known Qwen3 sizes in mathgrpo/model/known.py"
    return None, "its config.json is not on this machine"


def memory_needed(cfg: Config, shape: object, gpu: bool, budget: int) -> tuple:
    """(bytes, breakdown) the smallest GRPO step of `cfg` needs for `shape`: weights, LoRA (or full) training
    state, one sequence of model.max_seq_length in training or rollout, and on a GPU the fixed overhead. Layer
    inputs count as offloaded where the run may offload them (a GPU run with gradient checkpointing)."""
    import torch

    from .model.common import resolve_dtype
    from .training.memory import FIXED_OVERHEAD, plan_for_config

    m = cfg.model
    device = torch.device("cuda" if gpu else "cpu")
    dtype = resolve_dtype(m.dtype, device)
    dtype_bytes = torch.finfo(dtype).bits // 8
    checkpointing = gpu and m.gradient_checkpointing
    keep = checkpointing and m.checkpoint_matmuls is True
    plan = plan_for_config(shape, cfg, device, budget, offload=checkpointing and not keep and m.offload_checkpoints is not False,
                           keep_matmuls=keep)
    beside = plan.beside
    need = plan.floor(m.max_seq_length)
    weights = shape.weight_bytes(dtype_bytes, m.load_in_4bit)
    overhead = FIXED_OVERHEAD if gpu else 0
    kind = "4-bit" if m.load_in_4bit else str(dtype).replace("torch.", "")
    parts = [f"weights {_size(weights)} in {kind}",
             f"{'LoRA' if cfg.lora.enabled else 'full'} training state {_size(plan.resident - weights - overhead - beside)}",
             f"one {m.max_seq_length}-token sequence {_size(need - plan.resident)}"]
    parts += [f"reward model {_size(beside)}"] if beside else []
    return need, " + ".join(parts + ([f"CUDA overhead {_size(overhead)}"] if gpu else []))


def _changed(cfg: Config, **sections: dict) -> Config:
    """A copy of `cfg` with some settings changed, by section: _changed(cfg, model={"load_in_4bit": True})."""
    return dataclasses.replace(cfg, **{s: dataclasses.replace(getattr(cfg, s), **kv) for s, kv in sections.items()})


def memory_fixes(cfg: Config, shape: object, have: Memory, need: int) -> list:
    """Settings that would make `cfg` fit `have`, each with its estimate: the 4-bit base on Unsloth (a GPU), a
    larger grpo.max_memory_gb, half the model.max_seq_length, the largest shipped recipe of a smaller model."""
    from .config import RECIPES_DIR, load_config

    def needs(other: Config, other_shape: object = shape) -> Optional[int]:
        """What `other` needs when it fits `have`, else None."""
        bytes_ = memory_needed(other, other_shape, have.gpu, have.bytes)[0]
        return bytes_ if bytes_ <= have.bytes else None

    fixes = []
    four = have.gpu and not cfg.model.load_in_4bit and needs(_changed(cfg, model={"load_in_4bit": True, "backend": "unsloth"}))
    if four:
        fixes.append(f"model.load_in_4bit=true model.backend=unsloth (estimated about {_size(four)}, but a step on that path has "
                     "measured far more: docs/performance.md#other-model-sizes; pip install 'mathgrpo[unsloth]')")
    if need <= have.device:
        fixes.append(f"grpo.max_memory_gb={-(-need // GIB)} or more, or unset")
    half = cfg.model.max_seq_length // 2
    shorter = needs(_changed(cfg, model={"max_seq_length": half}))
    if half and shorter:
        fixes.append(f"model.max_seq_length={half} (about {_size(shorter)}; rollout.max_new_tokens at most that)")
    smaller = []
    for recipe in sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")):
        other = load_config(recipe)
        other_shape = model_shape(other.model.name)[0]
        fits = other_shape is not None and other_shape.params < shape.params and needs(other, other_shape)
        if fits:
            smaller.append((other_shape.params, f"a smaller model: --recipe {recipe} (about {_size(fits)})"))
    if smaller:
        fixes.append(max(smaller)[1])
    if not have.gpu:
        fixes.append(f"a GPU with more than {_size(need)} of memory")
    return fixes


def check_memory(cfg: Config, have: Optional[Memory] = None) -> Check:
    """Whether this machine (or `have`) can hold the model with the smallest step of `cfg`; the fixes when not."""
    from .dist import launched_size

    name = cfg.model.name
    shape, source = model_shape(name)
    if shape is None:
        return Check("model.name (memory)", name, f"no estimate ({source})")
    if cfg.run.parallel == "fsdp" and launched_size() > 1:
        return Check("model.name (memory)", name, "no estimate under FSDP (weights sharded over the ranks)")
    have = have or machine_memory(cfg)
    need, breakdown = memory_needed(cfg, shape, have.gpu, have.bytes)
    verdict = memory_verdict(need, breakdown, have, source)
    if verdict.startswith("fits"):
        return Check("model.name (memory)", name, verdict)
    fixes = memory_fixes(cfg, shape, have, need)
    todo = ". Change: " + ", or ".join(fixes) if fixes else ""
    return Check("model.name (memory)", name, None, verdict + todo)


def memory_verdict(need: int, breakdown: str, have: Memory, source: str) -> str:
    """'fits: ...' or 'needs about X but ... gives Y' from the numbers alone."""
    if need <= have.bytes:
        return f"fits: about {_size(need)} of {_size(have.bytes)}, {have.where}; shape from {source}"
    return f"needs about {_size(need)}: {breakdown}, shape from {source}; but {have.where} gives {_size(have.bytes)}"


def training_checks(cfg: Config, stages: tuple) -> list:
    """Every check a training run's inputs need, run side by side (each hub question waits at most a few seconds)."""
    d = cfg.data
    held = d.heldout_source or d.source
    jobs: list = [lambda: check_model(cfg.model.name), lambda: check_device(cfg), lambda: check_memory(cfg)]
    if cfg.rewards.model and "grpo" in stages and cfg.grpo.enabled:
        jobs.append(lambda: check_reward_model(cfg.rewards.model))
    if cfg.rollout.precision.startswith("fp8") and "grpo" in stages and cfg.grpo.enabled:
        jobs.append(lambda: check_precision(cfg))
    jobs.append(lambda: check_source(held, "test", "data.heldout_source" if d.heldout_source else "data.source (held-out)"))
    uses_train = ("grpo" in stages and cfg.grpo.enabled) or ("sft" in stages and cfg.sft.enabled and not cfg.sft.source)
    if uses_train:
        jobs.append(lambda: check_source(d.source, d.split, "data.source"))
    if "sft" in stages and cfg.sft.enabled and cfg.sft.source:
        jobs.append(lambda: check_source(cfg.sft.source, d.split, "sft.source"))
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        return list(pool.map(lambda job: job(), jobs))


def require(checks: list) -> None:
    """Raise a PreflightError listing every failed check; nothing when all passed."""
    failed = [c for c in checks if c.problem]
    if failed:
        lines = [f"  {c.setting}={c.value}: {c.problem}" for c in failed]
        raise PreflightError(f"{len(failed)} input(s) missing; nothing was started:\n" + "\n".join(lines))


def memory_line(cfg: Config) -> str:
    """The memory plan from the model's config.json alone (no weights loaded), or why there is none."""
    import torch

    from .training.memory import device_budget, plan_for_config
    from .model.common import resolve_device

    try:
        device = resolve_device(cfg.model.device)
    except Exception:
        device = torch.device("cpu")
    budget = device_budget(cfg.grpo.max_memory_gb, device) if device.type == "cuda" or cfg.grpo.max_memory_gb else None
    if budget is None:
        return "memory: no budget on the CPU (whole batches); set grpo.max_memory_gb to plan one"
    shape = model_shape(cfg.model.name)[0]
    if shape is None:
        return "memory: the model's config.json is not at hand; no plan"
    if device.type != "cuda" or not cfg.model.gradient_checkpointing:
        return plan_for_config(shape, cfg, device, budget).summary(cfg.model.max_seq_length)
    plan, choice = checkpoint_choice(cfg, shape, device, budget)
    return f"{plan.summary(cfg.model.max_seq_length)}; {choice}"


def checkpoint_choice(cfg: Config, shape: object, device, budget: int) -> tuple:
    """(the plan GRPO trains under, what its checkpointed layers keep), as `Sizing.for_model` decides it from the
    model's shape."""
    from .dist import launched_size
    from .training.memory import plan_for_config
    from .training.sizing import Sizing

    m = cfg.model
    plans = {way: plan_for_config(shape, cfg, device, budget, offload=way == "host", keep_matmuls=way == "products")
             for way in ("inputs", "host", "products")}
    sizing = Sizing(cfg, plans["inputs"], device=device, distributed=launched_size() > 1)  # as under torchrun
    way = sizing.checkpoint_way(plans["products"])
    kept = {"host": f"checkpointed layer inputs on the host (model.offload_checkpoints={_setting(m.offload_checkpoints)})",
            "products": "checkpointed layers keep their GEMM and attention outputs",
            "inputs": "checkpointed layers keep their inputs"}[way]
    return plans[way], kept if way == "host" else f"{kept} (model.checkpoint_matmuls={_setting(m.checkpoint_matmuls)})"


def _setting(value: Optional[bool]) -> str:
    """A tri-state setting as the config writes it."""
    return "null" if value is None else str(value).lower()


def _model_config(name: str) -> Optional[object]:
    """The transformers config of `name` from local files only, or None."""
    if name == "tiny":
        from .model.tiny import build_tokenizer, tiny_config

        return tiny_config(len(build_tokenizer()))
    from .model.common import local_config

    return local_config(name)


def rollout_choice(cfg: Config) -> tuple:
    """(device, Card, engine, why) for this run: the card of model.device (the CPU where a CUDA device is asked for and none is
    visible: check_device says so) and the rollout engine it gets."""
    import torch

    from .dist import launched_size
    from .model.card import card_of, choose_engine
    from .model.common import resolve_device

    try:
        device = resolve_device(cfg.model.device)
    except Exception:  # a CUDA device asked for and none visible: check_device says so
        device = torch.device("cpu")
    card = card_of(device)
    sharded = cfg.run.parallel == "fsdp" and launched_size() > 1
    engine, engine_why = choose_engine(cfg.rollout.engine, card, sharded)
    if engine == "native" and device.type == "cuda" and not card.kernels:
        engine, engine_why = "hf", f"the native engine's kernels need sm_80+ and this card is {card.sm}"
    return device, card, engine, engine_why


def device_choices(cfg: Config, brief: bool = False) -> str:
    """What the device decides for this run, with why: the card, the dtype and how it trains, the rollout engine and
    the precision of what it reads; `brief`: on one line (the start of a run), else three (the dry run)."""
    from .model.card import choose_dtype, choose_precision
    from .model.precision import Precision
    from .rollout import fp8, precision_refusal

    device, card, engine, engine_why = rollout_choice(cfg)
    dtype, dtype_why = choose_dtype(cfg.model.dtype, card)
    name = str(dtype).replace("torch.", "")
    precision = Precision(dtype, device)
    chosen, precision_why = choose_precision(cfg.rollout.precision, card)
    problem = precision_refusal(cfg.rollout.precision, engine, cfg.rollout.lora, card, device)
    way = f", {fp8.default_way(card)} GEMMs" if chosen in ("fp8", "fp8-kv") else ""
    weights = {"fp8": f"fp8 weights{way}", "fp8-kv": f"fp8 weights and KV cache{way}"}.get(chosen, f"{name} weights")
    reads = f"rollout.precision={cfg.rollout.precision} refused: {problem}" if problem else f"{weights} ({precision_why})"
    reads += skinny_note(cfg, card, engine, dtype, chosen)
    cache = f", {hf_cache_kind(cfg, device)} cache (rollout.hf_cache={cfg.rollout.hf_cache})" if engine == "hf" else ""
    if brief:
        mixed = " mixed precision" if precision.mixed else ""
        return f"device: {card.describe()}, {name}{mixed} ({dtype_why}), rollouts {engine} ({engine_why}){cache}, {reads}"
    return (f"device: {card.describe()}\ndtype: {name} ({dtype_why}); {precision.describe()}\n"
            f"rollouts: {engine} ({engine_why}){cache}; {reads}")


def skinny_note(cfg: Config, card, engine: str, dtype, chosen: str) -> str:
    """", decode GEMMs ... by the skinny kernel" where rollout.skinny_gemm acts on this run (the native engine's
    packed bf16 / fp16 copies of merged LoRA on sm_90+ with Triton), "" where it has no effect (it is on by default, so saying so
    on every other card would be noise)."""
    from .rollout import skinny_gemm

    acts = (cfg.rollout.skinny_gemm and engine == "native" and chosen == "model dtype"  # not FP8, nor FP8 refused
            and skinny_gemm.serves_card(card.capability) and dtype in skinny_gemm.DTYPES
            and cfg.rollout.device_snapshots is not False and cfg.rollout.lora == "merge")
    if not acts:
        return ""
    when = "" if cfg.rollout.device_snapshots else " when its packed copies fit (rollout.device_snapshots=auto)"
    return f", decode GEMMs of up to {skinny_gemm.MAX_ROWS} rows by the skinny kernel{when} (rollout.skinny_gemm)"


def hf_cache_kind(cfg: Config, device) -> str:
    """static or dynamic: the key/value cache the hf engine will use on `device` (rollout.hf_cache)."""
    from .rollout import static_cache

    return "static" if static_cache(cfg.rollout.hf_cache, device.type) else "dynamic"


def dry_run(cfg: Config, stages: tuple) -> tuple:
    """(lines, every input there): the resolved settings, the device's choices, what would be loaded from where, and
    the memory plan."""
    checks = training_checks(cfg, stages)
    lines = ["# resolved settings", config_yaml(cfg).rstrip(), "# device", device_choices(cfg), "# inputs"]
    lines += [f"{c.setting}={c.value}: " + (c.found if not c.problem else f"MISSING: {c.problem}") for c in checks]
    return lines + [memory_line(cfg)], not any(c.problem for c in checks)
