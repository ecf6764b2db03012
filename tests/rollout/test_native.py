"""The native rollout engine on CPU: greedy equals transformers, sampling follows the target distribution."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from mathgrpo.rollout import make_engine
from mathgrpo.rollout.base import SamplingParams
from mathgrpo.rollout.native import NativeEngine, supports
from mathgrpo.model.tiny import build_tiny

PROMPTS = ["What is 12+7?", "Hi", "Compute 345 - 67 step by step, then answer."]


def sharpen(model: torch.nn.Module, seed: int = 0, std: float = 0.15) -> torch.nn.Module:
    """Redraw the weights larger than the init so the tiny model's greedy text varies and ends sometimes."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model


@pytest.fixture(scope="module")
def tiny():
    model, tok = build_tiny(0)
    return sharpen(model), tok


def hf_greedy(model, tok, prompts, n, max_new, stops) -> list:
    """transformers' greedy `generate` on left-padded prompts: [(prompt_index, completion ids cut after a stop)].

    Built on `generate` directly rather than the hf engine, which drops pad ids that the tiny model
    may genuinely emit.
    """
    flat = [p for p in prompts for _ in range(n)]
    enc = tok(flat, return_tensors="pt", padding=True, add_special_tokens=False)
    gen = model.generate(**enc, max_new_tokens=max_new, do_sample=False, eos_token_id=stops or None,
                         pad_token_id=tok.pad_token_id, temperature=None, top_p=None, top_k=None)
    out = []
    for i, row in enumerate(gen[:, enc["input_ids"].shape[1]:].tolist()):
        cut = next((j for j, t in enumerate(row) if t in stops), None)
        out.append((i // n, row[: cut + 1] if cut is not None else row))
    return out


def assert_same(native: list, reference: list, stops: list) -> None:
    assert len(native) == len(reference)
    for g, (index, ids) in zip(native, reference):
        assert g.prompt_index == index
        assert g.token_ids == ids
        assert g.finished == bool(ids and ids[-1] in stops)


def test_greedy_matches_transformers_with_ragged_prompts(tiny):
    model, tok = tiny
    stops = [tok.eos_token_id]
    native = NativeEngine(model, tok, stops).generate(PROMPTS, 2, SamplingParams(max_new_tokens=40, temperature=0))
    reference = hf_greedy(model, tok, PROMPTS, 2, 40, stops)
    assert_same(native, reference, stops)
    assert len({tuple(g.token_ids) for g in native}) >= 2, "prompts should lead to different completions"


def test_greedy_single_prompt_and_small_batches(tiny):
    model, tok = tiny
    stops = [tok.eos_token_id]
    native = NativeEngine(model, tok, stops, batch_size=2).generate(PROMPTS, 1, SamplingParams(max_new_tokens=25, temperature=0))
    assert_same(native, hf_greedy(model, tok, PROMPTS, 1, 25, stops), stops)


def test_stop_token_ends_a_completion(tiny):
    model, tok = tiny
    free = NativeEngine(model, tok, []).generate(PROMPTS[:1], 1, SamplingParams(max_new_tokens=30, temperature=0))[0]
    assert not free.finished and len(free.token_ids) == 30
    stop = free.token_ids[5]
    cut = free.token_ids.index(stop)
    got = NativeEngine(model, tok, [stop]).generate(PROMPTS[:1], 1, SamplingParams(max_new_tokens=30, temperature=0))[0]
    assert got.finished and got.token_ids == free.token_ids[: cut + 1]
    assert got.text == tok.decode(free.token_ids[:cut], skip_special_tokens=False)
    assert_same([got], hf_greedy(model, tok, PROMPTS[:1], 1, 30, [stop]), [stop])


def test_prefill_once_per_prompt_and_samples_differ(tiny):
    model, tok = tiny
    engine = NativeEngine(model, tok, [tok.eos_token_id], seed=0)
    out = engine.generate(PROMPTS, 4, SamplingParams(max_new_tokens=12, temperature=1.0))
    assert engine.last_stats["prefill_rows"] == len(PROMPTS)
    assert [g.prompt_index for g in out] == [i for i in range(len(PROMPTS)) for _ in range(4)]
    for i in range(len(PROMPTS)):
        group = {tuple(g.token_ids) for g in out[4 * i : 4 * i + 4]}
        assert len(group) > 1, "samples of one prompt share a prefill but must not share their draws"


def reference_scores(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """transformers' own warpers, in generate's order, applied to float32 logits [B, V]."""
    scores = logits.float()
    warpers = [TemperatureLogitsWarper(params.temperature)]
    if params.top_k:
        warpers.append(TopKLogitsWarper(params.top_k))
    if params.top_p < 1:
        warpers.append(TopPLogitsWarper(params.top_p))
    if params.min_p:
        warpers.append(MinPLogitsWarper(params.min_p))
    for w in warpers:
        scores = w(None, scores)
    return scores


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(max_new_tokens=1, temperature=0.8),
        SamplingParams(max_new_tokens=1, temperature=1.3, top_k=12, top_p=0.9),
        SamplingParams(max_new_tokens=1, temperature=0.7, min_p=0.05),
    ],
)
def test_first_token_frequencies_follow_the_filtered_distribution(tiny, params):
    model, tok = tiny
    draws = 6000
    engine = NativeEngine(model, tok, [], seed=1)
    out = engine.generate(PROMPTS[:1], draws, params)
    ids = tok(PROMPTS[0], add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        target = reference_scores(model(ids).logits[:, -1], params).softmax(-1)[0]
    counts = torch.bincount(torch.tensor([g.token_ids[0] for g in out]), minlength=target.numel()).double()
    assert counts[target == 0].sum() == 0, "a filtered token was sampled"
    expected = target.double() * draws
    keep = expected > 5
    chi2 = ((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum().item()
    dof = int(keep.sum()) - 1
    assert dof >= 3
    assert chi2 < dof + 5 * (2 * dof) ** 0.5, f"chi-square {chi2:.1f} on {dof} degrees of freedom"
    for g in out[:50]:
        assert g.logprobs[0] == pytest.approx(torch.log(target[g.token_ids[0]]).item(), abs=1e-4)


def test_logprobs_are_those_of_the_filtered_distribution_at_every_step(tiny):
    model, tok = tiny
    params = SamplingParams(max_new_tokens=15, temperature=0.9, top_k=30, top_p=0.95)
    out = NativeEngine(model, tok, [tok.eos_token_id], seed=3).generate(PROMPTS, 2, params)
    for g in out:
        seq = torch.tensor([g.prompt_ids + g.token_ids])
        with torch.no_grad():
            logits = model(seq).logits[0, len(g.prompt_ids) - 1 : -1]
        logp = torch.log_softmax(reference_scores(logits, params), -1)
        expected = logp.gather(-1, torch.tensor(g.token_ids)[:, None])[:, 0]
        assert torch.allclose(torch.tensor(g.logprobs), expected, atol=1e-4)


def randomised_lora(model):
    """Wrap in PEFT LoRA r4 on every projection with random B (so the adapter changes outputs)."""
    from peft import LoraConfig, get_peft_model

    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets, lora_dropout=0.0))
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return peft_model


@pytest.mark.parametrize("mode", ["merge", "lowrank"])
def test_lora_wrapped_model_matches_peft_generate(mode):
    model, tok = build_tiny(0)
    sharpen(model)
    base_out = NativeEngine(model, tok, []).generate(PROMPTS, 1, SamplingParams(max_new_tokens=20, temperature=0))
    peft_model = randomised_lora(model)
    stops = [tok.eos_token_id]
    native = NativeEngine(peft_model, tok, stops, lora=mode).generate(PROMPTS, 1, SamplingParams(max_new_tokens=30, temperature=0))
    assert_same(native, hf_greedy(peft_model, tok, PROMPTS, 1, 30, stops), stops)
    assert [g.token_ids[:20] for g in native] != [g.token_ids for g in base_out], "the adapter should matter"


def test_lora_merge_leaves_base_weights_bit_identical_over_many_rollouts():
    model, tok = build_tiny(0)
    sharpen(model)
    peft_model = randomised_lora(model.to(torch.bfloat16))
    base = {n: p.detach().clone() for n, p in peft_model.named_parameters() if "base_layer" in n}
    engine = NativeEngine(peft_model, tok, [], lora="merge", seed=0)
    for step in range(30):
        engine.generate(PROMPTS[:1], 2, SamplingParams(max_new_tokens=2, temperature=1.0))
        with torch.no_grad():  # an optimizer step on the adapter between rollouts
            for n, p in peft_model.named_parameters():
                if "lora_B" in n:
                    p.add_(0.01 * torch.randn_like(p))
    for n, p in peft_model.named_parameters():
        if n in base:
            assert torch.equal(p, base[n]), f"{n} drifted"


def test_lora_merge_with_snapshots_beside_the_weights_restores_exactly():
    """Snapshots kept on the weights' device (a GPU in training; the CPU here): the base stays bit-identical,
    one snapshot per merged weight is reused while nothing else writes the weight, retaken after a write,
    and dropped on request."""
    from mathgrpo.rollout.weights import LoraMerge, merged_weight_bytes

    model, _ = build_tiny(0)
    peft_model = randomised_lora(model.to(torch.bfloat16))
    base = {n: p.detach().clone() for n, p in peft_model.named_parameters() if "base_layer" in n}
    merger = LoraMerge(on_device=True)
    for _ in range(3):
        with merger.merged(peft_model):
            pass
        with torch.no_grad():
            for n, p in peft_model.named_parameters():
                if "lora_B" in n:
                    p.add_(0.01)
    for n, p in peft_model.named_parameters():
        if n in base:
            assert torch.equal(p, base[n]), f"{n} drifted"
    snaps = {k: v[2] for k, v in merger._snapshots.items()}
    assert sum(s.numel() * s.element_size() for s in snaps.values()) == merged_weight_bytes(peft_model) > 0
    weight = peft_model.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight
    with torch.no_grad():
        weight.add_(1.0)  # someone else writes the base: the next merge takes a new snapshot of it
    with merger.merged(peft_model):
        pass
    assert merger._snapshots[id(weight)][2] is not snaps[id(weight)]
    assert torch.equal(weight, base["base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"] + 1.0)
    assert merger.device_bytes() == 0  # CPU copies: no GPU memory held
    merger.drop()
    assert not merger._snapshots


def test_engine_keeps_snapshots_on_the_device_only_on_a_gpu():
    """The engine's switch does nothing on the CPU; release() leaves host snapshots alone."""
    model, tok = build_tiny(0)
    engine = NativeEngine(randomised_lora(model), tok, [], snapshots_on_device=True)
    assert not engine.snapshots_on_device and engine.snapshot_bytes() > 0
    engine.generate(PROMPTS[:1], 2, SamplingParams(max_new_tokens=2, temperature=1.0))
    kept = dict(engine._merger._snapshots)
    engine.release()
    assert engine._merger._snapshots == kept and engine.held_bytes() == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_engine_snapshots_on_the_gpu_restore_exactly_and_count_as_held():
    """On a GPU: device snapshots restore the base bit for bit over many rollouts, count in held_bytes, and go
    with release(), after which the next rollout takes them again."""
    model, tok = build_tiny(0)
    peft_model = randomised_lora(model.to(torch.bfloat16)).cuda()
    base = {n: p.detach().clone() for n, p in peft_model.named_parameters() if "base_layer" in n}
    engine = NativeEngine(peft_model, tok, [], seed=0, snapshots_on_device=True)
    for step in range(5):
        engine.generate(PROMPTS[:1], 2, SamplingParams(max_new_tokens=2, temperature=1.0))
        assert engine.held_bytes() >= engine.snapshot_bytes() > 0
        with torch.no_grad():
            for n, p in peft_model.named_parameters():
                if "lora_B" in n:
                    p.add_(0.01 * torch.randn_like(p))
        if step == 2:
            engine.release()
            assert engine.held_bytes() == 0
    for n, p in peft_model.named_parameters():
        if n in base:
            assert torch.equal(p, base[n]), f"{n} drifted"


def test_llama_greedy_matches_transformers():
    _, tok = build_tiny(0)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False, pad_token_id=0, eos_token_id=1,
        rope_theta=10000.0,
    )
    torch.manual_seed(0)
    model = sharpen(LlamaForCausalLM(cfg), seed=2, std=0.2)
    model.set_attn_implementation("eager")
    model.generation_config.pad_token_id = 0
    assert supports(model) is None
    stops = [tok.eos_token_id]
    native = NativeEngine(model, tok, stops).generate(PROMPTS, 2, SamplingParams(max_new_tokens=30, temperature=0))
    assert_same(native, hf_greedy(model, tok, PROMPTS, 2, 30, stops), stops)


def test_unsupported_models_get_a_reason_and_fall_back_to_hf(tiny):
    model, tok = tiny
    assert supports(model) is None
    sliding = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                          num_key_value_heads=1, use_sliding_window=True, sliding_window=16, max_window_layers=0)
    from transformers import Qwen2ForCausalLM

    fallback = Qwen2ForCausalLM(sliding)
    assert "sliding" in supports(fallback)
    engine = make_engine("native", fallback, tok, [1])
    assert engine.name == "hf"
    assert make_engine("native", model, tok, [1]).name == "native"


def test_quantized_weights_go_to_hf(tiny):
    """A 4-bit base (bitsandbytes stores its weights as uint8) cannot be read or LoRA-merged by the native engine."""
    import copy

    model = copy.deepcopy(tiny[0])
    proj = model.model.layers[0].self_attn.q_proj
    proj.weight = torch.nn.Parameter(torch.zeros(proj.weight.numel() // 2, 1, dtype=torch.uint8), requires_grad=False)
    assert "quantized" in supports(model)
    assert make_engine("native", model, tiny[1], [1]).name == "hf"


@pytest.mark.triton_interpreter
def test_split_k_decode_kernel_matches_grouped_attention_interpreted(interpreted):
    """The GPU attention kernel, run by Triton's CPU interpreter, against the reference attention:
    own rows at one split a row (the kernel writes the output; no combine), three (not a power of two) and
    the most the launch settings allow, and prompt keys read from a prompt cache of one row per group
    (garbage where unread)."""
    script = """
import torch
from mathgrpo.rollout.decode_attention import SplitKDecode
from mathgrpo.rollout.qwen3_forward import additive_mask, grouped_attention
torch.manual_seed(0)
cases = [(3, 2, 2, 32, 300, 290, 6, 1), (3, 2, 2, 32, 300, 290, 18, 3), (2, 2, 4, 32, 1500, 700, 4096, 16), (4, 1, 2, 16, 512, 9, 4096, 8)]
for batch, kv, groups, dim, length, slot, programs, splits in cases:
    SplitKDecode.TARGET_PROGRAMS = programs
    attn = SplitKDecode(batch, kv, groups, dim, length, "cpu", torch.float32)
    assert attn.nsplit == splits, (attn.nsplit, splits)
    k, v = torch.randn(batch, kv, length, dim), torch.randn(batch, kv, length, dim)
    q = torch.randn(batch, kv * groups, 1, dim)
    pad = torch.tensor([0, 70, 5, 3][:batch]).clamp_max(slot)
    out = attn(q, k, v, pad, torch.tensor([slot]))
    valid = (torch.arange(slot + 1)[None] >= pad[:, None])[:, None, None]
    ref = grouped_attention(q, k[:, :, : slot + 1], v[:, :, : slot + 1], additive_mask(valid, torch.float32), False)
    assert (out - ref).abs().max() < 1e-4, (out - ref).abs().max()
# groups of 2 samples sharing a prompt of width 6, kept once per group in a prompt cache (rows of
# groups read from src); the rows' own cache holds completion slots only (position p at p - width).
# Unread places hold garbage: prompt rows of no group, slots past the fill.
batch, kv, groups, dim, width, new, slot = 4, 2, 2, 16, 6, 58, 20
SplitKDecode.BLOCK_N = 16  # four splits of 64 slots: the prompt / completion boundary inside split 0, slot in split 1
attn = SplitKDecode(batch, kv, groups, dim, width + new, "cpu", torch.float32)
assert attn.nsplit == 4, attn.nsplit
full_k, full_v = torch.randn(batch, kv, width + new, dim), torch.randn(batch, kv, width + new, dim)
for lead in (0, 2):
    full_k[lead + 1, :, :width], full_v[lead + 1, :, :width] = full_k[lead, :, :width], full_v[lead, :, :width]
pk, pv = torch.full((3, kv, width + 2, dim), 1e4), torch.full((3, kv, width + 2, dim), -1e4)
pk[[2, 0], :, :width], pv[[2, 0], :, :width] = full_k[[0, 2], :, :width], full_v[[0, 2], :, :width]
k, v = full_k[:, :, width:].clone(), full_v[:, :, width:].clone()
k[:, :, slot - width + 1 :], v[:, :, slot - width + 1 :] = 1e4, -1e4
q = torch.randn(batch, kv * groups, 1, dim)
pad = torch.tensor([1, 1, 0, 0])
out = attn(q, k, v, pad, torch.tensor([slot]), (pk, pv, torch.tensor([2, 2, 0, 0]), torch.tensor([width])))
valid = (torch.arange(slot + 1)[None] >= pad[:, None])[:, None, None]
ref = grouped_attention(q, full_k[:, :, : slot + 1], full_v[:, :, : slot + 1], additive_mask(valid, torch.float32), False)
assert (out - ref).abs().max() < 1e-4, (out - ref).abs().max()
print("ok")
"""
    interpreted(script)


@pytest.mark.triton_interpreter
def test_split_k_kernel_normalises_and_rotates_raw_projections_interpreted(interpreted):
    """Given the raw q, k, v columns of one packed projection, the kernel applies the q / k norms (or none, as
    Qwen2 and Llama have) and the rotary tables itself: its output and the key it writes equal the reference
    path's (project_qkv's norms and rotary, then attention), at one split a row and at four, and with projections
    small enough (1e-3) that the norms' eps counts."""
    interpreted("""
import torch
from mathgrpo.rollout.decode_attention import SplitKDecode
from mathgrpo.rollout.qwen3_forward import additive_mask, apply_rope, grouped_attention, rms_norm
torch.manual_seed(0)
batch, kv, groups, dim, length, slot, eps = 3, 2, 2, 16, 72, 70, 1e-6
heads = kv * groups
for block, splits, norms, size in ((64, 1, True, 1.0), (16, 4, True, 1.0), (16, 4, False, 1.0), (16, 4, True, 1e-3)):
    SplitKDecode.BLOCK_N, SplitKDecode.TARGET_PROGRAMS = block, 1 if splits == 1 else 4096
    attn = SplitKDecode(batch, kv, groups, dim, length, "cpu", torch.float32)
    assert attn.nsplit == splits, attn.nsplit
    k, v = torch.randn(batch, kv, length, dim), torch.randn(batch, kv, length, dim)
    qkv = torch.randn(batch, 1, (heads + 2 * kv) * dim) * size
    q_raw, k_raw, v_raw = qkv.split([heads * dim, kv * dim, kv * dim], dim=-1)  # strided views, as the engine passes
    angles = torch.rand(batch, 1, dim // 2) * 6
    cos, sin = torch.cat((angles, angles), -1).cos(), torch.cat((angles, angles), -1).sin()
    q_w, k_w = (torch.rand(dim) + 0.5, torch.rand(dim) + 0.5) if norms else (None, None)
    pad = torch.tensor([0, 5, 30])
    cache_k = k.clone()
    out = attn(q_raw, cache_k, v.clone(), pad, torch.tensor([slot]), None, (k_raw, v_raw), None, (cos, sin, q_w, k_w, eps))

    def normed(x, heads_, weight):
        x = x.view(batch, 1, heads_, dim)
        return (rms_norm(x, weight, eps) if weight is not None else x).transpose(1, 2)

    q_ref, k_ref = apply_rope(normed(q_raw, heads, q_w), cos, sin), apply_rope(normed(k_raw, kv, k_w), cos, sin)
    full_k, full_v = k.clone(), v.clone()
    full_k[:, :, slot], full_v[:, :, slot] = k_ref[:, :, 0], v_raw.view(batch, kv, dim)
    valid = (torch.arange(slot + 1)[None] >= pad[:, None])[:, None, None]
    ref = grouped_attention(q_ref, full_k[:, :, : slot + 1], full_v[:, :, : slot + 1], additive_mask(valid, torch.float32), False)
    assert (out - ref).abs().max() < 1e-4, (splits, norms, size, (out - ref).abs().max())
    assert (cache_k[:, :, slot] - k_ref[:, :, 0]).abs().max() < 1e-5, (splits, norms, size)
print("ok")
""")


SHARP_TINY_SCRIPT = """
import torch
from mathgrpo.rollout.base import SamplingParams
from mathgrpo.rollout.native import NativeEngine
from mathgrpo.model.tiny import build_tiny
model, tok = build_tiny(0)
gen = torch.Generator().manual_seed(0)
with torch.no_grad():
    for name, p in model.named_parameters():
        if "norm" not in name:
            p.copy_(torch.randn(p.shape, generator=gen) * 0.15)
prompts = ["What is 12+7?", "Hi", "Compute 345 - 67 step by step."]
params = SamplingParams(max_new_tokens=12, temperature=1.0)
"""  # the start of interpreted engine scripts: a tiny model with sharp weights, prompts, sampling


@pytest.mark.triton_interpreter
def test_engine_with_split_k_attention_matches_math_attention_interpreted(interpreted):
    """The engine's Triton attention path (each group's prompt cached once) samples the math path's tokens."""
    script = SHARP_TINY_SCRIPT + """
out = {a: NativeEngine(model, tok, [], attention=a, seed=3).generate(prompts, 3, params) for a in ("math", "triton")}
tokens = [g.token_ids for g in out["math"]]
assert len({tuple(t) for t in tokens[:3]}) > 1  # the samples of a prompt differ: shared reads stop at the prompt
assert tokens == [g.token_ids for g in out["triton"]]
print("ok")
"""
    interpreted(script)


def test_triton_layout_keeps_each_prompt_once_per_group(tiny):
    """The Triton path's cache: one prompt row per group of samples plus completion slots per row,
    reused for shorter requests and rebuilt for longer ones; the other paths keep whole rows."""
    from mathgrpo.rollout.weights import collect

    model, tok = tiny
    w = collect(model, lowrank=False)
    engine = NativeEngine(model, tok, [], attention="triton", use_graphs=False, use_compile=False)
    assert engine.shares_prompt_cache
    slab = engine._slab(w, 8, 4, 10, 20)
    layers, kv, dim = len(w.layers), w.n_kv_heads, w.head_dim
    assert tuple(slab.pk.shape) == (layers, 2, kv, 128, dim) and tuple(slab.k.shape) == (layers, 8, kv, 128, dim)
    assert engine._slab(w, 8, 8, 100, 128) is slab  # fewer groups, within both lengths
    assert engine._slab(w, 8, 4, 129, 20) is not slab  # a wider prompt
    math = NativeEngine(model, tok, [], attention="math", use_graphs=False, use_compile=False)
    whole = math._slab(w, 8, 4, 10, 20)
    assert not math.shares_prompt_cache and whole.pk is None and tuple(whole.k.shape) == (layers, 8, kv, 128, dim)


def test_even_chunks_and_one_cache_at_a_time(tiny):
    """batch_size 6 over 8 prompts gives two chunks of 4, and a call of another size replaces the cache."""
    model, tok = tiny
    engine = NativeEngine(model, tok, [tok.eos_token_id], batch_size=6)
    prompts = (PROMPTS * 4)[:8]
    engine.generate(prompts, 1, SamplingParams(max_new_tokens=4, temperature=0))
    assert engine.last_stats["prefill_rows"] == 8 and engine._cache.batch == 4
    engine.generate(prompts[:3], 1, SamplingParams(max_new_tokens=4, temperature=0))
    assert engine._cache.batch == 3


def learner_gap(model, gens, temperature: float = 1.0) -> torch.Tensor:
    """|engine policy log-prob - the model's own log-prob| of every sampled token, over `gens`. [tokens]"""
    from mathgrpo.training.batch import collate
    from mathgrpo.training.logprobs import token_logprobs

    device = next(model.parameters()).device
    batch = collate(gens, torch.zeros(len(gens)), 0, False, device)
    with torch.no_grad():
        learner = token_logprobs(model, batch.input_ids, batch.attention_mask, batch.prompt_width, temperature)
    sampler = torch.zeros_like(learner, dtype=torch.float32)
    for i, g in enumerate(gens):  # getattr: the GPU regression test also runs on the code before the fix
        values = getattr(g, "policy_logprobs", None) or g.logprobs
        sampler[i, : len(values)] = torch.tensor(values, device=device)
    counted = batch.completion_mask > 0
    return (learner.float() - sampler)[counted].abs()


def test_policy_logprobs_are_the_unfiltered_policy_at_every_step(tiny):
    """Under filters the engine also reports each token's log-prob before them, which is what the learner sees."""
    model, tok = tiny
    params = SamplingParams(max_new_tokens=12, temperature=0.8, min_p=0.1)
    out = NativeEngine(model, tok, [tok.eos_token_id], seed=5).generate(PROMPTS, 2, params)
    for g in out:
        with torch.no_grad():
            logits = model(torch.tensor([g.prompt_ids + g.token_ids])).logits[0, len(g.prompt_ids) - 1 : -1]
        expected = torch.log_softmax(logits.float() / 0.8, -1).gather(-1, torch.tensor(g.token_ids)[:, None])[:, 0]
        assert torch.allclose(torch.tensor(g.policy_logprobs), expected, atol=1e-4)
        assert all(p >= q - 1e-6 for p, q in zip(g.logprobs, g.policy_logprobs)), "filtering renormalises upwards"
    assert learner_gap(model, out, 0.8).max() < 1e-4


def test_every_tensor_the_decode_step_reads_keeps_its_address_across_calls():
    """Regression (GRPO collapsed on the GPU): a bf16 model's rotary table was converted to float32 afresh every
    rollout, so the decode step captured over the first copy read freed memory later. The engine's weights must
    be the same tensors call after call, the converted table included."""
    model, tok = build_tiny(0)
    engine = NativeEngine(randomised_lora(model.to(torch.bfloat16)), tok, [])
    seen = []
    for _ in range(2):
        engine.generate(PROMPTS[:1], 2, SamplingParams(max_new_tokens=3, temperature=1.0))
        seen.append(engine._weights)
    first, second = seen
    assert second.inv_freq.dtype == torch.float32
    assert [t.data_ptr() for t in first.tensors()] == [t.data_ptr() for t in second.tensors()]
    assert first.inv_freq.data_ptr() in first.fingerprint()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_sampler_matches_the_learner_after_the_allocator_reuses_freed_memory():
    """On a GPU with captured decode graphs: between two rollouts, small blocks freed by the first are taken and
    filled by other tensors (as a held-out evaluation or a training step does). The second rollout's log-probs
    must still be the policy's: on the code before the fix the graphs read a freed rotary table and the gap
    grew to whole nats."""
    model, tok = build_tiny(0)
    sharpen(model)
    peft_model = randomised_lora(model.to(torch.bfloat16)).cuda().eval()
    # lowrank: the adapter applied as in the learner, so that bf16 merge rounding does not blur the comparison
    engine = NativeEngine(peft_model, tok, [tok.eos_token_id], lora="lowrank", seed=0)
    params = SamplingParams(max_new_tokens=24, temperature=1.0)
    first = engine.generate(PROMPTS, 8, params)
    filler = [torch.full((16,), 1e3, device="cuda") for _ in range(20_000)]  # takes the freed small blocks
    second = engine.generate(PROMPTS, 8, params, seeds=[1])
    del filler
    gaps = [learner_gap(peft_model, gens) for gens in (first, second)]
    print("bf16 gap mean/max per call:", [(float(g.mean()), float(g.max())) for g in gaps])
    # On an H100: 0.022 nats mean both times (bf16 on this deliberately large random adapter); before the fix the
    # second call's mean was 2.04 (max 8.5).
    assert gaps[0].mean() < 0.1
    assert gaps[1].mean() < 2 * gaps[0].mean() + 0.01


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_float16_rollouts_are_the_learners_policy():
    """model.dtype=float16 (a T4's dtype) through the native engine's kernels: finite log-probs at float16 rounding
    from the learner's (the same check at bf16 gives about 0.02 nats mean on this adapter)."""
    model, tok = build_tiny(0)
    sharpen(model)
    peft_model = randomised_lora(model.to(torch.float16)).cuda().eval()
    engine = NativeEngine(peft_model, tok, [tok.eos_token_id], lora="lowrank", seed=0)
    gens = engine.generate(PROMPTS, 8, SamplingParams(max_new_tokens=24, temperature=1.0))
    gap = learner_gap(peft_model, gens)
    print("fp16 gap mean/max:", float(gap.mean()), float(gap.max()))
    assert torch.isfinite(gap).all() and gap.mean() < 0.02


def test_compiled_raises_the_recompile_limit_for_its_own_calls_only(monkeypatch):
    """The engine's compiled layers see dynamo's recompile limit at RECOMPILE_LIMIT; the process keeps its own."""
    from torch import _dynamo

    from mathgrpo.rollout import native

    seen = []
    monkeypatch.setattr(torch, "compile", lambda fn, dynamic=None: fn)  # what compile would wrap, called plainly
    before = _dynamo.config.cache_size_limit
    layer = native.compiled(lambda x: seen.append(_dynamo.config.cache_size_limit) or x + 1)
    assert layer(1) == 2
    assert seen == [max(before, native.RECOMPILE_LIMIT)] and _dynamo.config.cache_size_limit == before


def seeded_calls_repeat_and_leave_global_rng(engine, prompts: list, device: str) -> None:
    """Two calls with one seed give the same samples (the first of them compiling and capturing, the second
    replaying), another seed other samples, and torch's global generator for `device` is where it was (the
    engine draws from its own)."""
    global_state = (torch.cuda.get_rng_state() if device == "cuda" else torch.get_rng_state()).clone()
    params = SamplingParams(max_new_tokens=10, temperature=1.0)
    a, b = (engine.generate(prompts, 4, params, seeds=[7]) for _ in range(2))
    other = engine.generate(prompts, 4, params, seeds=[8])
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    assert [g.token_ids for g in a] != [g.token_ids for g in other]
    assert torch.equal(torch.cuda.get_rng_state() if device == "cuda" else torch.get_rng_state(), global_state)


def test_seeded_calls_repeat_without_touching_the_global_generator(tiny):
    model, tok = tiny
    seeded_calls_repeat_and_leave_global_rng(NativeEngine(model, tok, [tok.eos_token_id]), PROMPTS, "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_seeded_calls_repeat_without_touching_the_global_cuda_generator_in_captured_graphs():
    """With decode steps replayed from CUDA graphs, reseeding the engine's own generator still changes (and
    repeats) the draws inside the graphs, and the global CUDA generator is left alone."""
    model, tok = build_tiny(0)
    sharpen(model)
    engine = NativeEngine(model.to(torch.bfloat16).cuda().eval(), tok, [tok.eos_token_id])
    assert engine.use_graphs
    seeded_calls_repeat_and_leave_global_rng(engine, PROMPTS, "cuda")
