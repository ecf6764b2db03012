"""The learned reward (rewards.model): a tiny Qwen3 sequence classifier saved to a folder and loaded back as a
run loads it. Scores do not depend on batching, the chat template is used when there is one, normalisation,
the combination with both presets, the logged part, clear errors, the memory plan, and a GRPO run end to end."""

from __future__ import annotations

import json
import re

import pytest
import torch

from mathgrpo.config import ConfigError, load_config
from mathgrpo.data import Problem
from mathgrpo.data.formats import get_format
from mathgrpo.model.reward_model import RewardModel, RewardModelError, load_reward_model, render
from mathgrpo.grading.rewards import RewardContext, build_rewards
from mathgrpo.model.tiny import build_tiny, build_tiny_classifier

TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
QUESTIONS = ["12+30=", "7+8=", "99-45=", "10+10="]
COMPLETIONS = ["[REASONING]2+0=2,1+3=4[ANSWER]42", "[ANSWER]15", "no answer at all, just a long ramble " * 3,
               "[REASONING]0+0=0,1+1=2[ANSWER]20"]


def save_classifier(folder, num_labels: int = 1, template: str = None, seed: int = 0):
    """A tiny classifier with random weights saved as a model folder (the tokenizer's chat template set or not)."""
    model, tok = build_tiny_classifier(seed, num_labels)
    if template:
        tok.chat_template = template
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    return save_classifier(tmp_path_factory.mktemp("rm"))


def problems(questions=QUESTIONS):
    return [Problem(id=str(i), question=q, answer="42", source="test") for i, q in enumerate(questions)]


def test_batched_scores_equal_one_by_one(classifier):
    """Texts of different lengths scored 3 a pass (right-padded, sorted by length) equal each scored alone."""
    rm = RewardModel.load(str(classifier), batch_size=3, normalize="none")
    batched, _ = rm(COMPLETIONS, problems())
    rm.batch_size = 1
    alone, _ = rm(COMPLETIONS, problems())
    assert batched == pytest.approx(alone, abs=1e-5)
    assert len(set(round(s, 4) for s in alone)) == 4  # four different texts, four different scores


def test_scoring_builds_no_kv_cache(classifier):
    """The classifier's passes ask for no KV cache (its config asks for one by default; none is ever read)."""
    from transformers.cache_utils import Cache

    rm = RewardModel.load(str(classifier), normalize="none")
    assert rm.model.config.use_cache
    caches = []
    hooks = [layer.register_forward_pre_hook(
        lambda m, a, kw: caches.extend(v for v in kw.values() if isinstance(v, Cache)), with_kwargs=True)
        for layer in rm.model.model.layers]
    rm(COMPLETIONS, problems())
    for hook in hooks:
        hook.remove()
    assert caches == []


def test_score_is_the_head_logit_of_the_rendered_text(classifier):
    """A one-label head's score is its logit on `question\\n\\ncompletion` (no chat template here)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    rm = RewardModel.load(str(classifier), normalize="none")
    assert render(rm.tok, "1+1=", "2") == ("1+1=\n\n2", True)
    model = AutoModelForSequenceClassification.from_pretrained(classifier)
    ids = AutoTokenizer.from_pretrained(classifier)("1+1=\n\n2", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = model(input_ids=ids).logits[0, 0].item()
    assert rm(["2"], problems(["1+1="]))[0] == pytest.approx([expected], abs=1e-5)


def test_chat_template_used_when_the_tokenizer_has_one(tmp_path, classifier):
    """With a chat template the text is user = question, assistant = completion in it, and the score changes."""
    templated = RewardModel.load(str(save_classifier(tmp_path / "t", template=TEMPLATE)), normalize="none")
    text, add_special = render(templated.tok, "1+1=", "2")
    assert (text, add_special) == ("<user>1+1=\n<assistant>2\n", False)
    plain = RewardModel.load(str(classifier), normalize="none")  # the same weights (seed 0), no template
    assert templated(["2"], problems(["1+1="]))[0] != pytest.approx(plain(["2"], problems(["1+1="]))[0], abs=1e-4)


def test_two_label_head_scores_logit1_minus_logit0(tmp_path):
    folder = save_classifier(tmp_path / "two", num_labels=2)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(folder)
    ids = AutoTokenizer.from_pretrained(folder)("7+8=\n\n[ANSWER]15", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
    score = RewardModel.load(str(folder), normalize="none")(["[ANSWER]15"], problems(["7+8="]))[0][0]
    assert score == pytest.approx((logits[1] - logits[0]).item(), abs=1e-5)


def test_long_texts_lose_their_start(classifier):
    """Beyond model_max_length tokens the start goes: the answer at the end is what the classifier reads."""
    rm = RewardModel.load(str(classifier), max_length=10, normalize="none")
    ids = rm._encode(["a long question " * 5], ["[ANSWER]42"])[0]
    assert len(ids) == 10 and rm.tok.decode(ids).endswith("[ANSWER]42")


def test_a_tokenizer_that_reads_no_tokens_is_named(classifier):
    """A tokenizer that does not fit the texts (here one with an empty vocabulary, as a BPE tokenizer reading
    another model's word list) gives an error that names it, not a shape error deep in the model."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    rm = RewardModel.load(str(classifier), normalize="none")
    rm.tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE()), pad_token="<pad>")
    with pytest.raises(RewardModelError, match="turned a question and completion into no tokens"):
        rm(["[ANSWER]15"], problems(["7+8="]))


def test_group_and_batch_normalisation(classifier):
    """group: z-scores within each consecutive group of G (std with n-1, + 1e-4); batch: over the whole call."""
    rm = RewardModel.load(str(classifier), group_size=2)
    scores = [1.0, 3.0, 5.0, 5.0]
    assert rm.normalized(scores) == pytest.approx([-1 / (2**0.5 + 1e-4), 1 / (2**0.5 + 1e-4), 0.0, 0.0])
    rm.normalize = "batch"
    t = torch.tensor(scores)
    assert rm.normalized(scores) == pytest.approx(((t - t.mean()) / (t.std() + 1e-4)).tolist())
    rm.normalize = "group"
    with pytest.raises(ValueError, match="groups of 2"):
        rm.normalized([1.0, 2.0, 3.0])


@pytest.mark.parametrize("preset,fmt", [("default", "reasoning"), ("unsloth", "unsloth")])
def test_combines_with_each_preset(classifier, preset, fmt):
    """total = the preset's rule rewards + weight x score (normalize none), and the score is its own part."""
    ctx = RewardContext(get_format(fmt), 100, 10, False, 20)
    rule = build_rewards(preset)
    rm = RewardModel.load(str(classifier), weight=0.5, normalize="none")
    both = build_rewards(preset, scorer=rm)
    rule_totals, rule_parts = rule(COMPLETIONS, problems(), [ctx] * 4)
    totals, parts = both(COMPLETIONS, problems(), [ctx] * 4)
    scores = rm(COMPLETIONS, problems())[0]
    assert both.names == rule.names + ["reward_model"]
    assert parts == {**rule_parts, "reward_model": pytest.approx(scores)}
    assert totals == pytest.approx([r + 0.5 * s for r, s in zip(rule_totals, scores)])


def test_normalised_score_enters_the_total_and_the_raw_one_is_logged(classifier):
    ctx = RewardContext(get_format("reasoning"), 100, 10, False, 20)
    rm = RewardModel.load(str(classifier), weight=2.0, normalize="group", group_size=2)
    totals, parts = build_rewards("default", {"correct": 0, "format_exact": 0}, rm)(COMPLETIONS, problems(), [ctx] * 4)
    raw = rm(COMPLETIONS, problems())[0]
    assert parts == {"reward_model": pytest.approx(raw)}
    assert totals == pytest.approx([2.0 * z for z in rm.normalized(raw)])


def test_reward_model_part_is_set_through_its_own_settings():
    """The part's name is reserved: rewards.weights cannot name it; a rule reward cannot take it."""
    with pytest.raises(ValueError, match="rewards.model_weight"):
        build_rewards("default", {"reward_model": 1.0})
    with pytest.raises(ConfigError, match="rewards.model_weight"):
        load_config("tiny-cpu", ["rewards.weights={reward_model: 1.0}"])
    from mathgrpo.grading.rewards import reward

    with pytest.raises(ValueError, match="registered twice"):
        reward("reward_model")(lambda c, p, x: 0.0)


@pytest.mark.parametrize("override, message", [
    ("rewards.model=tiny", "rewards.model='tiny' must be a hub id or a local folder"),
    ("rewards.model_weight=0", "rewards.model=null instead"),
    ("rewards.model_normalize=softmax", "rewards.model_normalize"),
    ("rewards.model_batch_size=0", "rewards.model_batch_size=0 must be at least 1"),
    ("rewards.model_max_length=0", "rewards.model_max_length=0 must be at least 1"),
])
def test_settings_are_validated(classifier, override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("tiny-cpu", [f"rewards.model={classifier}", override])


def test_bad_folders_say_what_to_do(tmp_path):
    """A missing folder, a causal LM (its score head would be random), a 3-label head, an adapter folder."""
    with pytest.raises(RewardModelError, match=r"rewards.model=.*nope is no folder"):
        RewardModel.load(str(tmp_path / "nope"))
    lm, tok = build_tiny()
    lm.save_pretrained(tmp_path / "lm")
    tok.save_pretrained(tmp_path / "lm")
    with pytest.raises(RewardModelError, match="is a Qwen3ForCausalLM, not a sequence-classification model"):
        RewardModel.load(str(tmp_path / "lm"))
    with pytest.raises(RewardModelError, match="has 3 labels"):
        RewardModel.load(str(save_classifier(tmp_path / "three", num_labels=3)))
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    with pytest.raises(RewardModelError, match="LoRA adapter folder"):
        RewardModel.load(str(tmp_path / "adapter"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(RewardModelError, match="without config.json"):
        RewardModel.load(str(tmp_path / "empty"))


def test_preflight_names_a_bad_reward_model_before_anything_starts(tmp_path, capsys, monkeypatch):
    """A causal LM folder and a hub id that is not at hand (offline) are named before the warm-up, no folder made."""
    from mathgrpo.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    lm, tok = build_tiny()
    lm.save_pretrained(tmp_path / "lm")
    for name, message in ((tmp_path / "lm", "not a sequence-classification model"),
                          ("nobody/no-such-orm", "not in the local hub cache")):
        assert main(["train", f"run.output_dir={tmp_path / 'runs'}", f"rewards.model={name}"]) == 2
        err = capsys.readouterr().err
        assert f"rewards.model={name}: " in err and message in err
    assert not (tmp_path / "runs").exists()


def test_memory_plan_counts_the_classifier(classifier, tmp_path, capsys):
    """The dry run's plan holds the classifier's weights and one scoring batch as resident bytes."""
    from mathgrpo.cli import main
    from mathgrpo.training.memory import SCORE_HIDDEN, SCORE_INTERMEDIATE, reward_model_bytes

    cfg = load_config("tiny-cpu", [f"rewards.model={classifier}", "grpo.max_memory_gb=2", "rewards.model_batch_size=4",
                                   "rewards.model_max_length=100"])
    rm = load_reward_model(cfg.rewards, 8, "cpu")
    scratch = 4 * 100 * (SCORE_HIDDEN * 128 + SCORE_INTERMEDIATE * 512) * 4  # fp32 on the CPU
    assert reward_model_bytes(cfg, "cpu") == rm.param_bytes() + scratch
    assert reward_model_bytes(load_config("tiny-cpu", ["grpo.max_memory_gb=2"]), "cpu") == 0
    argv = ["train", "--dry-run", f"run.output_dir={tmp_path / 'runs'}", "model.device=cpu", "grpo.max_memory_gb=2",
            "rewards.model_batch_size=64"]  # 64 x 2,048 tokens: 1.1 GiB, so the resident share shows in the line
    beside = reward_model_bytes(load_config("tiny-cpu", argv[3:] + [f"rewards.model={classifier}"]), "cpu")
    assert main(argv + [f"rewards.model={classifier}"]) == 0
    text = capsys.readouterr().out
    assert f"rewards.model={classifier}: local folder" in text
    assert f"(reward model {beside / 2**30:.1f} GiB)" in text
    with_rm = float(re.search(r"resident ([\d.]+) GiB", text).group(1))
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "reward model" not in text
    assert with_rm - float(re.search(r"resident ([\d.]+) GiB", text).group(1)) == pytest.approx(beside / 2**30, abs=0.1)


def test_grpo_run_with_a_reward_model_end_to_end(classifier, tmp_path):
    """`mathgrpo grpo` on the tiny recipe with rewards.model: two steps, the part logged in metrics.jsonl."""
    from mathgrpo.cli import main

    args = ["grpo", f"run.output_dir={tmp_path}", "run.name=rm", "grpo.steps=2", "grpo.prompts_per_step=2",
            "grpo.num_generations=4", "rollout.max_new_tokens=8", "run.progress=false", "data.heldout_size=4",
            "run.eval_every=2", f"rewards.model={classifier}", "rewards.model_weight=0.5"]
    assert main(args) == 0
    rows = [json.loads(line) for line in (tmp_path / "rm" / "grpo" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "reward" in r]
    assert len(steps) == 2
    for row in steps:
        assert {"rewards/correct", "rewards/format_exact", "rewards/reward_model"} <= set(row)
        assert row["rewards/reward_model"] != 0.0  # the mean raw score of random weights


def test_the_can_it_hold_check_counts_the_classifier(classifier):
    """Preflight's memory check adds the reward model's weights and scoring batch to what the run needs."""
    from mathgrpo.preflight import Memory, check_memory

    tight = Memory(2**20, "a test device", gpu=False)
    alone = check_memory(load_config("tiny-cpu"), tight).problem
    with_rm = check_memory(load_config("tiny-cpu", [f"rewards.model={classifier}"]), tight).problem
    def need(text: str) -> float:
        value, unit = re.search(r"needs about ([\d.]+) (MiB|GiB)", text).groups()
        return float(value) * (1024 if unit == "GiB" else 1)

    assert "reward model" in with_rm and "reward model" not in alone and need(with_rm) > need(alone)
