"""Config: defaults, recipes, overrides and validation messages."""

import pytest

from mathgrpo.cli import main
from mathgrpo.config import RECIPES_DIR, Config, ConfigError, help_table, load_config, save_config


def test_every_field_has_help():
    """Each setting documents itself."""
    rows = help_table()
    assert len(rows) > 60
    assert all(help_text for _, _, help_text in rows)


@pytest.mark.parametrize("recipe", sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")))
def test_shipped_recipes_validate(recipe):
    """Every shipped recipe loads and passes validation."""
    assert isinstance(load_config(recipe), Config)


def test_reference_recipe_mirrors_notebook():
    """The Qwen3-4B recipe carries the reference notebook's settings."""
    cfg = load_config("qwen3-4b-grpo")
    assert cfg.model.name == "Qwen/Qwen3-4B-Base" and cfg.model.max_seq_length == 2048
    assert (cfg.lora.r, cfg.lora.alpha) == (32, 64)
    assert (cfg.grpo.lr, cfg.rollout.temperature, cfg.rollout.min_p) == (5e-6, 1.0, 0.1)
    assert cfg.sft.enabled and cfg.grpo.enabled


@pytest.mark.parametrize("recipe, model, rank, lr, group, prompts", [
    ("qwen3-1.7b-grpo", "Qwen/Qwen3-1.7B-Base", 32, 6e-6, 8, 4),
    ("qwen3-8b-grpo", "Qwen/Qwen3-8B-Base", 16, 3e-6, 4, 4),
    ("qwen3-14b-grpo", "Qwen/Qwen3-14B-Base", 16, 2.5e-6, 4, 4),
])
def test_size_recipes_keep_the_method_and_change_what_their_comments_say(recipe, model, rank, lr, group, prompts):
    """The other Qwen3 sizes: the reference recipe's data, rewards, sampling and schedule; their own model, rank
    (alpha = 2 r), lr, group and prompts; the dtype the card chooses (auto) on the default backend (the 14B's 4-bit base is an override)."""
    ref, cfg = load_config("qwen3-4b-grpo"), load_config(recipe)
    assert cfg.model.name == model and (cfg.lora.r, cfg.lora.alpha) == (rank, 2 * rank)
    assert (cfg.grpo.lr, cfg.grpo.num_generations, cfg.grpo.prompts_per_step) == (lr, group, prompts)
    assert (cfg.model.dtype, cfg.model.backend, cfg.model.load_in_4bit) == ("auto", "transformers", False)
    for section in ("data", "rewards", "rollout", "format", "eval", "run"):
        assert getattr(cfg, section) == getattr(ref, section), section
    assert (cfg.grpo.loss_type, cfg.grpo.scale_rewards, cfg.grpo.steps) == (ref.grpo.loss_type, ref.grpo.scale_rewards, ref.grpo.steps)
    assert load_config(recipe, ["model.load_in_4bit=true", "model.backend=unsloth"]).model.load_in_4bit


def test_overrides_apply_and_type_check():
    """Dotted overrides win over the recipe; a wrong type or unknown key names the key."""
    cfg = load_config("tiny-cpu", ["grpo.lr=0.5", "run.name=x"])
    assert cfg.grpo.lr == 0.5 and cfg.run.name == "x"
    with pytest.raises(ConfigError, match="grpo.steps"):
        load_config("tiny-cpu", ["grpo.steps=many"])
    with pytest.raises(ConfigError, match="nope"):
        load_config("tiny-cpu", ["grpo.nope=1"])
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config("tiny-cpu", ["grpo.lr"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("grpo.loss_type=ppo", "grpo.loss_type"),
        ("grpo.num_generations=1", "num_generations"),
        ("rollout.top_p=0", "top_p"),
        ("model.load_in_4bit=true", "load_in_4bit"),
        ("run.report_to=[csv]", "report_to"),
        ("sft.stop_at_accuracy=3", "stop_at_accuracy"),
        ("run.parallel=fsdp", "full fine-tuning"),  # the tiny recipe's warm-up trains every weight
        ("run.parallel=fsdp sft.full_finetune=false grpo.dynamic_sampling=true", "dynamic_sampling"),
        ("grpo.micro_batch_tokens=-1", "micro_batch_tokens"),
        ("grpo.steps=-5", "grpo.steps=-5 must be at least 1"),
        ("sft.steps=-3", "sft.enabled=false"),
        ("grpo.lr=-1", "grpo.lr=-1.0 must be > 0"),
        ("sft.lr=nan", "sft.lr=nan must be a finite number"),
        ("rollout.temperature=inf", "finite"),
        ("data.heldout_size=0", "data.heldout_size=0 must be at least 1"),
        ("lora.dropout=1.5", "lora.dropout"),
        ("run.threads=-2", "run.threads"),
        ("model.checkpoint_matmuls=true model.gradient_checkpointing=true model.offload_checkpoints=true",
         "set one of them to false"),
        ("model.checkpoint_matmuls=true model.gradient_checkpointing=true model.backend=unsloth sft.full_finetune=false "
         "lora.enabled=true", r"needs model.backend=transformers \(Unsloth .*\): set model.checkpoint_matmuls=false"),
        ("model.checkpoint_matmuls=true", "set model.gradient_checkpointing=true, or model.checkpoint_matmuls=false"),
        ("model.compile_layers=true model.backend=unsloth sft.full_finetune=false lora.enabled=true",
         r"model.compile_layers=true needs model.backend=transformers \(Unsloth compiles its own layers\)"),
        ("model.compile_layers=true run.parallel=fsdp sft.full_finetune=false", "use run.parallel=ddp, or model.compile_layers=false"),
    ],
)
def test_validation_messages(override, message):
    """Out-of-range values fail with the setting named."""
    with pytest.raises(ConfigError, match=message):
        load_config("tiny-cpu", override.split())


def test_unknown_recipe_lists_known(tmp_path):
    """An unknown recipe name lists the shipped ones; a saved config loads back equal."""
    with pytest.raises(ConfigError, match="tiny-cpu"):
        load_config("no-such-recipe")
    cfg = load_config("tiny-cpu", ["grpo.steps=7"])
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(str(tmp_path / "c.yaml")) == cfg


@pytest.mark.parametrize(
    "text, message",
    [
        ("grpo:\n  lr: [1\n", "line 3, column 1: not valid YAML"),
        ("- a\n- b\n", "a recipe is a mapping of sections"),
        ("grpo:\n  nope: 1\n", "grpo.nope: Key 'nope' not in 'GRPOConfig'"),
        ("grpo:\n  steps: many\n", "grpo.steps: Value 'many'"),
    ],
)
def test_broken_recipes_and_saved_configs_fail_in_one_line(tmp_path, capsys, text, message):
    """A bad recipe, and a broken config.yaml under --resume: one line naming the file, before any work."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text)
    run = tmp_path / "run"
    (run / "sft").mkdir(parents=True)
    (run / "config.yaml").write_text(text)
    for argv in (["train", "--recipe", str(recipe)], ["train", "--resume", str(run)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


def test_bad_numbers_stop_the_cli_before_any_work(tmp_path, capsys):
    for bad in ("grpo.steps=-5", "grpo.lr=-1", "sft.lr=nan", "data.heldout_size=0", "grpo.nope=1"):
        assert main(["train", f"run.output_dir={tmp_path}", bad]) == 2
        err = capsys.readouterr().err
        assert bad.split("=")[0] in err and len(err.strip().splitlines()) == 1, err
    assert not any(tmp_path.iterdir())


def test_config_command_prints_every_setting_with_value_and_help(capsys):
    """`mathgrpo config --recipe R key=value` lists each setting once, with the recipe's (or override's) value and its help."""
    assert main(["config", "--recipe", "qwen3-4b-grpo", "grpo.steps=7"]) == 0
    out = capsys.readouterr().out.splitlines()
    keys = [line.split(" = ")[0] for line in out if not line.startswith(" ")]
    assert keys == [key for key, _, _ in help_table()]
    assert "model.name = Qwen/Qwen3-4B-Base" in out and "grpo.steps = 7" in out and "run.name = null" in out
    assert out[out.index("lora.r = 32") + 1].strip() == "LoRA rank."


def test_allowed_values_are_the_names_the_registries_define():
    """format.preset and rewards.preset allow exactly the presets of data/formats.py and grading/rewards.py (config.py
    lists the names, so that it checks a setting without importing the stage that reads it); vllm is no engine."""
    from mathgrpo.config import CHOICES
    from mathgrpo.data.formats import PRESETS as FORMATS
    from mathgrpo.grading.rewards import PRESETS as REWARDS

    assert CHOICES["format.preset"] == tuple(FORMATS) and CHOICES["rewards.preset"] == tuple(REWARDS)
    with pytest.raises(ConfigError, match="rollout.engine='vllm' is not one of auto, hf, native"):
        load_config("tiny-cpu", ["rollout.engine=vllm"])


def test_measured_defaults_are_the_documented_ones():
    """rollout.skinny_gemm on and model.checkpoint_matmuls left to the memory plan (null): the defaults the learning
    runs in docs/performance.md were taken for, which the guide's table describes."""
    cfg = load_config("tiny-cpu", [])
    assert cfg.rollout.skinny_gemm is True and cfg.model.checkpoint_matmuls is None
    assert load_config("qwen3-4b-grpo", []).model.checkpoint_matmuls is None
