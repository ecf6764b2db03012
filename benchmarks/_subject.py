"""The subject of the GPU benchmarks: the Qwen3-4B shape (hidden 2560, 36 layers, 32 query / 8 key-value
heads of 128, intermediate 9728, vocabulary 151,936, tied embeddings). Each script draws random weights."""

QWEN3_4B = {
    "vocab_size": 151936, "hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 36,
    "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "tie_word_embeddings": True,
    "rope_theta": 1e6, "max_position_embeddings": 40960,
}
