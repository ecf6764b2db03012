"""One GRPO step on the tiny model: the old-policy pass is skipped at num_iterations 1, phases are timed,
the trainer acts on the sizing's decisions (releases the kept cache, retries a step that ran out of memory
with half the micro-batch), and reference log-probs computed per micro-batch equal the whole-batch ones."""

import pytest
import torch

from mathgrpo.config import load_config
from mathgrpo.data.arith import split
from mathgrpo.training.advantages import group_advantages
from mathgrpo.training.batch import collate
from mathgrpo.training.logprobs import model_parts, token_logprobs
from mathgrpo.training.grpo import GRPORun
from mathgrpo.model.loading import apply_liger


def make_run(tmp_path, *overrides):
    cfg = load_config("tiny-cpu", ["grpo.prompts_per_step=2", "grpo.num_generations=4", "rollout.max_new_tokens=8",
                                   "run.progress=false", "run.sample_every=1000",
                                   "model.device=cpu", *overrides])  # CPU figures (fp32, no memory plan by default)
    train, _, test = split(0)
    return GRPORun(cfg, tmp_path, train[:50], test[:4])


def rollout_batch(run):
    rollouts = run.rollout()
    adv = group_advantages(rollouts.rewards, run.cfg.grpo.num_generations, "group")
    adv = adv + torch.linspace(-1, 1, len(rollouts))  # non-zero advantages so the loss has gradients
    return collate(rollouts.generations, adv, run.tok.pad_token_id, False, run.device)


def count_body_forwards(run, batch):
    """(body forward calls during the training half of a step, metrics)."""
    body, _ = model_parts(run.model)
    calls = []
    handle = body.register_forward_hook(lambda *a: calls.append(1))
    try:
        metrics = run.learn(batch, len(batch))
    finally:
        handle.remove()
    return len(calls), metrics


def test_old_policy_pass_skipped_at_one_iteration(tmp_path):
    """num_iterations 1: one body forward per micro-batch, no old log-probs; 2: an extra no-grad pass per micro-batch."""
    run = make_run(tmp_path / "a", "grpo.micro_batch_size=3")
    batch = rollout_batch(run)
    assert [len(i) for i in batch.micro_indices(3)] == [3, 3, 2]
    micro = len(batch.micro_indices(3))  # 8 completions -> 3 micro-batches
    calls, metrics = count_body_forwards(run, batch)
    assert (calls, micro) == (3, 3)
    assert batch.old_logp is None and batch.ref_logp is None
    assert metrics["micro_batch_size"] == 3

    run2 = make_run(tmp_path / "b", "grpo.micro_batch_size=3", "grpo.num_iterations=2")
    batch2 = rollout_batch(run2)
    calls2, _ = count_body_forwards(run2, batch2)
    assert calls2 == micro + 2 * micro
    assert batch2.old_logp is not None


def test_reference_logps_per_micro_batch_equal_whole_batch(tmp_path):
    """Old-policy log-probs gathered micro-batch by micro-batch match one pass over the padded batch."""
    run = make_run(tmp_path, "grpo.micro_batch_size=3", "grpo.num_iterations=2", "grpo.beta=0.1")
    batch = rollout_batch(run)
    run.update.reference_logps(batch)
    with torch.no_grad():
        whole = token_logprobs(run.model, batch.input_ids, batch.attention_mask, batch.prompt_width)
        with run.model.disable_adapter():
            ref = token_logprobs(run.model, batch.input_ids, batch.attention_mask, batch.prompt_width)
    mask = batch.completion_mask.bool()
    assert torch.allclose(batch.old_logp[mask], whole[mask], atol=1e-5)
    assert torch.allclose(batch.ref_logp[mask], ref[mask], atol=1e-5)


def test_step_reports_phase_times(tmp_path):
    """A step's metrics split its time into rollout, reference, log-probs, backward and optimizer."""
    run = make_run(tmp_path)
    m = run.train_step()
    for key in ("rollout_time", "reference_time", "logprob_time", "backward_time", "optimizer_time", "step_time"):
        assert m[key] >= 0, key
    parts = m["rollout_time"] + m["reference_time"] + m["logprob_time"] + m["backward_time"] + m["optimizer_time"]
    assert parts <= m["step_time"] + 1e-3
    assert m["micro_batch_size"] == 8  # no budget on CPU: the whole batch at once


def test_trainer_releases_the_kept_kv_cache_when_the_sizing_says_so(tmp_path):
    """The native engine keeps its KV cache between rollouts; when the sizing says it would cost training
    micro-batch size, the trainer frees it (the next rollout rebuilds it), and keeps it when there is room."""
    import dataclasses

    run = make_run(tmp_path, "grpo.max_memory_gb=1", "lora.enabled=true", "sft.full_finetune=false", "rollout.engine=native")
    assert run.engine.name == "native"
    batch = rollout_batch(run)
    held = run.engine.held_bytes()
    assert held > 0
    assert run.learn(batch, len(batch))["micro_batch_size"] == len(batch) and run.engine.held_bytes() == held  # kept
    width, plan = batch.input_ids.shape[1], run.sizing.plan
    room = plan.resident + plan.logits_chunk + 3 * width * plan.train_per_token
    extra = min(held, width * plan.train_per_token) // 2  # less than a sequence's worth, less than the cache
    run.sizing.plan = dataclasses.replace(plan, budget=room + extra)  # 3 fit alone, fewer beside the cache
    assert run.sizing.micro(len(batch), width, held).release_engine_cache
    assert run.learn(batch, len(batch))["micro_batch_size"] == 3 and run.engine.held_bytes() == 0
    rollout_batch(run)
    assert run.engine.held_bytes() == held  # rebuilt by the next rollout


def test_planned_micro_batch_that_runs_out_of_memory_is_halved_and_retried(tmp_path):
    """A CUDA out-of-memory error (injected: this machine has no GPU) in a plan-sized micro-batch of
    more than 2 sequences makes the step retry with half as many until it fits; the update equals
    the run without the error, and later steps keep the smaller size."""
    over = ("grpo.max_memory_gb=1", "lora.enabled=true", "sft.full_finetune=false")
    plain, failing = make_run(tmp_path / "a", *over), make_run(tmp_path / "b", *over)
    failing.model.load_state_dict(plain.model.state_dict())  # the same LoRA initialisation
    batch_a, batch_b = rollout_batch(plain), rollout_batch(failing)
    assert torch.equal(batch_a.input_ids, batch_b.input_ids) and len(batch_b) == 8
    body, _ = model_parts(failing.model)

    def fail_when_large(module, args, kwargs):
        mask = kwargs.get("attention_mask")
        if isinstance(mask, dict):  # a packed pass: a completion's attention sees more keys (its prompt's) than queries
            sequences = sum(k1 - k0 > q1 - q0 for q0, q1, k0, k1 in mask["full_attention"].bounds)
        else:
            sequences = kwargs.get("input_ids", args[0] if args else None).shape[0]
        if sequences > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")

    handle = body.register_forward_pre_hook(fail_when_large, with_kwargs=True)
    try:
        got = failing.learn(batch_b, len(batch_b))
    finally:
        handle.remove()
    want = plain.learn(batch_a, len(batch_a))
    assert want["micro_batch_size"] == 8 and got["micro_batch_size"] == 2
    assert abs(got["loss"] - want["loss"]) < 1e-5
    for (name, p), (_, q) in zip(plain.model.named_parameters(), failing.model.named_parameters()):
        if p.requires_grad:
            # Adam's first step is ~lr x sign(grad): summing 8 vs 4 x 2 rows moves near-zero gradients by
            # rounding, which shows up as ~1e-6 on steps of 1e-3; a wrong update would be off by ~1e-3.
            assert torch.allclose(p, q, atol=2e-5), (name, (p - q).abs().max().item())
    assert failing.sizing.micro(len(batch_b), batch_b.input_ids.shape[1]).size == 2  # kept for later steps


def test_a_packed_update_equals_the_rows_update(tmp_path):
    """Packed passes (micro-batches by prompt) and rows laid out by length (the default) take the same update:
    loss, sampler gap and LoRA weights after one step with 3 completions a micro-batch; the packed run's passes
    are one sequence each and its micro-batches keep prompts together."""
    over = ("grpo.micro_batch_size=3", "lora.enabled=true", "sft.full_finetune=false")
    packed, rows = make_run(tmp_path / "a", *over, "grpo.packed_passes=true"), make_run(tmp_path / "b", *over)
    rows.model.load_state_dict(packed.model.state_dict())
    assert not rows.update.layout.pack and packed.update.layout.pack
    batch_p, batch_r = rollout_batch(packed), rollout_batch(rows)
    assert torch.equal(batch_p.input_ids, batch_r.input_ids)
    body, _ = model_parts(packed.model)
    widths = []
    handle = body.register_forward_pre_hook(lambda m, a, k: widths.append(k["input_ids"].shape[0]), with_kwargs=True)
    try:
        got = packed.learn(batch_p, len(batch_p))
    finally:
        handle.remove()
    want = rows.learn(batch_r, len(batch_r))
    assert widths == [1, 1, 1]
    assert abs(got["loss"] - want["loss"]) < 1e-6 and abs(got["sampler_gap_mean"] - want["sampler_gap_mean"]) < 1e-6
    assert abs(got["grad_norm"] - want["grad_norm"]) < 1e-5 * want["grad_norm"]
    for (name, p), (_, q) in zip(packed.model.named_parameters(), rows.model.named_parameters()):
        if p.requires_grad:
            # Adam's first step is ~lr x sign(grad) (lr 1e-3 here): a near-zero gradient summed in another order
            # moves by up to ~3e-5 (seen); a wrong update would be off by ~1e-3 on most weights
            assert torch.allclose(p, q, atol=1e-4), (name, (p - q).abs().max().item())


def test_liger_skipped_cleanly_on_cpu(tmp_path):
    """Auto Liger does nothing on CPU (and does not need liger-kernel); use_liger=true there is a clear error."""
    from mathgrpo.config import ModelConfig
    from mathgrpo.model.common import ModelError
    from mathgrpo.model.tiny import build_tiny

    model, _ = build_tiny()
    assert apply_liger(model, ModelConfig(use_liger=None)) is False
    assert apply_liger(model, ModelConfig(use_liger=False)) is False
    try:
        apply_liger(model, ModelConfig(use_liger=True))
    except ModelError as err:
        assert "model.use_liger" in str(err) and "cpu" in str(err)
    else:
        raise AssertionError("use_liger=true on CPU must raise")


def test_sampler_gap_is_at_float32_noise_for_a_correct_engine(tmp_path, capsys):
    """The learner's log-probs of the rolled-out tokens equal the engine's (fp32 on the CPU), for both engines; no warning."""
    for engine in ("hf", "native"):
        run = make_run(tmp_path / engine, f"rollout.engine={engine}", "lora.enabled=true", "sft.full_finetune=false")
        m = run.train_step()
        assert m["sampler_gap_max"] < 1e-4 and 0 <= m["sampler_gap_mean"] < 1e-5 and abs(m["sampler_kl"]) < 1e-8, m
    assert "rollout engine's log-probs" not in capsys.readouterr().out


def test_rollouts_from_other_weights_show_a_gap_and_warn_once(tmp_path, capsys):
    """An engine sampling from weights other than the learner's (here: a copy with the output head perturbed, as a
    stale or wrong rollout would be) is caught by the gap, and the warning comes once."""
    import copy

    run = make_run(tmp_path, "rollout.engine=hf")
    stale = copy.deepcopy(run.model)
    with torch.no_grad():
        stale.lm_head.weight.add_(0.5 * torch.randn_like(stale.lm_head.weight))
    run.engine.model = stale
    first, second = run.train_step(), run.train_step()
    assert first["sampler_gap_mean"] > 0.1 and first["sampler_kl"] > 0.01
    assert capsys.readouterr().out.count("rollout engine's log-probs") == 1
    assert second["sampler_gap_mean"] > 0.1


def test_tis_weights_the_update_and_none_leaves_it(tmp_path):
    """grpo.sampler_correction=tis scales each token's policy-gradient term by min(exp(learner - sampler), cap): with
    the engine's log-probs shifted by log 2 the loss is half what it is without correction (cap 2 not reached)."""
    losses = {}
    for mode in ("none", "tis"):
        run = make_run(tmp_path / mode, "lora.enabled=true", "sft.full_finetune=false", f"grpo.sampler_correction={mode}")
        batch = rollout_batch(run)
        learner = run.update.logps(batch).detach()
        batch.sampler_logp = learner + torch.log(torch.tensor(2.0))  # the engine saw every token twice as likely
        losses[mode] = run.learn(batch, len(batch))["loss"]
    assert losses["tis"] == pytest.approx(losses["none"] / 2, rel=1e-3)


def test_training_accuracy_comes_from_the_verdicts_for_every_reward_preset(tmp_path):
    """With the unsloth preset (no reward named `correct`) a step still reports accuracy and format rate, read
    from the one verdict per completion that the rewards also use."""
    from mathgrpo.grading import judge

    run = make_run(tmp_path, "rewards.preset=unsloth")
    rollouts = run.rollout()
    assert "correct" not in rollouts.parts and len(rollouts.verdicts) == len(rollouts.generations) == 8
    expected = [judge.grade(g.text, rollouts.problems[g.prompt_index], run.fmt).correct for g in rollouts.generations]
    assert [v.correct for v in rollouts.verdicts] == expected
    m = run.train_step()
    assert 0 <= m["accuracy"] <= 1 and 0 <= m["format_rate"] <= 1


def test_rollout_lora_setting_reaches_the_native_engine(tmp_path):
    run = make_run(tmp_path, "rollout.engine=native", "rollout.lora=lowrank", "lora.enabled=true", "sft.full_finetune=false")
    assert run.engine.name == "native" and run.engine.lora == "lowrank"
    assert run.train_step()["sampler_gap_max"] < 1e-4


def test_rollout_hf_cache_setting_reaches_the_hf_engine(tmp_path):
    run = make_run(tmp_path, "rollout.engine=hf", "rollout.hf_cache=static")
    assert run.engine.name == "hf" and run.engine.static_cache
    m = run.train_step()
    assert m["sampler_gap_max"] < 1e-4 and m["completion_length"] > 0


def test_rollout_hf_cache_refuses_other_values():
    from mathgrpo.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="rollout.hf_cache"):
        load_config("tiny-cpu", ["rollout.hf_cache=paged"])


def test_float16_grpo_keeps_adapters_in_float32_and_logs_the_loss_scale(tmp_path):
    """model.dtype=float16: frozen weights float16, LoRA adapters and AdamW's state float32, the learner's pass under
    autocast, finite steps with the loss scale logged and the sampler gap at float16's noise."""
    run = make_run(tmp_path, "model.dtype=float16", "grpo.lr=1e-3")
    frozen = {p.dtype for p in run.model.parameters() if not p.requires_grad}
    trainable = {p.dtype for p in run.model.parameters() if p.requires_grad}
    assert frozen == {torch.float16} and trainable == {torch.float32}
    before = {n: p.detach().clone() for n, p in run.model.named_parameters() if p.requires_grad}
    rows = []
    for _ in range(2):
        batch = rollout_batch(run)  # advantages made non-zero: the untrained model's rewards are all equal
        rows.append(run.learn(batch, len(batch)))
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    assert rows[-1]["loss_scale"] == 2.0**16 and rows[-1]["skipped_steps"] == 0
    assert rows[-1]["sampler_gap_mean"] < 0.05  # hf engine, float16 model: rounding only
    moved = [n for n, p in run.model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert moved and all(s["exp_avg"].dtype == torch.float32 for s in run.opt.state.values())


def test_the_engine_is_built_with_the_rollout_batch_the_sizing_gives_it(tmp_path):
    """The trainer asks the sizing first and builds the engine with its rollout batch; nothing is set on it later."""
    run = make_run(tmp_path, "rollout.engine=native", "rollout.batch_size=3", "lora.enabled=true", "sft.full_finetune=false")
    assert run.engine.batch_size == run.sizing.rollout_batch_size(run.engine.shares_prompt_cache) == 3


def test_problems_whose_prompts_do_not_fit_are_left_out_and_said(tmp_path, capsys):
    """A prompt that with rollout.max_new_tokens runs past model.max_seq_length is left out of training and of
    the held-out set, in a line that names the settings; a source with none that fits stops with what to change."""
    from dataclasses import replace

    from mathgrpo.data import DataError

    train, _, test = split(0)
    long = [replace(p, id=f"long{i}", question=p.question + " " * 40) for i, p in enumerate(train[:5])]
    cfg = ["grpo.prompts_per_step=2", "grpo.num_generations=2", "rollout.max_new_tokens=16", "run.progress=false",
           "model.device=cpu", "model.max_seq_length=48"]
    run = GRPORun(load_config("tiny-cpu", cfg), tmp_path / "a", train[:20] + long, test[:3] + long[:2])
    out = capsys.readouterr().out
    assert [p.id for p in run.train_problems] == [p.id for p in train[:20]]
    assert [p.id for p in run.heldout] == [p.id for p in test[:3]]
    assert "5 of 25 training problems have prompts that with rollout.max_new_tokens=16 take more than " \
           "model.max_seq_length=48" in out and "2 of 5 held-out problems" in out
    with pytest.raises(DataError, match="none is left; raise model.max_seq_length to"):
        GRPORun(load_config("tiny-cpu", cfg), tmp_path / "b", long, test[:3])
