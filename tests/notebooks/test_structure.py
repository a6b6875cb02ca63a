"""Fast checks on the committed notebooks: no outputs, a parameters cell, claims, figures."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
EXPECTED = [
    "00-quickstart",
    "01-weights",
    "02-online-learning",
    "03-fine-tuning",
    "04-feedback-session",
    "05-continual-learning",
    "06-optimizers",
    "07-mcp",
    "08-teach-a-real-model",
    "09-chat-feedback",
    "10-labeling",
]


def test_every_notebook_is_there() -> None:
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == EXPECTED


@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_shape(name: str) -> None:
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert nb.cells[0].cell_type == "markdown" and "Claim" in nb.cells[0].source, (
        f"{name}: the first cell should state the claim"
    )
    for i, cell in enumerate(code):
        assert not cell.outputs and cell.execution_count is None, (
            f"{name}: code cell {i} is committed with outputs; clear them"
        )
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{name}: needs exactly one cell tagged 'parameters'"
    assert "results_path = None" in tagged[0].source, f"{name}: parameters lack results_path"
    asserts = [ln for c in code for ln in c.source.splitlines() if ln.startswith("assert ")]
    assert asserts, f"{name}: no assert cell checks the notebook's claim"
    assert any('renderer="plotly_mimetype"' in c.source for c in code[-3:]), (
        f"{name}: the last cells should show a static figure"
    )
