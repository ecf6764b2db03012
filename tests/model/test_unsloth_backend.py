"""The Unsloth backend for real (skipped without Unsloth; CI runs it in its own environment, .ci/unsloth).

A tiny Qwen3 is loaded through FastLanguageModel on CPU, gets LoRA through get_peft_model, and is
trained by our GRPO loop: warm-up and GRPO through `mathgrpo.training.pipeline`, then the adapter is read back
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
from mathgrpo.training.batch import collate  # noqa: E402
from mathgrpo.training.logprobs import token_logprobs  # noqa: E402
from mathgrpo.training.grpo import GRPORun  # noqa: E402
from mathgrpo.model.unsloth_backend import version_conflicts  # noqa: E402

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
        gens = run.rollout().generations
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
    from mathgrpo.model.loading import load_with_adapter, save_trainable

    cfg = load_config("tiny-cpu", TINY)
    train, _, test = split(0)
    run = GRPORun(cfg, tmp_path, train[:64], test[:8])
    run.train_step()
    save_trainable(run.model, run.tok, tmp_path / "adapter")
    param = next(run.model.parameters())  # Unsloth puts the model on its GPU when there is one, in bf16 there
    ids = torch.randint(3, 90, (2, 20), device=param.device)
    mask = torch.ones_like(ids)
    run.model.eval()
    with torch.no_grad():
        ours = token_logprobs(run.model, ids, mask, 8)
        dtype = str(param.dtype).removeprefix("torch.")
        plain, _ = load_with_adapter(tmp_path / "adapter", ModelConfig(device=param.device.type, dtype=dtype))
        back = token_logprobs(plain, ids, mask, 8)
    assert torch.allclose(ours.float(), back.float(), atol=1e-4 if param.dtype == torch.float32 else 0.05)


def test_train_cli_warmup_then_grpo(tmp_path):
    """`mathgrpo train` end to end with backend=unsloth: LoRA warm-up, GRPO from the warm-up's adapter, final adapter."""
    import mathgrpo

    # model.device=cpu: the up-front checks refuse the unsloth backend on a machine without a GPU unless asked
    run = mathgrpo.train("tiny-cpu", overrides=TINY + ["sft.steps=5", "grpo.steps=3", f"run.output_dir={tmp_path}",
                                                       "run.name=u", "model.device=cpu"])
    assert run.summary["steps"] == 3
    assert list((tmp_path / "u").rglob("adapter_config.json"))
    rows = [json.loads(line) for line in (tmp_path / "u" / "grpo" / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in rows) == 3


def _sharp_tiny_unsloth(extra: list) -> tuple:
    """The tiny model through the Unsloth backend with LoRA, every matrix redrawn at std 0.2 so that attending
    to a pad token changes log-probs far beyond bf16 rounding."""
    from mathgrpo.model.loading import add_adapters, load_base

    cfg = load_config("tiny-cpu", TINY + extra)
    model, tok = load_base(cfg.model)
    model = add_adapters(model, cfg)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return model, tok


def test_loaded_bodies_keep_the_padding_mask():
    """Every model the backend loads carries Unsloth's keep-the-mask flag on its decoder body."""
    model, _ = _sharp_tiny_unsloth([])
    bodies = [m for m in model.modules() if hasattr(m, "embed_tokens")]
    assert bodies and all(getattr(m, "_unsloth_keep_padding_mask", False) for m in bodies)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="Unsloth's GPU body is the one that drops the mask")
def test_left_padded_rows_in_training_mode_on_gpu():
    """In training mode a left-padded row's log-probs match the same row unpadded (bf16 noise aside), and the
    gradients are finite: on the masked path (rows not rotated, as for a mask with a hole) the mask reaches
    attention although our log-probs call the body directly."""
    from mathgrpo.training.logprobs import PassLayout

    masked = PassLayout(rotate=False)  # rotated rows pass no mask: nothing to drop
    model, tok = _sharp_tiny_unsloth(["model.dtype=bfloat16"])
    dev = next(model.parameters()).device
    assert dev.type == "cuda"
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 90, (2, 24), generator=gen).to(dev)
    mask = torch.ones_like(ids)
    ids[0, :6], mask[0, :6] = tok.pad_token_id, 0
    model.eval()
    with torch.no_grad():
        alone = token_logprobs(model, ids[:1, 6:], mask[:1, 6:], 4, layout=masked)[0].float()
        padded_eval = token_logprobs(model, ids, mask, 10, layout=masked)[0].float()
    model.train()
    lp = token_logprobs(model, ids, mask, 10, layout=masked)
    noise = (padded_eval - alone).abs().max().item()
    diff = (lp[0].float() - alone).abs().max().item()
    assert diff <= 2 * noise + 0.05 * alone.abs().max().item(), (diff, noise)
    lp.sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


def test_lora_gemm_order_is_patched_equal_and_steps_aside():
    """Loading through the backend routes Unsloth's LoRA GEMMs through ours (low-rank product first); it computes
    what Unsloth's does, also compiled (Unsloth compiles its decoder blocks), and hands Unsloth's own the calls it
    does not cover (gradients recorded: ours has no backward). Restoring undoes it."""
    from unsloth.kernels import fast_lora

    from mathgrpo.model.unsloth_backend import reorder_lora_matmul, restore_lora_matmul

    _sharp_tiny_unsloth([])
    patched = fast_lora.matmul_lora
    original = patched.unsloth_original
    gen = torch.Generator().manual_seed(2)
    x, w = torch.randn(2, 5, 16, generator=gen), torch.randn(12, 16, generator=gen)
    a, b = torch.randn(4, 16, generator=gen), torch.randn(12, 4, generator=gen)
    with torch.no_grad():
        want = original(x, w, None, a, b, 0.7)
        assert torch.allclose(patched(x, w, None, a, b, 0.7), want, atol=1e-5)
        traced = []

        def recording(gm, example_inputs):  # the graph a compiled block would run, run as it is
            traced.extend(str(node.target) for node in gm.graph.nodes)
            return gm.forward

        compiled = torch.compile(lambda t: patched(t, w, None, a, b, 0.7), backend=recording, fullgraph=True)
        assert torch.allclose(compiled(x), want, atol=1e-5)
        assert any("lora_first_matmul" in t for t in traced)  # one opaque call, ours
    xg = x.clone().requires_grad_()
    patched(xg, w, None, a, b, 0.7).sum().backward()
    assert torch.allclose(xg.grad, (w + 0.7 * b @ a).sum(0).expand_as(x), atol=1e-4)
    assert reorder_lora_matmul() and fast_lora.matmul_lora is patched  # idempotent
    restore_lora_matmul()
    assert fast_lora.matmul_lora is original
    assert reorder_lora_matmul() and fast_lora.matmul_lora is not original
