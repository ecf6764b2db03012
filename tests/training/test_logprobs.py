"""Chunked log-probabilities equal the plain full-logits computation, values and gradients.

Compared where the target is a real token: at completion padding (which the loss masks) the chunked
path's rows run rotated without a mask, so pads attend differently and their values are unspecified.
"""

import torch

from mathgrpo.config import LoraConfig
from mathgrpo.training.logprobs import DEFAULT_LAYOUT, plain_token_logprobs, token_logprobs
from mathgrpo.model.loading import add_lora
from mathgrpo.model.tiny import build_tiny


def _batch():
    torch.manual_seed(1)
    ids = torch.randint(3, 100, (3, 12))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding of a short prompt
    mask[1, -4:] = 0  # right padding of a short completion
    return ids, mask


def _real(mask, prompt_width=5):
    """Where the completion targets are real tokens (what the loss counts)."""
    return mask[:, prompt_width:].bool()


def test_chunked_matches_plain_on_tiny_model():
    """Same values at temperature 0.7, chunks smaller than the batch, PEFT-wrapped or not."""
    model, _ = build_tiny(seed=3)
    ids, mask = _batch()
    for m in (model, add_lora(model, LoraConfig(r=4, alpha=8))):
        ref = plain_token_logprobs(m, ids, mask, prompt_width=5, temperature=0.7)
        got = token_logprobs(m, ids, mask, prompt_width=5, temperature=0.7, chunk_tokens=4)
        assert got.shape == (3, 7)
        assert torch.allclose(got[_real(mask)], ref[_real(mask)], atol=1e-5)


def _lora_model(seed: int):
    """The tiny model with LoRA adapters initialised away from zero (so every adapter gets a gradient)."""
    model, _ = build_tiny(seed=seed)
    model = add_lora(model, LoraConfig(r=4, alpha=8))
    for p in model.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.05)
    return model


def test_chunked_gradients_match_plain():
    """Backward through checkpointed chunks gives the plain gradients of the LoRA weights."""
    model = _lora_model(4)
    ids, mask = _batch()
    weights = torch.randn(3, 7) * _real(mask)
    grads = []
    for fn in (plain_token_logprobs, lambda *a: token_logprobs(*a, chunk_tokens=5)):
        model.zero_grad()
        (fn(model, ids, mask, 5, 1.0) * weights).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad]))
    assert torch.allclose(grads[0], grads[1], atol=1e-5)


def _lora_grads(model, fn, weights):
    model.zero_grad()
    ids, mask = _batch()
    logp = fn(model, ids, mask, 5, 0.7)
    (logp * weights).sum().backward()
    return logp, torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])


def test_frozen_head_path_matches_plain_at_temperature():
    """With a frozen head the log-probs come from FrozenHeadLogProb; its gradients equal the plain ones at T=0.7."""
    model = add_lora(build_tiny(seed=7)[0], LoraConfig(r=4, alpha=8))
    for p in model.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.05)
    real = _real(_batch()[1])
    weights = torch.randn(3, 7) * real
    ref_logp, ref = _lora_grads(model, plain_token_logprobs, weights)
    logp, got = _lora_grads(model, lambda *a: token_logprobs(*a, chunk_tokens=4), weights)
    assert type(logp.grad_fn).__name__ == "ViewBackward0"
    assert type(logp.grad_fn.next_functions[0][0]).__name__ == "FrozenHeadLogProbBackward"
    assert torch.allclose(logp[real], ref_logp[real], atol=1e-5)
    assert torch.allclose(got, ref, atol=1e-5)


def test_trainable_head_gradients_match_plain():
    """Every weight trainable (no LoRA): the checkpointed chunks give the plain gradients, head included."""
    model, _ = build_tiny(seed=8)
    weights = torch.randn(3, 7) * _real(_batch()[1])
    _, ref = _lora_grads(model, plain_token_logprobs, weights)
    _, got = _lora_grads(model, lambda *a: token_logprobs(*a, chunk_tokens=4), weights)
    assert torch.allclose(got, ref, atol=1e-5)


def _widths_and_results(model, ids, mask, prompt_width, chunk_tokens=16, layout=DEFAULT_LAYOUT):
    """(widths and masks the body saw, [(logp, grads)] of the plain and chunked paths) over the real targets."""
    seen = []
    body = model.base_model.model.model
    hook = body.register_forward_pre_hook(lambda m, a, kw: seen.append((kw["input_ids"].shape[1], kw.get("attention_mask"))),
                                          with_kwargs=True)
    real = mask[:, prompt_width:].bool()
    weights = torch.randn(real.shape) * real
    results = []
    for fn in (plain_token_logprobs, lambda *a: token_logprobs(*a, chunk_tokens=chunk_tokens, layout=layout)):
        model.zero_grad()
        logp = fn(model, ids, mask, prompt_width, 1.0)
        (logp * weights).sum().backward()
        results.append((logp[real], torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])))
    hook.remove()
    return seen, results


def test_left_padded_rows_run_rotated_without_a_mask():
    """Left-padded prompts and right-padded completions: the body gets the rows rotated past their padding and no
    mask (fast causal attention), at the batch's own width; values and gradients as the plain masked path."""
    model = _lora_model(5)
    torch.manual_seed(2)
    ids = torch.randint(3, 100, (3, 64))
    mask = torch.ones_like(ids)
    mask[0, :7] = 0
    mask[1, :2] = 0
    mask[1, -5:] = 0
    seen, results = _widths_and_results(model, ids, mask, 40)
    assert seen[0][0] == 64 and seen[0][1] is not None  # the plain path
    assert seen[1] == (64, None)
    assert torch.allclose(results[0][0], results[1][0], atol=1e-5)
    assert torch.allclose(results[0][1], results[1][1], atol=1e-5)


def test_other_masks_keep_the_masked_path_widened_at_64_mod_128():
    """A row whose real tokens are not one run is passed masked; at width 64 (cuDNN's NaN width) it runs at 72
    with masked columns on the left; values and gradients as plain."""
    model = _lora_model(6)
    torch.manual_seed(3)
    ids = torch.randint(3, 100, (2, 64))
    mask = torch.ones_like(ids)
    mask[0, :7] = 0
    mask[1, 20] = 0  # a hole inside the prompt
    seen, results = _widths_and_results(model, ids, mask, 40)
    assert [w for w, _ in seen] == [64, 72] and seen[1][1] is not None
    assert torch.allclose(results[0][0], results[1][0], atol=1e-5)
    assert torch.allclose(results[0][1], results[1][1], atol=1e-5)


def test_right_aligned_rotates_padding_and_declines_other_masks():
    """Left padding gives each row's shift and the index that rotates it; a hole or an all-padding prompt gives None."""
    from mathgrpo.training.logprobs import right_aligned

    mask = torch.ones(2, 6, dtype=torch.long)
    mask[0, :2] = 0
    mask[1, -1] = 0
    pad, cols = right_aligned(mask, 3)
    assert pad.tolist() == [2, 0]
    assert mask.gather(1, cols).tolist() == [[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0]]
    hole = mask.clone()
    hole[1, 1] = 0
    assert right_aligned(hole, 3) is None
    empty = mask.clone()
    empty[0, :3] = 0
    assert right_aligned(empty, 3) is None


def test_rotated_width_rounds_up_on_a_gpu_with_the_same_results():
    """On a GPU a rotated batch is right-padded to a multiple of WIDTH_MULTIPLE (here forced on the CPU at 16 by the layout):
    the body sees the rounded width, the log-probs and gradients are those of the plain path."""
    import mathgrpo.training.logprobs as lp

    assert lp.width_multiple(torch.device("cpu")) == 1 and lp.width_multiple(torch.device("cuda")) == lp.WIDTH_MULTIPLE == 64
    assert [lp.pass_width(w, torch.device("cuda")) for w in (1277, 1280, 1281)] == [1280, 1280, 1344]
    assert lp.pass_width(37, torch.device("cpu")) == 37
    model = _lora_model(7)
    torch.manual_seed(4)
    ids = torch.randint(3, 100, (3, 37))
    mask = torch.ones_like(ids)
    mask[0, :5] = 0
    mask[2, -6:] = 0
    seen, results = _widths_and_results(model, ids, mask, 20, layout=lp.PassLayout(width_multiple=16))
    assert seen[1] == (48, None)
    assert torch.allclose(results[0][0], results[1][0], atol=1e-5)
    assert torch.allclose(results[0][1], results[1][1], atol=1e-5)


def test_safe_attention_width_skips_64_mod_128():
    """Widths of 64 mod 128 (cuDNN's NaN widths, pytorch#196678) get 8 more columns; others stay."""
    from mathgrpo.training.logprobs import safe_attention_width

    assert [safe_attention_width(w) for w in (64, 704, 1344, 65, 128, 1280, 1300, 63)] == [72, 712, 1352, 65, 128, 1280, 1300, 63]


def test_a_layout_chooses_the_masked_path_without_touching_the_module():
    """PassLayout(rotate=False) runs the masked path (the body sees a mask) with the same results as the rotated
    default; guard_widths=False leaves a 64 mod 128 width as it is."""
    import mathgrpo.training.logprobs as lp

    model = _lora_model(7)
    torch.manual_seed(5)
    ids = torch.randint(3, 100, (2, 30))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    rotated_seen, rotated = _widths_and_results(model, ids, mask, 12)
    masked_seen, masked = _widths_and_results(model, ids, mask, 12, layout=lp.PassLayout(rotate=False))
    assert rotated_seen[1][1] is None and masked_seen[1][1] is not None
    assert torch.allclose(rotated[1][0], masked[1][0], atol=1e-5)
    assert lp.PassLayout(guard_widths=False).masked_width(704) == 704 and lp.DEFAULT_LAYOUT.masked_width(704) == 712
