"""FP8 rollouts and packed projections on CPU: the quantization math against float references, the engine's
packed and FP8 paths end to end (FP8 GEMMs emulated by dequantizing), and the refusals where FP8 cannot run."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import pytest
import torch

from mathgrpo.config import ConfigError, load_config
from mathgrpo.errors import Error
from mathgrpo.model.card import Card
from mathgrpo.model.tiny import build_tiny
from mathgrpo.rollout import choose_engine, fp8, make_engine
from mathgrpo.rollout.base import SamplingParams
from mathgrpo.rollout.native import NativeEngine
from mathgrpo.rollout.packed import Packer, packed_bytes, sources

from test_native import PROMPTS, learner_gap, randomised_lora, sharpen

H100 = Card("cuda", "NVIDIA H100 80GB HBM3", (9, 0), 79.1)
A100 = Card("cuda", "NVIDIA A100-SXM4-80GB", (8, 0), 79.1)
CPU = Card("cpu", "cpu")
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


@pytest.mark.parametrize("gemm", ["rowwise", "unit"])
def test_engine_through_torch_scaled_mm_matches_the_emulation(monkeypatch, gemm):
    """The engine's real FP8 GEMM calls (operand layouts, scale shapes; CPU torch runs torch._scaled_mm too) give
    the emulation's tokens and log-probs up to the output's bf16 rounding. The refusal is lifted for the test."""
    from mathgrpo.rollout import native

    monkeypatch.setattr(native.fp8, "unsupported_reason", lambda card: None)
    model, tok = build_tiny(0)
    model = randomised_lora(sharpen(model, std=0.05)).to(torch.bfloat16)
    params = SamplingParams(max_new_tokens=12, temperature=1.0)
    emulated = NativeEngine(model, tok, [], seed=1, precision="fp8", fp8_gemm="emulate").generate(PROMPTS, 2, params)
    real = NativeEngine(model, tok, [], seed=1, precision="fp8", fp8_gemm=gemm).generate(PROMPTS, 2, params)
    assert [g.token_ids for g in real] == [g.token_ids for g in emulated]
    for a, b in zip(real, emulated):
        assert torch.allclose(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=2e-3)


def test_fp8_is_refused_with_a_reason_where_it_cannot_run():
    """Refusals are `errors.Error`s (one line on the command line) that say why: the card (model/card.py), the
    engine, the LoRA mode."""
    model, tok = build_tiny(0)
    assert "cpu" in fp8.unsupported_reason(CPU)
    with pytest.raises(fp8.PrecisionRefused, match="compute capability 8.9.*cpu"):
        NativeEngine(model, tok, [], precision="fp8")
    with pytest.raises(Error, match="native engine"):
        make_engine("hf", model, tok, [1], precision="fp8")
    with pytest.raises(Error, match="native engine"):
        make_engine("auto", model, tok, [1], precision="fp8")  # auto on a CPU is hf
    with pytest.raises(Error, match="compute capability 8.9.*cpu"):
        choose_engine("native", model, precision="fp8-kv")  # before any memory plan is made for it
    with pytest.raises(Error, match="rollout.lora=merge"):
        NativeEngine(model, tok, [], precision="fp8", lora="lowrank", fp8_gemm="emulate")
    with pytest.raises(ValueError, match="precision"):
        NativeEngine(model, tok, [], precision="int4")
    assert fp8.unsupported_reason(A100) == (
        "FP8 needs an NVIDIA GPU of compute capability 8.9 or newer (L4, L40, H100); the NVIDIA A100-SXM4-80GB is sm_80")
    assert fp8.unsupported_reason(H100) is None
    assert "rollout.engine=native" in fp8.precision_problem("fp8-kv", "hf", "merge", H100)
    assert "rollout.lora=merge" in fp8.precision_problem("fp8", "native", "lowrank", H100)
    assert fp8.precision_problem("fp8", "auto", "merge", H100) is None
    assert fp8.precision_problem("bf16", "hf", "lowrank", CPU) is None


def test_the_choice_carries_the_fp8_copies_for_the_memory_plan(monkeypatch):
    """On a card that multiplies float8 (faked: an H100 card for a model on the CPU), choose_engine keeps the
    precision and says what the plan must hold beside the rollout batch: the FP8 copies (copy_bytes), and no
    snapshots; fp8-kv is refused where the Triton attention kernel that reads an FP8 cache is not available."""
    from mathgrpo.model import card

    monkeypatch.setattr(card, "card_of", lambda device: H100)
    model, _ = lora_tiny()
    choice = choose_engine("native", model, "merge", "fp8")
    assert (choice.name, choice.precision, choice.snapshot_bytes) == ("native", "fp8", 0)
    assert choice.copy_bytes == packed_bytes(model, True) > 0
    bf16 = choose_engine("native", model, "merge", "auto")
    assert bf16.copy_bytes == 0 and bf16.snapshot_bytes == packed_bytes(model, False)
    with pytest.raises(Error, match="Triton attention kernel only"):
        choose_engine("native", model, "merge", "fp8-kv")  # attention on the CPU is plain math


def test_the_device_line_says_the_rollout_precision(monkeypatch):
    """preflight.device_choices (the dry run, and the line a run starts with) names the precision rollouts read,
    or why FP8 is refused on this card, or (fp8-kv) without the Triton attention kernel, as choose_engine does."""
    from mathgrpo import preflight
    from mathgrpo.model import card, common
    from mathgrpo.rollout import decode_attention

    monkeypatch.setattr(common, "resolve_device", lambda setting: torch.device("cuda"))
    monkeypatch.setattr(decode_attention, "available", lambda: True)  # a GPU machine has Triton
    cfg = load_config("tiny-cpu", ["rollout.engine=native", "rollout.precision=fp8-kv"])
    monkeypatch.setattr(card, "card_of", lambda device: H100)
    monkeypatch.setattr(fp8.skinny_gemm, "triton", object())  # as where Triton is installed
    line = preflight.device_choices(cfg, brief=True)
    assert "rollouts native" in line and "fp8 weights and KV cache, triton GEMMs (rollout.precision=fp8-kv; sm_90 multiplies" in line
    assert preflight.check_precision(cfg).problem is None
    monkeypatch.setattr(decode_attention, "available", lambda: False)
    assert "Triton attention kernel only" in preflight.check_precision(cfg).problem
    assert "refused: an FP8 KV cache is read by the Triton" in preflight.device_choices(cfg)
    monkeypatch.setattr(decode_attention, "available", lambda: True)
    monkeypatch.setattr(card, "card_of", lambda device: A100)
    assert "rollout.precision=fp8-kv refused: FP8 needs" in preflight.device_choices(cfg)
    assert "sm_80" in preflight.check_precision(cfg).problem
    monkeypatch.setattr(card, "card_of", lambda device: H100)
    line = preflight.device_choices(load_config("tiny-cpu", ["rollout.engine=native"]))
    assert "rollouts: native (rollout.engine=native); bfloat16 weights (rollout.precision=auto)" in line


def test_fp8_gemm_ways_per_projection():
    from mathgrpo.rollout.packed import fp8_ways

    assert fp8_ways(None) is None
    assert fp8_ways("unit") == {"qkv": "unit", "o": "unit", "gate_up": "unit", "down": "unit"}
    assert fp8_ways({"down": "unit"}) == {"qkv": fp8.DEFAULT_WAY, "o": fp8.DEFAULT_WAY, "gate_up": fp8.DEFAULT_WAY, "down": "unit"}
    with pytest.raises(ValueError, match="names"):
        fp8_ways({"mlp": "unit"})
    with pytest.raises(ValueError, match="gemm"):
        fp8_ways("fast")


def test_preflight_refuses_fp8_before_a_run_starts():
    """On this CPU machine `mathgrpo train rollout.precision=fp8` stops in preflight with the device's reason."""
    from mathgrpo.preflight import check_precision, training_checks

    cfg = load_config("tiny-cpu", ["rollout.precision=fp8"])
    check = check_precision(cfg)
    assert check.setting == "rollout.precision" and "compute capability 8.9" in check.problem and "cpu" in check.problem
    assert check_precision(load_config("tiny-cpu", [])).problem is None
    assert any(c.setting == "rollout.precision" and c.problem for c in training_checks(cfg, ("grpo",)))


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
    alive = weakref.ref(qkv.weight)
    del first, qkv
    engine.release()
    assert engine.held_bytes() == 0
    gc.collect()
    assert alive() is None, "release() frees the packed copies: nothing of the engine keeps them"


def test_packed_bytes_in_bf16_and_fp8():
    model, _ = lora_tiny(torch.bfloat16)
    weights = [m.base_layer.weight for layer in sources(model) for mods in layer.values() for m in mods]
    assert packed_bytes(model, False) == sum(w.numel() * 2 for w in weights)
    assert packed_bytes(model, True) == sum(w.numel() + 4 * w.shape[0] for w in weights)
    packer = Packer("emulate")
    from mathgrpo.rollout.weights import collect

    packer.pack(model, collect(model, lowrank=False))
    assert packer.nbytes() == packed_bytes(model, True)


def test_unit_packs_hold_their_scale_so_the_captured_step_makes_none():
    """The `unit` way's tensor-wide scale (a float32 1) lives with the packed copy: made once when the copies are
    allocated, not a kernel a projection inside the captured decode step, and among the tensors the captured step
    keeps alive and fingerprints; the product is the same either way."""
    from mathgrpo.rollout.weights import collect

    model, _ = lora_tiny(torch.bfloat16)
    w = collect(model, lowrank=False)
    packed = Packer({"down": "unit", "qkv": "rowwise", "o": "rowwise", "gate_up": "rowwise"}).pack(model, w)
    unit = packed.layers[0]
    assert unit.down.unit is not None and unit.down.unit.item() == 1.0 and unit.down.unit.dtype == torch.float32
    assert unit.qkv.unit is None and unit.o.unit is None
    assert any(t is unit.down.unit for t in packed.tensors())
    x = torch.randn(3, unit.down.weight.shape[1], dtype=torch.bfloat16)
    kept = fp8.linear(x, unit.down.weight, unit.down.scale, None, "unit", unit.down.unit)
    assert torch.equal(kept, fp8.linear(x, unit.down.weight, unit.down.scale, None, "unit"))


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


@pytest.mark.triton_interpreter
def test_split_k_kernel_writes_the_new_position_and_reads_float8_caches_interpreted(interpreted):
    """The kernel takes the new position's key and value, writes them into the row caches (float8 with their
    scales under an FP8 cache) and attends them from registers: the result equals the reference attention over
    the (dequantized) caches with that position filled, although the cache held garbage there before."""
    interpreted("""
import itertools
import torch
from mathgrpo.rollout import fp8
from mathgrpo.rollout.decode_attention import SplitKDecode
from mathgrpo.rollout.qwen3_forward import additive_mask, grouped_attention
torch.manual_seed(0)
batch, kv, groups, dim, width, new = 4, 2, 2, 16, 6, 58
SplitKDecode.TARGET_PROGRAMS = 4096
# one split a row (the kernel writes the output itself), or four (the new position past split 0 for slots 20, 40)
for (slot, kv8), (block, splits) in itertools.product(((20, False), (20, True), (6, True), (40, False)), ((64, 1), (16, 4))):
    SplitKDecode.BLOCK_N = block
    attn = SplitKDecode(batch, kv, groups, dim, width + new, "cpu", torch.float32)
    assert attn.nsplit == splits, attn.nsplit
    full_k, full_v = torch.randn(batch, kv, width + new, dim), torch.randn(batch, kv, width + new, dim)
    for lead in (0, 2):
        full_k[lead + 1, :, :width], full_v[lead + 1, :, :width] = full_k[lead, :, :width], full_v[lead, :, :width]
    scales = None
    if kv8:  # what the cache holds is the quantized value: the reference attends the same numbers
        (kq, ks), (vq, vs) = fp8.quantize_tokens(full_k), fp8.quantize_tokens(full_v)
        full_k, full_v = kq.float() * ks, vq.float() * vs
    src, rows = torch.tensor([2, 2, 0, 0]), [2, 0]
    pk, pv = torch.full((3, kv, width + 2, dim), 3e2), torch.full((3, kv, width + 2, dim), -3e2)
    pk[rows, :, :width], pv[rows, :, :width] = full_k[[0, 2], :, :width], full_v[[0, 2], :, :width]
    k, v = full_k[:, :, width:].clone(), full_v[:, :, width:].clone()
    k[:, :, slot - width:], v[:, :, slot - width:] = 3e2, -3e2  # garbage from the new position on
    k_new, v_new = full_k[:, :, slot:slot + 1].clone(), full_v[:, :, slot:slot + 1].clone()
    if kv8:
        pks, pvs = torch.full((3, kv, width + 2), 1e2), torch.full((3, kv, width + 2), 1e2)
        pks[rows, :, :width], pvs[rows, :, :width] = ks[[0, 2], :, :width, 0], vs[[0, 2], :, :width, 0]
        cks, cvs = ks[:, :, width:, 0].clone(), vs[:, :, width:, 0].clone()
        cks[:, :, slot - width:] = cvs[:, :, slot - width:] = 1e2
        pk, pv, k, v = (t.to(fp8.E4M3) for t in (pk / pks[..., None], pv / pvs[..., None], k / cks[..., None], v / cvs[..., None]))
        scales = (cks, cvs, pks, pvs)
    q = torch.randn(batch, kv * groups, 1, dim)
    pad = torch.tensor([1, 1, 0, 0])
    out = attn(q, k, v, pad, torch.tensor([slot]), (pk, pv, src, torch.tensor([width])), (k_new, v_new), scales)
    valid = (torch.arange(slot + 1)[None] >= pad[:, None])[:, None, None]
    ref = grouped_attention(q, full_k[:, :, : slot + 1], full_v[:, :, : slot + 1], additive_mask(valid, torch.float32), False)
    assert (out - ref).abs().max() < 1e-4, (slot, kv8, (out - ref).abs().max())
    written_k = k[:, :, slot - width].float() * (scales[0][:, :, slot - width, None] if kv8 else 1)
    assert torch.allclose(written_k, k_new[:, :, 0], atol=1e-6), (slot, kv8)
print("ok")
""")


@pytest.mark.triton_interpreter
def test_engine_with_a_float8_kv_cache_stays_near_the_model_interpreted(interpreted):
    """The engine with its KV cache in FP8 (Triton attention, interpreted) and with FP8 weights as well
    (rollout.precision=fp8-kv, GEMMs emulated): sampled tokens' log-probs near the float32 model's."""
    interpreted("""
import torch
import sys
sys.path.insert(0, "TESTS")
from test_native import PROMPTS, learner_gap, sharpen
from mathgrpo.model.tiny import build_tiny
from mathgrpo.rollout.base import SamplingParams
from mathgrpo.rollout.native import NativeEngine
model, tok = build_tiny(0)
sharpen(model, std=0.05)
params = SamplingParams(max_new_tokens=10, temperature=1.0)
gaps = {}
for label, kw in (("math", {"attention": "math"}), ("kv8", {"attention": "triton", "kv_cache": "fp8"}),
                  ("fp8-kv", {"attention": "triton", "precision": "fp8-kv", "fp8_gemm": "emulate"})):
    engine = NativeEngine(model, tok, [], seed=3, **kw)
    gaps[label] = learner_gap(model, engine.generate(PROMPTS[:2], 2, params)).mean().item()
    if label != "math":
        assert engine._cache.k.dtype == torch.float8_e4m3fn and engine._cache.ks is not None
print(gaps)
assert gaps["math"] < 1e-4 < gaps["kv8"] < 0.1 and gaps["kv8"] < gaps["fp8-kv"] < 0.2, gaps
print("ok")
""".replace("TESTS", str(Path(__file__).resolve().parent)))
