"""Packed log-prob passes (each prompt once, no padding) give the row layout's log-probs and LoRA gradients,
through eager and SDPA attention, checkpointed layers (products kept or not) and a whole GRPO update; the
model's attention implementation is restored after; models packing cannot serve run as rows."""

import pytest
import torch

from mathgrpo.config import LoraConfig
from mathgrpo.model.loading import add_lora, checkpoint_layers
from mathgrpo.model.tiny import build_tiny
from mathgrpo.training import packing
from mathgrpo.training.batch import RolloutBatch
from mathgrpo.training.logprobs import PassLayout, model_parts, plain_token_logprobs, token_logprobs

P, C = 6, 7


def _batch():
    """Five rows: 0-2 share a prompt (left-padded by 2, row 1 with another pad id), row 1 ends early, row 3
    is a short completion, row 4 a 2-token prompt."""
    torch.manual_seed(0)
    ids = torch.randint(3, 100, (5, P + C))
    mask = torch.ones_like(ids)
    ids[1, :P] = ids[0, :P]
    ids[2, :P] = ids[0, :P]
    mask[:3, :2] = 0
    ids[1, :2] = 5
    mask[1, P + 4 :] = 0
    mask[3, P + 2 :] = 0
    mask[4, :4] = 0
    return ids, mask


def _lora_model(seed: int = 3, attention: str = "eager"):
    model = add_lora(build_tiny(seed=seed)[0], LoraConfig(r=4, alpha=8))
    model.set_attn_implementation(attention)
    torch.manual_seed(seed)
    for p in model.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.05)
    return model


def _logps_and_grads(model, fn, weights):
    model.zero_grad()
    logp = fn()
    (logp * weights).sum().backward()
    return logp.detach(), torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])


def test_pack_runs_each_prompt_once_and_no_padding():
    """Three distinct prompts (4 + 6 + 2 tokens) once each, then every real completion token (7+4+7+2+7);
    positions restart after the prompt for each completion; each first token is predicted by its prompt's last."""
    ids, mask = _batch()
    packed = packing.pack(ids, mask, P)
    assert packed.input_ids.shape == (1, 12 + 27)
    assert packed.position_ids[0, :11].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]  # prompt 0, then row 0
    assert packed.position_ids[0, 11:15].tolist() == [4, 5, 6, 7]  # row 1 starts after the shared prompt
    assert packed.targets.tolist() == ids[mask.bool() & (torch.arange(P + C) >= P)].tolist()
    first = [i for i, c in enumerate(packed.cols.tolist()) if c == 0]
    assert packed.predictors[first].tolist() == [3, 3, 3, 27, 31]  # rows 0-2 share prompt 0's last token
    att = packed.attention  # sequences: each prompt over itself, each completion over its prompt and itself
    assert att.cu_q.tolist() == [0, 4, 11, 15, 22, 28, 30, 32, 39] and (att.max_q, att.max_k) == (7, 11)
    assert att.bounds[2] == (11, 15, 15, 23) and att.keys[15:23].tolist() == [0, 1, 2, 3, 11, 12, 13, 14]
    assert att.cu_k.tolist()[-1] == len(att.keys) == 4 + 11 + 8 + 11 + 6 + 8 + 2 + 9


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_packed_logprobs_and_gradients_match_the_rows(attention):
    """Same values (at real completion tokens; 0 elsewhere) and LoRA gradients as the full-logits reference at
    temperature 0.7, the frozen head's chunks smaller than the pass; the implementation is restored after."""
    model = _lora_model(attention=attention)
    ids, mask = _batch()
    real = mask[:, P:].bool()
    weights = torch.randn(5, C) * real
    ref, ref_grads = _logps_and_grads(model, lambda: plain_token_logprobs(model, ids, mask, P, 0.7), weights)
    with packing.attention(model) as on:
        assert on and packing.active(model)
        got, grads = _logps_and_grads(model, lambda: token_logprobs(model, ids, mask, P, 0.7, chunk_tokens=4), weights)
    assert model.config._attn_implementation == attention and not packing.active(model)
    assert torch.allclose(got[real], ref[real], atol=1e-5) and torch.all(got[~real] == 0)
    assert torch.allclose(grads, ref_grads, atol=1e-5)


@pytest.mark.parametrize("keep_matmuls", [False, True])
def test_packed_passes_through_checkpointed_layers(keep_matmuls):
    """Checkpointed layers run the packed attention again in backward (inside the context): same gradients."""
    model = _lora_model(seed=5, attention="sdpa")
    ids, mask = _batch()
    weights = torch.randn(5, C) * mask[:, P:]
    rows = lambda: token_logprobs(model, ids, mask, P, 1.0, layout=PassLayout(pack=False))  # noqa: E731
    _, want = _logps_and_grads(model, rows, weights)
    checkpoint_layers(model, keep_matmuls=keep_matmuls)
    model.train()
    with packing.attention(model):
        _, got = _logps_and_grads(model, lambda: token_logprobs(model, ids, mask, P, 1.0), weights)
    assert torch.allclose(got, want, atol=1e-5)


def test_outside_the_context_or_unsupported_the_rows_run():
    """Without the context a pass is laid out as rows (the body sees [N, width]); a model type packing does not
    know yields False and is left alone; the implementation comes back after an error inside."""
    model = _lora_model()
    ids, mask = _batch()
    body, _ = model_parts(model)
    seen = []
    handle = body.register_forward_pre_hook(lambda m, a, k: seen.append(tuple(k["input_ids"].shape)), with_kwargs=True)
    token_logprobs(model, ids, mask, P)
    with packing.attention(model):
        token_logprobs(model, ids, mask, P)
    handle.remove()
    assert seen[0][0] == 5 and seen[1] == (1, 39)
    with pytest.raises(RuntimeError), packing.attention(model):
        raise RuntimeError("inside")
    assert model.config._attn_implementation == "eager"
    model.config.model_type = "llama"  # whose decoder does not take masks as a dict
    assert "llama" in packing.supported(model)
    with packing.attention(model) as on:
        assert not on and model.config._attn_implementation == "eager"


def test_micro_batches_by_prompt_keep_each_prompt_together():
    ids, mask = _batch()
    order = [0, 3, 1, 4, 2]  # rows 0, 1, 2 share a prompt
    batch = RolloutBatch(ids[order], mask[order], P, mask[order, P:].float(), torch.zeros(5))
    flat = torch.cat(batch.micro_indices(3, by_prompt=True)).tolist()
    at = sorted(flat.index(i) for i in (0, 2, 4))
    assert at[2] - at[0] == 2 and sorted(flat) == [0, 1, 2, 3, 4]  # side by side, every row once
    assert [len(i) for i in batch.micro_indices(3, by_prompt=True)] == [3, 2]
    by_length = torch.cat(batch.micro_indices(3)).tolist()
    assert by_length == [0, 3, 4, 2, 1]  # the default: longest completions first


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the flash kernel's variable-length path needs a GPU")
def test_flash_path_matches_the_reference_on_a_gpu():
    """bf16 on a GPU: the flash kernel's output and input gradients equal the per-sequence SDPA reference's (in
    float32) to bf16 rounding, for grouped-query heads."""
    ids, mask = _batch()
    att = packing.pack(ids.cuda(), mask.cuda(), P).attention
    T, (h, kvh, d) = 39, (8, 2, 64)
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, n, T, d, device="cuda", requires_grad=True) for n in (h, kvh, kvh))
    grad = torch.randn(1, T, h, d, device="cuda")
    results = []
    for cast, force_reference in ((torch.float32, True), (torch.bfloat16, False)):
        for t in (q, k, v):
            t.grad = None
        qc, kc, vc = (t.to(cast) for t in (q, k, v))
        if force_reference:
            seq = lambda t: t[0].transpose(0, 1)  # noqa: E731  [T, heads, d]
            out = packing._reference(seq(qc), seq(kc)[att.keys], seq(vc)[att.keys], att, None)[None]
        else:
            out, _ = packing.packed_attention(None, qc, kc, vc, att)
        (out.float() * grad).sum().backward()
        results.append([out.float()] + [t.grad.clone() for t in (q, k, v)])
    for want, got in zip(*results):
        assert torch.allclose(got, want, atol=3e-2, rtol=3e-2), (got - want).abs().max()


def test_a_run_asking_for_packed_passes_on_a_model_that_cannot_says_so_once(tmp_path, capsys):
    """grpo.packed_passes=true on a model packing does not know: rows, and one notice that says why."""
    from mathgrpo.config import load_config
    from mathgrpo.data.arith import split
    from mathgrpo.training.grpo import GRPORun

    cfg = load_config("tiny-cpu", ["grpo.prompts_per_step=2", "grpo.num_generations=2", "rollout.max_new_tokens=4",
                                   "run.progress=false", "model.device=cpu", "grpo.packed_passes=true"])
    train, _, test = split(0)
    run = GRPORun(cfg, tmp_path, train[:10], test[:2])
    run.model.config.model_type = "llama"
    for _ in range(2):
        with run.update.attention() as packed:
            assert not packed
    assert capsys.readouterr().out.count("grpo.packed_passes: model type 'llama'") == 1
