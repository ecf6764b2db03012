"""Warm-up batches: right-padded with labels only on the answer side, run without a mask."""

import torch

from mathgrpo.sft import Example, collate


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
    from mathgrpo.sft import sft_loss
    from mathgrpo.tiny import build_tiny

    model, _ = build_tiny(seed=2)
    examples = [Example(list(range(3, 40)), 10), Example(list(range(5, 20)), 4)]
    cpu = torch.device("cpu")
    with torch.no_grad():
        together = sft_loss(model, examples, 0, cpu, 1.0)
        alone = sum(sft_loss(model, [e], 0, cpu, 1.0) for e in examples)
    assert torch.allclose(together, alone, rtol=1e-5)
