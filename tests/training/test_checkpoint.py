"""Checkpoints: atomic folders, pruning, and an exact round trip of model, optimizer and RNGs."""

import random

import torch

from mathgrpo.runs import finished_checkpoints, latest_checkpoint
from mathgrpo.training import checkpoint
from mathgrpo.config import LoraConfig
from mathgrpo.model.loading import add_lora
from mathgrpo.training.optim import make_optimizer, make_scheduler
from mathgrpo.model.tiny import build_tiny


def _setup():
    model, tok = build_tiny()
    model = add_lora(model, LoraConfig(r=4, alpha=8))
    opt = make_optimizer(model, 1e-2, 0.0)
    sched = make_scheduler(opt, "linear", 2, 10)
    return model, tok, opt, sched


def _train_one(model, opt, sched):
    loss = model(torch.randint(3, 100, (2, 8))).logits.pow(2).mean()
    loss.backward()
    opt.step()
    sched.step()
    opt.zero_grad()


def test_round_trip_is_exact(tmp_path):
    """After load, the next step and the next random numbers match the run that never stopped."""
    model, tok, opt, sched = _setup()
    _train_one(model, opt, sched)
    checkpoint.save(tmp_path, 1, model, tok, opt, sched, {"pos": 7}, keep_last=2)
    _train_one(model, opt, sched)
    want = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    want_rand = (random.random(), torch.rand(1).item())

    model2, tok2, opt2, sched2 = _setup()
    torch.manual_seed(123)  # scramble: load must restore RNGs
    extra = checkpoint.load(latest_checkpoint(tmp_path), model2, opt2, sched2)
    assert extra == {"step": 1, "pos": 7}
    _train_one(model2, opt2, sched2)
    got = [p.detach() for p in model2.parameters() if p.requires_grad]
    assert all(torch.equal(a, b) for a, b in zip(want, got))
    assert (random.random(), torch.rand(1).item()) == want_rand
    assert sched2.get_last_lr() == sched.get_last_lr()


def test_prune_keeps_last_and_ignores_unfinished(tmp_path):
    """Only the newest keep_last survive; a folder without meta.json is never 'latest'."""
    model, tok, opt, sched = _setup()
    for step in (1, 2, 3):
        checkpoint.save(tmp_path, step, model, tok, opt, sched, {}, keep_last=2)
    assert [p.name for p in finished_checkpoints(tmp_path)] == ["ckpt-000002", "ckpt-000003"]
    (tmp_path / "ckpt-000009").mkdir()  # as a crash mid-write would leave it without the rename
    assert latest_checkpoint(tmp_path).name == "ckpt-000003"
    assert (tmp_path / "ckpt-000003" / "model" / "adapter_config.json").exists()


def test_same_step_is_written_once(tmp_path):
    """A second save of a finished step (an interrupt right after a periodic save) keeps the first."""
    model, tok, opt, sched = _setup()
    first = checkpoint.save(tmp_path, 4, model, tok, opt, sched, {"pos": 1}, keep_last=2)
    stamp = (first / "meta.json").read_text()
    assert checkpoint.save(tmp_path, 4, model, tok, opt, sched, {"pos": 2}, keep_last=2) == first
    assert (first / "meta.json").read_text() == stamp
