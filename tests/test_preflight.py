"""Up-front checks: every missing input of a run in one message, in seconds, before any folder is made."""

import os
import time

import pytest
import torch

from mathgrpo.cli import main


def test_reference_recipe_without_its_inputs_lists_them_all_at_once(tmp_path, capsys, monkeypatch):
    """No model, no hub data (offline), no GPU: one message naming each, no run folder, in seconds."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty hub cache
    t0 = time.monotonic()
    for _ in range(2):  # the same command again meets the same message, not a folder left behind
        assert main(["train", "--recipe", "qwen3-4b-grpo", f"run.output_dir={tmp_path / 'runs'}"]) == 2
        err = capsys.readouterr().err
        assert "nothing was started" in err
        for setting in ("model.name=Qwen/Qwen3-4B-Base", "data.source=hub:open-r1/DAPO-Math-17k-Processed",
                        "sft.source=hub:unsloth/OpenMathReasoning-mini"):
            assert setting in err, setting
        assert ("model.device=auto: this recipe is made for a GPU" in err) == (not torch.cuda.is_available())
    assert time.monotonic() - t0 < 20
    assert not (tmp_path / "runs").exists()


def test_bad_local_sources_are_found_before_the_folder(tmp_path, capsys):
    assert main(["train", f"run.output_dir={tmp_path / 'runs'}", "data.source=missing.jsonl",
                 "sft.source=math500", "data.heldout_source=procedural:no_such_task"]) == 2
    err = capsys.readouterr().err
    assert "3 input(s) missing" in err and "missing.jsonl: no such file" in err
    assert "math500@test" in err and "no such reasoning-gym generator" in err
    assert not (tmp_path / "runs").exists()


def test_dry_run_prints_settings_sources_and_memory_and_starts_nothing(tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(["train", "--dry-run", f"run.output_dir={out}", "grpo.max_memory_gb=2"]) == 0
    text = capsys.readouterr().out
    assert "# resolved settings" in text and "max_memory_gb: 2.0" in text
    assert "model.name=tiny: built in" in text and "data.source=procedural:arith: generated" in text
    assert "memory: budget 2.0 GiB" in text
    assert not out.exists()


def test_a_run_failing_before_any_stage_leaves_no_folder(tmp_path, capsys):
    """A data file that exists but holds no usable rows fails after the folder is made: the folder goes again."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"x": 1}\n')
    argv = ["train", f"run.output_dir={tmp_path / 'runs'}", "run.name=r", f"data.source={bad}", "data.heldout_source=gsm8k"]
    for _ in range(2):
        assert main(argv) == 2
        assert "bad.jsonl" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "r").exists()


def test_memory_verdict_from_numbers_names_the_model_the_estimate_and_what_to_change():
    """A tiny model on a pretend 1 MiB device: the estimate, what is available and a change; with room: fits."""
    from mathgrpo.config import load_config
    from mathgrpo.preflight import Memory, check_memory

    cfg = load_config("tiny-cpu")
    small = check_memory(cfg, Memory(2**20, "a test device", gpu=False))
    assert small.setting == "model.name (memory)" and small.value == "tiny" and small.found is None
    assert "needs about" in small.problem and "a test device gives 1.0 MiB" in small.problem
    assert "weights" in small.problem and "Change:" in small.problem
    roomy = check_memory(cfg, Memory(2**30, "a test device", gpu=False))
    assert roomy.problem is None and roomy.found.startswith("fits: about")


def test_14b_on_a_24gb_gpu_is_told_the_4bit_base_and_a_smaller_recipe():
    """No weights or config.json here: the known Qwen3 sizes give the estimate; the 4-bit base fits."""
    from mathgrpo.config import load_config
    from mathgrpo.preflight import GIB, Memory, check_memory

    card = Memory(int(0.95 * 24 * GIB), "95% of a 24 GiB test GPU", gpu=True)
    check = check_memory(load_config("qwen3-14b-grpo"), card)
    assert "weights 27.5 GiB in bfloat16" in check.problem and "known Qwen3 sizes" in check.problem
    assert "model.load_in_4bit=true model.backend=unsloth" in check.problem
    assert "--recipe qwen3-8b-grpo" in check.problem
    assert check_memory(load_config("qwen3-14b-grpo", ["model.load_in_4bit=true", "model.backend=unsloth"]), card).problem is None
    assert check_memory(load_config("qwen3-14b-grpo"), Memory(int(0.95 * 80 * GIB), "an 80 GiB test GPU", gpu=True)).problem is None


def test_a_budget_below_the_device_is_named_as_the_limit(monkeypatch):
    from mathgrpo import preflight
    from mathgrpo.config import load_config

    monkeypatch.setattr(preflight.os, "sysconf", lambda key: 2**20 if key == "SC_PHYS_PAGES" else 2**14)  # 16 GiB
    check = preflight.check_memory(load_config("qwen3-1.7b-grpo", ["grpo.max_memory_gb=4", "model.device=cpu", "model.dtype=bfloat16"]))
    assert "grpo.max_memory_gb=4 (of the device's 16.0 GiB) gives 4.0 GiB" in check.problem
    assert "grpo.max_memory_gb=10 or more" in check.problem


@pytest.mark.parametrize("gpu_gib", [None, 24])
def test_14b_recipe_on_a_machine_that_cannot_hold_it_fails_fast_with_no_folder(tmp_path, capsys, monkeypatch, gpu_gib):
    """`mathgrpo train --recipe qwen3-14b-grpo` here (no weights, no GPU; then a pretend 24 GiB GPU): every problem
    in one message before anything is loaded, the memory one with the settings to change, no run folder."""
    from mathgrpo import preflight

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty hub cache
    if gpu_gib:
        card = preflight.Memory(int(0.95 * gpu_gib * preflight.GIB), f"95% of a {gpu_gib} GiB test GPU", gpu=True)
        monkeypatch.setattr(preflight, "machine_memory", lambda cfg: card)
    t0 = time.monotonic()
    assert main(["train", "--recipe", "qwen3-14b-grpo", f"run.output_dir={tmp_path / 'runs'}"]) == 2
    err = capsys.readouterr().err
    assert time.monotonic() - t0 < 20
    assert "nothing was started" in err and "model.name=Qwen/Qwen3-14B-Base: not in the local hub cache" in err
    memory = [line for line in err.splitlines() if "model.name (memory)=Qwen/Qwen3-14B-Base" in line]
    if gpu_gib:
        assert "needs about 31" in memory[0] and "model.load_in_4bit=true model.backend=unsloth" in memory[0]
    else:  # this machine's RAM: reported when it is too small for a CPU run, not otherwise
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        assert bool(memory) == (ram < 50 * preflight.GIB), err
    assert not (tmp_path / "runs").exists()


def test_the_seed_cards_hold_the_reference_recipe_by_estimate():
    """A T4 (15 GiB, float16: the dtype auto gives it) and an L4 (22.5 GiB, bfloat16) hold the qwen3-4b recipe's
    smallest step by the shape estimate; the 8B recipe does not fit the T4, and the message says what would."""
    from mathgrpo.config import load_config
    from mathgrpo.preflight import GIB, Memory, check_memory

    t4 = Memory(int(0.95 * 15 * GIB), "95% of a T4", gpu=True)
    l4 = Memory(int(0.95 * 22.5 * GIB), "95% of an L4", gpu=True)
    assert check_memory(load_config("qwen3-4b-grpo", ["model.dtype=float16"]), t4).problem is None
    assert check_memory(load_config("qwen3-4b-grpo", ["model.dtype=bfloat16"]), l4).problem is None
    too_big = check_memory(load_config("qwen3-8b-grpo", ["model.dtype=float16"]), t4).problem
    assert "weights 15.3 GiB in float16" in too_big and "--recipe qwen3-4b-grpo" in too_big


def test_dry_run_says_what_checkpointed_layers_keep():
    """The memory line's checkpoint choice for Qwen3-4B, 8 x 8 completions at 2,048 tokens, as GRPO's sizing decides
    it with model.checkpoint_matmuls=null: products kept with room (80 GiB), inputs alone below that (40), inputs on
    the host when a full micro-batch does not fit (13); a set model.checkpoint_matmuls decides alone."""
    import torch
    from transformers import Qwen3Config

    from mathgrpo.config import load_config
    from mathgrpo.preflight import checkpoint_choice
    from mathgrpo.training.memory import GIB, ModelShape, plan_for_config

    shape = ModelShape.from_config(Qwen3Config(hidden_size=2560, num_hidden_layers=36, num_attention_heads=32,
                                               num_key_value_heads=8, head_dim=128, intermediate_size=9728,
                                               vocab_size=151936, tie_word_embeddings=True))
    cuda = torch.device("cuda")

    def choice(gib, *overrides):
        cfg = load_config("tiny-cpu", ["grpo.prompts_per_step=8", "grpo.num_generations=8", "model.max_seq_length=2048",
                                       "model.gradient_checkpointing=true", "lora.r=32", "model.checkpoint_matmuls=null",
                                       *overrides])
        plan, line = checkpoint_choice(cfg, shape, cuda, gib * GIB)
        kept = plan_for_config(shape, cfg, cuda, gib * GIB, keep_matmuls=True)
        assert (plan == kept) == line.startswith("checkpointed layers keep their GEMM")  # the plan the line describes
        return line, plan.micro_batch(2048)

    line, micro = choice(80)
    assert line == "checkpointed layers keep their GEMM and attention outputs (model.checkpoint_matmuls=null)" and micro >= 8
    assert choice(40)[0] == "checkpointed layers keep their inputs (model.checkpoint_matmuls=null)"
    assert choice(13)[0] == "checkpointed layer inputs on the host (model.offload_checkpoints=null)"
    assert choice(80, "model.checkpoint_matmuls=false")[0] == "checkpointed layers keep their inputs (model.checkpoint_matmuls=false)"
    # asked for where not one sequence fits with them: no offload then, and the plan says 0
    assert choice(13, "model.checkpoint_matmuls=true") == ("checkpointed layers keep their GEMM and attention outputs "
                                                            "(model.checkpoint_matmuls=true)", 0)
