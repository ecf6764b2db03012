"""The model: load base + tokenizer (`loading`, the built-in `tiny`), backends (`unsloth_backend`),
fused LoRA, offloaded checkpoints, and export of what training made."""
