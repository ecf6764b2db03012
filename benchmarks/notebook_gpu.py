"""Execute notebooks/colab_qwen3_4b.ipynb in a Jupyter kernel on a GPU, as a T4 would run it: the Qwen3-4B shape with
random bf16 weights saved to a local model folder (the real Qwen3 tokenizer beside them), float16 and transformers
generate (a T4's choices), the allocator capped at 15 GiB, bundled GSM8K as warm-up and GRPO data, a few steps of
each and a few problems per benchmark (its parameters cell is rewritten; nothing else of the notebook changes).

Writes the executed notebook, each cell's wall time and any error to `--out`:

    PYTHONUNBUFFERED=1 PYTHONPATH=src python benchmarks/notebook_gpu.py --tokenizer .tok --out $OUT
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from datetime import datetime
from pathlib import Path

from _subject import QWEN3_4B  # benchmarks/ is on the path when this script runs

T0 = time.perf_counter()
ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "colab_qwen3_4b.ipynb"
T4 = {"model": {"dtype": "float16"}, "rollout": {"engine": "hf"}, "grpo": {"max_memory_gb": 15},
      "data": {"heldout_size": 8}, "run": {"eval_every": 2}}


TINY = {**QWEN3_4B, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16}


def random_model(tokenizer: Path, tiny: bool) -> Path:
    """A model folder: the Qwen3-4B shape (`tiny`: a small one) with random bf16 weights and the real tokenizer
    (eos <|endoftext|>, as the base model's)."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen3Config

    folder = Path(tempfile.mkdtemp(prefix="qwen3-4b-random-"))
    config = Qwen3Config(**(TINY if tiny else QWEN3_4B), eos_token_id=151643, pad_token_id=151643, bos_token_id=None)
    with torch.device("cpu" if tiny else "cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    del model
    if not tiny:
        torch.cuda.empty_cache()
    for f in Path(tokenizer).glob("tokenizer*.json"):
        shutil.copy(f, folder / f.name)
    return folder


def parameters(model: Path, args) -> str:
    """The parameters cell for this run."""
    return "\n".join([
        "# Parameters (benchmarks/notebook_gpu.py: a T4's choices and memory, emulated)",
        "INSTALL = False",
        "REPO = ''",
        f"MODEL = {str(model)!r}",
        "SFT_SOURCE = 'gsm8k'",
        "DATA_SOURCE = 'gsm8k'",
        f"SFT_STEPS = {args.sft_steps}",
        f"GRPO_STEPS = {args.grpo_steps}",
        f"MAX_NEW_TOKENS = {args.max_new_tokens}",
        "BENCH = 'gsm8k,math500'",
        f"EVAL_LIMIT = {args.eval_limit}",
        f"EXTRA = {({**T4, 'model': {**T4['model'], 'device': 'cpu'}} if args.tiny else T4)!r}",
    ])


def cell_seconds(cell) -> float:
    """A cell's execution time from the timestamps nbclient records."""
    t = cell.metadata.get("execution", {})
    start, end = t.get("iopub.status.busy"), t.get("iopub.status.idle")
    if not (start and end):
        return float("nan")
    parse = lambda s: datetime.fromisoformat(s.replace("Z", "+00:00"))  # noqa: E731
    return (parse(end) - parse(start)).total_seconds()


def save(nb, out: Path, wall: float) -> list:
    """The notebook as executed so far, and each executed code cell's time and errors."""
    import nbformat

    nbformat.write(nb, out / "colab_qwen3_4b_executed.ipynb")
    rows = []
    for i, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
        if "execution" not in cell.metadata:
            continue
        errors = [f"{o.ename}: {o.evalue}" for o in cell.get("outputs", []) if o.output_type == "error"]
        rows.append({"cell": i, "first_line": cell.source.splitlines()[0][:70] if cell.source else "",
                     "seconds": round(cell_seconds(cell), 1), "errors": errors})
    (out / "notebook_gpu.json").write_text(json.dumps({"wall_s": round(wall, 1), "cells": rows}, indent=1))
    return rows


def main() -> None:
    import nbformat
    from nbclient import NotebookClient
    from nbformat.v4 import new_code_cell

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokenizer", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cap-gib", type=float, default=15.0)
    parser.add_argument("--sft-steps", type=int, default=3)
    parser.add_argument("--grpo-steps", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--eval-limit", type=int, default=8)
    parser.add_argument("--tiny", action="store_true", help="a small model on the CPU: checks the runner and the notebook")
    parser.add_argument("--deadline", type=float, default=1e9, help="seconds after the start: no cell starts later")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    model = random_model(args.tokenizer, args.tiny)
    print(f"random model saved to {model} in {time.perf_counter() - t:.0f} s", flush=True)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    code[0].source = parameters(model, args)
    cap = (f"import torch\ntorch.cuda.set_per_process_memory_fraction({args.cap_gib} * 2**30 / "
           "torch.cuda.get_device_properties(0).total_memory)  # the emulated card's memory")
    nb.cells.insert(0, new_code_cell("import torch" if args.tiny else cap))
    if not args.tiny:
        nb.cells.append(new_code_cell("print(f'peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB')"))
    client = NotebookClient(nb, timeout=1800, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": tempfile.mkdtemp(prefix="colab-run-")}})
    t = time.perf_counter()
    with client.setup_kernel():
        for index, cell in enumerate(nb.cells):
            if time.perf_counter() - T0 > args.deadline:
                print(f"deadline: cells from {index} on not run", flush=True)
                break
            client.execute_cell(cell, index)
            rows = save(nb, args.out, time.perf_counter() - t)  # after every cell: a call cut short keeps what ran
            if cell.cell_type == "code":
                print(f"cell {index}: {rows[-1]['seconds']} s {rows[-1]['errors'] or ''}", flush=True)
    wall = time.perf_counter() - t
    rows = save(nb, args.out, wall)
    print(f"{'cell':>4} {'seconds':>8}  first line / error")
    for r in rows:
        print(f"{r['cell']:4d} {r['seconds']:8.1f}  {r['first_line']}" + (f"  ERROR {r['errors']}" if r["errors"] else ""))
    print(f"notebook wall time {wall:.0f} s; errors in {sum(bool(r['errors']) for r in rows)} cells")


if __name__ == "__main__":
    main()
