"""Problems whose prompt leaves no room for rollout.max_new_tokens are left out, said in a line, by both stages."""

from dataclasses import replace

import pytest

from mathgrpo.config import load_config
from mathgrpo.data import DataError
from mathgrpo.data.arith import split
from mathgrpo.data.formats import get_format
from mathgrpo.model.tiny import build_tiny
from mathgrpo.training.fitting import fitting_problems
from mathgrpo.training.sft import SFTRun

SETTINGS = ["rollout.max_new_tokens=16", "model.max_seq_length=48", "run.progress=false", "model.device=cpu"]


def _long(problems):
    """The same problems with prompts 40 tokens longer (the tiny tokenizer reads characters)."""
    return [replace(p, id=f"long-{p.id}", question=p.question + " " * 40) for p in problems]


def test_the_rule_keeps_what_fits_says_what_it_left_and_stops_when_nothing_is_left(capsys):
    cfg = load_config("tiny-cpu", SETTINGS)
    model, tok = build_tiny()
    fmt = get_format(cfg.format.preset)
    short = split(0)[2][:4]
    assert fitting_problems(short, "test", cfg, model, tok, fmt) is short and capsys.readouterr().out == ""
    assert fitting_problems(short + _long(short[:1]), "test", cfg, model, tok, fmt) == short
    line = capsys.readouterr().out
    assert line.startswith("1 of 5 test problems have prompts that with rollout.max_new_tokens=16 take more than "
                           "model.max_seq_length=48 (longest prompt ") and "they are left out" in line
    with pytest.raises(DataError, match="none is left; raise model.max_seq_length to"):
        fitting_problems(_long(short), "test", cfg, model, tok, fmt)


def test_the_warm_up_measures_its_dev_accuracy_on_the_problems_that_fit(tmp_path, capsys):
    train, dev, _ = split(0)
    run = SFTRun(load_config("tiny-cpu", SETTINGS), tmp_path, train[:20], dev[:3] + _long(dev[:2]))
    assert [p.id for p in run.dev] == [p.id for p in dev[:3]]
    assert "2 of 5 warm-up dev problems" in capsys.readouterr().out
