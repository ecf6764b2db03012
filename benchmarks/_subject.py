"""The subject of the GPU benchmarks: the Qwen3-4B shape (hidden 2560, 36 layers, 32 query / 8 key-value
heads of 128, intermediate 9728, vocabulary 151,936, tied embeddings). Each script draws random weights."""

QWEN3_4B = {
    "vocab_size": 151936, "hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 36,
    "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "tie_word_embeddings": True,
    "rope_theta": 1e6, "max_position_embeddings": 40960,
}


def cuda_ms(fn, iters: int = 20) -> float:
    """Mean milliseconds of fn() over `iters` calls after three warm-up calls, by CUDA events."""
    import torch

    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


CATEGORIES = (  # kernel-name substrings, first match wins
    ("attention", ("flash", "fmha", "attention")),
    ("GEMM", ("gemm", "nvjet", "sm90_xmma", "cutlass", "matmul", "splitk")),
    ("log-softmax / cross-entropy", ("softmax", "logsumexp", "gather", "scatter", "cross_entropy", "logprob")),
    ("copies / casts", ("copy", "memcpy", "cast", "convert", "cat")),  # Memcpy HtoD/DtoH: host offload
    ("norm / rope / swiglu (Liger, Unsloth, Triton)", ("rms", "rope", "swiglu", "silu", "triton", "layernorm")),
)


def kernel_profile(run, path) -> dict:
    """GPU kernel time of one call of `run()` by category (ms), after one unprofiled call; the top kernels
    written to `path`."""
    import time

    import torch
    from torch.profiler import ProfilerActivity, profile

    run()
    torch.cuda.synchronize()
    t = time.perf_counter()
    with profile(activities=[ProfilerActivity.CUDA]) as p:
        run()
        torch.cuda.synchronize()
    wall = time.perf_counter() - t
    sums: dict = {}
    for e in p.key_averages():
        ms = getattr(e, "self_device_time_total", 0) / 1000
        if not ms:
            continue
        name = e.key.lower()
        cat = next((c for c, keys in CATEGORIES if any(k in name for k in keys)), "other elementwise / reductions")
        sums[cat] = sums.get(cat, 0.0) + ms
    path.write_text(p.key_averages().table(sort_by="self_device_time_total", row_limit=40))
    return {"wall_ms_profiled": wall * 1000, "kernel_ms": sum(sums.values()),
            "by_category_ms": dict(sorted(sums.items(), key=lambda kv: -kv[1]))}
