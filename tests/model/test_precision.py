"""float16 mixed precision: trainable weights in float32, passes under autocast, dynamic loss scaling; the
optimizer step that skips overflowing float16 steps and stops on a real NaN."""

import pytest
import torch

from mathgrpo.model.precision import Precision
from mathgrpo.training.optim import MAX_SKIPPED_IN_A_ROW, OptimizerStep, make_optimizer, make_scheduler

CPU = torch.device("cpu")


def frozen_and_trainable() -> torch.nn.Module:
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 2)).half()
    model[0].requires_grad_(False)
    return model


def test_only_float16_is_mixed_and_only_trainable_weights_go_to_float32():
    model = frozen_and_trainable()
    assert Precision(torch.bfloat16, CPU).keep_trainable_fp32(model) == 0
    assert Precision(torch.float16, CPU).keep_trainable_fp32(model) == 2
    assert model[0].weight.dtype == torch.float16 and model[1].weight.dtype == torch.float32
    with Precision(torch.float16, CPU).autocast():
        out = model(torch.randn(3, 8, dtype=torch.float16))
    assert out.dtype == torch.float16  # the float32 layer ran in float16 under autocast
    with Precision(torch.bfloat16, CPU).autocast():
        assert not torch.is_autocast_enabled("cpu")
    assert not Precision(torch.bfloat16, CPU).scaler().is_enabled() and Precision(torch.float16, CPU).scaler().is_enabled()


def stepper(model: torch.nn.Module, dtype: torch.dtype) -> OptimizerStep:
    opt = make_optimizer(model, 1e-2, 0.0)
    return OptimizerStep(opt, make_scheduler(opt, "constant", 0, 10), 1.0, Precision(dtype, CPU).scaler())


def backward(step: OptimizerStep, model: torch.nn.Module, overflow: bool) -> float:
    loss = model(torch.randn(4, 8)).float().pow(2).mean()
    step.backward(loss)
    if overflow:
        model[1].weight.grad[0, 0] = float("inf")
    return loss.item()


def test_an_overflowing_float16_step_is_skipped_with_the_scale_halved():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 2))
    step = stepper(model, torch.float16)
    before = model[1].weight.detach().clone()
    trainable = list(model.parameters())
    norm, stepped = step.step(trainable, backward(step, model, overflow=True))
    assert not stepped and step.skipped == 1 and torch.equal(model[1].weight, before)
    assert step.metrics() == {"loss_scale": 2.0**15, "skipped_steps": 1}
    step.opt.zero_grad()
    norm, stepped = step.step(trainable, backward(step, model, overflow=False))
    assert stepped and norm > 0 and not torch.equal(model[1].weight, before)


def test_float16_overflow_in_every_step_stops_the_run():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 2))
    step = stepper(model, torch.float16)
    with pytest.raises(FloatingPointError, match="overflowed 24 steps in a row"):
        for _ in range(MAX_SKIPPED_IN_A_ROW):
            step.opt.zero_grad()
            step.step(list(model.parameters()), backward(step, model, overflow=True))


def test_without_loss_scaling_non_finite_gradients_and_losses_stop():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 2))
    step = stepper(model, torch.bfloat16)
    with pytest.raises(FloatingPointError, match="grad norm"):
        step.step(list(model.parameters()), backward(step, model, overflow=True))
    with pytest.raises(FloatingPointError, match="loss nan"):
        stepper(model, torch.float16).step(list(model.parameters()), float("nan"))


def test_the_scaling_state_round_trips():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 2))
    step = stepper(model, torch.float16)
    step.step(list(model.parameters()), backward(step, model, overflow=True))
    again = stepper(model, torch.float16)
    again.load_state_dict(step.state_dict())
    assert again.metrics() == step.metrics() == {"loss_scale": 2.0**15, "skipped_steps": 1}
