"""Load a base model and tokenizer (hub id, local folder, adapter folder, or `tiny`), add LoRA, save.

The PEFT adapter is the unit of training: `add_lora` wraps the base, `save_trainable` writes the
adapter (or, without LoRA, the whole model) in the format transformers and PEFT read back.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from ..config import Config, ConfigError, LoraConfig, ModelConfig
from ..progress import notice
from .card import card_of
from .common import (ModelError, adapter_base, hub_problem, is_adapter_dir, prepare_tokenizer, resolve_device,
                     resolve_dtype)
from .checkpointing import checkpoint_kwargs, keep_refusal
from .compiled import compile_layers, compile_refusal, compiled
from .liger import quiet_optional_backends


def _from_pretrained(name: str, cfg: ModelConfig, dtype: torch.dtype) -> tuple:
    """Model and tokenizer by hub id or local folder through transformers (safetensors only)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    local = Path(name).exists()
    problem = hub_problem(name)
    if problem:
        raise ModelError(f"cannot load model {name!r}: {problem}")
    kwargs: dict[str, Any] = {"trust_remote_code": cfg.trust_remote_code}
    attn = None if cfg.attn_implementation == "auto" else cfg.attn_implementation
    try:
        tok = AutoTokenizer.from_pretrained(name, **kwargs)
        if cfg.init == "random":
            model = _random_from_config(name, dtype, attn, kwargs)
        else:
            model = AutoModelForCausalLM.from_pretrained(
                name, dtype=dtype, use_safetensors=True, attn_implementation=attn, **kwargs
            )
    except (OSError, ValueError) as err:
        where = "local folder" if local else "hub id (no hub access? set HF_HUB_OFFLINE=1 and use a local copy)"
        raise ModelError(f"cannot load model {name!r} as a {where}: {err}") from None
    return model, tok


def _random_from_config(name: str, dtype: torch.dtype, attn: Optional[str], kwargs: dict) -> Any:
    """A model with freshly initialised weights from `name`'s config, built directly on the device."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(name, **kwargs)
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    with device:
        return AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn, **kwargs)


def load_base(cfg: ModelConfig, seed: int = 0) -> tuple:
    """(model, tokenizer) on the configured device and dtype; `tiny` builds the built-in model."""
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    if cfg.backend == "unsloth":
        from .unsloth_backend import load_unsloth  # optional extra; clear error inside

        return load_unsloth(cfg, dtype, seed)
    if cfg.name == "tiny":
        from .tiny import build_tiny

        model, tok = build_tiny(seed)
    else:
        path = Path(cfg.name)
        if path.exists() and is_adapter_dir(path):
            return load_with_adapter(path, cfg)
        model, tok = _from_pretrained(cfg.name, cfg, dtype)
    model.to(device=device, dtype=dtype)
    prepare_tokenizer(model, tok)
    apply_liger(model, cfg)
    return model, tok


LIGER_FAMILIES = ("qwen3",)


def apply_liger(model: Any, cfg: ModelConfig) -> bool:
    """Swap in Liger's RMSNorm, SwiGLU and RoPE kernels for a Qwen3 model when model.use_liger allows it.

    Returns whether it did. Auto (null) applies them only on a GPU with liger-kernel importable;
    true raises when that is impossible. Liger's fused cross-entropy stays off: our log-probs are
    chunked over the output head already and need per-token values, not a loss.
    """
    if cfg.use_liger is False:
        return False
    device = next(model.parameters()).device
    if cfg.use_liger is None and compile_wanted(cfg, device):
        return False  # compiled layers fuse the norms, rotary and SwiGLU themselves
    family = getattr(model.config, "model_type", "")
    reason = None
    if device.type != "cuda":
        reason = f"the model is on {device.type} (Liger's kernels are Triton, GPU only)"
    elif not card_of(device).kernels:
        reason = f"this card is {card_of(device).sm} and Triton kernels are used from sm_80 only (never tested below)"
    elif family not in LIGER_FAMILIES:
        reason = f"model type {family!r} is not one of {LIGER_FAMILIES}"
    else:
        try:
            from liger_kernel.transformers import apply_liger_kernel_to_qwen3
        except ImportError as err:
            reason = f"liger-kernel does not import ({err}); install it with pip install 'mathgrpo[liger]'"
    if reason:
        if cfg.use_liger:
            raise ModelError(f"model.use_liger=true but {reason}; set model.use_liger=null or false")
        return False
    quiet_optional_backends()  # Liger's warnings about its Ascend and CuTe DSL kernels, which cannot run here
    apply_liger_kernel_to_qwen3(rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                                fused_linear_cross_entropy=False, model=model)
    return True


def load_tokenizer(name: str, cfg: ModelConfig) -> Optional[Any]:
    """The tokenizer alone of a hub id, model folder or adapter folder (its own, else its base's); None for
    `tiny` or when it cannot be read (loading the model then gives the error that says why)."""
    from transformers import AutoTokenizer

    if name == "tiny":
        return None
    path = Path(name)
    if path.exists() and is_adapter_dir(path) and not (path / "tokenizer_config.json").exists():
        name = adapter_base(path)
    if hub_problem(name):
        return None
    try:
        return AutoTokenizer.from_pretrained(name, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError):
        return None


def load_with_adapter(adapter_dir: Path, cfg: ModelConfig, trainable: bool = False) -> tuple:
    """Base named in the adapter's config plus the adapter itself (a PeftModel)."""
    from peft import PeftModel

    base_name = adapter_base(adapter_dir)
    base_cfg = ModelConfig(**{**cfg.__dict__, "name": base_name})
    model, tok = load_base(base_cfg)
    if (Path(adapter_dir) / "tokenizer_config.json").exists():
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(adapter_dir))
        tok.padding_side = "left"
    return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=trainable), tok


def load_any(path: str, cfg: Optional[ModelConfig] = None) -> tuple:
    """(model, tokenizer) for a hub id, model folder or adapter folder (a run folder is resolved to one first:
    `runs.resolve_model`)."""
    cfg = cfg or ModelConfig()
    if Path(path).exists() and is_adapter_dir(Path(path)):
        return load_with_adapter(Path(path), cfg)
    return load_base(ModelConfig(**{**cfg.__dict__, "name": path}))


def add_lora(model: Any, lora: LoraConfig) -> Any:
    """Wrap `model` with fresh LoRA adapters (PEFT); only the adapters are trainable."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    missing = [t for t in lora.target_modules if t not in names]
    if missing:
        raise ModelError(f"lora.target_modules {missing} are not modules of this model; it has e.g. {sorted(names)[:12]}")
    peft_cfg = PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        task_type="CAUSAL_LM",
        bias="none",
    )
    return get_peft_model(model, peft_cfg)


def add_adapters(model: Any, cfg: Config) -> Any:
    """Fresh LoRA adapters through the configured backend, with its gradient checkpointing: what a stage trains.

    Both training stages (warm-up and GRPO) call this, so the backend is chosen in one place.
    Either way the adapter is a PEFT LoRA adapter and saves in PEFT's format.
    """
    if cfg.model.backend == "unsloth":
        from .unsloth_backend import add_lora_unsloth

        return add_lora_unsloth(model, cfg.lora, cfg.model, cfg.run.seed)
    model = add_lora(model, cfg.lora)
    ready_for_training(model, cfg.model)
    return model


def make_trainable(model: Any, cfg: Config, lora: bool) -> Any:
    """What a training stage trains: fresh LoRA adapters (`lora`), else every weight unfrozen."""
    if lora:
        return add_adapters(model, cfg)
    for p in model.parameters():
        p.requires_grad_(True)
    ready_for_training(model, cfg.model)
    return model


def unwrap(model: Any) -> Any:
    """The transformers causal LM inside a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def ready_for_training(model: Any, cfg: ModelConfig) -> None:
    """Gradient checkpointing (GPU; offloaded to the host when asked), when model.fused_lora is on the fused LoRA
    projections, and when model.compile_layers allows it compiled decoder layers. (The SDPA backends for training
    are chosen per pass: `training_attention`; the compiled layers run inside `compiled.training_passes`.)"""
    if compile_wanted(cfg, next(model.parameters()).device):  # first: checkpointing asks whether layers are compiled
        compile_layers(model)
        notice("model.compile_layers: the decoder layers compile at their first training passes (tens of seconds "
               "each: forward and backward; model.compile_layers=false runs them as they are)")
    if enable_checkpointing(model, cfg) and cfg.offload_checkpoints:
        from .offload import offload_checkpoints

        offload_checkpoints(model)
    if cfg.fused_lora:
        from .fused_lora import fuse_lora

        fuse_lora(model)


def compile_wanted(cfg: ModelConfig, device: torch.device) -> bool:
    """Whether model.compile_layers compiles the decoder layers on `device` (true where it cannot: an error)."""
    if cfg.compile_layers is False or cfg.backend != "transformers":
        return False
    refusal = compile_refusal(torch.device(device))
    if refusal and cfg.compile_layers:
        raise ModelError(f"model.compile_layers=true but {refusal}; set model.compile_layers=null or false")
    return refusal is None


@contextmanager
def training_attention(cfg: ModelConfig, device: torch.device) -> Iterator[bool]:
    """Within: PyTorch's cuDNN SDPA backend is off for a training pass on a GPU when model.cudnn_attention is
    false, and back as it was after (rollouts and evaluation keep it); yields whether it is off."""
    if device.type != "cuda" or cfg.cudnn_attention:
        yield False
        return
    was = torch.backends.cuda.cudnn_sdp_enabled()
    torch.backends.cuda.enable_cudnn_sdp(False)
    try:
        yield True
    finally:
        torch.backends.cuda.enable_cudnn_sdp(was)


def enable_checkpointing(model: Any, cfg: ModelConfig) -> bool:
    """Gradient checkpointing on GPU when asked (CPU tiny runs gain nothing from it); whether it is on. With
    compiled layers, products to keep (model.checkpoint_matmuls=true) mean no checkpointing: the compiler keeps them."""
    if not (cfg.gradient_checkpointing and next(model.parameters()).device.type == "cuda"):
        return False
    keep = cfg.checkpoint_matmuls is True
    if keep and compiled(model):
        return False
    refusal = keep_refusal(model) if keep else None
    if refusal:
        raise ConfigError(refusal)
    checkpoint_layers(model, keep_matmuls=keep)
    if hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()
    return True


def checkpoint_layers(model: Any, keep_matmuls: bool = False) -> None:
    """Every decoder layer checkpointed (non-reentrant; with `keep_matmuls` its products' outputs kept, see
    `checkpointing`), under the name this transformers has: 5.25 renamed `gradient_checkpointing_enable` to
    `activation_checkpointing_enable` and warns on the old one; older releases (5.17 on the GPU machines)
    have only the old one."""
    kwargs = checkpoint_kwargs(keep_matmuls)
    renamed = getattr(model, "activation_checkpointing_enable", None)
    if renamed is not None:
        renamed(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def uncheckpoint_layers(model: Any) -> None:
    """Every decoder layer's checkpointing off (either name, as `checkpoint_layers`)."""
    renamed = getattr(model, "activation_checkpointing_disable", None)
    (renamed or model.gradient_checkpointing_disable)()


def stop_token_ids(tokenizer: Any) -> list:
    """Token ids that end a completion: eos plus the chat turn end where the tokenizer has one."""
    ids = {tokenizer.eos_token_id}
    for tok in ("<|im_end|>", "<|eot_id|>", "<|endoftext|>"):
        tid = tokenizer.convert_tokens_to_ids(tok) if tok in tokenizer.get_vocab() else None
        if tid is not None:
            ids.add(tid)
    return sorted(i for i in ids if i is not None)


def save_trainable(model: Any, tokenizer: Any, path: Path, state_dict: Optional[dict] = None) -> None:
    """Write the adapter (PEFT format) or the whole model (safetensors) and the tokenizer to `path`.

    state_dict: the whole unsharded state when the model is sharded (FSDP); None reads the model's own.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    extra = {"state_dict": state_dict} if state_dict is not None else {}
    model.save_pretrained(str(path), safe_serialization=True, **extra)
    tokenizer.save_pretrained(str(path))


def publish_model(model: Any, tokenizer: Any, path: Path, state_dict: Optional[dict] = None) -> None:
    """Save to a temporary folder, then swap it in: `path` is either the old model or the new one."""
    import shutil

    path = Path(path)
    from ..diskio import writing

    tmp = path.with_name(f".{path.name}-tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with writing(path, tmp):  # a failed write (a full disk) leaves no half model behind
        save_trainable(model, tokenizer, tmp, state_dict)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)


def trainable_state(model: Any) -> dict:
    """The tensors an optimizer updates (adapter weights, or all weights without LoRA), by name."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: Any, state: dict) -> None:
    """Copy tensors saved by `trainable_state` back into `model` (names must match)."""
    params = dict(model.named_parameters())
    unknown = set(state) - set(params)
    if unknown:
        raise ModelError(f"checkpoint has tensors this model lacks, e.g. {sorted(unknown)[:3]}: wrong model or LoRA settings?")
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


def count_parameters(model: Any) -> tuple:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


def set_threads(threads: int) -> None:
    """Fix torch's CPU thread count (0 leaves it); the count changes numerics, so runs that must repeat fix it."""
    if threads > 0:
        torch.set_num_threads(threads)
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
