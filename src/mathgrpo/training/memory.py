"""A memory budget: how many sequences fit in one training micro-batch and in one rollout batch.

`grpo.max_memory_gb` (or, on a GPU, the card's size) is split between what stays resident for the
whole run and what grows with the batch:

- resident: the frozen base weights (bf16: 2 bytes a parameter; 4-bit: ~0.56, the embedding and output
  head staying 16-bit as bitsandbytes leaves them), the LoRA weights
  with their gradients and AdamW moments (fp32: 16 bytes a LoRA parameter), and a fixed allowance
  for the CUDA context, kernels' workspaces and allocator fragmentation;
- training, per token: with gradient checkpointing each decoder layer keeps its input hidden state
  (layers x hidden x 2 bytes; on the host instead when checkpoints are offloaded) and the one layer
  being recomputed in backward holds its intermediates (about ACT_HIDDEN x hidden + ACT_INTERMEDIATE
  x intermediate values; more through PEFT's own LoRA forward, which keeps fp32 copies); without
  checkpointing every layer holds those intermediates. Plus one chunk of output-head logits for the
  chunked log-probs (chunk x vocab: bf16 logits, an fp32 copy, and with a frozen head the bf16
  softmax that gives the gradient; with a trainable head the log-softmax and its fp32 gradient);
- rollout, per token: the KV cache, 2 (K and V) x layers x kv_heads x head_dim x 2 bytes
  (144 KiB a token for Qwen3-4B; a prompt's tokens once per group of samples where the engine
  shares them), plus a few fp32 vocabulary-sized rows per sequence for sampling;
- beside the policy, for the whole run: a reward model (rewards.model), its weights and one scoring
  batch's activations (rewards.model_batch_size x model_max_length tokens), counted as resident.

The constants are estimates that err on the large side; the numbers they give are upper bounds on
the batch sizes to try, and an out-of-memory stop names the settings to lower.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from ..config import PROJECTIONS
from ..progress import notice

GIB = 1024**3
# Values a Qwen3-style layer keeps for backward per token, counted in hidden- and intermediate-
# sized vectors: norms, q/k/v/o inputs and outputs, attention output, residuals, gate/up/act in the
# MLP, and the gradients alive during the layer's backward. Through PEFT's LoRA forward the fp32
# copies of each projection's input add the difference.
ACT_HIDDEN, ACT_INTERMEDIATE = 14, 4
ACT_HIDDEN_PEFT, ACT_INTERMEDIATE_PEFT = 18, 5
# fp32 vocabulary rows a sampling step holds per sequence (logits, processed logits, probabilities).
SAMPLING_ROWS = 4
# Values one token of a no-grad scoring pass holds at a layer's peak, in hidden- and intermediate-sized
# vectors (residual, norm, q/k/v/attention output; gate, up and their product).
SCORE_HIDDEN, SCORE_INTERMEDIATE = 6, 3
# CUDA context, cuBLAS/attention workspaces and allocator slack, bytes (GPU plans only).
FIXED_OVERHEAD = int(1.5 * GIB)
# Bytes per logits value in one chunk. Frozen head: bf16 head output, fp32 copy turned into the
# softmax in place, its bf16 copy for the gradient GEMM (the torch path; the Triton head kernel on a
# GPU needs the bf16 output alone, so this is an upper bound there). Trainable head (checkpointed
# chunk): bf16 output, fp32 copy, fp32 log-softmax, fp32 gradient in backward.
LOGIT_BYTES = 2 + 4 + 2
LOGIT_BYTES_TRAINABLE_HEAD = 2 + 4 + 4 + 4


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a decoder-only transformer that memory depends on."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    params: int  # all parameters of the base model
    tied: bool = True  # the output head shares the embedding matrix

    @classmethod
    def from_config(cls, config: Any, params: Optional[int] = None) -> "ModelShape":
        """The shape from a transformers config (Qwen3, Llama and alike); params counted if not given."""
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        shape = cls(
            hidden=config.hidden_size,
            layers=config.num_hidden_layers,
            heads=heads,
            kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=head_dim,
            intermediate=config.intermediate_size,
            vocab=config.vocab_size,
            params=0,
            tied=bool(getattr(config, "tie_word_embeddings", False)),
        )
        return cls(**{**shape.__dict__, "params": params if params is not None else shape.count_params(shape.tied)})

    def count_params(self, tied: bool) -> int:
        """Parameters of a Qwen3/Llama-style model with this shape (norms included)."""
        attn = self.hidden * self.head_dim * (self.heads * 2 + self.kv_heads * 2)
        mlp = 3 * self.hidden * self.intermediate
        norms = 2 * self.hidden + 2 * self.head_dim
        embed = self.vocab * self.hidden * (1 if tied else 2)
        return self.layers * (attn + mlp + norms) + embed + self.hidden

    def embedding_params(self) -> int:
        """Parameters of the embedding and (untied) output head: the matrices 4-bit loading leaves in 16-bit."""
        return self.vocab * self.hidden * (1 if self.tied else 2)

    def weight_bytes(self, dtype_bytes: int = 2, load_in_4bit: bool = False) -> int:
        """Bytes of the frozen base weights: `dtype_bytes` a parameter, or 4-bit NF4 (half a byte a weight plus
        one fp32 scale per 64-weight block, ~0.56 bytes) for every matrix but the embedding and output head."""
        if not load_in_4bit:
            return self.params * dtype_bytes
        embed = min(self.embedding_params(), self.params)
        return int((self.params - embed) * 0.5625) + embed * dtype_bytes

    def projection_sizes(self) -> dict:
        """(in, out) features of each decoder-layer projection, by name."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return {
            "q_proj": (self.hidden, q), "k_proj": (self.hidden, kv), "v_proj": (self.hidden, kv),
            "o_proj": (q, self.hidden), "gate_proj": (self.hidden, self.intermediate),
            "up_proj": (self.hidden, self.intermediate), "down_proj": (self.intermediate, self.hidden),
        }

    def lora_params(self, r: int, targets: list) -> int:
        """LoRA parameters for rank `r` on the named projections of every layer (A: r x in, B: out x r)."""
        io = self.projection_sizes()
        per_layer = sum(r * (io[t][0] + io[t][1]) for t in targets if t in io)
        return self.layers * per_layer

    def kept_products(self, lora_r: int = 0, targets: tuple = (), peft_forward: bool = False) -> int:
        """Values one token keeps in one layer when checkpointing keeps its products (`model.checkpoint_matmuls`): q,
        k, v, the attention output (and its log-sum-exp, fp32: two values a head), the output projection, gate,
        up and down, and each LoRA projection's rank-r product (`targets`, rank `lora_r`; 0: full fine-tuning).
        Through PEFT's own forward (`peft_forward`) a LoRA projection keeps its base output (where the fused function
        keeps the finished sum: as many values) and its two low-rank products in fp32 (r + out values, twice as many
        16-bit ones, where the fused function keeps r 16-bit values)."""
        io = self.projection_sizes()
        lora = [io[t][1] for t in targets if t in io] if lora_r else []
        values = sum(o for _, o in io.values()) + self.heads * self.head_dim + 2 * self.heads + lora_r * len(lora)
        if peft_forward:
            values += sum(2 * o + lora_r for o in lora)
        return values

    def compiled_saved(self, lora_r: int = 0, targets: tuple = ()) -> int:
        """Values one token keeps in one compiled layer (`model.compile_layers`, not checkpointed) for backward, as
        AOTAutograd's partitioner picks them: the layer input and both normalised inputs, q and k before and after
        their norms and rotary, v, the attention output and its log-sum-exp, the intermediate state after the
        attention, gate, up and their SwiGLU product, each LoRA projection's rank-r product, and the norms' fp32
        reciprocal RMS values (two 16-bit values each). The output and down projections' outputs are not kept
        (only added onto the residual). Counted on the CPU against the bytes saved (tests/model/test_compiled.py)."""
        io = self.projection_sizes()
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        lora = sum(1 for t in targets if t in io) * lora_r
        rstd = 2 * (2 + self.heads + self.kv_heads)  # input and post-attention norms, q and k norms a head
        return 4 * self.hidden + 2 * q + 3 * kv + q + 2 * self.heads + 3 * self.intermediate + lora + rstd

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        """KV-cache bytes one token takes: K and V for every layer and key/value head."""
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes


@dataclass(frozen=True)
class MemoryPlan:
    """What fits in the budget: the sizes the trainer and the rollout engine use, and why."""

    budget: int  # bytes
    resident: int  # weights + LoRA state + fixed overhead, bytes
    train_per_token: int  # activation bytes per training token
    logits_chunk: int  # bytes of one chunk of output-head logits
    chunk_tokens: int  # tokens per log-prob chunk
    rollout_per_token: int  # KV-cache bytes per generated or prompt token
    rollout_per_sequence: int  # sampling scratch per sequence, bytes
    beside: int = 0  # bytes of other models kept on the device (the reward model), part of `resident`

    def micro_batch(self, seq_tokens: int, held: int = 0) -> int:
        """Sequences of `seq_tokens` tokens one forward/backward can take (0: not even one fits).

        held: bytes something else keeps meanwhile, e.g. a rollout engine's KV cache kept for reuse.
        """
        free = self.budget - self.resident - self.logits_chunk - held
        return max(free // max(seq_tokens * self.train_per_token, 1), 0)

    def rollout_batch(self, seq_tokens: int, new_tokens: Optional[int] = None, group: int = 1, held: int = 0) -> int:
        """Sequences of up to `seq_tokens` tokens (prompt + completion) one generate call can hold.

        new_tokens / group: when the engine caches a prompt once for its `group` samples, only the
        new_tokens completion positions are per sequence; the prompt's share is divided by the group.
        held: bytes the engine keeps besides, e.g. device copies of the base weights.
        """
        free = self.budget - self.resident - held
        prompt = seq_tokens - new_tokens if new_tokens is not None else 0
        cached = seq_tokens - prompt + -(-prompt // group)
        per_seq = cached * self.rollout_per_token + self.rollout_per_sequence
        return max(free // max(per_seq, 1), 0)

    def train_bytes(self, sequences: int, seq_tokens: int, held: int = 0) -> int:
        """Estimated peak bytes of one training micro-batch, resident and held memory included."""
        return self.resident + self.logits_chunk + held + sequences * seq_tokens * self.train_per_token

    def floor(self, seq_tokens: int) -> int:
        """Bytes the smallest step needs: the resident share and the larger of one training sequence of
        `seq_tokens` tokens (with one chunk of logits) and one rollout sequence of as many."""
        train = self.logits_chunk + seq_tokens * self.train_per_token
        rollout = seq_tokens * self.rollout_per_token + self.rollout_per_sequence
        return self.resident + max(train, rollout)

    def summary(self, seq_tokens: int) -> str:
        """One line for the log: budget, resident share, and the two batch sizes at `seq_tokens`."""
        beside = f" (reward model {self.beside / GIB:.1f} GiB)" if self.beside else ""
        return (f"memory: budget {self.budget / GIB:.1f} GiB, resident {self.resident / GIB:.1f} GiB{beside}; at {seq_tokens} tokens "
                f"a micro-batch of {self.micro_batch(seq_tokens)}, a rollout batch of {self.rollout_batch(seq_tokens)}, "
                f"log-prob chunks of {self.chunk_tokens} tokens")


def chunk_tokens_for(vocab: int, budget: int, logit_bytes: int = LOGIT_BYTES) -> int:
    """Log-prob chunk length: a power of two in [128, 4096] whose logits take at most ~4% of the budget."""
    chunk = 4096
    while chunk > 128 and chunk * vocab * logit_bytes > budget // 25:
        chunk //= 2
    return chunk


def plan_memory(
    shape: ModelShape,
    budget_bytes: int,
    lora_r: int = 32,
    lora_targets: Optional[list] = None,
    dtype_bytes: int = 2,
    load_in_4bit: bool = False,
    gradient_checkpointing: bool = True,
    full_finetune: bool = False,
    fixed_overhead: int = FIXED_OVERHEAD,
    fused_lora: bool = True,
    offload_checkpoints: bool = False,
    beside: int = 0,
    keep_matmuls: bool = False,
    compiled: bool = False,
) -> MemoryPlan:
    """The memory plan for training `shape` with LoRA (or every weight) inside `budget_bytes`, beside `beside`
    bytes of other models kept on the device (`reward_model_bytes`); `keep_matmuls`: checkpointing keeps each layer's
    products as well as its input; `compiled`: compiled layers (`model.compile_layers`), which keep their products
    without checkpointing (`ModelShape.compiled_saved`, more than checkpointing keeps) and save that much for the
    layer whose backward runs when checkpointed."""
    targets = lora_targets if lora_targets is not None else PROJECTIONS
    weight_bytes = shape.weight_bytes(dtype_bytes, load_in_4bit)
    trained = shape.params if full_finetune else shape.lora_params(lora_r, targets)
    state_bytes = trained * 16  # fp32 weight, gradient and two AdamW moments
    resident = weight_bytes + state_bytes + fixed_overhead + beside
    per_hidden, per_intermediate = (ACT_HIDDEN, ACT_INTERMEDIATE) if fused_lora else (ACT_HIDDEN_PEFT, ACT_INTERMEDIATE_PEFT)
    layer_values = per_hidden * shape.hidden + per_intermediate * shape.intermediate
    r = 0 if full_finetune else lora_r
    if compiled:
        layer_values = max(layer_values, shape.compiled_saved(r, targets))
    if gradient_checkpointing and keep_matmuls and compiled:
        per_token = dtype_bytes * (shape.layers * shape.compiled_saved(r, targets) + layer_values)
    elif gradient_checkpointing:
        kept_layers = 0 if offload_checkpoints else shape.layers
        per_token = dtype_bytes * (kept_layers * shape.hidden + layer_values)
        if keep_matmuls:
            per_token += dtype_bytes * shape.layers * shape.kept_products(r, targets, peft_forward=not fused_lora)
    else:
        per_token = dtype_bytes * shape.layers * layer_values
    per_token += 2 * dtype_bytes * shape.hidden  # final hidden states and their gradient
    logit_bytes = LOGIT_BYTES_TRAINABLE_HEAD if full_finetune else LOGIT_BYTES
    chunk = chunk_tokens_for(shape.vocab, budget_bytes, logit_bytes)
    return MemoryPlan(
        budget=int(budget_bytes),
        resident=resident,
        train_per_token=per_token,
        logits_chunk=chunk * shape.vocab * logit_bytes,
        chunk_tokens=chunk,
        rollout_per_token=shape.kv_bytes_per_token(dtype_bytes),
        rollout_per_sequence=SAMPLING_ROWS * 4 * shape.vocab,
        beside=beside,
    )


def scorer_bytes(config: Any, dtype_bytes: int, batch: int, max_length: int) -> int:
    """A sequence classifier kept beside the policy: its weights (the decoder, embeddings once, a num_labels head)
    and the activations of one no-grad scoring pass of `batch` texts of `max_length` tokens."""
    shape = ModelShape.from_config(config, params=0)
    params = shape.count_params(tied=True) + shape.hidden * config.num_labels
    per_token = SCORE_HIDDEN * shape.hidden + SCORE_INTERMEDIATE * shape.intermediate
    return dtype_bytes * (params + batch * max_length * per_token)


def reward_model_bytes(cfg: Any, device: Any) -> int:
    """What the run's rewards.model keeps on `device` (`scorer_bytes` from its config.json; 0 without one, or when
    its config is not at hand)."""
    if not cfg.rewards.model:
        return 0
    import torch

    from ..model.reward_model import classifier_dtype
    from ..model.common import local_config

    config = local_config(cfg.rewards.model)
    if config is None:
        return 0
    dtype_bytes = torch.finfo(classifier_dtype(torch.device(device))).bits // 8
    return scorer_bytes(config, dtype_bytes, cfg.rewards.model_batch_size, cfg.rewards.model_max_length)


def device_budget(max_memory_gb: Optional[float], device: Any) -> Optional[int]:
    """Bytes to plan for: max_memory_gb when set, else 95% of the CUDA card's memory; None on CPU."""
    if max_memory_gb is not None:
        return int(max_memory_gb * GIB)
    if getattr(device, "type", str(device)) != "cuda":
        return None
    import torch

    _, total = torch.cuda.mem_get_info(device)
    return int(total * 0.95)


def plan_for_config(shape: ModelShape, cfg: Any, device: Any, budget: int, offload: bool = False,
                    keep_matmuls: bool = False, compiled: Optional[bool] = None) -> MemoryPlan:
    """The plan a run's Config gives `shape` on `device` within `budget` bytes: gradient checkpointing (when set)
    and the CUDA overhead on a GPU only, the reward model beside; `offload`: checkpointed layer inputs on the host;
    `keep_matmuls`: checkpointed layers keep their products too; `compiled`: the layers are compiled (None: as
    model.compile_layers asks, on a GPU; null counted as on, the larger plan).
    The trainer, the dry run and preflight's can-it-hold check all plan through here."""
    import torch

    from ..model.common import resolve_dtype

    device = torch.device(device)
    gpu = device.type == "cuda"
    if compiled is None:
        compiled = gpu and cfg.model.compile_layers is not False and cfg.model.backend == "transformers"
    return plan_memory(
        shape,
        budget,
        lora_r=cfg.lora.r,
        lora_targets=list(cfg.lora.target_modules),
        dtype_bytes=torch.finfo(resolve_dtype(cfg.model.dtype, device)).bits // 8,
        load_in_4bit=cfg.model.load_in_4bit,
        gradient_checkpointing=cfg.model.gradient_checkpointing and gpu,
        full_finetune=not cfg.lora.enabled,
        fixed_overhead=FIXED_OVERHEAD if gpu else 0,
        fused_lora=cfg.model.fused_lora and not cfg.lora.dropout,  # dropout runs PEFT's own forward (fused_lora)
        offload_checkpoints=offload,
        beside=reward_model_bytes(cfg, device),
        keep_matmuls=keep_matmuls,  # counted only with checkpointing (on a GPU), as plan_memory does
        compiled=compiled,
    )


def plan_for_model(model: Any, cfg: Any, device: Any, offload: bool = False, keep_matmuls: bool = False,
                   quiet: bool = False) -> Optional[MemoryPlan]:
    """The plan for a loaded model under a run's Config; None when there is no budget (CPU, no max_memory_gb).

    offload: the model's checkpointed layer inputs are kept on the host; keep_matmuls: its checkpointed layers keep
    their products too; quiet: no log line (a plan weighed, not taken).
    """
    budget = device_budget(cfg.grpo.max_memory_gb, device)
    if budget is None:
        return None
    from ..model.compiled import compiled

    plan = plan_for_config(ModelShape.from_config(model.config), cfg, device, budget, offload, keep_matmuls,
                           compiled(model))
    if not quiet:
        notice(plan.summary(cfg.model.max_seq_length))
    return plan
