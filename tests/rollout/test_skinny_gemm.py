"""The skinny-GEMM kernel (rollout/skinny_gemm.py): its tile choice, the kernel through Triton's CPU interpreter
against float references (float8 and float activations, split K, ragged edges), and the engine paths that use it
(the FP8 `triton` way, packed copies marked `triton`)."""

from __future__ import annotations

import pytest
import torch

from mathgrpo.model.card import Card
from mathgrpo.model.tiny import build_tiny
from mathgrpo.rollout import fp8, skinny_gemm
from mathgrpo.rollout.packed import Packer
from mathgrpo.rollout.weights import collect

from test_native import SHARP_TINY_SCRIPT

QWEN3_4B_PROJECTIONS = {"qkv": (6144, 2560), "o": (2560, 4096), "gate_up": (19456, 2560), "down": (2560, 9728)}


def test_launch_covers_the_card_and_keeps_splits_deep():
    """At decode's 16 and 64 rows the 4B projections get enough programs (>= 300, or K too short to split more)
    and splits at least 1,024 deep; the settings the H100 sweep found fastest for FP8 (benchmarks/decode_gemm.py)
    come out; bf16 weights get K tiles of the same bytes; prefill's many rows get 64-row tiles, K whole."""
    picks = {(m, op): skinny_gemm.launch(m, n, k) for m in (16, 64) for op, (n, k) in QWEN3_4B_PROJECTIONS.items()}
    for (m, op), s in picks.items():
        n, k = QWEN3_4B_PROJECTIONS[op]
        programs = -(-n // s.block_n) * -(-m // s.block_m) * s.split
        assert programs >= 300 or k // (s.split * 2) < 1024, (m, op, s)
        assert k // s.split >= 1024 or s.split == 1, (m, op, s)
    assert picks[64, "down"] == skinny_gemm.Launch(64, 32, 256, 4, 4, 3, 0)
    assert picks[64, "gate_up"] == skinny_gemm.Launch(64, 32, 128, 1, 4, 3)
    assert picks[16, "o"].split == 4 and picks[16, "qkv"].split == 2
    assert skinny_gemm.launch(16, 2560, 4096, weight_bytes=2).block_k == 128
    assert skinny_gemm.launch(2048, 6144, 2560) == skinny_gemm.Launch(64, 32, 128, 1, 4, 3)
    assert skinny_gemm.launch(4, 64, 64).block_m == 16


def test_the_kernel_serves_sm_90_and_newer_only(monkeypatch):
    """The FP8 way is `triton` on cards of compute capability 9.0+ (where the kernel was measured) and `unit` below
    (L4) and without Triton; `serves` takes bf16 / fp16 weights on such a card, never float32 (TF32 there) and
    never the CPU."""
    h100, l4 = Card("cuda", "H100", (9, 0)), Card("cuda", "L4", (8, 9))
    monkeypatch.setattr(skinny_gemm, "triton", object())  # as if Triton were installed
    assert (fp8.default_way(h100), fp8.default_way(l4), fp8.default_way(Card("cpu", "cpu"))) == ("triton", "unit", "unit")
    assert skinny_gemm.serves_card((10, 0)) and not skinny_gemm.serves(torch.device("cpu"))
    monkeypatch.setattr(skinny_gemm, "triton", None)
    assert fp8.default_way(h100) == "unit"
    monkeypatch.setattr(skinny_gemm, "triton", object())
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    cuda = torch.device("cuda")
    assert skinny_gemm.serves(cuda, torch.bfloat16) and skinny_gemm.serves(cuda, torch.float16)
    assert not skinny_gemm.serves(cuda, torch.float32)


def test_packed_copies_take_the_kernel_only_when_asked(monkeypatch):
    """Packer marks copies in the model's dtype `triton` only with skinny=True (rollout.skinny_gemm) and only where
    `serves` their device and dtype (faked here for the CPU: bf16 / fp16); FP8 `triton` packs keep the float32 1
    the `unit` fallback multiplies by; the engine fills ways left out of a mapping with the card's way."""
    from mathgrpo.rollout import native

    serving = lambda device, dtype=None: dtype in (torch.bfloat16, torch.float16)  # noqa: E731
    monkeypatch.setattr(skinny_gemm, "serves", serving)

    def ways(model, **packer):
        packed = Packer(**packer).pack(model, collect(model, lowrank=False))
        return {p.gemm for layer in packed.layers for p in (layer.qkv, layer.o, layer.gate_up, layer.down)}, packed

    model, tok = build_tiny(0)
    assert ways(model.to(torch.bfloat16), skinny=False)[0] == {""}
    assert ways(model, skinny=True)[0] == {"triton"}
    assert ways(model.float(), skinny=True)[0] == {""}
    fp8_ways, packed = ways(model, gemm="triton")
    assert fp8_ways == {"triton"} and all(layer.down.unit is not None for layer in packed.layers)
    monkeypatch.setattr(native, "card_of", lambda device: Card("cuda", "H100", (9, 0)))
    monkeypatch.setattr(skinny_gemm, "triton", object())
    engine = native.NativeEngine(model, tok, [], precision="fp8", fp8_gemm={"down": "emulate"})
    assert engine._packer.ways == {"qkv": "triton", "o": "triton", "gate_up": "triton", "down": "emulate"}


def test_the_triton_way_hands_big_batches_to_cublaslt(monkeypatch):
    """fp8.linear's `triton` way calls the kernel up to MAX_FP8_ROWS rows and the `unit` way above (CPU torch runs
    _scaled_mm); the kernel's wrapper refuses unpaired scales, mismatched operands and, outside the interpreter,
    the CPU, each with a message that names the problem."""
    calls = []

    def kernel(x, weight, scale, x_scale, out_dtype, bias=None):
        calls.append(x.shape[0])
        return ((x.float() * x_scale) @ fp8.dequantize(weight, scale).t()).to(out_dtype)

    monkeypatch.setattr(fp8.skinny_gemm, "matmul", kernel)
    q, scale = torch.empty(64, 32, dtype=fp8.E4M3), torch.empty(1, 64)
    fp8.quantize_rows(torch.randn(64, 32), q, scale[0])
    for rows in (skinny_gemm.MAX_FP8_ROWS, skinny_gemm.MAX_FP8_ROWS + 1):
        x = torch.randn(rows, 32)
        assert torch.allclose(fp8.linear(x, q, scale, None, "triton"), fp8.linear(x, q, scale, None, "emulate"), atol=1e-4)
    assert calls == [skinny_gemm.MAX_FP8_ROWS]
    monkeypatch.undo()
    x8, x8_scale = fp8.quantize_tokens(torch.randn(4, 32))
    setting = skinny_gemm.launch(4, 64, 32)
    with pytest.raises(ValueError, match="need their scales"):
        skinny_gemm.run_kernel(torch.randn(4, 32), q, None, setting)
    with pytest.raises(ValueError, match="float8 x needs float8 weights"):
        skinny_gemm.run_kernel(x8, torch.randn(64, 32), None, setting, x8_scale)
    with pytest.raises(ValueError, match="do not multiply"):
        skinny_gemm.run_kernel(torch.randn(4, 48), q, scale, setting)
    with pytest.raises(RuntimeError, match="runs on a CUDA GPU"):
        skinny_gemm.run_kernel(torch.randn(4, 32), q, scale, setting)


def test_the_custom_op_describes_its_outputs():
    """torch.compile traces the kernel through its fake: shapes and dtypes for one split and for several, including
    a split count that K's tiles cut down (k=200 in tiles of 64 asked in 3 gives 2 parts)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x, xs = torch.empty(16, 200, dtype=fp8.E4M3), torch.empty(16, 1)
        w, s = torch.empty(96, 200, dtype=fp8.E4M3), torch.empty(1, 96)
        one = skinny_gemm._skinny_mm(x, xs, w, s, torch.bfloat16, 16, 32, 256, 1, 4, 3, 0)
        parts = skinny_gemm._skinny_mm(x, xs, w, s, torch.bfloat16, 16, 32, 64, 3, 4, 3, 0)
    assert (one.shape, one.dtype) == ((16, 96), torch.bfloat16)
    assert (parts.shape, parts.dtype) == ((2, 16, 96), torch.float32)


@pytest.mark.triton_interpreter
def test_kernel_matches_float_products_interpreted(interpreted):
    """Float8 weights times float8 activations (w8a8, both scale vectors) and times fp16 / float32 activations,
    and float32 weights without scales, at whole and ragged tiles, one split and several (partial sums added in
    float32): each equals the float product of what the operands stand for. (bf16 runs on GPUs only: Triton's
    interpreter mis-multiplies bf16 tiles converted in registers, see the benchmark's rel_err instead.)"""
    interpreted("""
import torch
from mathgrpo.rollout import fp8, skinny_gemm
L = skinny_gemm.Launch
torch.manual_seed(0)
cases = ((64, 192, 256, None), (5, 96, 200, L(16, 32, 64, 3, promote=32)), (16, 64, 512, L(16, 32, 64, 4)), (3, 40, 72, L(16, 16, 32, 1)),
         (40, 64, 1024, L(32, 32, 128, 3)))  # 200 deep in 3 splits of 64-wide tiles: 2 parts
for m, n, k, setting in cases:
    w = torch.randn(n, k) * 0.02
    q, scale = torch.empty(n, k, dtype=fp8.E4M3), torch.empty(1, n)
    fp8.quantize_rows(w, q, scale[0])
    weights = fp8.dequantize(q, scale[0])
    x = torch.randn(m, k)
    xq, xs = fp8.quantize_tokens(x)
    runs = {"w8a8": (skinny_gemm.matmul(xq, q, scale, xs, torch.float16, setting), (xq.float() * xs) @ weights.t(), 1e-3),
            "w8a16": (skinny_gemm.matmul(x.half(), q, scale, setting=setting), x.half().float() @ weights.t(), 1e-3),
            "float": (skinny_gemm.matmul(x, w, setting=setting), x @ w.t(), 1e-5)}
    for label, (y, ref, tol) in runs.items():
        err = ((y.float() - ref).norm() / ref.norm()).item()
        assert y.shape == (m, n) and err < tol, (m, n, k, setting, label, err)
    assert runs["w8a8"][0].dtype == torch.float16 and runs["w8a16"][0].dtype == torch.float16
xq, xs = fp8.quantize_tokens(torch.randn(16, 64))
q, scale = torch.empty(32, 64, dtype=fp8.E4M3), torch.empty(1, 32)
fp8.quantize_rows(torch.randn(32, 64), q, scale[0])
xs_view = (torch.rand(16, 2) + 0.5)[:, :1]  # row scales as a column view: 2 apart in memory
assert not xs_view.reshape(-1).is_contiguous()
ref = (xq.float() * xs_view) @ fp8.dequantize(q, scale[0]).t()
assert torch.allclose(skinny_gemm.matmul(xq, q, scale, xs_view, torch.float32), ref, rtol=1e-4, atol=1e-4)
x = torch.randn(64, 8)
assert torch.allclose(skinny_gemm.matmul(x.t(), torch.eye(64)), x.t())  # x is made contiguous
try:
    skinny_gemm.matmul(torch.randn(8, 64), torch.randn(64, 8).t())
except ValueError as err:
    assert "contiguous rows" in str(err)
else:
    raise AssertionError("a transposed weight was accepted")
print("ok")
""")


@pytest.mark.triton_interpreter
def test_engine_through_the_triton_way_matches_the_emulation_interpreted(interpreted):
    """The engine's FP8 `triton` way (kernel interpreted, the card check lifted) multiplies what `emulate` does:
    same tokens, log-probs within float32 rounding; so does fp8.linear's `triton` way with a bias, and above
    MAX_FP8_ROWS rows (there as `unit`); a projection marked `triton` in the model's dtype equals F.linear, bias
    included, above MAX_ROWS rows too (there F.linear runs)."""
    interpreted(SHARP_TINY_SCRIPT + """
from mathgrpo.rollout import fp8
from mathgrpo.rollout.qwen3_forward import linear
from mathgrpo.rollout.weights import Proj
fp8.unsupported_reason = lambda card: None
out = {w: NativeEngine(model, tok, [], seed=3, precision="fp8", fp8_gemm=w).generate(prompts, 3, params) for w in ("emulate", "triton")}
assert [g.token_ids for g in out["triton"]] == [g.token_ids for g in out["emulate"]]
gap = max(abs(a - b) for x, y in zip(out["triton"], out["emulate"]) for a, b in zip(x.logprobs, y.logprobs))
assert gap < 1e-4, gap
q, scale = torch.empty(64, 32, dtype=fp8.E4M3), torch.empty(1, 64)
fp8.quantize_rows(torch.randn(64, 32), q, scale[0])
bias = torch.randn(64)
for rows in (8, 100):  # 100 > MAX_FP8_ROWS: the `unit` way (CPU torch runs _scaled_mm)
    x = torch.randn(rows, 32)
    got, want = fp8.linear(x, q, scale, bias, "triton"), fp8.linear(x, q, scale, bias, "emulate")
    assert torch.allclose(got, want, atol=1e-4), (rows, (got - want).abs().max())
w, b = torch.randn(48, 32), torch.randn(48)
for rows in (1, 16, 40):
    x = torch.randn(rows, 1, 32)
    assert torch.allclose(linear(x, Proj(w, b, gemm="triton")), torch.nn.functional.linear(x, w, b), atol=1e-5)
print("ok")
""")


def test_the_dry_run_names_the_skinny_kernel_only_where_it_acts(monkeypatch):
    """rollout.skinny_gemm is on by default: preflight's device line names the decode GEMMs of up to 16 rows on an
    H100 with the native engine in bf16, and says nothing where it has no effect (the hf engine, an L4, FP8 weights,
    FP8 asked for on a card without it, float32, no packed copies, the adapter beside the weights) or when it is switched off."""
    from mathgrpo import preflight
    from mathgrpo.config import load_config
    from mathgrpo.model import card, common
    from mathgrpo.rollout import decode_attention

    monkeypatch.setattr(common, "resolve_device", lambda setting: torch.device("cuda"))
    monkeypatch.setattr(decode_attention, "available", lambda: True)
    monkeypatch.setattr(skinny_gemm, "triton", object())

    def line(gpu, *settings):
        monkeypatch.setattr(card, "card_of", lambda device: gpu)
        return preflight.device_choices(load_config("tiny-cpu", list(settings)), brief=True)

    h100, l4, a100 = Card("cuda", "H100", (9, 0), 79.1), Card("cuda", "L4", (8, 9), 22.0), Card("cuda", "A100", (8, 0), 79.1)
    native = ("rollout.engine=native", "model.dtype=bfloat16")
    assert "decode GEMMs of up to 16 rows by the skinny kernel when its packed copies fit" in line(h100, *native)
    assert "skinny kernel (rollout.skinny_gemm)" in line(h100, *native, "rollout.device_snapshots=true")
    for gpu, settings in ((h100, ("rollout.engine=hf",)), (l4, native), (h100, (*native, "rollout.precision=fp8")),
                          (a100, (*native, "rollout.precision=fp8")), (h100, ("rollout.engine=native", "model.dtype=float32")),
                          (h100, (*native, "rollout.device_snapshots=false")), (h100, (*native, "rollout.lora=lowrank")),
                          (h100, (*native, "rollout.skinny_gemm=false"))):
        assert "skinny" not in line(gpu, *settings), settings
