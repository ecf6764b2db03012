"""Choosing and building an engine (rollout/__init__.py): what a memory plan must know of an engine is known
before it is built, every rollout.engine name builds one, and the sizes it is built with are its own."""

import pytest
from peft import LoraConfig, get_peft_model

from mathgrpo.config import CHOICES
from mathgrpo.rollout import EngineChoice, choose_engine, make_engine
from mathgrpo.rollout.weights import merged_weight_bytes
from mathgrpo.model.tiny import build_tiny


def with_lora(model):
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets, lora_dropout=0.0))


def test_every_engine_setting_is_chosen_and_an_unknown_one_refused():
    model, _ = build_tiny(0)
    assert {name: choose_engine(name, model).name for name in CHOICES["rollout.engine"]} == \
        {"auto": "hf", "hf": "hf", "native": "native"}  # auto on the CPU: hf
    with pytest.raises(ValueError, match="unknown rollout.engine 'vllm'"):
        choose_engine("vllm", model)


def test_the_choice_tells_the_snapshot_bytes_of_a_lora_merge_and_the_prompt_sharing():
    """On the CPU the native engine attends with plain math (one cache row per sample), and merging LoRA would
    snapshot every adapted base weight; applying it as low-rank terms snapshots nothing."""
    model = with_lora(build_tiny(0)[0])
    merge, lowrank = choose_engine("native", model, "merge"), choose_engine("native", model, "lowrank")
    assert merge == EngineChoice("native", "merge", False, merged_weight_bytes(model)) and merge.snapshot_bytes > 0
    assert lowrank == EngineChoice("native", "lowrank", False, 0)
    assert choose_engine("hf", model) == EngineChoice("hf")


def test_an_engine_is_built_with_its_batch_size_and_lora_mode():
    model, tok = build_tiny(0)
    native = make_engine(EngineChoice("native", "lowrank"), with_lora(model), tok, [tok.eos_token_id], batch_size=6)
    assert (native.name, native.batch_size, native.lora, native.snapshots_on_device) == ("native", 6, "lowrank", False)
    hf = make_engine("hf", model, tok, [tok.eos_token_id], batch_size=4, snapshots_on_device=True)  # hf keeps no copies
    assert (hf.name, hf.batch_size) == ("hf", 4)
