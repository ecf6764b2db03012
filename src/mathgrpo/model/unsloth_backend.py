"""The Unsloth backend (`model.backend: unsloth`): load and wrap the model through `FastLanguageModel`.

Unsloth patches transformers' model classes with its own kernels, loads the frozen base in 4-bit
when asked, and brings its own gradient checkpointing. Everything else stays ours: the rollout
engines, rewards, loss and checkpoints; the adapter is a PEFT LoRA adapter saved in PEFT's format.
One change inside Unsloth's kernels: the forward GEMMs of its LoRA layers on 16-bit weights run in our
order (`reorder_lora_matmul`), the low-rank product first, as `fused_lora` does on the default backend.

Two things about importing it:
- Unsloth must be imported before transformers and PEFT, or it warns that some of its patches
  are missing. `mathgrpo.cli` calls `import_unsloth()` before anything imports transformers when
  the config asks for this backend; a script should `import mathgrpo.model.unsloth_backend` (or
  `unsloth`) first. Imported later it still works, with that warning.
- Unsloth checks at import that torchvision's compiled operators load, and refuses to import when
  they don't (CPU wheels whose `torchvision::nms` is missing). mathgrpo never uses torchvision, so
  the check is switched off (UNSLOTH_SKIP_TORCHVISION_CHECK=1) unless the environment sets it.

Padding: on a GPU, Unsloth's decoder body drops the attention mask in training mode (exact for
right padding only) unless the causal-LM forward was called without labels just before, or the
body carries `_unsloth_keep_padding_mask`. Our log-probs call the body directly; most batches go
rotated and unmasked, but those that cannot (a hole in the mask) pass a left-padding mask, so
every model this backend loads carries that flag (`keep_padding_mask`).
"""

from __future__ import annotations

import os
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from ..config import LoraConfig, ModelConfig
from ..progress import notice
from .common import ModelError, hub_problem, prepare_tokenizer

INSTALL = "pip install 'mathgrpo[unsloth]'"
# Unsloth 2026.10's pins on the packages it patches; read from its own metadata when it is installed.
KNOWN_PINS = {"transformers": "<=5.17.0", "trl": "<=1.15.0", "datasets": "<5.0.0"}


def unsloth_pins() -> dict:
    """{package: specifier} for transformers, trl and datasets, from the installed Unsloth or KNOWN_PINS."""
    from packaging.requirements import Requirement

    try:
        requires = metadata.requires("unsloth") or []
    except metadata.PackageNotFoundError:
        return dict(KNOWN_PINS)
    pins = {}
    for line in requires:
        req = Requirement(line)
        if req.name in KNOWN_PINS and (req.marker is None or "extra" not in str(req.marker)):
            pins[req.name] = str(req.specifier)
    return pins or dict(KNOWN_PINS)


def version_conflicts() -> list:
    """Installed packages outside Unsloth's pins, as 'name version (unsloth needs name<spec>)'."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    out = []
    for name, spec in unsloth_pins().items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        if not SpecifierSet(spec).contains(Version(installed), prereleases=True):
            out.append(f"{name} {installed} (unsloth needs {name}{spec})")
    return out


def import_unsloth() -> Any:
    """Import Unsloth (before transformers where possible) and return `FastLanguageModel`; clear errors otherwise."""
    conflicts = version_conflicts()
    try:
        metadata.version("unsloth")
    except metadata.PackageNotFoundError:
        extra = f" (pip will also move {', '.join(conflicts)})" if conflicts else ""
        raise ModelError(f"model.backend=unsloth but Unsloth is not installed: {INSTALL}{extra}, "
                         "or set model.backend=transformers") from None
    if conflicts:
        raise ModelError(f"model.backend=unsloth: installed versions conflict with Unsloth's pins: {'; '.join(conflicts)}. "
                         f"Install the pinned versions (e.g. {INSTALL} in a fresh virtual environment) or set model.backend=transformers")
    os.environ.setdefault("UNSLOTH_SKIP_TORCHVISION_CHECK", "1")
    late = [m for m in ("transformers", "peft") if m in sys.modules and "unsloth" not in sys.modules]
    if late:
        notice(f"unsloth: {', '.join(late)} imported before Unsloth, so some of its patches are missing; "
               "import mathgrpo.model.unsloth_backend first in scripts")
    try:
        from unsloth import FastLanguageModel
    except Exception as err:  # Unsloth raises ImportError, RuntimeError or NotImplementedError on a bad setup
        raise ModelError(f"model.backend=unsloth: Unsloth failed to import: {type(err).__name__}: {err}") from None
    return FastLanguageModel


def _tiny_folder(seed: int) -> str:
    """The built-in tiny model written to a temporary folder, since Unsloth loads by name or path only."""
    from .tiny import build_tiny

    model, tok = build_tiny(seed)
    folder = tempfile.mkdtemp(prefix="mathgrpo-tiny-")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def load_unsloth(cfg: ModelConfig, dtype: torch.dtype, seed: int = 0) -> tuple:
    """(model, tokenizer) through FastLanguageModel.from_pretrained; Unsloth picks the device (its GPU if any)."""
    FastLanguageModel = import_unsloth()
    name = _tiny_folder(seed) if cfg.name == "tiny" else cfg.name
    problem = hub_problem(name)
    if problem:
        raise ModelError(f"Unsloth cannot load model {cfg.name!r}: {problem}")
    try:
        model, tok = FastLanguageModel.from_pretrained(
            model_name=name,
            max_seq_length=cfg.max_seq_length,
            load_in_4bit=cfg.load_in_4bit,
            dtype=dtype,
            trust_remote_code=cfg.trust_remote_code,
        )
    except (OSError, ValueError) as err:
        raise ModelError(f"Unsloth cannot load model {cfg.name!r}: {err}") from None
    keep_padding_mask(model)
    return model, prepare_tokenizer(model, tok)


def keep_padding_mask(model: Any) -> int:
    """Make Unsloth's decoder bodies in `model` honour the attention mask in training mode; returns how many.

    Without the flag, left-padded rows passed with a mask attend to their pad tokens while training (their
    log-probs and gradients differ from the rollout's and eval's), since our log-probs bypass the causal-LM
    forward whose label-less calls would keep the mask. The bodies are the modules with `embed_tokens`.
    """
    bodies = [m for m in model.modules() if hasattr(m, "embed_tokens")]
    for body in bodies:
        body._unsloth_keep_padding_mask = True
    return len(bodies)


@torch.library.custom_op("mathgrpo::lora_first_matmul", mutates_args=())
def lora_first_matmul(x: torch.Tensor, weight: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor,
                      scale: float) -> torch.Tensor:
    """x W^T + scale (x A^T) B^T, the low-rank product written first and the base GEMM accumulated onto it.

    An opaque operator, so that Unsloth's compiled decoder blocks call it as it is: traced, its in-place
    accumulate would be rewritten out of place (a copy per call). Forward only (no autograd formula): it
    runs inside Unsloth's LoRA autograd functions, whose backward is their own.
    """
    x2 = x.reshape(-1, x.shape[-1])
    xa = (x2 @ lora_a.to(x.dtype).t()).mul_(scale)
    out = (xa @ lora_b.to(x.dtype).t()).addmm_(x2, weight.t())
    return out.view(*x.shape[:-1], out.shape[-1])


@lora_first_matmul.register_fake
def _lora_first_matmul_shape(x, weight, lora_a, lora_b, scale):
    """Output shape for tracing: [..., out_features]."""
    return x.new_empty(*x.shape[:-1], weight.shape[0])


def _lora_matmul(original: Any) -> Any:
    """Unsloth's `matmul_lora` with the low-rank product first where the weight is plain (`lora_first_matmul`).

    Unsloth writes `X W^T`, then adds `s (X A^T) B^T` in place: a second full read and write of the output,
    memory-bound. The other order writes the output once in the small GEMM and lets the large one add it in
    its epilogue (as `fused_lora.LoraLinear` does). Quantized or FP8 weights, calls without an adapter, into
    `out` or with gradients recorded go to Unsloth's own.
    """

    def lora_matmul(X, W, W_quant, A, B, s, out=None, use_global_buffer=True):
        if (W_quant is not None or A is None or out is not None or type(W) not in (torch.Tensor, torch.nn.Parameter)
                or W.dtype != X.dtype or (torch.is_grad_enabled() and any(t.requires_grad for t in (X, W, A, B)))):
            return original(X, W, W_quant, A, B, s, out=out, use_global_buffer=use_global_buffer)
        return lora_first_matmul(X, W, A, B, float(s))

    lora_matmul.unsloth_original = original
    return lora_matmul


def reorder_lora_matmul() -> bool:
    """Route Unsloth's LoRA kernels' forward GEMMs through `_lora_matmul`; True when the patch is in place.

    Process-wide (Unsloth's autograd functions read the name from their module); idempotent. False when
    this Unsloth has no `fast_lora.matmul_lora` of the expected form, which then runs unchanged.
    """
    import inspect

    try:
        from unsloth.kernels import fast_lora
    except ImportError:  # a layout of Unsloth without this module: its kernels run as they are
        return False
    current = getattr(fast_lora, "matmul_lora", None)
    if current is None:
        return False
    if hasattr(current, "unsloth_original"):
        return True
    if list(inspect.signature(current).parameters)[:6] != ["X", "W", "W_quant", "A", "B", "s"]:
        return False
    fast_lora.matmul_lora = _lora_matmul(current)
    return True


def restore_lora_matmul() -> None:
    """Undo `reorder_lora_matmul` (for A/B measurements)."""
    from unsloth.kernels import fast_lora

    fast_lora.matmul_lora = getattr(fast_lora.matmul_lora, "unsloth_original", fast_lora.matmul_lora)


def _checkpointing(cfg: ModelConfig) -> Any:
    """Unsloth's own gradient checkpointing (offloads saved activations) when model.gradient_checkpointing is on."""
    return "unsloth" if cfg.gradient_checkpointing else False


def add_lora_unsloth(model: Any, lora: LoraConfig, cfg: ModelConfig, seed: int) -> Any:
    """Fresh LoRA adapters through FastLanguageModel.get_peft_model with our settings (a PEFT model)."""
    FastLanguageModel = import_unsloth()
    reorder_lora_matmul()
    return FastLanguageModel.get_peft_model(
        model,
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        bias="none",
        use_gradient_checkpointing=_checkpointing(cfg),
        random_state=seed,
        max_seq_length=cfg.max_seq_length,
    )


def load_adapter_unsloth(adapter_dir: Path, cfg: ModelConfig) -> tuple:
    """Base + a saved PEFT adapter (e.g. the warm-up's) through Unsloth, with the adapter trainable."""
    from .common import adapter_base, resolve_device, resolve_dtype

    FastLanguageModel = import_unsloth()
    base = adapter_base(adapter_dir)
    if not Path(base).exists() and "/" not in base:
        raise ModelError(f"{adapter_dir}/adapter_config.json names no loadable base model ({base!r}); pass model.name=<base>")
    dtype = resolve_dtype(cfg.dtype, resolve_device(cfg.device))
    model, tok = FastLanguageModel.from_pretrained(
        model_name=str(adapter_dir), max_seq_length=cfg.max_seq_length, load_in_4bit=cfg.load_in_4bit,
        dtype=dtype, use_gradient_checkpointing=_checkpointing(cfg),
    )
    for name, p in model.named_parameters():
        if "lora_" in name:
            p.requires_grad_(True)
    keep_padding_mask(model)
    reorder_lora_matmul()
    return model, prepare_tokenizer(model, tok)
