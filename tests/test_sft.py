"""Warm-up batches: right-padded with labels only on the answer side, at widths cuDNN's attention handles."""

import torch

from mathgrpo.sft import Example, collate


def test_collate_pads_right_and_skips_64_mod_128():
    """Labels cover the answer tokens only; a 64-token batch is widened to 72 with masked, unlabelled columns."""
    examples = [Example(list(range(3, 67)), 10), Example(list(range(3, 23)), 5)]
    ids, mask, labels = collate(examples, pad_id=0, device=torch.device("cpu"))
    assert ids.shape == mask.shape == labels.shape == (2, 72)
    assert mask[0].sum() == 64 and mask[1].sum() == 20 and mask[:, 64:].sum() == 0
    assert (labels[0, :10] == -100).all() and labels[0, 10:64].tolist() == list(range(13, 67)) and (labels[0, 64:] == -100).all()
    assert (labels[1, 20:] == -100).all() and (ids[1, 20:] == 0).all()
    ids, _, _ = collate(examples[1:], pad_id=0, device=torch.device("cpu"))
    assert ids.shape == (1, 20)
