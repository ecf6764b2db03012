"""The hf engine on the tiny model: greedy equals plain generate; sampling is batch-independent."""

import torch

from mathgrpo.config import load_config
from mathgrpo.model.card import Card
from mathgrpo.rollout import SamplingParams, make_engine, static_cache
from mathgrpo.rollout import sequence_seed
from mathgrpo.model.tiny import build_tiny


def _engine(batch_size=0):
    model, tok = build_tiny(seed=5)
    return make_engine("hf", model, tok, [tok.eos_token_id], batch_size), model, tok


def test_greedy_matches_plain_generate_with_ragged_prompts():
    """Left-padded ragged prompts decode exactly as one-by-one greedy generate."""
    engine, model, tok = _engine()
    prompts = ["07+28=", "5-3=", "Q: 12+30="]
    gens = engine.generate(prompts, 1, SamplingParams(max_new_tokens=8, temperature=0))
    for g, p in zip(gens, prompts):
        ids = tok(p, return_tensors="pt", add_special_tokens=False)["input_ids"]
        want = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=[1])[0, ids.shape[1]:]
        assert g.token_ids == [t for t in want.tolist()][: len(g.token_ids)]
        assert g.prompt_ids == ids[0].tolist() and g.logprobs is None


def test_sampling_is_independent_of_batch_size_and_grouped():
    """The same seeds give the same completions in one batch or in batches of 2; n per prompt grouped."""
    params = SamplingParams(max_new_tokens=6, temperature=1.0, top_p=0.95)
    seeds = [sequence_seed(3, i) for i in range(6)]
    a = _engine()[0].generate(["07+28=", "52-38="], 3, params, seeds)
    b = _engine(batch_size=2)[0].generate(["07+28=", "52-38="], 3, params, seeds)
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    assert [g.prompt_index for g in a] == [0, 0, 0, 1, 1, 1]
    assert all(len(g.logprobs) == len(g.token_ids) and max(g.logprobs) <= 0 for g in a)


def test_global_seed_repeats_runs():
    """Without explicit seeds, torch.manual_seed makes sampling repeat."""
    engine = _engine()[0]
    params = SamplingParams(max_new_tokens=6, temperature=1.0)
    torch.manual_seed(11)
    first = [g.token_ids for g in engine.generate(["07+28="], 4, params)]
    torch.manual_seed(11)
    assert [g.token_ids for g in engine.generate(["07+28="], 4, params)] == first


def test_a_static_cache_samples_what_the_growing_cache_samples():
    """static_cache allocates the key/value cache once at full length (a card near its memory cap reallocates a
    growing one every step); the completions and their log-probs are the dynamic cache's."""
    params = SamplingParams(max_new_tokens=8, temperature=1.0, min_p=0.1)
    seeds = [sequence_seed(4, i) for i in range(6)]
    dynamic = _engine()[0].generate(["07+28=", "5-3="], 3, params, seeds)
    engine = make_engine("hf", *build_tiny(seed=5), [1], hf_cache="static")
    assert engine._generation_kwargs(params)["cache_implementation"] == "static"  # the setting reaches generate
    static = engine.generate(["07+28=", "5-3="], 3, params, seeds)
    assert [g.token_ids for g in static] == [g.token_ids for g in dynamic]
    for s, d in zip(static, dynamic):
        assert torch.allclose(torch.tensor(s.logprobs), torch.tensor(d.logprobs), atol=1e-5)


def test_auto_cache_is_static_on_a_gpu_and_dynamic_on_the_cpu():
    """rollout.hf_cache=auto (the default) takes the static cache where it was measured faster (a GPU) and the growing
    one on the CPU; static and dynamic are taken as said."""
    assert static_cache("auto", "cuda") and not static_cache("auto", "cpu")
    assert static_cache("static", "cpu") and not static_cache("dynamic", "cuda")
    assert not make_engine("hf", *build_tiny(seed=5), [1]).static_cache  # the CPU model here: auto is dynamic


def test_the_device_line_names_the_hf_cache(monkeypatch):
    """The line a run starts with (and the dry run) says which cache the hf engine uses and the setting behind it."""
    from mathgrpo import preflight
    from mathgrpo.model import card, common

    cpu_line = preflight.device_choices(load_config("tiny-cpu", []), brief=True)
    assert "rollouts hf (rollout.engine=hf), dynamic cache (rollout.hf_cache=auto), float32" in cpu_line
    monkeypatch.setattr(common, "resolve_device", lambda setting: torch.device("cuda"))
    monkeypatch.setattr(card, "card_of", lambda device: Card("cuda", "Tesla T4", (7, 5), 14.7))
    assert "static cache (rollout.hf_cache=auto)" in preflight.device_choices(load_config("tiny-cpu", []), brief=True)
    native = preflight.device_choices(load_config("tiny-cpu", ["rollout.engine=native", "rollout.hf_cache=dynamic"]))
    assert "native engine's kernels need sm_80+" in native and "dynamic cache (rollout.hf_cache=dynamic)" in native
