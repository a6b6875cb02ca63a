"""The shared plumbing: the error guard, the serial task runner, the poller."""

from __future__ import annotations

import doctest
import importlib
import logging
import threading
import time

import pytest
from workbench.widgets._common import (
    Poller,
    StatusLine,
    TaskRunner,
    format_bytes,
    format_count,
    guarded,
    short_error,
    style_widget,
)

MODULES = ["_common", "_conversation", "_progress", "examples", "learning", "live_loss", "weights"]


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name: str) -> None:
    # widgets/ sits outside the default doctest paths (tests, workbench), so run them here.
    module = importlib.import_module(f"workbench.widgets.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


class Panel:
    def __init__(self) -> None:
        self.status = StatusLine()
        self.last_traceback: str | None = None
        self.calls = 0

    @guarded
    def boom(self) -> None:
        self.calls += 1
        raise ValueError("weight must be in (0, 100], got 0.0")

    @guarded
    def bug(self) -> None:
        raise KeyError("missing")

    @guarded
    def ok(self) -> int:
        return 7


def test_guard_shows_the_error_logs_it_once_and_never_raises(
    caplog: pytest.LogCaptureFixture,
) -> None:
    panel = Panel()
    with caplog.at_level(logging.WARNING, logger="workbench.widgets"):
        assert panel.boom() is None
    assert panel.status.kind == "error"
    assert "weight must be in (0, 100]" in panel.status.value
    assert "Traceback" not in panel.status.value
    assert panel.last_traceback is not None and "ValueError" in panel.last_traceback
    assert len([r for r in caplog.records if r.exc_info]) == 1
    panel.bug()
    assert "KeyError" in panel.status.text  # unexpected errors name their type
    assert panel.ok() == 7


def test_short_error_is_one_bounded_line() -> None:
    text = short_error(RuntimeError("first line\n" + "x" * 1000))
    assert "\n" not in text and len(text) <= 240 and text.startswith("RuntimeError: first line")


def test_task_runner_keeps_order_and_reports_errors_to_the_panel() -> None:
    panel = Panel()
    runner = TaskRunner(panel, "t")
    seen: list[int] = []
    for i in range(5):
        runner.submit(lambda i=i: (time.sleep(0.01), i)[1], seen.append)
    runner.submit(lambda: 1 / 0)
    runner.submit(lambda: 99, seen.append)
    assert runner.wait(10)
    assert seen == [0, 1, 2, 3, 4, 99]
    assert panel.status.kind == "error" and "ZeroDivisionError" in panel.status.text


def test_task_runner_does_not_block_the_caller() -> None:
    panel = Panel()
    runner = TaskRunner(panel, "t")
    release = threading.Event()
    start = time.perf_counter()
    runner.submit(lambda: release.wait(5))
    assert time.perf_counter() - start < 0.1
    assert runner.busy
    release.set()
    assert runner.wait(5) and not runner.busy


def test_poller_is_capped_at_5_hz_stops_on_false_and_reports_an_error_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    panel = Panel()
    ticks: list[float] = []

    def tick() -> bool:
        ticks.append(time.monotonic())
        if len(ticks) <= 3:
            raise RuntimeError("same failure")
        return len(ticks) < 5

    poller = Poller(panel, tick, interval=0.01)
    assert poller.interval == 0.2
    poller.interval = 0.02  # tests may go faster than the cap; the constructor may not
    with caplog.at_level(logging.WARNING, logger="workbench.widgets"):
        poller.start()
        deadline = time.monotonic() + 5
        while poller.running and time.monotonic() < deadline:
            time.sleep(0.01)
    assert not poller.running
    assert len(ticks) == 5
    assert len([r for r in caplog.records if "same failure" in r.getMessage()]) == 1


def test_status_line_escapes_html() -> None:
    status = StatusLine()
    status.show("<script>x</script>", "info")
    assert "<script>" not in status.value


def test_busy_is_a_css_spinner_not_an_emoji() -> None:
    # ⏳ drew an empty box in browsers without an emoji font; the spinner is plain CSS.
    status = StatusLine()
    status.show("saving…", "busy")
    assert '<span class="wb-spinner"' in status.value and "⏳" not in status.value
    css = style_widget().value
    assert ".wb-spinner {" in css and "animation: wb-spin" in css
    assert "@keyframes wb-spin" in css
    status.show("saved", "ok")
    assert "wb-spinner" not in status.value  # the spinner goes with the busy state


@pytest.mark.parametrize(
    ("n", "count", "size"),
    [
        (0, "0", "0 B"),
        (999, "999", "999 B"),
        (1000, "1.0K", "1.0 kB"),
        (1_234, "1.2K", "1.2 kB"),
        (49_152, "49K", "49 kB"),
        (999_950, "1.0M", "1.0 MB"),  # rounding moves it up a unit, never "1000K"
        (135_000_000, "135M", "135 MB"),
        (1_600_000_000, "1.6B", "1.6 GB"),  # a checkpoint's size once read "1.6BB"
        (1_700_000_000_000, "1.7T", "1.7 TB"),
    ],
)
def test_counts_and_sizes_are_formatted_for_people(n: int, count: str, size: str) -> None:
    assert format_count(n) == count
    assert format_bytes(n) == size
