"""A panel's runtime: the learner, a status line, a task runner, a poller, the last traceback.

Every panel that talks to the learner needs the same few members; each panel holds one
``PanelRuntime`` (composition, not a base class) and exposes what a person or a test reads
(``status``, ``last_traceback``, ``poller``, ``wait()``, ``close()``). The runtime is where the
panel's errors go (``guarded`` callbacks, failed tasks, failed refreshes) and the one place that
asks whether the learner is closed. The boundary: it knows the learner only through the
``Learner`` protocol and calls nothing on it but ``get_stats``; what to do with the learner is
the panel's business.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

import ipywidgets as w

from workbench.learner import Learner

from ._common import Poller, StatusLine, TaskRunner, style_widget, title

__all__ = ["PanelRuntime", "RuntimeMembers"]

T = TypeVar("T")


class PanelRuntime:
    """One panel's link to the learner: status line, serial task runner, optional poller.

    Parameters
    ----------
    learner : Learner
        The learner the panel drives.
    name : str
        Names the task thread (``workbench-<name>``) and the panel in log lines.
    """

    def __init__(self, learner: Learner, name: str) -> None:
        self.learner = learner
        self.name = name
        self.status = StatusLine()
        self.last_traceback: str | None = None  # the last error's traceback, for a bug report
        self.tasks = TaskRunner(self, name)
        self.poller: Poller | None = None

    def learner_open(self) -> bool:
        """False once the learner is closed; pollers stop then instead of reporting errors."""
        return self.learner.get_stats().get("state") != "closed"

    def submit(
        self, fn: Callable[[], T], on_done: Callable[[T], None] | None = None, what: str = "task"
    ) -> Future[T]:
        """Run ``fn`` (anything that waits for the learner's worker) off the kernel's thread."""
        return self.tasks.submit(fn, on_done, what)

    def poll(self, refresh: Callable[[], object], interval: float, start: bool = True) -> Poller:
        """Call ``refresh`` every ``interval`` seconds until the learner is closed, then say so.

        The poller is created either way (``start=False`` for a panel refreshed by its owner,
        e.g. the Workbench) so a caller can start it later.
        """

        def tick() -> bool:
            if not self.learner_open():
                self.status.show("learner closed", "info")
                return False
            refresh()
            return True

        self.poller = Poller(self, tick, interval)
        if start:
            self.poller.start()
        return self.poller

    def wait(self, timeout: float = 60.0) -> bool:
        """Block until every submitted task has finished; False on timeout."""
        return self.tasks.wait(timeout)

    def close(self) -> None:
        """Stop polling. Tasks already submitted finish on their daemon thread."""
        if self.poller is not None:
            self.poller.stop()


class RuntimeMembers:
    """What every panel forwards to its ``runtime``: ``last_traceback``, ``wait``, ``close``.

    A mixin listed before the widget class (``class P(RuntimeMembers, w.VBox)``) so ``close``
    reaches the widget's own after the runtime's.
    """

    learner: Learner
    runtime: PanelRuntime
    status: StatusLine
    wait_timeout = 60.0  # seconds wait() blocks by default
    add_class: Callable[[str], Any]  # the widget's

    def _connect(self, learner: Learner, name: str) -> None:
        """Hold ``learner`` and a runtime named ``name``; ``status`` is the runtime's line."""
        self.learner = learner
        self.runtime = PanelRuntime(learner, name)
        self.status = self.runtime.status

    def _lay_out(self, heading: str, children: Sequence[w.Widget]) -> None:
        """Fill the widget with the panels' CSS, the ``heading`` and ``children``; classed
        ``wb-panel`` and ``wb-<runtime name>`` for the stylesheet and the browser tests."""
        # The widget class after this mixin in the panel's bases (a VBox) takes the children.
        super().__init__([style_widget(), title(heading), *children])  # type: ignore[call-arg]
        self.add_class("wb-panel")
        self.add_class(f"wb-{self.runtime.name}")

    @property
    def last_traceback(self) -> str | None:
        """The traceback of the panel's last error (for a bug report)."""
        return self.runtime.last_traceback

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the panel's requests to the learner are done (tests, scripts)."""
        return self.runtime.wait(self.wait_timeout if timeout is None else timeout)

    def close(self) -> None:
        # Widget.__del__ calls close(), also on an object whose __init__ failed half-way.
        if (runtime := getattr(self, "runtime", None)) is not None:
            runtime.close()
        super().close()  # type: ignore[misc]
