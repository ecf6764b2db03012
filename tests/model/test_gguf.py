"""GGUF export: every tensor read back with gguf's reader equals the merged model's, metadata and tokenizer present."""

import json
import time

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from mathgrpo.cli import main
from mathgrpo.model.export import export
from mathgrpo.model.gguf_export import GGUFExportError, write_gguf
from mathgrpo.model.tiny import build_tokenizer
from test_loading import _adapter, _saved_base

Q = gguf.GGMLQuantizationType
SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)


def _read(path):
    """{name: (shape as torch writes it, float32 values, GGML type)} and {key: value} of a GGUF file."""
    reader = gguf.GGUFReader(path)
    tensors = {}
    for t in reader.tensors:
        values = gguf.quants.dequantize(t.data, t.tensor_type) if t.tensor_type == Q.Q8_0 else np.asarray(t.data, np.float32)
        tensors[t.name] = (tuple(int(n) for n in reversed(t.shape)), values.reshape(tuple(reversed(t.shape))), t.tensor_type)
    return tensors, {k: f.contents() for k, f in reader.fields.items()}


def _check_values(got, want, kind, quant):
    """f16 matrices equal the weights rounded to f16; q8_0 within one quantisation step of their block; vectors exact."""
    if kind == Q.F32:
        assert np.array_equal(got, want)
    elif kind == Q.F16:
        assert quant == "f16" and np.array_equal(got, want.astype(np.float16).astype(np.float32))
    else:
        assert kind == Q.Q8_0 and quant == "q8_0"
        step = np.abs(want.reshape(-1, 32)).max(axis=1, keepdims=True) / 127
        # half a step of rounding, plus the f16 rounding of the block scale over up to 127 steps (2^-11 * 127)
        assert (np.abs(got - want).reshape(-1, 32) <= step * (0.5 + 127 / 2048) + 1e-7).all()


@pytest.mark.parametrize("quant", ["f16", "q8_0"])
def test_tiny_export_reads_back_as_the_merged_model(tmp_path, quant):
    """`export --merged --gguf`: names from gguf's qwen3 map, shapes and values of the merged safetensors."""
    base_dir = _saved_base(tmp_path)
    _adapter(tmp_path, base_dir)
    start = time.perf_counter()
    export(str(tmp_path / "adapter"), tmp_path / "out", merged=True, dtype="float32", gguf_quant=quant)
    print(f"tiny export with GGUF ({quant}): {time.perf_counter() - start:.2f} s")
    merged = load_file(tmp_path / "out" / "merged" / "model.safetensors")
    tensors, meta = _read(tmp_path / "out" / f"model-{quant}.gguf")
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN3, 2)
    want = {names.get_name(n, try_suffixes=(".weight",)): w for n, w in merged.items() if n != "lm_head.weight"}
    assert set(tensors) == set(want) and "output.weight" not in tensors  # tied: llama.cpp reuses token_embd
    for name, (shape, values, kind) in tensors.items():
        assert shape == tuple(want[name].shape), name
        _check_values(values, want[name].numpy(), kind, quant)
    assert meta["general.architecture"] == "qwen3"
    assert meta["general.file_type"] == (gguf.LlamaFileType.MOSTLY_Q8_0 if quant == "q8_0" else gguf.LlamaFileType.MOSTLY_F16)
    expect = {"context_length": 4096, "embedding_length": 128, "block_count": 2, "feed_forward_length": 512,
              "attention.head_count": 4, "attention.head_count_kv": 2, "attention.key_length": 32,
              "rope.dimension_count": 32, "rope.freq_base": 10000.0, "attention.layer_norm_rms_epsilon": pytest.approx(1e-6)}
    for key, value in expect.items():
        assert meta[f"qwen3.{key}"] == value, key


def test_character_tokenizer_in_the_gpt2_alphabet(tmp_path):
    """Every id has a token; characters in GPT-2's byte alphabet, markers user-defined, special ids set."""
    base_dir = _saved_base(tmp_path)
    export(str(base_dir), tmp_path / "out", merged=False, gguf_quant="f16")
    _, meta = _read(tmp_path / "out" / "model-f16.gguf")
    tok = build_tokenizer()
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "default"
    assert len(tokens) == len(tok) == len(meta["tokenizer.ggml.scores"]) == meta["qwen3.vocab_size"]
    ids = tok.get_vocab()
    assert tokens[ids[" "]] == "\u0120" and tokens[ids["\n"]] == "\u010a" and tokens[ids["7"]] == "7"
    assert types[ids["[ANSWER]"]] == gguf.TokenType.USER_DEFINED and tokens[ids["[ANSWER]"]] == "[ANSWER]"
    assert types[tok.eos_token_id] == gguf.TokenType.CONTROL and types[ids["7"]] == gguf.TokenType.NORMAL
    assert meta["tokenizer.ggml.eos_token_id"] == tok.eos_token_id and meta["tokenizer.ggml.padding_token_id"] == tok.pad_token_id
    assert len(meta["tokenizer.ggml.merges"]) == 1  # the inert merge llama.cpp's gpt2 loader requires


def _byte_level_bpe():
    """A byte-level BPE tokenizer (the kind Qwen2/Qwen3 and Llama 3 ship) trained on a few lines here."""
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(["12 + 34 = 46, so the answer is 46."] * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>")


def test_llama_rows_interleaved_and_qwen2_biases(tmp_path):
    """Llama: q/k rows in llama.cpp's interleaved rope order, untied output written; Qwen2: biases, BPE merges."""
    torch.manual_seed(0)
    tok = _byte_level_bpe()
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), tie_word_embeddings=False, **SHAPE))
    qwen2 = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok), tie_word_embeddings=True, **SHAPE))
    write_gguf(llama, tok, tmp_path / "llama.gguf", "f16")
    write_gguf(qwen2, tok, tmp_path / "qwen2.gguf", "q8_0")
    got, meta = _read(tmp_path / "llama.gguf")
    state = llama.state_dict()
    assert "output.weight" in got and meta["llama.rope.dimension_count"] == 16
    for proj, heads, short in (("q_proj", 4, "q"), ("k_proj", 2, "k")):
        hf = state[f"model.layers.1.self_attn.{proj}.weight"].numpy().astype(np.float16).astype(np.float32)
        rows = got[f"blk.1.attn_{short}.weight"][1]
        d = 64 // 4
        for h in range(heads):  # llama.cpp pairs (2i, 2i+1) are HF's (i, i + d/2) within each head
            assert np.array_equal(rows[h * d:(h + 1) * d:2], hf[h * d:h * d + d // 2])
            assert np.array_equal(rows[h * d + 1:(h + 1) * d:2], hf[h * d + d // 2:(h + 1) * d])
    assert np.array_equal(got["blk.0.attn_v.weight"][1], state["model.layers.0.self_attn.v_proj.weight"].numpy().astype(np.float16).astype(np.float32))
    got, meta = _read(tmp_path / "qwen2.gguf")
    state = qwen2.state_dict()
    assert got["blk.0.attn_q.bias"][2] == Q.F32 and np.array_equal(got["blk.0.attn_q.bias"][1], state["model.layers.0.self_attn.q_proj.bias"].numpy())
    _check_values(got["blk.0.attn_q.weight"][1], state["model.layers.0.self_attn.q_proj.weight"].numpy(), Q.Q8_0, "q8_0")
    assert meta["tokenizer.ggml.pre"] == "qwen2" and len(meta["tokenizer.ggml.merges"]) == len(json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]) > 10
    assert meta["tokenizer.ggml.tokens"] == [t for t, _ in sorted(tok.get_vocab().items(), key=lambda kv: kv[1])]


def test_unsupported_architecture_and_cli(tmp_path, capsys):
    """Another architecture is refused by name, before a file is written; the CLI writes `model-<quant>.gguf`."""
    model = MistralForCausalLM(MistralConfig(vocab_size=len(build_tokenizer()), **SHAPE))
    with pytest.raises(GGUFExportError, match="mistral"):
        write_gguf(model, build_tokenizer(), tmp_path / "m.gguf")
    assert not list(tmp_path.iterdir())
    base_dir = _saved_base(tmp_path)
    assert main(["export", str(base_dir), "--gguf", "--quant", "q8_0", "--out", str(tmp_path / "cli")]) == 0
    assert "GGUF (q8_0)" in capsys.readouterr().out and (tmp_path / "cli" / "model-q8_0.gguf").stat().st_size > 100_000
