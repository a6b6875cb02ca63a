"""The Workbench's panels in a real JupyterLab: a reload keeps their state; widths fit.

Reuses the notebook and helpers of ``test_workbench_browser`` (by import). After a submission and
a forced update the notebook is saved and the page reloaded: the widgets come back from the
kernel with the submission history and the loss plot's point (plotly's FigureWidget alone came
back empty, with its "no updates yet" hint, under a caption naming the update); a second display
of the same ``Workbench`` shows them too. The width check:
no panel, nor any scrolling box inside one, is wider than its box, and no button, label or tab
title is cut off, at 1000 and 1400 px with JupyterLab's left sidebar open and closed.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest

from .conftest import Server
from .test_workbench_browser import (
    WORKBENCH_INPUT,
    ConnectionRace,
    kernel_report,
    open_notebook,
    wait_for_kernel,
    wait_for_widget,
    widget_errors,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

TABS = ("Examples", "Chat", "Weights", "Watch")

# Every panel, the tab area, and any scrolling box inside them (the chat thread, the examples
# table) whose content is wider than its box: [class, scroll, client].
OVERFLOWING = """() => {
    const found = [];
    const boxes = new Set(document.querySelectorAll(
        '.wb-workbench, .wb-panel, .wb-tabs, .wb-right, .wb-tabs .widget-tab-contents'));
    for (const el of document.querySelectorAll('.wb-workbench *')) {
        const x = getComputedStyle(el).overflowX;
        if (x === 'auto' || x === 'scroll') boxes.add(el);
    }
    for (const el of boxes) {
        if (el.offsetParent === null) continue;  // a hidden tab
        if (el.scrollWidth > el.clientWidth + 1)
            found.push([el.className, el.scrollWidth, el.clientWidth]);
    }
    return found;
}"""

# Buttons, labels, tab titles and plot texts (hint, legend) cut off: [text, width, box width].
CLIPPED = """() => {
    const found = [];
    for (const el of document.querySelectorAll(
            '.wb-workbench button, .wb-workbench .widget-label, .wb-workbench .lm-TabBar-tabLabel')) {
        if (el.offsetParent === null || !el.textContent.trim()) continue;
        if (el.scrollWidth > el.clientWidth + 1)
            found.push([el.textContent.trim(), el.scrollWidth, el.clientWidth]);
    }
    for (const plot of document.querySelectorAll('.wb-workbench .js-plotly-plot')) {
        if (plot.offsetParent === null) continue;
        const box = plot.querySelector('.main-svg').getBoundingClientRect();
        for (const t of plot.querySelectorAll('.annotation-text, .legendtext')) {
            const r = t.getBoundingClientRect();
            if (r.width && (r.left < box.left - 1 || r.right > box.right + 1))
                found.push([t.textContent, Math.round(r.width), Math.round(box.width)]);
        }
    }
    return found;
}"""

SIDEBAR_OPEN = "() => !window.jupyterapp.shell.leftCollapsed"

HINT_VISIBLE = """() => {
    const texts = [...document.querySelectorAll('.wb-live-loss .annotation-text')];
    return texts.some(t => t.textContent.includes('no updates yet'));
}"""


def plotted_points(page: Any) -> int:
    """Points on the loss plot; -1 while plotly has not drawn its traces (e.g. just reloaded)."""
    return int(
        page.evaluate(
            """() => {
                const div = document.querySelector('.wb-live-loss .js-plotly-plot');
                return div && div.data && div.data[0] ? div.data[0].x.length : -1;
            }"""
        )
    )


def teach_once(page: Any, box: Any) -> None:
    box.fill("The capital of Mars is")
    page.locator(".wb-examples textarea[placeholder^='Optional target']").fill(" Olympus")
    page.locator(".wb-examples").get_by_role("button", name="Submit").click()
    page.locator(".wb-examples .wb-status-ok").wait_for()
    page.locator(".wb-learning").get_by_role("button", name="Force update").click()
    deadline = time.monotonic() + 30
    while plotted_points(page) < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert plotted_points(page) == 1


def test_reload_and_redisplay_keep_the_plot_and_history(
    jupyter: Server, page: Any, console: list[str], failure_artifacts: Path, artifacts: Path
) -> None:
    box = open_notebook(page, jupyter, "reload.ipynb", console, failure_artifacts)
    teach_once(page, box)
    page.wait_for_function(f"!({HINT_VISIBLE})()")
    history = page.locator(".wb-examples .wb-history")
    assert "The capital of Mars is" in history.inner_text()

    page.keyboard.press("Control+s")  # the outputs (widget views) must be on disk to come back
    page.wait_for_timeout(1000)
    for attempt in (1, 2):  # the kernel connection race of a fresh page: one more reload
        page.reload()
        try:
            wait_for_kernel(page, jupyter, "reload.ipynb")
            wait_for_widget(page, WORKBENCH_INPUT, console)
            break
        except ConnectionRace:
            if attempt == 2:
                raise
    assert "The capital of Mars is" in page.locator(".wb-examples .wb-history").inner_text()
    assert "update 1" in page.locator(".wb-live-loss").inner_text()
    # The plot as it was: its point back, the hint gone (both come from the kernel's state).
    page.wait_for_function(
        "() => { const d = document.querySelector('.wb-live-loss .js-plotly-plot');"
        " return d && d.data && d.data[0] && d.data[0].x.length > 0; }"
    )
    assert plotted_points(page) == 1
    assert page.locator(".wb-live-loss .js-plotly-plot .scatterlayer .point").count() == 1
    assert not page.evaluate(HINT_VISIBLE)
    page.screenshot(path=str(artifacts / "workbench-after-reload.png"))
    assert not widget_errors(page)

    # Displayed again (a new cell with ``wb``): a second view of the same panels, built from
    # the kernel's state after the update, shows the same plot and history.
    kernel_report(page, '"points": 1')  # runs the last cell; JupyterLab opens a new one below
    page.keyboard.type("wb")
    page.keyboard.press("Shift+Enter")
    page.locator(".wb-workbench").nth(1).wait_for()
    page.wait_for_function(
        "() => [...document.querySelectorAll('.wb-live-loss .js-plotly-plot')]"
        ".filter(d => d.data && d.data[0] && d.data[0].x.length > 0).length === 2"
    )
    views = page.locator(".wb-workbench")
    for i in range(2):
        assert (
            "The capital of Mars is"
            in views.nth(i).locator(".wb-examples .wb-history").inner_text()
        )
        assert views.nth(i).locator(".js-plotly-plot .scatterlayer .point").count() == 1
    assert not page.evaluate(HINT_VISIBLE)
    assert not widget_errors(page)


def test_no_panel_overflows_sideways(
    jupyter: Server, page: Any, console: list[str], failure_artifacts: Path, artifacts: Path
) -> None:
    open_notebook(page, jupyter, "widths.ipynb", console, failure_artifacts)
    seen = []
    for sidebar in (True, False):
        if page.evaluate(SIDEBAR_OPEN) != sidebar:
            page.evaluate(
                "() => window.jupyterapp.commands.execute('application:toggle-left-area')"
            )
            page.wait_for_function(SIDEBAR_OPEN if sidebar else f"() => !({SIDEBAR_OPEN})()")
        for width in (1000, 1400):
            page.set_viewport_size({"width": width, "height": 900})
            for name in TABS:
                page.locator(".wb-workbench .lm-TabBar-tab", has_text=name).click()
                page.wait_for_timeout(400)  # plotly's autosize and the tab switch settle
                where = f"{name} tab at {width} px, sidebar {'open' if sidebar else 'closed'}"
                assert page.evaluate(OVERFLOWING) == [], where
                assert page.evaluate(CLIPPED) == [], where
                seen.append(page.locator(".wb-examples").bounding_box())
            state = "sidebar" if sidebar else "no-sidebar"
            page.screenshot(path=str(artifacts / f"workbench-{width}px-{state}.png"))
    # The four layouts differ (the sidebar and the width really changed what the panels got).
    widths = {round(box["width"]) for box in seen if box is not None}
    assert len(widths) == 4, widths


def test_save_says_what_happened(
    jupyter: Server, page: Any, console: list[str], failure_artifacts: Path, artifacts: Path
) -> None:
    open_notebook(page, jupyter, "save.ipynb", console, failure_artifacts)
    page.locator(".wb-workbench .lm-TabBar-tab", has_text="Weights").click()
    panel = page.locator(".wb-weights")
    target = panel.locator(".widget-text", has_text="save to").locator("input")
    save = panel.get_by_role("button", name="Save")
    status = panel.locator(".wb-status")

    target.fill(str(jupyter.root))  # a folder: our message, not IsADirectoryError
    target.press("Enter")
    save.click()
    panel.locator(".wb-status-error").wait_for()
    said = status.inner_text()
    assert said.startswith(f"⚠ not saved: {jupyter.root} is a folder: give a file name"), said
    assert "Error" not in said and ".tmp" not in said  # no exception type, no temp-file name
    assert save.is_enabled()

    target.fill(str(jupyter.root / "out" / "tiny.safetensors"))
    target.press("Enter")
    save.click()
    panel.locator(".wb-status-ok").wait_for()
    assert re.fullmatch(
        rf"✓ saved safetensors \(\d+(\.\d)? MB\) to {re.escape(str(jupyter.root))}/out/tiny\.safetensors",
        status.inner_text(),
    ), status.inner_text()
    assert save.is_enabled()
    assert re.fullmatch(
        r"saving took \d+\.\d s", panel.locator(".widget-label", has_text="saving").inner_text()
    )
    assert (jupyter.root / "out" / "tiny.safetensors").is_file()
    page.screenshot(path=str(artifacts / "weights-saved.png"))
    assert not widget_errors(page)
