"""The merged model as one GGUF file (llama.cpp, Ollama, LM Studio) through the `gguf` package.

Tensor names come from gguf's own name map for the architecture (`gguf.get_tensor_name_map`);
the architecture's settings go in the `<arch>.*` keys that llama.cpp reads. Two conventions of
llama.cpp's converter that the package does not apply are applied here:

- Llama's query and key rows are reordered from Hugging Face's rotate-half layout to the
  interleaved pairs llama.cpp's rope expects for that architecture; Qwen2 and Qwen3 use the
  rotate-half ("neox") rope in llama.cpp too, so theirs stay as they are.
- One-dimensional tensors (norms, biases) stay float32; only matrices are stored as f16 or q8_0.
  A tied output layer is not written: llama.cpp reuses the token embedding.

Tokenizers: a byte-level BPE (Qwen2/Qwen3, Llama 3) is written as llama.cpp's `gpt2` model with its
merges (read by gguf's `SpecialVocab`); the built-in character tokenizer as a `gpt2` model with no
merges (one inert merge: llama.cpp requires the key), each character in the byte-to-unicode alphabet
that model expects, and the format markers as user-defined tokens, so that every character and every
marker should be one token as in transformers (not checked against llama.cpp here). Other tokenizers are refused by name.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..diskio import writing
from .common import ModelError

ARCHS = {"qwen3": "QWEN3", "qwen2": "QWEN2", "llama": "LLAMA"}
QUANTS = ("q8_0", "f16")
# llama.cpp refuses a `gpt2` tokenizer without merges and gguf cannot write an empty array: the character
# tokenizer gets one merge of two NUL bytes (GPT-2 alphabet "Ā"), which no token and no text uses.
INERT_MERGE = "\u0100 \u0100"
PRE_TOKENIZER = {"qwen3": "qwen2", "qwen2": "qwen2", "llama": "llama-bpe"}


class GGUFExportError(ModelError):
    """A model or tokenizer this export cannot write, with the reason."""


def _gguf() -> Any:
    try:
        import gguf
    except ImportError as exc:
        raise GGUFExportError("GGUF export needs the gguf package: pip install 'mathgrpo[gguf]'") from exc
    return gguf


def llama_rope_permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Rows of a Llama q/k projection from rotate-half order (x[i], x[i + d/2]) to interleaved pairs (x[2i], x[2i+1])."""
    half = w.shape[0] // n_head // 2
    return w.reshape(n_head, 2, half, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _gguf_tensors(model: Any, arch: str) -> list:
    """(gguf name, float32 numpy array) for every weight of `model`, in llama.cpp's layout."""
    gguf = _gguf()
    config = model.config
    names = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, ARCHS[arch]), config.num_hidden_layers)
    out = []
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        target = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if target is None:
            raise GGUFExportError(f"no GGUF name for {name!r} in gguf's {arch} tensor map")
        tensor = tensor.detach().float().cpu()
        if arch == "llama" and name.endswith(("self_attn.q_proj.weight", "self_attn.k_proj.weight")):
            heads = config.num_attention_heads if "q_proj" in name else config.num_key_value_heads
            tensor = llama_rope_permute(tensor, heads)
        out.append((target, tensor.numpy()))
    return out


def _encode(gguf: Any, data: np.ndarray, quant: str) -> tuple:
    """(array to write, its GGML type): matrices in `quant`, vectors in float32."""
    Q = gguf.GGMLQuantizationType
    if data.ndim == 1:
        return data.astype(np.float32), Q.F32
    if quant == "q8_0" and data.shape[-1] % gguf.GGML_QUANT_SIZES[Q.Q8_0][0] == 0:
        return gguf.quants.quantize(data, Q.Q8_0), Q.Q8_0
    return data.astype(np.float16), Q.F16


def _add_architecture(writer: Any, config: Any, n_vocab: int) -> None:
    """The `<arch>.*` hyper-parameters llama.cpp reads."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    theta = getattr(config, "rope_theta", None) or (getattr(config, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
    writer.add_rope_freq_base(float(theta))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(n_vocab)


def bytes_to_unicode() -> dict:
    """GPT-2's byte -> printable character table, the alphabet of llama.cpp's `gpt2` tokenizer model."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _token_lists(tok: Any, model_type: str, n_vocab: int) -> tuple:
    """(tokens, types) for ids 0..n_vocab-1; special tokens CONTROL, added ones USER_DEFINED, the rest NORMAL.

    Embedding rows past the tokenizer's last id (padded vocabularies) get `[PAD<id>]`, UNUSED.
    """
    from gguf import TokenType

    by_id = {i: t for t, i in tok.get_vocab().items()}
    added = set(tok.get_added_vocab())
    special = set(tok.all_special_tokens)
    table = bytes_to_unicode()
    tokens, types = [], []
    for i in range(n_vocab):
        text = by_id.get(i, f"[PAD{i}]")
        if text in special:
            kind = TokenType.CONTROL
        elif text in added:
            kind = TokenType.USER_DEFINED
        else:
            kind = TokenType.NORMAL if i in by_id else TokenType.UNUSED
            if model_type == "WordLevel":  # the character tokenizer: characters in the gpt2 alphabet
                text = "".join(table[b] for b in text.encode("utf-8"))
        tokens.append(text)
        types.append(kind)
    return tokens, types


def _add_tokenizer(writer: Any, tok: Any, arch: str, n_vocab: int) -> None:
    """Tokens, types, scores, merges, special ids and chat template (see the module doc)."""
    gguf = _gguf()
    with tempfile.TemporaryDirectory() as tmp:
        tok.save_pretrained(tmp)
        spec = json.loads((Path(tmp) / "tokenizer.json").read_text())
        model_type = spec["model"]["type"]
        byte_level = "ByteLevel" in json.dumps(spec.get("pre_tokenizer")) and model_type == "BPE"
        if model_type != "WordLevel" and not byte_level:
            raise GGUFExportError(f"GGUF export supports byte-level BPE and the built-in character tokenizer, not a {model_type} tokenizer")
        tokens, types = _token_lists(tok, model_type, n_vocab)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(PRE_TOKENIZER[arch] if byte_level else "default")
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        writer.add_token_scores([0.0] * len(tokens))
        special = gguf.SpecialVocab(tmp, load_merges=byte_level, n_vocab=len(tokens))
        if not byte_level:
            special.merges = [INERT_MERGE]
        special.add_to_gguf(writer, quiet=True)


def write_gguf(model: Any, tok: Any, path: Path, quant: str = "q8_0") -> dict:
    """Write the (merged, plain transformers) `model` and `tok` to `path`; {gguf name: GGML type name}."""
    gguf = _gguf()
    if quant not in QUANTS:
        raise GGUFExportError(f"quant {quant!r}: choose one of {', '.join(QUANTS)}")
    arch = model.config.model_type
    if arch not in ARCHS:
        raise GGUFExportError(f"GGUF export supports {', '.join(ARCHS)}, not {arch!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[getattr(gguf.MODEL_ARCH, ARCHS[arch])])
    writer.add_name(Path(str(getattr(model.config, "_name_or_path", "") or "mathgrpo")).name or "mathgrpo")
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if quant == "q8_0" else gguf.LlamaFileType.MOSTLY_F16)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    n_vocab = model.get_input_embeddings().weight.shape[0]
    _add_architecture(writer, model.config, n_vocab)
    _add_tokenizer(writer, tok, arch, n_vocab)
    kinds = {}
    for name, data in _gguf_tensors(model, arch):
        encoded, kind = _encode(gguf, data, quant)
        writer.add_tensor(name, encoded, raw_dtype=kind)
        kinds[name] = kind.name
    with writing(path, tmp):  # the writer opens the file only here
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        tmp.replace(path)
    return kinds
