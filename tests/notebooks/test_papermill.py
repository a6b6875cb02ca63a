"""The notebooks as integration tests: run each with other parameters, check what it recorded.

Each notebook takes a ``results_path`` parameter and writes its measured results there as
JSON; a failing cell (an assert cell stating the notebook's claim, or any error) fails the
test with the notebook's name, the cell and the error. ``pytest --nbmake notebooks/`` runs
every notebook with its defaults; here a few run again with another seed, loss function,
optimizer or model family, so the claims are not an accident of one setting.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

papermill = pytest.importorskip("papermill")

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
KERNEL = "python3"  # jupyter_client runs it with the interpreter that runs the tests

Results = dict[str, Any]


def run_notebook(name: str, parameters: dict[str, Any], tmp_path: Path) -> Results:
    """Execute ``notebooks/<name>.ipynb`` with ``parameters``; return the results it recorded."""
    results_path = tmp_path / f"{name}.json"
    output = tmp_path / f"{name}.out.ipynb"
    failure: papermill.PapermillExecutionError | None = None
    try:
        papermill.execute_notebook(
            str(NOTEBOOKS / f"{name}.ipynb"),
            str(output),
            parameters={**parameters, "results_path": str(results_path)},
            kernel_name=KERNEL,
            cwd=str(tmp_path),
            progress_bar=False,
            execution_timeout=300,
        )
    except papermill.PapermillExecutionError as e:
        failure = e
    if failure is not None:  # outside the except block: no chained papermill traceback
        first_line = next((ln for ln in failure.source.splitlines() if ln.strip()), "")
        pytest.fail(
            f"{name}.ipynb with {parameters}: cell {failure.cell_index} "
            f"(In [{failure.exec_count}], starting {first_line!r}) raised "
            f"{failure.ename}: {failure.evalue}\nexecuted notebook kept at {output}",
            pytrace=False,
        )
    assert results_path.is_file(), f"{name}.ipynb ran but recorded no results at {results_path}"
    results: Results = json.loads(results_path.read_text())
    return results


def check_quickstart(r: Results) -> None:
    assert r["optimizer"] == "sgd"
    assert r["loss_after"] < 0.5 * r["loss_before"], r
    assert r["last_update_loss"] < r["first_update_loss"], r


def check_weights(r: Results) -> None:
    assert r["preset"] == "tiny-gpt2"
    assert r["all_exact"] and r["round_trips"] == 12, r
    assert r["q8_0_matches_reference"], r
    assert r["smollm2_answer"].startswith(" Paris"), r


def check_online(r: Results) -> None:
    assert r["loss_fn"] == "mse"
    assert r["late_loss"] < 0.8 * r["early_loss"], r
    assert r["resumed_exactly"], r


def check_continual(r: Results) -> None:
    assert r["seed"] == 1
    assert r["task_a_loss_with_replay"] < 0.5 * r["task_a_loss_without_replay"], r


CASES: list[tuple[str, dict[str, Any], Callable[[Results], None]]] = [
    (
        "00-quickstart",
        {"seed": 1, "optimizer": "sgd", "learning_rate": 3e-2, "live": False},
        check_quickstart,
    ),
    ("01-weights", {"seed": 1, "preset": "tiny-gpt2"}, check_weights),
    ("02-online-learning", {"seed": 1, "loss_fn": "mse"}, check_online),
    ("05-continual-learning", {"seed": 1}, check_continual),
]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "parameters", "check"), CASES, ids=[name for name, _, _ in CASES])
def test_notebook_with_other_parameters(
    name: str, parameters: dict[str, Any], check: Callable[[Results], None], tmp_path: Path
) -> None:
    check(run_notebook(name, parameters, tmp_path))
