"""Chunked log-probabilities equal the plain full-logits computation, values and gradients."""

import torch

from mathgrpo.config import LoraConfig
from mathgrpo.grpo.logprobs import plain_token_logprobs, token_logprobs
from mathgrpo.model import add_lora
from mathgrpo.tiny import build_tiny


def _batch():
    torch.manual_seed(1)
    ids = torch.randint(3, 100, (3, 12))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding of a short prompt
    mask[1, -4:] = 0  # right padding of a short completion
    return ids, mask


def test_chunked_matches_plain_on_tiny_model():
    """Same values at temperature 0.7, chunks smaller than the batch, PEFT-wrapped or not."""
    model, _ = build_tiny(seed=3)
    ids, mask = _batch()
    for m in (model, add_lora(model, LoraConfig(r=4, alpha=8))):
        ref = plain_token_logprobs(m, ids, mask, prompt_width=5, temperature=0.7)
        got = token_logprobs(m, ids, mask, prompt_width=5, temperature=0.7, chunk_tokens=4)
        assert got.shape == (3, 7)
        assert torch.allclose(got, ref, atol=1e-5)


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
    weights = torch.randn(3, 7)
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
    weights = torch.randn(3, 7)
    ref_logp, ref = _lora_grads(model, plain_token_logprobs, weights)
    logp, got = _lora_grads(model, lambda *a: token_logprobs(*a, chunk_tokens=4), weights)
    assert type(logp.grad_fn).__name__ == "ViewBackward0"
    assert type(logp.grad_fn.next_functions[0][0]).__name__ == "FrozenHeadLogProbBackward"
    assert torch.allclose(logp, ref_logp, atol=1e-5)
    assert torch.allclose(got, ref, atol=1e-5)


def test_trainable_head_gradients_match_plain():
    """Every weight trainable (no LoRA): the checkpointed chunks give the plain gradients, head included."""
    model, _ = build_tiny(seed=8)
    weights = torch.randn(3, 7)
    _, ref = _lora_grads(model, plain_token_logprobs, weights)
    _, got = _lora_grads(model, lambda *a: token_logprobs(*a, chunk_tokens=4), weights)
    assert torch.allclose(got, ref, atol=1e-5)


def test_width_64_mod_128_gets_a_masked_column_and_same_results():
    """A 64-token batch (cuDNN's NaN width) runs at 72 with masked columns: values and gradients as plain."""
    model = _lora_model(5)
    torch.manual_seed(2)
    ids = torch.randint(3, 100, (2, 64))
    mask = torch.ones_like(ids)
    mask[0, :7] = 0
    widths = []
    hook = model.base_model.model.model.embed_tokens.register_forward_hook(lambda m, a, out: widths.append(out.shape[1]))
    weights = torch.randn(2, 24)
    results = []
    for fn in (plain_token_logprobs, lambda *a: token_logprobs(*a, chunk_tokens=16)):
        model.zero_grad()
        logp = fn(model, ids, mask, 40, 1.0)
        (logp * weights).sum().backward()
        results.append((logp, torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])))
    hook.remove()
    assert widths == [64, 72]
    assert torch.allclose(results[0][0], results[1][0], atol=1e-5)
    assert torch.allclose(results[0][1], results[1][1], atol=1e-5)
