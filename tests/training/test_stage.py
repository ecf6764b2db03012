"""The lifecycle every stage shares, driven through the real warm-up on the tiny model: checkpoints every
run.checkpoint_every steps and at the last, an early end, a saved Ctrl-C that resumes where it stopped with
the logs cut back to it, and a NaN turned into a stop that names the stage's setting."""

import os
import signal

import pytest
import torch

from mathgrpo.config import load_config
from mathgrpo.data.arith import split
from mathgrpo.tracking import read_jsonl
from mathgrpo.training.sft import SFTRun
from mathgrpo.training.stopping import TrainingStopped


def warm_up(tmp_path, *overrides, kind=SFTRun) -> SFTRun:
    cfg = load_config("tiny-cpu", ["model.device=cpu", "run.progress=false", "sft.batch_size=4", "sft.steps=4",
                                   "sft.stop_at_accuracy=null", *overrides])
    train, dev, _ = split(0)
    return kind(cfg, tmp_path, train[:40], dev[:4])


def steps_saved(stage: SFTRun) -> list:
    return sorted(int(p.name.split("-")[1]) for p in (stage.dir / "checkpoints").glob("ckpt-*"))


def test_checkpoints_every_n_steps_and_at_the_last(tmp_path):
    stage = warm_up(tmp_path, "run.checkpoint_every=3", "run.keep_last=5")
    stage.loop()
    assert stage.step == 4 and steps_saved(stage) == [3, 4]
    assert [r["step"] for r in read_jsonl(stage.dir / "metrics.jsonl")] == [1, 2, 3, 4]


class EndsEarly(SFTRun):
    """A warm-up whose stage says it is done after its second step (as sft.stop_at_accuracy does)."""

    def step_row(self) -> tuple:
        row, _ = super().step_row()
        return row, self.step == 2


def test_an_early_end_stops_the_loop_there(tmp_path):
    stage = warm_up(tmp_path, kind=EndsEarly)
    stage.loop()
    assert stage.step == 2 and [r["step"] for r in read_jsonl(stage.dir / "metrics.jsonl")] == [1, 2]


class Interrupted(SFTRun):
    """A warm-up that receives Ctrl-C during its second step."""

    def step_row(self) -> tuple:
        out = super().step_row()
        if self.step == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return out


def test_ctrl_c_saves_the_step_reached_and_resume_continues_from_it(tmp_path, capsys):
    cfg = ["run.checkpoint_every=100"]
    stage = warm_up(tmp_path, *cfg, kind=Interrupted)
    with pytest.raises(KeyboardInterrupt):
        stage.loop()
    out = capsys.readouterr().out
    assert "sft: interrupted; saved" in out and f"--resume {tmp_path}" in out and steps_saved(stage) == [2]
    with open(stage.dir / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "loss": 0.0}\n')  # a row written after the checkpoint, by a run killed before saving again
    again = warm_up(tmp_path, *cfg)
    assert again.resume() and again.step == 2
    assert [r["step"] for r in read_jsonl(again.dir / "metrics.jsonl")] == [1, 2]
    again.loop()
    assert again.step == 4 and [r["step"] for r in read_jsonl(again.dir / "metrics.jsonl")] == [1, 2, 3, 4]


def test_the_bar_is_stopped_before_the_ctrl_c_message(tmp_path, capsys):
    """The progress bar's last frame comes before the interrupted message, never after it."""
    stage = warm_up(tmp_path, "run.progress=true", kind=Interrupted)
    with pytest.raises(KeyboardInterrupt):
        stage.loop()
    lines = [x for x in capsys.readouterr().out.splitlines() if x.strip()]
    assert any(x.startswith("warm-up ") for x in lines)  # the bar was drawn
    assert lines[-1].startswith("sft: interrupted; saved") and lines[-2].startswith("warm-up ")


def test_a_non_finite_loss_stops_with_the_stages_advice(tmp_path):
    stage = warm_up(tmp_path, "sft.lr=1e30", "sft.steps=6")
    with pytest.raises(TrainingStopped, match=r"sft step \d: non-finite loss .* Lower sft\.lr; then --resume"):
        stage.loop()


def test_float16_warm_up_trains_in_mixed_precision_and_resumes_its_loss_scale(tmp_path):
    """model.dtype=float16 on the tiny recipe's full fine-tuning warm-up: every trained weight in float32 (plain
    float16 weights stopped with a NaN loss at step 2), the loss falls, and resume restores the loss scale."""
    stage = warm_up(tmp_path, "model.dtype=float16", "sft.steps=6", "run.checkpoint_every=3", "sft.batch_size=16")
    assert {p.dtype for p in stage.model.parameters()} == {torch.float32}
    stage.loop()
    rows = read_jsonl(stage.dir / "metrics.jsonl")
    assert all(r["loss"] == r["loss"] for r in rows) and rows[-1]["loss"] < rows[0]["loss"]
    assert rows[-1]["loss_scale"] == 2.0**16
    stage.stepper.scaler.update(1024.0)  # a scale the fresh stage would not start from
    stage.step = 7
    stage.save_checkpoint()
    again = warm_up(tmp_path, "model.dtype=float16", "sft.steps=8", "run.checkpoint_every=3", "sft.batch_size=16")
    assert again.resume() and again.step == 7 and again.stepper.scaler.get_scale() == 1024.0
