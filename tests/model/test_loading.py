"""Model loading, LoRA, saving, and export: a merged model equals base + adapter."""

import os
import subprocess
import sys
import warnings

import pytest
import torch
from transformers import AutoModelForCausalLM

from mathgrpo.config import LoraConfig, ModelConfig
from mathgrpo.model.export import export
from mathgrpo.model.common import ModelError, quiet_transformers
from mathgrpo.model.loading import add_lora, checkpoint_layers, count_parameters, load_any, load_base, save_trainable, stop_token_ids
from mathgrpo.model.tiny import build_tiny


def _saved_base(tmp_path):
    model, tok = build_tiny(seed=0)
    save_trainable(model, tok, tmp_path / "base")
    return tmp_path / "base"


def _adapter(tmp_path, base_dir):
    """A LoRA adapter on the saved base with non-zero weights, saved next to it."""
    model, tok = load_base(ModelConfig(name=str(base_dir), device="cpu"))
    model = add_lora(model, LoraConfig(r=4, alpha=8))
    torch.manual_seed(0)
    for n, p in model.named_parameters():
        if "lora_" in n:
            torch.nn.init.normal_(p, std=0.1)
    save_trainable(model, tok, tmp_path / "adapter")
    return model, tmp_path / "adapter"


def test_tiny_and_local_folder_load(tmp_path):
    """The built-in tiny model loads, saves, and loads back from its folder with the same weights."""
    base_dir = _saved_base(tmp_path)
    model, tok = load_base(ModelConfig(name=str(base_dir), device="cpu"))
    ref, _ = build_tiny(seed=0)
    ids = torch.tensor([[3, 4, 5, 6]])
    assert torch.allclose(model(ids).logits, ref(ids).logits, atol=1e-6)
    assert stop_token_ids(tok) == [tok.eos_token_id]


def test_lora_targets_and_errors():
    """LoRA trains only adapters on all projections; unknown target names are a clear error."""
    model, _ = build_tiny()
    peft_model = add_lora(model, LoraConfig(r=4, alpha=8))
    trainable, total = count_parameters(peft_model)
    # 2 layers x (q,k,v,o,gate,up,down) adapters of rank 4
    expected = 2 * 4 * ((128 + 128) + (128 + 64) + (128 + 64) + (128 + 128) + (128 + 512) * 2 + (512 + 128))
    assert trainable == expected and total > trainable
    with pytest.raises(ModelError, match="not modules of this model"):
        add_lora(build_tiny()[0], LoraConfig(target_modules=["qkv"]))


def test_checkpoint_layers_under_this_transformers_name():
    """Every decoder layer of a LoRA model is checkpointed, without transformers' deprecation warning."""
    model = add_lora(build_tiny()[0], LoraConfig(r=4, alpha=8))
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        checkpoint_layers(model)
    layers = model.base_model.model.model.layers
    assert len(layers) == 2 and all(layer.gradient_checkpointing for layer in layers)


def test_quiet_transformers_hides_the_deprecation_peft_raises_on_every_lora_model():
    """The API and the CLI (both call quiet_transformers) show no FutureWarning a user cannot act on."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet_transformers()
        add_lora(build_tiny()[0], LoraConfig(r=4, alpha=8))
    assert not [w for w in seen if issubclass(w.category, FutureWarning)]


def test_missing_model_message(tmp_path):
    """A model that cannot be found names itself and suggests what to do."""
    with pytest.raises(ModelError, match="no-such-model"):
        load_base(ModelConfig(name=str(tmp_path / "no-such-model"), device="cpu"))


def test_a_hub_id_the_hub_cannot_give_fails_at_once_with_what_to_do(tmp_path):
    """A hub id not in the cache while the hub refuses connections: the tokenizer is None and loading raises the
    one line that says so, before transformers' loaders retry the hub for most of a minute."""
    code = ("from mathgrpo.config import ModelConfig\n"
            "from mathgrpo.model.loading import load_base, load_tokenizer\n"
            "cfg = ModelConfig(name='owner/absent', device='cpu')\n"
            "print('tokenizer', load_tokenizer(cfg.name, cfg))\n"
            "try:\n    load_base(cfg)\nexcept Exception as err:\n    print(type(err).__name__, err)\n")
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf")}
    env.pop("HF_HUB_OFFLINE", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300).stdout
    assert "tokenizer None" in out
    assert "ModelError cannot load model 'owner/absent': not in the local hub cache and the hub did not answer" in out
    assert "set model.name (or --model) to a local folder" in out


@pytest.mark.parametrize("dtype, tol", [("float32", 1e-4), ("bfloat16", 0.1)])
def test_merged_export_equals_base_plus_adapter(tmp_path, dtype, tol):
    """Plain transformers loads the merged export; its logits equal the PEFT model's."""
    base_dir = _saved_base(tmp_path)
    peft_model, adapter_dir = _adapter(tmp_path, base_dir)
    export(str(adapter_dir), tmp_path / "out", merged=True, dtype=dtype)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "merged", dtype=torch.float32)
    assert (tmp_path / "out" / "adapter" / "adapter_config.json").exists()
    ids = torch.randint(3, 100, (2, 10))
    with torch.no_grad():
        want = peft_model(ids).logits
        got = merged(ids).logits
        base = load_any(str(base_dir))[0](ids).logits
    assert (want - base).abs().max() > 0.3  # the adapter changes the output: the check below means something
    assert (got - want).abs().max() < tol


def test_cudnn_attention_is_off_only_inside_a_training_pass_when_turned_off():
    """cuDNN's SDPA backend stays on by default (batches avoid its NaN widths); model.cudnn_attention=false turns it
    off on a GPU for the training pass only, and the process's setting is back after it."""
    from mathgrpo.model.loading import training_attention

    before = torch.backends.cuda.cudnn_sdp_enabled()
    try:
        torch.backends.cuda.enable_cudnn_sdp(True)
        with training_attention(ModelConfig(), torch.device("cuda")) as off:
            assert not off and torch.backends.cuda.cudnn_sdp_enabled()
        with training_attention(ModelConfig(cudnn_attention=False), torch.device("cpu")) as off:
            assert not off and torch.backends.cuda.cudnn_sdp_enabled()
        with training_attention(ModelConfig(cudnn_attention=False), torch.device("cuda")) as off:
            assert off and not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.cudnn_sdp_enabled()
        with pytest.raises(RuntimeError), training_attention(ModelConfig(cudnn_attention=False), torch.device("cuda")):
            raise RuntimeError("a failed pass")
        assert torch.backends.cuda.cudnn_sdp_enabled()
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before)


def test_export_keeps_the_base_dtype_and_a_portable_base(tmp_path, monkeypatch):
    """`mathgrpo export --merged` of an fp32 model stays fp32 (equal logits); the adapter loads after the run is gone."""
    import json
    import shutil

    from mathgrpo.cli import main

    from mathgrpo.config import load_config, save_config

    run = tmp_path / "run"
    _saved_base(run / "sft")  # a full-weight warm-up model inside a run folder
    (run / "sft" / "base").rename(run / "sft" / "model")
    save_config(load_config(None), run / "config.yaml")
    peft_model, adapter_dir = _adapter(run, run / "sft" / "model")
    out = tmp_path / "exp"
    assert main(["export", str(adapter_dir), "--merged", "--out", str(out)]) == 0
    assert json.loads((out / "merged" / "config.json").read_text())["dtype"] == "float32"
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == "../base"
    shutil.rmtree(tmp_path / "run")  # the training run's folder (often temporary) is gone
    moved = tmp_path / "elsewhere" / "exp"
    shutil.move(out, moved)
    monkeypatch.chdir(tmp_path)
    ids = torch.randint(3, 100, (2, 10))
    with torch.no_grad():
        want = peft_model(ids).logits
        assert (load_any(str(moved / "adapter"))[0](ids).logits - want).abs().max() < 1e-5
        merged = AutoModelForCausalLM.from_pretrained(moved / "merged")
        assert merged.dtype == torch.float32 and (merged(ids).logits - want).abs().max() < 1e-4
