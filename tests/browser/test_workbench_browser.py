"""The Workbench in a real JupyterLab 4 and Notebook 7, driven through Debian's Chromium.

JupyterLab: run the notebook, type an example and submit it (button, then Ctrl+Enter), press
Force update, see the loss plot gain a point, then ask the kernel what its learner counted.
Notebook 7: the same notebook renders with no widget error. Screenshots (1280×800) go to
``test-artifacts/`` for a person to look at.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import nbformat
import pytest

from .conftest import Server

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SETUP = """\
from workbench.learner import LearningConfig as C, OnlineLearner
from workbench.models import ModelConfig, Transformer
from workbench.tokenizers import ByteTokenizer
from workbench.widgets import Workbench
model = Transformer(ModelConfig.preset("tiny-llama"))
learner = OnlineLearner(model, ByteTokenizer(), C(checkpoint_frequency=None, update_frequency=50))
wb = Workbench(learner)
wb"""

REPORT = """\
import json
s = learner.get_stats()
print("STATS " + json.dumps({
    "total_examples": s["total_examples"],
    "total_updates": s["total_updates"],
    "points": len(wb.live_loss.figure.data[0].x),
    "inputs": [r.input for r in learner.recent_examples(10)],
}))"""

# Anything ipywidgets, anywidget or plotly shows when a widget fails to render.
ERROR_SELECTORS = [
    ".widget-error",
    ".jupyter-widgets-error",
    ".anywidget-error",
    ".jp-RenderedText[data-mime-type='application/vnd.jupyter.stderr']",
]
ERROR_TEXTS = ["Error displaying widget", "Failed to load model class", "model not found"]


def write_notebook(path: Path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.cells = [nbformat.v4.new_code_cell(SETUP), nbformat.v4.new_code_cell(REPORT)]
    nbformat.write(nb, path)


def run_all(page: Any) -> None:
    """Run every cell from the Run menu (same in JupyterLab 4 and Notebook 7).

    The kernel indicator says idle a moment before the kernel's channels are ready, and a run
    requested then is dropped without a word; so ask again until the first cell has started.
    """
    page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").first.wait_for(
        timeout=60_000
    )
    prompt = page.locator(".jp-Notebook .jp-Cell .jp-InputPrompt").first
    for _ in range(4):
        dialog = page.locator(".jp-Dialog")
        if dialog.count():  # "Select Kernel": keep the notebook's own (the first choice)
            dialog.get_by_role("button", name="Select").click()
        page.get_by_role("menuitem", name="Run", exact=True).click()
        page.get_by_role("menuitem", name=re.compile(r"^Run All Cells")).click()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if re.search(r"\[(\*|\d+)\]", prompt.inner_text()):
                return
            time.sleep(0.1)
    pytest.fail("the notebook never started running")


def wait_for_widget(page: Any, selector: str, timeout: float = 60.0) -> Any:
    """The widget's element once rendered; a cell error fails at once, showing the traceback."""
    deadline = time.monotonic() + timeout
    target = page.locator(selector).first
    error = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
    while time.monotonic() < deadline:
        if target.count() and target.is_visible():
            return target
        if error.count():
            pytest.fail(f"the notebook failed: {error.first.inner_text()[-2000:]}")
        time.sleep(0.2)
    pytest.fail(f"{selector} did not render in {timeout:.0f} s")


def show_widget(page: Any) -> None:
    """Scroll the notebook so the Workbench starts at the top of the screenshot."""
    page.evaluate("() => document.querySelector('.wb-workbench').scrollIntoView({block: 'start'})")
    page.mouse.move(0, 0)  # no hover tooltip in the screenshot
    page.wait_for_timeout(200)


def plot_fits(page: Any) -> bool:
    """The loss plot is no wider than its panel (a FigureWidget can render at 700 px)."""
    return bool(
        page.evaluate(
            """() => {
                const panel = document.querySelector('.wb-live-loss');
                const plot = panel.querySelector('.js-plotly-plot .main-svg');
                return plot.getBoundingClientRect().right <= panel.getBoundingClientRect().right + 1;
            }"""
        )
    )


def widget_errors(page: Any) -> list[str]:
    found = [s for s in ERROR_SELECTORS if page.locator(s).count()]
    body = page.locator("body").inner_text()
    return found + [t for t in ERROR_TEXTS if t in body]


def kernel_report(page: Any, expect: str) -> dict[str, Any]:
    """Re-run the report cell and parse its output once it shows ``expect``."""
    cell = page.locator(".jp-Notebook .jp-Cell").nth(1)
    cell.locator(".jp-InputArea-editor").click()
    page.keyboard.press("Shift+Enter")
    out = cell.locator(".jp-OutputArea-output")
    deadline = time.monotonic() + 30
    text = ""
    while time.monotonic() < deadline:
        text = out.inner_text() if out.count() else ""
        if expect in text:
            break
        time.sleep(0.2)
    match = re.search(r"STATS (\{.*\})", text)
    assert match, f"no report from the kernel: {text!r}"
    return dict(json.loads(match.group(1)))


def plotted_points(page: Any) -> int:
    return int(
        page.evaluate(
            """() => {
                const div = document.querySelector('.wb-live-loss .js-plotly-plot');
                return div && div.data ? div.data[0].x.length : -1;
            }"""
        )
    )


def test_workbench_in_jupyterlab(jupyter: Server, page: Any, artifacts: Path) -> None:
    write_notebook(jupyter.root / "lab.ipynb")
    page.goto(jupyter.page_url("lab/tree/lab.ipynb"))
    run_all(page)

    examples = page.locator(".wb-examples")
    box = wait_for_widget(page, ".wb-examples textarea[placeholder^='Type an example']")
    page.locator(".wb-live-loss .js-plotly-plot").wait_for()
    assert plotted_points(page) == 0
    assert not widget_errors(page)

    box.fill("The capital of Mars is Olympus")
    examples.locator("textarea[placeholder^='Optional target']").fill(" Olympus")
    examples.get_by_role("button", name="Submit").click()
    examples.locator(".wb-status-ok").wait_for()
    box.fill("Phobos is a moon of Mars")
    box.press("Control+Enter")  # the anywidget key handler, not the cell's "run"
    page.locator(".wb-examples-table tbody tr").nth(1).wait_for()

    page.locator(".wb-learning").get_by_role("button", name="Force update").click()
    deadline = time.monotonic() + 30
    while plotted_points(page) < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert plotted_points(page) == 1
    page.locator(".wb-learning .wb-status-ok").wait_for()
    page.locator(".wb-examples-table", has_text="trained").wait_for()
    show_widget(page)
    page.screenshot(path=str(artifacts / "workbench-jupyterlab.png"))
    assert plot_fits(page)

    report = kernel_report(page, '"total_updates": 1')
    assert report["total_examples"] == 2
    assert report["total_updates"] == 1 and report["points"] == 1
    assert report["inputs"] == ["The capital of Mars is Olympus", "Phobos is a moon of Mars"]

    # The other tabs, for a person to check the layout; the chat streams an answer.
    page.locator(".wb-workbench .lm-TabBar-tab", has_text="Chat").click()
    chat = page.locator(".wb-chat")
    chat.locator("textarea[placeholder^='Prompt']").fill("The capital of Mars is")
    chat.get_by_role("button", name="Generate").click()
    chat.locator(".wb-status-ok", has_text="characters in").wait_for()
    show_widget(page)
    page.screenshot(path=str(artifacts / "workbench-jupyterlab-chat.png"))
    page.locator(".wb-workbench .lm-TabBar-tab", has_text="Weights").click()
    show_widget(page)
    page.screenshot(path=str(artifacts / "workbench-jupyterlab-weights.png"))
    assert not widget_errors(page)


def test_workbench_in_notebook7(jupyter: Server, page: Any, artifacts: Path) -> None:
    write_notebook(jupyter.root / "nb7.ipynb")
    page.goto(jupyter.page_url("notebooks/nb7.ipynb"))
    run_all(page)
    wait_for_widget(page, ".wb-examples textarea[placeholder^='Type an example']")
    page.locator(".wb-live-loss .js-plotly-plot").wait_for()
    page.locator(".wb-learning").get_by_text("examples").first.wait_for()
    show_widget(page)
    deadline = time.monotonic() + 5
    while not plot_fits(page) and time.monotonic() < deadline:
        time.sleep(0.1)
    page.screenshot(path=str(artifacts / "workbench-notebook7.png"))
    assert plot_fits(page)
    assert not widget_errors(page)
