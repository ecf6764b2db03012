"""Sizing: micro-batches from the memory budget (capped by token count and by an earlier out-of-memory
error), the engine's kept cache released when it would shrink them, the rollout batch, auto offload and
device snapshots, each through `Sizing`'s public methods."""

import dataclasses

import pytest
import torch

from mathgrpo.config import load_config
from mathgrpo.model.tiny import build_tiny
from mathgrpo.training.memory import GIB, plan_for_model, plan_memory
from mathgrpo.training.sizing import MicroPlan, Sizing
from mathgrpo.training.stopping import TrainingStopped

ROWS, WIDTH = 8, 32  # a tiny step's batch: 2 prompts x 4 completions, 32 tokens wide


def tiny_sizing(*overrides, **facts) -> Sizing:
    """The sizing of a tiny-model run with a 1 GiB budget (room for a whole tiny batch)."""
    cfg = load_config("tiny-cpu", ["grpo.prompts_per_step=2", "grpo.num_generations=4", "grpo.max_memory_gb=1",
                                   "lora.enabled=true", "sft.full_finetune=false", *overrides])
    model, _ = build_tiny()
    return Sizing(cfg, plan_for_model(model, cfg, torch.device("cpu")), **facts)


def with_room(sizing: Sizing, sequences: int, extra: int = 0) -> Sizing:
    """The same sizing with a budget that fits `sequences` sequences of WIDTH tokens (plus `extra` bytes)."""
    plan = sizing.plan
    room = plan.resident + plan.logits_chunk + sequences * WIDTH * plan.train_per_token + extra
    return Sizing(sizing.cfg, dataclasses.replace(plan, budget=room))


def test_memory_budget_sizes_micro_batches():
    """With grpo.max_memory_gb and micro_batch_size 0 the plan decides at the batch's width; less room, smaller
    micro-batches; when nothing fits, one sequence a pass with a note for the log."""
    sizing = tiny_sizing()
    assert sizing.micro(ROWS, WIDTH) == MicroPlan(ROWS)  # 1 GiB holds the whole tiny batch
    for k in (1, 2, 5):
        assert with_room(sizing, k).micro(ROWS, WIDTH) == MicroPlan(k)
    starved = Sizing(sizing.cfg, dataclasses.replace(sizing.plan, budget=sizing.plan.resident))
    micro = starved.micro(ROWS, WIDTH)
    assert micro.size == 1 and not micro.release_engine_cache
    assert micro.note == f"grpo: {starved.plan.summary(WIDTH)}; trying 1 sequence per micro-batch"


def test_without_a_plan_or_with_a_set_size_the_batch_or_the_setting_is_taken():
    """No plan (CPU without max_memory_gb): the whole batch; grpo.micro_batch_size: as given."""
    cfg = load_config("tiny-cpu", [])
    assert Sizing(cfg, None).micro(ROWS, WIDTH, held=10**9) == MicroPlan(ROWS)
    assert tiny_sizing("grpo.micro_batch_size=5").micro(ROWS, WIDTH) == MicroPlan(5)


def test_micro_batches_capped_by_token_count():
    """grpo.micro_batch_tokens bounds the planned micro-batch (sequences x padded width); 0 lifts the bound;
    an explicit grpo.micro_batch_size is taken as given."""
    sizing = tiny_sizing()
    assert sizing.micro(ROWS, WIDTH).size == ROWS  # the default 16,384 tokens hold the whole tiny batch
    sizing.cfg.grpo.micro_batch_tokens = 3 * WIDTH + 1
    assert sizing.micro(ROWS, WIDTH).size == 3
    sizing.cfg.grpo.micro_batch_tokens = 1  # less than one sequence: still one a pass
    assert sizing.micro(ROWS, WIDTH).size == 1
    sizing.cfg.grpo.micro_batch_tokens = 0
    assert sizing.micro(ROWS, WIDTH).size == ROWS
    sizing.cfg.grpo.micro_batch_tokens, sizing.cfg.grpo.micro_batch_size = 3 * WIDTH, 5
    assert sizing.micro(ROWS, WIDTH).size == 5


def test_kept_kv_cache_released_when_it_would_shrink_micro_batches():
    """An engine's kept bytes stay when there is room for both; when they would cost micro-batch size the
    plan says to release them and sizes as if they were gone. The query itself changes nothing."""
    sizing = tiny_sizing()
    held = 4 * WIDTH * sizing.plan.train_per_token  # a cache worth 4 sequences of training
    assert sizing.micro(ROWS, WIDTH, held) == MicroPlan(ROWS)  # 1 GiB: room for both, kept
    tight = with_room(sizing, 3, extra=WIDTH * sizing.plan.train_per_token // 2)  # 3 fit alone, fewer beside it
    assert tight.plan.micro_batch(WIDTH, held) < 3
    assert tight.micro(ROWS, WIDTH, held) == MicroPlan(3, release_engine_cache=True)
    assert tight.micro(ROWS, WIDTH, held) == MicroPlan(3, release_engine_cache=True)  # asked again: the same
    assert tight.micro(ROWS, WIDTH) == MicroPlan(3)  # nothing held: nothing to release


def test_out_of_memory_halves_and_caps_later_micro_batches():
    """After an out-of-memory error at a planned size the retry takes half as many, and later batches stay under
    that many tokens; a set micro_batch_size, no plan, several processes or one sequence: no retry (0)."""
    sizing = tiny_sizing()
    assert sizing.after_out_of_memory(8, WIDTH) == 4
    assert sizing.micro(ROWS, WIDTH).size == 4
    assert sizing.micro(ROWS, WIDTH * 2).size == 2  # the cap is in tokens: twice as wide, half as many
    assert sizing.after_out_of_memory(4, WIDTH) == 2 and sizing.micro(ROWS, WIDTH).size == 2
    assert sizing.after_out_of_memory(1, WIDTH) == 0
    assert tiny_sizing("grpo.micro_batch_size=8").after_out_of_memory(8, WIDTH) == 0
    assert Sizing(load_config("tiny-cpu", []), None).after_out_of_memory(8, WIDTH) == 0
    several = tiny_sizing(distributed=True)
    assert several.after_out_of_memory(8, WIDTH) == 0 and several.micro(ROWS, WIDTH).size == ROWS


def test_rollout_batch_from_the_setting_or_the_plan(qwen3_4b):
    """rollout.batch_size as given; without a plan 0 (all at once); else what fits, at most a step's completions;
    a clear stop when not one rollout fits."""
    assert tiny_sizing("rollout.batch_size=3").rollout_batch_size(False) == 3
    assert Sizing(load_config("tiny-cpu", []), None).rollout_batch_size(False) == 0
    assert tiny_sizing().rollout_batch_size(False) == 8  # room for far more than the step's 2 x 4
    cfg = load_config("tiny-cpu", ["grpo.prompts_per_step=8", "grpo.num_generations=8", "model.max_seq_length=512",
                                   "rollout.max_new_tokens=256"])
    plan = plan_memory(qwen3_4b, 13 * GIB)
    assert Sizing(cfg, plan).rollout_batch_size(True) == 64 > Sizing(cfg, plan).rollout_batch_size(False)
    with pytest.raises(TrainingStopped, match="not one rollout fits"):
        Sizing(cfg, plan_memory(qwen3_4b, 8 * GIB)).rollout_batch_size(True)
    # weight copies the engine makes for every call (FP8 rollouts) come out of the rollout's share, GiB for GiB
    assert Sizing(cfg, plan).rollout_batch_size(True, 2 * GIB) == 24 < Sizing(cfg, plan).rollout_batch_size(True, GIB) == 48
    assert Sizing(cfg, plan_memory(qwen3_4b, 14 * GIB)).rollout_batch_size(True, 2 * GIB) == 48


def test_offload_is_wanted_only_when_a_step_does_not_fit(qwen3_4b):
    """Auto offload: on when the plan cannot take a whole step's completions in one micro-batch; never when set,
    without a plan, on several processes or with another backend."""
    cfg = load_config("tiny-cpu", ["grpo.prompts_per_step=8", "grpo.num_generations=8", "model.max_seq_length=2048"])
    assert Sizing(cfg, plan_memory(qwen3_4b, 13 * GIB)).offload_wanted()  # fewer than 16384 // 2048 = 8 fit
    assert not Sizing(cfg, plan_memory(qwen3_4b, 40 * GIB)).offload_wanted()  # 8 fit
    assert not Sizing(cfg, plan_memory(qwen3_4b, 13 * GIB), distributed=True).offload_wanted()
    cfg.grpo.micro_batch_tokens = 0  # no limit: offload until the step's 64 completions fit
    assert Sizing(cfg, plan_memory(qwen3_4b, 40 * GIB)).offload_wanted()
    assert not Sizing(cfg, plan_memory(qwen3_4b, 200 * GIB)).offload_wanted()
    assert not Sizing(cfg, None).offload_wanted()
    cfg.model.backend = "unsloth"
    assert not Sizing(cfg, plan_memory(qwen3_4b, 13 * GIB)).offload_wanted()
    cfg.model.backend, cfg.model.checkpoint_matmuls = "transformers", True  # kept products stay on the GPU
    assert not Sizing(cfg, plan_memory(qwen3_4b, 13 * GIB)).offload_wanted()
    cfg.model.checkpoint_matmuls, cfg.model.offload_checkpoints = None, False
    assert not Sizing(cfg, plan_memory(qwen3_4b, 13 * GIB)).offload_wanted()


def test_products_are_kept_only_where_the_step_still_fits(qwen3_4b):
    """model.checkpoint_matmuls=null: on when the plan with the products kept still takes the micro-batch the step
    wants (8 x 2,048 tokens: 16,384, grpo.micro_batch_tokens) on a GPU; never when set, without a plan or
    checkpointing, on a CPU, on several processes, with another backend or inputs offloaded by
    model.offload_checkpoints=true."""
    cfg = load_config("tiny-cpu", ["grpo.prompts_per_step=8", "grpo.num_generations=8", "model.max_seq_length=2048",
                                   "model.gradient_checkpointing=true", "model.checkpoint_matmuls=null"])

    def fits(budget_gib, device="cuda", **facts):
        kept = plan_memory(qwen3_4b, budget_gib * GIB, keep_matmuls=True)
        return Sizing(cfg, plan_memory(qwen3_4b, budget_gib * GIB), device=device, **facts).keep_matmuls_fits(kept)

    assert fits(80) and not fits(40)
    assert not fits(80, device="cpu") and not fits(80, distributed=True)
    assert not Sizing(cfg, None, device="cuda").keep_matmuls_fits(None)
    for key, value in (("checkpoint_matmuls", True), ("checkpoint_matmuls", False), ("backend", "unsloth"),
                       ("gradient_checkpointing", False), ("offload_checkpoints", True)):
        changed = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **{key: value}))
        kept = plan_memory(qwen3_4b, 80 * GIB, keep_matmuls=True)
        assert not Sizing(changed, plan_memory(qwen3_4b, 80 * GIB), device="cuda").keep_matmuls_fits(kept), key


def test_weight_snapshots_stay_on_the_gpu_only_where_the_rollout_still_fits(qwen3_4b):
    """Qwen3-4B's 7.3 GB of merged projections: kept on an 80 GB card for 8 x 8 at 2,048 tokens, not at 24 GiB
    (the rollout would no longer fit one call) nor under 13 GiB at 512 tokens; never without a plan or LoRA;
    rollout.device_snapshots=true/false decides alone."""
    s = qwen3_4b
    need = 36 * 2 * s.hidden * (2 * s.heads * s.head_dim + 2 * s.kv_heads * s.head_dim + 3 * s.intermediate)
    ref = load_config("tiny-cpu", ["grpo.prompts_per_step=8", "grpo.num_generations=8", "model.max_seq_length=2048",
                                   "rollout.max_new_tokens=1792"])
    assert Sizing(ref, plan_memory(s, 75 * GIB)).snapshots_on_device(need, True, 0)
    assert not Sizing(ref, plan_memory(s, 24 * GIB)).snapshots_on_device(need, True, 0)
    short = load_config("tiny-cpu", ["grpo.prompts_per_step=8", "grpo.num_generations=8", "model.max_seq_length=512",
                                     "rollout.max_new_tokens=256"])
    assert Sizing(short, plan_memory(s, 24 * GIB)).snapshots_on_device(need, True, 0)
    assert not Sizing(short, plan_memory(s, 13 * GIB)).snapshots_on_device(need, True, 0)
    assert not Sizing(short, None).snapshots_on_device(need, True, 0)
    assert not Sizing(short, plan_memory(s, 75 * GIB)).snapshots_on_device(0, True, 0)
    short.rollout.device_snapshots = True
    assert Sizing(short, plan_memory(s, 13 * GIB)).snapshots_on_device(need, True, 0)
    short.rollout.device_snapshots = False
    assert not Sizing(short, plan_memory(s, 75 * GIB)).snapshots_on_device(need, True, 0)


def test_for_model_on_cpu_plans_nothing_without_a_budget():
    """A CPU run without grpo.max_memory_gb has no plan: log-prob chunks of 2,048 tokens, no offload."""
    model, _ = build_tiny()
    sizing = Sizing.for_model(model, load_config("tiny-cpu", []), torch.device("cpu"))
    assert sizing.plan is None and sizing.chunk_tokens == 2048 and not sizing.offloaded
    assert tiny_sizing().chunk_tokens == tiny_sizing().plan.chunk_tokens


@pytest.mark.parametrize("setting, kept", [("null", True), ("false", False)])
def test_for_model_has_checkpointed_layers_keep_products_where_they_fit(setting, kept):
    """Sizing.for_model on a GPU plan (a "cuda" device; nothing runs on it here): with model.checkpoint_matmuls=null and
    room, the tiny model's checkpointed layers are switched to keeping their products and the plan counts them;
    with false they stay plain."""
    from mathgrpo.model.checkpointing import matmul_keeping_contexts
    from mathgrpo.model.loading import add_lora, checkpoint_layers

    cfg = load_config("tiny-cpu", ["grpo.max_memory_gb=4", "model.gradient_checkpointing=true", "lora.enabled=true",
                                   "sft.full_finetune=false", f"model.checkpoint_matmuls={setting}"])
    model, _ = build_tiny()
    model = add_lora(model, cfg.lora)
    checkpoint_layers(model)  # as loading does on a GPU
    sizing = Sizing.for_model(model, cfg, torch.device("cuda"))
    layer = model.get_base_model().model.layers[0]
    assert (layer._gradient_checkpointing_func.keywords.get("context_fn") is matmul_keeping_contexts) == kept
    plain = plan_for_model(model, cfg, torch.device("cuda"))
    assert (sizing.plan.train_per_token > plain.train_per_token) == kept and not sizing.offloaded


def test_for_model_runs_compiled_layers_unchecked_where_the_products_fit():
    """With compiled layers (model.compile_layers) and model.checkpoint_matmuls=null, where the plan fits the products
    the layers' checkpointing is switched off (the compiler keeps the products) and the plan counts them kept."""
    from mathgrpo.model.compiled import compile_layers
    from mathgrpo.model.loading import add_lora, checkpoint_layers

    cfg = load_config("tiny-cpu", ["grpo.max_memory_gb=4", "model.gradient_checkpointing=true", "lora.enabled=true",
                                   "sft.full_finetune=false"])
    model, _ = build_tiny()
    model = add_lora(model, cfg.lora)
    checkpoint_layers(model)  # as loading does on a GPU
    compile_layers(model)  # nothing compiles until a layer runs
    sizing = Sizing.for_model(model, cfg, torch.device("cuda"))
    assert not model.get_base_model().model.layers[0].gradient_checkpointing
    plain = plan_for_model(model, cfg, torch.device("cuda"))
    assert sizing.plan.train_per_token > plain.train_per_token
