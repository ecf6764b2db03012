"""`mathgrpo eval --model <DeepSeekMath copy>`: its chat template picks its own prompt, and \\boxed{} answers grade.

The model is a tiny Llama (DeepSeekMath's architecture) with a byte-level BPE tokenizer trained here in
a second, saved with DeepSeekMath's chat template and its bos/eos tokens, as a local copy would be.
"""

import json

import pytest

from mathgrpo.cli import main as cli
from mathgrpo.data.formats import DEEPSEEK_CHAT_TEMPLATE, get_format, model_prompt, render_prompt

BOS, EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"  # fullwidth bars, as in DeepSeekMath's tokenizer
INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
FAST = ["rollout.max_new_tokens=8", "run.progress=false", "run.threads=1", "rollout.engine=hf"]


def deepseek_like(path):
    """A DeepSeekMath-shaped model folder: Llama weights, BPE tokenizer, DeepSeekMath's chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=[BOS, EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(["User: what is 2 + 3?\n\nAssistant: 2 + 3 = 5, so \\boxed{5}."] * 20, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token=BOS, eos_token=EOS, pad_token=EOS)
    tok.chat_template = DEEPSEEK_CHAT_TEMPLATE
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=2048,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def ds_dir(tmp_path_factory):
    return deepseek_like(tmp_path_factory.mktemp("models") / "deepseek-math-7b-rl")


def expected(question: str) -> str:
    """DeepSeekMath's chain-of-thought prompt, written out by hand from its model card."""
    return f"{BOS}User: {question}\n{INSTRUCTION}\n\nAssistant:"


def test_the_template_is_known_and_renders_the_cards_prompt(ds_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ds_dir)
    known = model_prompt(tok)
    assert known == {"name": known["name"], "preset": "boxed", "instruction": "user"}
    fmt = get_format(known["preset"], instruction=known["instruction"])
    assert render_prompt("What is 2+3?", fmt, tok) == expected("What is 2+3?")
    # The template as a tokenizer_config.json may hold it, with real newlines in the Jinja strings: same model.
    tok.chat_template = DEEPSEEK_CHAT_TEMPLATE.replace("\\n", "\n")
    assert model_prompt(tok) == known
    tok.chat_template = "{{ messages[0]['content'] }}"
    assert model_prompt(tok) is None


def test_eval_of_a_deepseek_copy_uses_its_prompt(ds_dir, tmp_path, capsys):
    out = tmp_path / "res"
    argv = ["eval", "--model", str(ds_dir), "--bench", "gsm8k", "--limit", "2", "--output", str(out), *FAST]
    assert cli(argv) == 0
    printed = capsys.readouterr().out
    assert "format.preset=boxed, format.instruction=user" in printed
    prompts = json.loads((out / "prompt.json").read_text())["gsm8k"]
    samples = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert prompts["example_prompt"] == expected(next(s["question"] for s in samples if s["id"] == prompts["example_id"]))
    assert prompts["format"] == "boxed" and prompts["instruction"] == "user" and prompts["template"] == "chat"
    settings = json.loads((out / "eval_config.json").read_text())["fingerprint"]
    assert settings["format"] == "boxed" and settings["instruction"] == "user"
    assert "instruction after the question" in (out / "report.md").read_text()
    # The model's own published figures are marked in the terminal table (its folder has the hub name).
    assert "deepseek-ai/deepseek-math-7b-rl (this model)" in printed


def test_boxed_answers_of_a_deepseek_copy_are_graded(ds_dir, tmp_path, monkeypatch):
    """The engine is replaced by one answering each problem's gold in \\boxed{}: every answer counts as correct."""
    import mathgrpo.rollout as rollout
    from mathgrpo.rollout.base import Generation

    golds = {}

    class Boxed:
        name = "boxed"

        def generate(self, prompts, n, params, seeds=None):
            out = []
            for i, prompt in enumerate(prompts):
                assert prompt.startswith(f"{BOS}User: ") and prompt.endswith(f"\n{INSTRUCTION}\n\nAssistant:")
                gold = next(g for q, g in golds.items() if q in prompt)
                out += [Generation(i, [1], [5, 6], f" 2 + 3 is easy. The answer is $\\boxed{{{gold}}}$.", True)] * n
            return out

    from mathgrpo.data import load_source

    for p in load_source("gsm8k", split="test").problems:
        golds[p.question] = p.answer
    monkeypatch.setattr(rollout, "make_engine", lambda *a, **k: Boxed())
    out = tmp_path / "res"
    assert cli(["eval", "--model", str(ds_dir), "--bench", "gsm8k", "--limit", "3", "--output", str(out), *FAST]) == 0
    m = json.loads((out / "metrics.json").read_text())["benchmarks"]["gsm8k"]
    assert m["accuracy"] == 1.0 and m["format_adherence"] == 1.0
    samples = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert all(s["answer"] == s["gold"] and s["correct"] for s in samples)


def test_model_prompt_off_keeps_format_settings(ds_dir, tmp_path):
    out = tmp_path / "res"
    argv = ["eval", "--model", str(ds_dir), "--bench", "gsm8k", "--limit", "1", "--output", str(out),
            "eval.model_prompt=false", *FAST]
    assert cli(argv) == 0
    prompts = json.loads((out / "prompt.json").read_text())["gsm8k"]
    assert prompts["format"] == "reasoning" and prompts["instruction"] == "system"
    # The chat template still lays it out; the reasoning format's instruction is the system message.
    assert prompts["example_prompt"].startswith(f"{BOS}{get_format('reasoning').system_prompt}\n\nUser: ")


def test_a_folder_made_with_the_cards_prompt_is_not_reused_without_it(ds_dir, tmp_path, capsys):
    out = tmp_path / "res"
    base = ["eval", "--model", str(ds_dir), "--bench", "gsm8k", "--limit", "1", "--output", str(out), *FAST]
    assert cli(base) == 0
    assert cli(base + ["eval.model_prompt=false"]) == 2
    err = capsys.readouterr().err
    assert "format: 'boxed' -> 'reasoning'" in err and "instruction: 'user' -> None" in err
