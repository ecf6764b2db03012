"""Training: the warm-up (`sft`) and GRPO (`grpo`) runs, `pipeline` that chains them into one run folder,
and their parts: advantages, losses, chunked log-probs, the sampler gap, checkpoints, stops, memory plans."""
