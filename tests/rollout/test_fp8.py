"""FP8 rollouts and packed projections on CPU: the quantization math against float references, the engine's
packed and FP8 paths end to end (FP8 GEMMs emulated by dequantizing), and the refusals where FP8 cannot run."""

from __future__ import annotations

import pytest
import torch

from mathgrpo.config import ConfigError, load_config
from mathgrpo.model.tiny import build_tiny
from mathgrpo.rollout import fp8, make_engine
from mathgrpo.rollout.base import SamplingParams
from mathgrpo.rollout.native import NativeEngine
from mathgrpo.rollout.packed import Packer, packed_bytes, sources

from test_native import PROMPTS, learner_gap, randomised_lora, sharpen

E4M3_HALF_ULP = 2.0**-4  # 3 mantissa bits: rounding to nearest is off by at most half of 2^-3, relatively
E4M3_SUBNORMAL = 2.0**-9  # spacing of e4m3 below 2^-6, times the scale


def test_quantize_rows_is_within_half_an_e4m3_step_of_each_weight():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(48, 64, generator=gen) * torch.logspace(-3, 2, 48)[:, None]  # rows of very different sizes
    w[5] = 0.0
    q, scale = torch.empty(48, 64, dtype=fp8.E4M3), torch.empty(48)
    fp8.quantize_rows(w.to(torch.bfloat16), q, scale)
    back = fp8.dequantize(q, scale)
    w = w.to(torch.bfloat16).float()
    assert torch.isfinite(back).all() and torch.equal(back[5], torch.zeros(64))
    bound = E4M3_HALF_ULP * w.abs() + E4M3_SUBNORMAL * scale[:, None]
    assert ((back - w).abs() <= bound * (1 + 1e-6)).all()
    peak = w.abs().argmax(dim=1)
    rows = torch.arange(48)[w.abs().amax(dim=1) > 0]
    assert torch.allclose(back[rows, peak[rows]], w[rows, peak[rows]], rtol=1e-6), "each row's largest weight is exact"
    assert q.float().abs().amax() == fp8.E4M3_MAX


def test_quantize_tokens_scales_each_row_on_its_own():
    x = torch.randn(6, 32, generator=torch.Generator().manual_seed(1))
    x[2] *= 1e4  # an outlier token must not cost the others their precision
    q, scale = fp8.quantize_tokens(x)
    assert q.dtype == fp8.E4M3 and scale.shape == (6, 1)
    back = q.float() * scale
    assert ((back - x).abs() <= E4M3_HALF_ULP * x.abs() + E4M3_SUBNORMAL * scale + 1e-9).all()


def test_fp8_linear_is_close_to_the_float_product():
    gen = torch.Generator().manual_seed(2)
    x, w, bias = torch.randn(2, 5, 256, generator=gen), torch.randn(96, 256, generator=gen) * 0.05, torch.randn(96, generator=gen)
    q, scale = torch.empty(96, 256, dtype=fp8.E4M3), torch.empty(1, 96)
    fp8.quantize_rows(w, q, scale[0])
    y = fp8.linear(x, q, scale, bias, "emulate")
    ref = torch.nn.functional.linear(x, w, bias)
    assert y.shape == ref.shape == (2, 5, 96)
    rel = ((y - ref).norm() / (ref - bias).norm()).item()
    assert 1e-3 < rel < 0.05, rel  # FP8 rounding is there, and small
    exact = (fp8.quantize_tokens(x.reshape(10, 256))[0].float() * fp8.quantize_tokens(x.reshape(10, 256))[1]) @ fp8.dequantize(q, scale).t()
    assert torch.allclose(y.reshape(10, 96), exact + bias, atol=1e-5), "emulation is the dequantized product"
    with pytest.raises(ValueError, match="gemm"):
        fp8.linear(x, q, scale, None, "fast")


def test_fp8_is_refused_with_a_reason_where_it_cannot_run(monkeypatch):
    model, tok = build_tiny(0)
    assert "cpu" in fp8.unsupported_reason(torch.device("cpu"))
    with pytest.raises(ValueError, match="compute capability 8.9.*cpu"):
        NativeEngine(model, tok, [], precision="fp8")
    with pytest.raises(ValueError, match="native engine"):
        make_engine("hf", model, tok, [1], precision="fp8")
    with pytest.raises(ValueError, match="native engine"):
        make_engine("auto", model, tok, [1], precision="fp8")  # auto on a CPU is hf
    with pytest.raises(ValueError, match="lora=merge"):
        NativeEngine(model, tok, [], precision="fp8", lora="lowrank", fp8_gemm="emulate")
    with pytest.raises(ValueError, match="precision"):
        NativeEngine(model, tok, [], precision="int4")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-80GB")
    assert fp8.unsupported_reason(torch.device("cuda")) == (
        "rollout.precision=fp8 needs compute capability 8.9 or newer (L4, L40, H100); the NVIDIA A100-SXM4-80GB is sm_80")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert fp8.unsupported_reason(torch.device("cuda")) is None


def test_config_takes_precision_and_refuses_other_values():
    assert load_config("tiny-cpu", []).rollout.precision == "auto"
    assert load_config("tiny-cpu", ["rollout.precision=fp8"]).rollout.precision == "fp8"
    with pytest.raises(ConfigError, match="rollout.precision"):
        load_config("tiny-cpu", ["rollout.precision=fp16"])


def lora_tiny(dtype=torch.float32):
    model, tok = build_tiny(0)
    return randomised_lora(sharpen(model).to(dtype)), tok


def test_packed_copies_give_the_in_place_merge_tokens_and_leave_the_model_alone():
    model, tok = lora_tiny()
    params = SamplingParams(max_new_tokens=20, temperature=1.0)
    in_place = NativeEngine(model, tok, [tok.eos_token_id], seed=4, pack=False).generate(PROMPTS, 2, params)
    before = {n: (p.detach().clone(), p._version) for n, p in model.named_parameters()}
    packed = NativeEngine(model, tok, [tok.eos_token_id], seed=4, pack=True).generate(PROMPTS, 2, params)
    assert [g.token_ids for g in packed] == [g.token_ids for g in in_place]
    for a, b in zip(packed, in_place):
        assert torch.allclose(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-4)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n][0]) and p._version == before[n][1], f"{n} was written"


def test_packer_refills_in_place_only_when_a_source_changed():
    model, tok = lora_tiny()
    engine = NativeEngine(model, tok, [], pack=True)
    params = SamplingParams(max_new_tokens=2, temperature=1.0)
    engine.generate(PROMPTS[:1], 2, params)
    first = engine._weights
    qkv = first.layers[0].qkv
    assert first.layers[0].q is None and qkv.weight.shape[0] == sum(m.base_layer.weight.shape[0] for m in sources(model)[0]["qkv"])
    snapshot = qkv.weight.clone()
    engine.generate(PROMPTS[:1], 2, params)
    assert engine._weights.fingerprint() == first.fingerprint()
    with torch.no_grad():
        sources(model)[0]["qkv"][1].lora_B["default"].weight.add_(1.0)  # the k adapter moves (an optimizer step)
    engine.generate(PROMPTS[:1], 2, params)
    assert engine._weights.fingerprint() == first.fingerprint(), "refilled in place: captured graphs stay valid"
    changed = (qkv.weight != snapshot).any(dim=1)
    q_rows = sources(model)[0]["qkv"][0].base_layer.weight.shape[0]
    assert not changed[:q_rows].any() and changed[q_rows:].any() and engine.held_bytes() >= packed_bytes(model, False)
    engine.release()
    assert engine.held_bytes() == 0


def test_packed_bytes_in_bf16_and_fp8():
    model, _ = lora_tiny(torch.bfloat16)
    weights = [m.base_layer.weight for layer in sources(model) for mods in layer.values() for m in mods]
    assert packed_bytes(model, False) == sum(w.numel() * 2 for w in weights)
    assert packed_bytes(model, True) == sum(w.numel() + 4 * w.shape[0] for w in weights)
    packer = Packer("emulate")
    from mathgrpo.rollout.weights import collect

    packer.pack(model, collect(model, lowrank=False))
    assert packer.nbytes() == packed_bytes(model, True)


def test_fp8_engine_end_to_end_stays_near_the_model():
    """FP8 weights and activations (emulated) against a bf16 engine as the yardstick: sampled tokens' log-probs
    further from the float32 model's than bf16's (FP8 really ran) but within 16x of it (3 mantissa bits against
    bf16's 7 cost about 8x on these models), greedy text mostly the same, the copies counted as the engine's."""
    import copy

    model, tok = build_tiny(0)
    model = randomised_lora(sharpen(model, std=0.05))
    engine = NativeEngine(model, tok, [tok.eos_token_id], seed=0, precision="fp8", fp8_gemm="emulate")
    assert engine.weight_copy_bytes() == packed_bytes(model, True) and engine.snapshot_bytes() == 0
    params = SamplingParams(max_new_tokens=24, temperature=1.0)
    gap = learner_gap(model, engine.generate(PROMPTS, 4, params))
    bf16 = NativeEngine(copy.deepcopy(model).to(torch.bfloat16), tok, [tok.eos_token_id], seed=0)
    bf16_gap = learner_gap(model, bf16.generate(PROMPTS, 4, params))
    assert engine.held_bytes() >= packed_bytes(model, True)
    assert bf16_gap.mean() < gap.mean() < 16 * bf16_gap.mean(), (gap.mean(), bf16_gap.mean())
    greedy = SamplingParams(max_new_tokens=16, temperature=0)
    fp8_tokens = [g.token_ids for g in engine.generate(PROMPTS, 1, greedy)]
    ref_tokens = [g.token_ids for g in NativeEngine(model, tok, [tok.eos_token_id]).generate(PROMPTS, 1, greedy)]
    same = sum(a == b for x, y in zip(fp8_tokens, ref_tokens) for a, b in zip(x, y))
    assert same >= 0.5 * sum(map(len, ref_tokens)), (fp8_tokens, ref_tokens)
