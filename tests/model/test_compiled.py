"""Compiled decoder layers for training passes: the eager layers' log-probs and LoRA gradients (compiled for real,
by inductor's CPU backend), switched in only inside `training_passes`, and where `model.compile_layers` applies."""

import pytest
import torch

from mathgrpo.config import LoraConfig, ModelConfig
from mathgrpo.model.common import ModelError
from mathgrpo.model.compiled import compile_layers, compile_refusal, compiled, decoder_layers, training_passes
from mathgrpo.model.fused_lora import fuse_lora
from mathgrpo.model.loading import add_lora, compile_wanted
from mathgrpo.model.tiny import build_tiny
from mathgrpo.training.logprobs import token_logprobs


def _lora_model(fused: bool = True):
    """The tiny model with LoRA drawn non-zero from a fixed seed, SDPA attention, in train mode."""
    model, _ = build_tiny(seed=5)
    model.set_attn_implementation("sdpa")
    model = add_lora(model, LoraConfig(r=4, alpha=8))
    torch.manual_seed(0)
    for n, p in model.named_parameters():
        if "lora_" in n:
            torch.nn.init.normal_(p, std=0.1)
    if fused:
        fuse_lora(model)
    return model.train()


def _pass(model, ids, mask) -> tuple:
    """Log-probs and adapter gradients of one weighted log-prob loss inside `training_passes`."""
    model.zero_grad(set_to_none=True)
    with training_passes(model):
        logp = token_logprobs(model, ids, mask, 4, 1.0)
        (logp * torch.linspace(-1, 1, logp.numel()).view_as(logp)).sum().backward()
    return logp.detach(), torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])


@pytest.mark.parametrize("fused", [True, False], ids=["fused LoRA", "PEFT's forward"])
def test_compiled_layers_give_the_eager_log_probs_and_gradients(fused):
    """Compiled by inductor (float32 on the CPU), the layers' log-probs and LoRA gradients equal the eager ones, for
    two batch shapes (dynamic shapes: the second is not compiled again) and a padded row."""
    eager, fast = _lora_model(fused), _lora_model(fused)
    assert compile_layers(fast) == len(decoder_layers(fast)) and compiled(fast) and not compiled(eager)
    torch.manual_seed(1)
    for rows, width in ((3, 12), (2, 16)):
        ids = torch.randint(3, 90, (rows, width))
        mask = torch.ones_like(ids)
        mask[0, :3] = 0
        (lp_e, g_e), (lp_c, g_c) = _pass(eager, ids, mask), _pass(fast, ids, mask)
        assert torch.allclose(lp_c, lp_e, atol=2e-6), (lp_c - lp_e).abs().max()
        assert torch.allclose(g_c, g_e, atol=3e-5, rtol=1e-4), (g_c - g_e).abs().max()  # float32, summed in another order
        assert (g_c - g_e).norm() < 1e-5 * g_e.norm()
        assert g_e.abs().max() > 1e-3  # the gradients compared are not all zero


def test_packed_passes_through_compiled_layers():
    """Packed passes (`grpo.packed_passes`) through compiled layers: the per-sequence reference attention (what runs
    off the flash kernel: CPU, float32) is left out of the graph and run as it is; eager log-probs and gradients."""
    from torch._dynamo.utils import counters

    from mathgrpo.training import packing

    eager, fast = _lora_model(), _lora_model()
    compile_layers(fast)
    torch.manual_seed(2)
    ids = torch.randint(3, 90, (4, 12))
    ids[1, :4] = ids[0, :4]  # two rows of one prompt: packed once
    mask = torch.ones_like(ids)
    mask[2, :2] = 0
    mask[3, -3:] = 0
    counters.clear()
    with packing.attention(eager), packing.attention(fast):
        (lp_e, g_e), (lp_c, g_c) = _pass(eager, ids, mask), _pass(fast, ids, mask)
    assert any("_reference" in reason for reason in counters["graph_break"])  # its loop is not traced
    assert torch.allclose(lp_c, lp_e, atol=2e-6), (lp_c - lp_e).abs().max()
    assert (g_c - g_e).norm() < 1e-5 * g_e.norm() and g_e.abs().max() > 1e-3


def test_compiled_forwards_are_switched_in_only_inside_training_passes():
    """Outside `training_passes` the layers run their own forward (generation passes a KV cache the compiler would
    guard on); inside they run the compiled one; after an error inside, their own again."""
    model = _lora_model()
    compile_layers(model)
    layers = decoder_layers(model)
    assert all(layer._compiled_call_impl is None for layer in layers)
    with training_passes(model) as on:
        assert on and all(layer._compiled_call_impl is layer._mathgrpo_compiled for layer in layers)
    assert all(layer._compiled_call_impl is None for layer in layers)
    with pytest.raises(RuntimeError, match="inside"):
        with training_passes(model):
            raise RuntimeError("inside")
    assert all(layer._compiled_call_impl is None for layer in layers)
    with training_passes(_lora_model()) as on:  # a model without compiled layers: nothing to switch
        assert not on


def test_inductors_split_softmax_notice_is_hidden():
    """Compiling hides inductor's notice about a softmax it splits (eager attention; nothing to act on), no other."""
    import warnings

    model = _lora_model()
    with warnings.catch_warnings(record=True) as seen:
        compile_layers(model)
        warnings.warn("\nOnline softmax is disabled on the fly since Inductor decides to\nsplit the reduction.", UserWarning)
        warnings.warn("another notice", UserWarning)
    messages = [str(w.message) for w in seen]  # importing the compiler may add notices of its own
    assert "another notice" in messages and not any("Online softmax" in m for m in messages)


def test_compile_layers_is_used_only_where_it_can_run():
    """On the CPU: null and false compile nothing, true is an error that names the setting and what to do; the CPU
    and pre-sm_80 reasons are given."""
    cpu = torch.device("cpu")
    assert "cpu" in compile_refusal(cpu)
    assert not compile_wanted(ModelConfig(compile_layers=None), cpu)
    assert not compile_wanted(ModelConfig(compile_layers=False), cpu)
    assert not compile_wanted(ModelConfig(compile_layers=True, backend="unsloth"), cpu)
    with pytest.raises(ModelError, match=r"model.compile_layers=true but the model is on cpu.*null or false"):
        compile_wanted(ModelConfig(compile_layers=True), cpu)


def _saved_bytes(layers: int, tokens: int) -> int:
    """Bytes of the distinct non-parameter tensors a compiled bf16 body of `layers` layers saves for backward over 2
    rows of `tokens` tokens (LoRA r8 on every projection)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    model = Qwen3ForCausalLM(Qwen3Config(**SHAPE, num_hidden_layers=layers)).to(torch.bfloat16)
    model.set_attn_implementation("sdpa")
    model = add_lora(model, LoraConfig(r=8, alpha=16))
    fuse_lora(model)
    compile_layers(model.train())
    params = {p.data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t):
        if t.data_ptr() not in params:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    body, ids = model.get_base_model().model, torch.randint(3, 500, (2, tokens))
    with training_passes(model), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        body(input_ids=ids, use_cache=False)
    return sum(seen.values())


SHAPE = dict(vocab_size=512, hidden_size=256, intermediate_size=960, num_attention_heads=8, num_key_value_heads=2,
             head_dim=32)


def test_the_memory_plan_counts_what_compiled_layers_save():
    """`ModelShape.compiled_saved` is the values a token keeps in a compiled layer: the bytes saved for backward, per
    layer (two layers against one) and per token (32 tokens a row against 16), counted as inductor's partitioner
    picked them; more than checkpointing with the products kept holds, which the plan counts for such layers."""
    from transformers import Qwen3Config

    from mathgrpo.training.memory import PROJECTIONS, ModelShape, plan_memory

    per_layer = {t: _saved_bytes(2, t) - _saved_bytes(1, t) for t in (16, 32)}
    values = (per_layer[32] - per_layer[16]) / (2 * 16) / 2  # 2 rows, bf16
    shape = ModelShape.from_config(Qwen3Config(**SHAPE, num_hidden_layers=1))
    assert values == shape.compiled_saved(8, PROJECTIONS)
    assert shape.compiled_saved(8, PROJECTIONS) > shape.kept_products(8, PROJECTIONS) + shape.hidden
    kept = plan_memory(shape, 2**34, lora_r=8, keep_matmuls=True)
    assert plan_memory(shape, 2**34, lora_r=8, keep_matmuls=True, compiled=True).train_per_token > kept.train_per_token
