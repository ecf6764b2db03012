"""The Unsloth backend for real (skipped without Unsloth; CI runs it in its own environment, .ci/unsloth).

A tiny Qwen3 is loaded through FastLanguageModel on CPU, gets LoRA through get_peft_model, and is
trained by our GRPO loop: warm-up and GRPO through `mathgrpo.train`, then the adapter is read back
by plain PEFT and gives the same log-probs.
"""

import os

os.environ.setdefault("UNSLOTH_SKIP_TORCHVISION_CHECK", "1")
pytest = __import__("pytest")
pytest.importorskip("unsloth")  # before transformers, as Unsloth wants

import json  # noqa: E402

import torch  # noqa: E402

from mathgrpo.config import load_config  # noqa: E402
from mathgrpo.data.arith import split  # noqa: E402
from mathgrpo.grpo.batch import collate  # noqa: E402
from mathgrpo.grpo.logprobs import token_logprobs  # noqa: E402
from mathgrpo.grpo.trainer import GRPORun  # noqa: E402
from mathgrpo.unsloth_backend import version_conflicts  # noqa: E402

TINY = ["model.backend=unsloth", "sft.full_finetune=false", "run.progress=false", "grpo.prompts_per_step=4",
        "grpo.num_generations=4", "rollout.max_new_tokens=12", "data.heldout_size=8", "lora.r=8", "grpo.lr=1e-3"]


def test_no_version_conflicts_in_this_environment():
    assert version_conflicts() == []


def test_grpo_steps_through_unsloth_model(tmp_path):
    """Our loop trains a model that Unsloth loaded and wrapped: adapters move, and are saved in PEFT's format."""
    cfg = load_config("tiny-cpu", TINY)
    train, _, test = split(0)
    run = GRPORun(cfg, tmp_path, train[:64], test[:8])
    assert type(run.model).__name__.startswith("PeftModel")
    before = {n: p.detach().clone() for n, p in run.model.named_parameters() if p.requires_grad}
    m = run.train_step()  # the whole step; an untrained model's rewards are all 0, so nothing moves yet
    assert torch.isfinite(torch.tensor(m["loss"])) and m["backward_time"] > 0
    for _ in range(2):  # the same loop on rollouts with spread-out advantages: the adapters must move
        _, gens, _, _ = run.rollout()
        batch = collate(gens, torch.linspace(-1, 1, len(gens)), run.tok.pad_token_id, False, run.device)
        assert run.learn(batch, len(batch))["grad_norm"] > 0
    after = dict(run.model.named_parameters())
    assert any(not torch.equal(before[n], after[n].detach()) for n in before)
    ckpt = run.save_checkpoint()

    adapter = json.loads(next(ckpt.rglob("adapter_config.json")).read_text())
    assert adapter["peft_type"] == "LORA" and adapter["r"] == 8


def test_saved_adapter_reads_back_with_plain_peft(tmp_path):
    """The adapter an Unsloth-backed run saves, loaded by the transformers backend, gives the same log-probs."""
    from mathgrpo.config import ModelConfig
    from mathgrpo.model import load_with_adapter, save_trainable

    cfg = load_config("tiny-cpu", TINY)
    train, _, test = split(0)
    run = GRPORun(cfg, tmp_path, train[:64], test[:8])
    run.train_step()
    save_trainable(run.model, run.tok, tmp_path / "adapter")
    ids = torch.randint(3, 90, (2, 20))
    mask = torch.ones_like(ids)
    run.model.eval()
    with torch.no_grad():
        ours = token_logprobs(run.model, ids, mask, 8)
        plain, _ = load_with_adapter(tmp_path / "adapter", ModelConfig(device="cpu", dtype="float32"))
        back = token_logprobs(plain, ids, mask, 8)
    assert torch.allclose(ours, back, atol=1e-4)


def test_train_cli_warmup_then_grpo(tmp_path):
    """`mathgrpo train` end to end with backend=unsloth: LoRA warm-up, GRPO from the warm-up's adapter, final adapter."""
    from mathgrpo.train import main as train_main

    cfg = load_config("tiny-cpu", TINY + ["sft.steps=5", "grpo.steps=3", f"run.output_dir={tmp_path}", "run.name=u"])
    summary = train_main(cfg)
    assert summary is not None
    assert list((tmp_path / "u").rglob("adapter_config.json"))
    rows = [json.loads(line) for line in (tmp_path / "u" / "grpo" / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in rows) == 3
