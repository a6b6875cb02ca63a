"""The Workbench's watch list in a real JupyterLab: teaching a fact marks its changed answer.

Runs the same notebook as ``test_workbench_browser`` (its helpers, by import), teaches "The
capital of France is" a new continuation from the Examples tab, forces updates until the Watch
tab's title counts a change, and checks the mark on the page. A screenshot of the Watch tab goes
to ``test-artifacts/`` for a person to look at.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from .conftest import Server
from .test_workbench_browser import open_notebook, show_widget, widget_errors

pytestmark = [pytest.mark.browser, pytest.mark.slow]

FRANCE = "The capital of France is"


def test_the_watch_list_marks_a_changed_answer(
    jupyter: Server, page: Any, console: list[str], failure_artifacts: Path, artifacts: Path
) -> None:
    box = open_notebook(page, jupyter, "watch.ipynb", console, failure_artifacts)

    tabs = page.locator(".wb-workbench .lm-TabBar-tab")
    tabs.filter(has_text="Watch").click()
    watch = page.locator(".wb-watch")
    # The default facts are pinned and answered in the background, unchanged so far.
    watch.locator(".wb-watch-table tr.wb-watch-same", has_text=FRANCE).wait_for(timeout=60_000)
    assert watch.locator(".wb-watch-changed").count() == 0
    assert "no answer changed" in watch.locator(".wb-watch-summary").inner_text()

    tabs.filter(has_text="Examples").click()
    box.fill(FRANCE)
    page.locator(".wb-examples textarea[placeholder^='Optional target']").fill(" Rome, Rome.")
    page.locator(".wb-examples").get_by_role("button", name="Submit").click()
    force = page.locator(".wb-learning").get_by_role("button", name="Force update")
    changed = tabs.filter(has_text="changed")
    for _ in range(6):
        force.click()
        deadline = time.monotonic() + 20
        while not changed.count() and time.monotonic() < deadline:
            time.sleep(0.2)
        if changed.count():
            break
    assert changed.count(), "no watched answer changed after 6 updates"

    changed.click()
    watch.locator(".wb-watch-table tr.wb-watch-changed", has_text=FRANCE).wait_for()
    summary = watch.locator(".wb-watch-summary").inner_text()
    assert "changed since pinning" in summary and not summary.startswith("no")
    show_widget(page)
    page.screenshot(path=str(artifacts / "workbench-jupyterlab-watch.png"))
    assert not widget_errors(page)
