"""Evaluation: benchmarks (`benchmark`), held-out accuracy during training (`heldout`), pass@1 / maj@k /
pass@k (`metrics`), reports, comparisons of two results folders, and weight fingerprints."""
