"""Offline fine-tune: start ``learner.train_offline`` with a few settings, watch it, cancel it.

Thin on purpose: the run, its metrics, cancel and adoption live in the learner
(``workbench.learner.OfflineJob``); this panel reads ``learner.offline_job`` on each refresh
(progress bar, one-line summary) and sends clicks to the learner on the panel's task thread
(starting saves the weights through the learner's worker, which may wait for a step). The loss
per step is drawn by the live loss plot as its second series.
"""

from __future__ import annotations

import html
import os
from typing import Any

import ipywidgets as w

from workbench.learner import Learner, OfflineJob

from ._common import UI_LOCK, check_range, guarded, row
from ._controls import button, labelled
from ._runtime import RuntimeMembers

__all__ = ["OfflinePanel"]

MAX_STEPS = 1_000_000
_ACTIVE = ("running", "adopting")


class OfflinePanel(RuntimeMembers, w.VBox):
    """Processes, steps, learning rate, adopt-when-done; Start, Cancel, Adopt, a progress bar.

    Parameters
    ----------
    learner : Learner
    auto_refresh : bool
        Refresh in the background (≤ 5 Hz); tests pass False and call ``refresh()``.
    interval : float
        Seconds between refreshes; at least 0.2.
    """

    def __init__(self, learner: Learner, auto_refresh: bool = True, interval: float = 0.5) -> None:
        self._connect(learner, "offline")
        self.max_nproc = max(1, os.cpu_count() or 1)
        self._starting = False  # a start is on its way to the learner
        self.nproc = labelled(
            w.IntText,
            "processes",
            "70px",
            "140px",
            value=1,
            tooltip="torchrun processes on this machine (one per GPU, or CPU processes with gloo)",
        )
        self.steps = labelled(
            w.IntText,
            "steps",
            "70px",
            "150px",
            value=100,
            tooltip="optimizer steps of 8 examples each",
        )
        self.learning_rate = labelled(
            w.FloatText, "lr", "20px", "130px", value=float(f"{learner.config.learning_rate:.3g}")
        )
        self.adopt = w.Checkbox(
            value=True,
            description="adopt when done",
            indent=False,
            tooltip="take the weights back and replay the examples logged since the start",
            layout=w.Layout(width="auto"),
        )
        self.start = button(
            "Fine-tune offline",
            "rocket",
            "160px",
            tooltip="Fine-tune the current weights on every stored example in separate processes",
        )
        self.cancel = button(
            "Cancel",
            "stop",
            "100px",
            disabled=True,
            tooltip="End the run and every process of it; the learner keeps its weights",
        )
        self.adopt_now = button(
            "Adopt",
            "download",
            "90px",
            disabled=True,
            tooltip="Take a finished run's weights (one started with 'adopt when done' off)",
        )
        self.progress = w.IntProgress(value=0, min=0, max=1, layout=w.Layout(width="160px"))
        self.summary = w.HTML()
        self.start.on_click(self._on_start)
        self.cancel.on_click(self._on_cancel)
        self.adopt_now.on_click(self._on_adopt)
        self._lay_out(
            "Offline fine-tune",
            [
                row(self.nproc, self.steps, self.learning_rate, self.adopt),
                row(self.start, self.cancel, self.adopt_now, self.progress),
                self.summary,
                self.status,
            ],
        )
        self.refresh()
        self.poller = self.runtime.poll(self.refresh, interval, start=auto_refresh)

    # ------------------------------------------------------------------ callbacks
    @guarded
    def _on_start(self, _button: Any = None) -> None:
        nproc, steps, lr = (
            int(self.nproc.value),
            int(self.steps.value),
            float(self.learning_rate.value),
        )
        problem = (
            check_range("processes", nproc, 1, self.max_nproc)
            or check_range("steps", steps, 1, MAX_STEPS)
            or check_range("learning rate", lr, 1e-8, 1.0)
        )
        if problem is not None:
            self.status.error(problem)
            return
        adopt = bool(self.adopt.value)
        self.start.disabled = self._starting = True
        self.status.show("saving the weights and the examples, starting torchrun…", "busy")

        def run() -> OfflineJob:
            try:
                return self.learner.train_offline(
                    steps, nproc=nproc, learning_rate=lr, global_batch=max(8, nproc), adopt=adopt
                )
            finally:
                with UI_LOCK:
                    self._starting = False
                    self.start.disabled = False  # refresh() disables it again for a run

        def done(job: OfflineJob) -> None:
            self.status.show(f"started: {job.examples} examples up to #{job.cutoff}", "ok")
            self.refresh()

        self.runtime.submit(run, done, "start offline fine-tune")

    @guarded
    def _on_cancel(self, _button: Any = None) -> None:
        job = self.learner.offline_job
        if job is None or job.state not in _ACTIVE:
            self.status.show("no offline run is going", "info")
            return
        self.cancel.disabled = True
        self.status.show("cancelling: ending every process of the run…", "busy")

        def done(gone: bool) -> None:
            if gone:
                self.status.show("cancelled: no process of the run is left", "ok")
            else:
                self.status.error(f"some processes of the run (torchrun pid {job.pid}) survived")
            self.refresh()

        self.runtime.submit(job.cancel, done, "cancel offline fine-tune")

    @guarded
    def _on_adopt(self, _button: Any = None) -> None:
        job = self.learner.offline_job
        if job is None or job.state != "finished":
            self.status.show("no finished run waits to be adopted", "info")
            return
        self.adopt_now.disabled = True
        self.status.show("adopting the run's weights…", "busy")

        def done(_info: dict[str, Any]) -> None:
            self.status.show(job.summary(), "ok")  # where it landed and what was replayed
            self.refresh()

        self.runtime.submit(job.adopt, done, "adopt offline weights")

    # ------------------------------------------------------------------ refresh
    @guarded
    def refresh(self) -> dict[str, Any] | None:
        """Show the newest run's progress; returns it (None before the first run)."""
        job = self.learner.offline_job
        if job is None:
            self.summary.value = "<span style='color:#555'>no offline run yet</span>"
            self.start.disabled = self._starting
            return None
        p = job.progress()
        active = p["state"] in _ACTIVE
        self.progress.max = max(1, int(p["steps"]))
        self.progress.value = min(int(p["step"]), self.progress.max)
        self.progress.bar_style = {"adopted": "success", "failed": "danger"}.get(p["state"], "")
        self.start.disabled = active or self._starting
        self.cancel.disabled = not active
        self.adopt_now.disabled = p["state"] != "finished"
        color = "#cf222e" if p["state"] == "failed" else "#555"
        self.summary.value = (
            f"<span style='color:{color}' title='{html.escape(str(job.run_dir), quote=True)}'>"
            f"{html.escape(job.summary())}</span>"
        )
        return p
