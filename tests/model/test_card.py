"""The card's choices: dtype, rollout engine and rollout precision from the compute capability, with the reason."""

import torch

from mathgrpo.model.card import Card, card_of, choose_dtype, choose_engine, choose_precision, fp8_problem

T4 = Card("cuda", "Tesla T4", (7, 5), 14.7)
L4 = Card("cuda", "NVIDIA L4", (8, 9), 22.0)
A100 = Card("cuda", "NVIDIA A100-SXM4-40GB", (8, 0), 39.4)
H100 = Card("cuda", "NVIDIA H100 80GB HBM3", (9, 0), 79.1)
CPU = Card("cpu", "cpu")


def test_auto_dtype_is_bf16_only_where_the_card_has_it():
    assert choose_dtype("auto", T4)[0] == torch.float16
    assert "sm_75 has no native bfloat16" in choose_dtype("auto", T4)[1]
    assert [choose_dtype("auto", c)[0] for c in (A100, L4, H100)] == [torch.bfloat16] * 3
    assert choose_dtype("auto", CPU)[0] == torch.float32


def test_an_explicit_dtype_is_kept_whatever_the_card():
    assert choose_dtype("bfloat16", T4) == (torch.bfloat16, "model.dtype=bfloat16")
    assert choose_dtype("float16", H100)[0] == torch.float16


def test_auto_engine_is_native_only_where_its_kernels_run():
    engine, why = choose_engine("auto", T4)
    assert engine == "hf" and "need sm_80+" in why and "sm_75" in why
    assert choose_engine("auto", H100) == ("native", "auto: sm_90 runs its kernels")
    engine, why = choose_engine("auto", L4)
    assert engine == "native" and "tested on sm_90 only, not on sm_89" in why
    assert choose_engine("auto", CPU)[0] == "hf"
    assert choose_engine("auto", H100, sharded=True)[0] == "hf"
    assert choose_engine("native", T4) == ("native", "rollout.engine=native")  # make_engine refuses it with the reason


def test_card_of_the_cpu_and_its_description():
    card = card_of(torch.device("cpu"))
    assert card == CPU and card.describe() == "cpu" and not card.kernels and not card.native_bf16
    assert H100.describe() == "NVIDIA H100 80GB HBM3 (sm_90, 79.1 GiB)" and H100.tested and not L4.tested


def test_the_card_decides_whether_fp8_runs_and_auto_never_picks_it():
    assert (H100.fp8, L4.fp8, A100.fp8, T4.fp8, CPU.fp8) == (True, True, False, False, False)
    assert choose_precision("fp8", H100) == ("fp8", "rollout.precision=fp8; sm_90 multiplies float8")
    assert choose_precision("auto", H100) == ("model dtype", "rollout.precision=auto")
    precision, why = choose_precision("fp8-kv", A100)
    assert precision is None and "8.9" in why and "sm_80" in why
    assert "not known" in fp8_problem(Card("cuda", "a GPU not visible here"))
