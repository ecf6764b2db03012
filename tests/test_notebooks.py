"""The notebooks under notebooks/: the CPU quick start runs end to end in a real Jupyter kernel (shortened GRPO),
every cell without an error; the Colab notebook's code parses (it needs a GPU: it was run on one, see docs/guide.md)."""

import ast
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def code(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code"]


def outputs_text(cell) -> str:
    parts = []
    for o in cell.get("outputs", []):
        parts.append(o.get("text", ""))
        parts += [str(v) for k, v in o.get("data", {}).items() if k.startswith("text/")]
    return "\n".join(parts)


@pytest.mark.slow
def test_cpu_quick_start_runs_in_a_kernel(tmp_path):
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOKS / "quickstart_cpu.ipynb", as_version=4)
    params = code(nb)[0]
    assert "GRPO_STEPS = 200" in params.source
    params.source = params.source.replace("GRPO_STEPS = 200", "GRPO_STEPS = 8")
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in code(nb) for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, errors
    text = "\n".join(outputs_text(c) for c in code(nb))
    assert "held-out accuracy:" in text and "procedural_arith@test" in text and "model-q8_0.gguf" in text
    assert any("image/png" in o.get("data", {}) for c in code(nb) for o in c.get("outputs", []))  # the curves
    assert any(o.get("data", {}).get("text/html", "").startswith("<iframe") for c in code(nb) for o in c.get("outputs", []))
    assert (tmp_path / "results" / "quickstart-grpo" / "report.html").is_file()
    widgets = [o for c in code(nb) for o in c.get("outputs", []) if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert widgets and "ipywidgets" not in text  # the progress bars are live widgets, no "install ipywidgets" warning


@pytest.mark.parametrize("name", ["quickstart_cpu.ipynb", "colab_qwen3_4b.ipynb"])
def test_notebook_code_parses_and_uses_the_api(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    for cell in code(nb):
        ast.parse(cell.source)
    assert "mathgrpo.train(" in "\n".join(c.source for c in code(nb))
