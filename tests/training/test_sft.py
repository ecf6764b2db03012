"""Warm-up batches: right-padded with labels only on the answer side, run without a mask."""

import torch

from mathgrpo.training.sft import Example, collate


def test_collate_pads_right_with_labels_on_the_answer():
    """Labels cover the answer tokens only; rows are right-padded to the longest (no widening: no mask is passed)."""
    examples = [Example(list(range(3, 67)), 10), Example(list(range(3, 23)), 5)]
    ids, labels = collate(examples, pad_id=0, device=torch.device("cpu"))
    assert ids.shape == labels.shape == (2, 64)
    assert (labels[0, :10] == -100).all() and labels[0, 10:64].tolist() == list(range(13, 67))
    assert (labels[1, :5] == -100).all() and labels[1, 5:20].tolist() == list(range(8, 23))
    assert (labels[1, 20:] == -100).all() and (ids[1, 20:] == 0).all()


def test_padded_rows_lose_what_they_would_alone():
    """The warm-up loss of a right-padded batch (run without a mask) is the sum of each example's own loss."""
    from mathgrpo.training.sft import sft_loss
    from mathgrpo.model.tiny import build_tiny

    model, _ = build_tiny(seed=2)
    examples = [Example(list(range(3, 40)), 10), Example(list(range(5, 20)), 4)]
    cpu = torch.device("cpu")
    with torch.no_grad():
        together = sft_loss(model, examples, 0, cpu, 1.0)
        alone = sum(sft_loss(model, [e], 0, cpu, 1.0) for e in examples)
    assert torch.allclose(together, alone, rtol=1e-5)


def test_the_warm_up_pass_builds_no_kv_cache():
    """No decoder layer is handed a KV cache in a warm-up pass: one is never read there, costs memory, and its
    per-layer state makes compiled layers (model.compile_layers) compile again for every layer."""
    from transformers.cache_utils import Cache

    from mathgrpo.model.compiled import decoder_layers
    from mathgrpo.model.tiny import build_tiny
    from mathgrpo.training.sft import sft_loss

    model, _ = build_tiny(seed=2)
    assert model.config.use_cache  # the tiny model generates with a cache; the pass must ask for none
    caches = []
    hooks = [layer.register_forward_pre_hook(
        lambda m, a, kw: caches.extend(v for v in kw.values() if isinstance(v, Cache)), with_kwargs=True)
        for layer in decoder_layers(model)]
    sft_loss(model, [Example(list(range(3, 40)), 10)], 0, torch.device("cpu"), 1.0).backward()
    for hook in hooks:
        hook.remove()
    assert caches == []


def test_warm_up_says_why_it_ended():
    """An early stop on purpose is named as such; ending far below the target is a warning before GRPO."""
    from mathgrpo.training.sft import ending_note

    assert ending_note(130, 400, {"accuracy": 0.36}, 0.3) == (
        "warm-up: stopped at step 130 of 400: 36% dev accuracy >= 30% target (sft.stop_at_accuracy)")
    assert ending_note(400, 400, {"accuracy": 0.05}, 0.3).startswith("warning: the warm-up ended at 5% dev accuracy")
    assert ending_note(400, 400, {"accuracy": 0.2}, 0.3) is None and ending_note(400, 400, None, None) is None


def test_an_early_stop_completes_the_bar():
    """The bar of a warm-up that stopped at step 130 of 400 ends full, with no time left."""
    from mathgrpo.progress import StepProgress

    bar = StepProgress("warm-up", 400, 0)
    bar.update(130)
    bar.finish(130, "dev 0.36")
    task = bar._progress.tasks[0]
    assert (task.completed, task.total, task.finished) == (130, 130, True)
    bar.close()


def test_no_warm_up_examples_says_which_cause_and_what_to_change():
    """Problems without worked solutions, and solved problems whose prompts fill model.max_seq_length, are two
    causes with two fixes; the message names the one that holds."""
    from mathgrpo.config import load_config
    from mathgrpo.data import Problem
    from mathgrpo.data.formats import get_format
    from mathgrpo.model.tiny import build_tiny
    from mathgrpo.training.sft import make_examples, no_examples_reason

    _, tok = build_tiny(seed=0)
    cfg = load_config("tiny-cpu", ["data.source=mine.jsonl"])
    fmt = get_format(cfg.format.preset)
    bare = [Problem(f"p{i}", f"{i}+1", str(i + 1), "mine") for i in range(3)]
    long = [Problem(f"q{i}", "What is " * 20 + f"{i}+1?", str(i + 1), "mine", solution=f"{i}+1={i + 1}") for i in range(2)]
    for problems, said in ((bare, "none of the 3 problems of mine.jsonl has a worked solution; set sft.source"),
                           (long, "all 2 problems of mine.jsonl with a worked solution take model.max_seq_length=64")):
        assert make_examples(problems, fmt, tok, cfg.format.template, cfg.model.max_seq_length) == []
        assert said in no_examples_reason(problems, fmt, cfg)
