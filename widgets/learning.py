"""Learning: switch background learning, steer the learning rate, loss and update frequency.

Every change goes to the learner on the panel's task thread: the learner applies settings
between training steps, so calling it from the click would freeze the notebook for as long as a
step takes. The panel's widgets show what the person chose at once; ``refresh()`` (polled) shows
what the learner reports, and puts a control back when the learner refused the change.
"""

from __future__ import annotations

import html
import math
from typing import Any

import ipywidgets as w

from workbench.learner import Learner, LearningConfig
from workbench.losses import LOSSES

from ._common import UI_LOCK, check_range, format_count, guarded, number_input, row
from ._controls import button, labelled
from ._runtime import RuntimeMembers

__all__ = ["LearningPanel", "stats_table"]

LR_MIN_EXP, LR_MAX_EXP = -6, -1
MAX_UPDATE_FREQUENCY = 10_000

_STATS = (
    ("state", "state"),
    ("total_examples", "examples"),
    ("pending_examples", "pending"),
    ("total_updates", "updates"),
    ("average_loss", "avg loss"),
    ("current_lr", "current lr"),
    ("last_update_ms", "last update"),
    ("examples_per_s", "examples/s"),
    ("updates_per_s", "updates/s"),
    ("buffer_size", "buffer"),
    ("optimizer", "optimizer"),
    ("device", "device"),
    ("version", "version"),
)


def _fmt(key: str, value: Any) -> str:
    if value is None:
        return "–"
    if key == "last_update_ms":
        return f"{value:.0f} ms"
    if key in ("average_loss",):
        return f"{value:.4g}"
    if key == "current_lr":
        return f"{value:.2e}"
    if key in ("examples_per_s", "updates_per_s"):
        return f"{value:.2f}"
    if key in ("total_examples", "total_updates", "buffer_size"):
        return format_count(value)
    return str(value)


def stats_table(stats: dict[str, Any]) -> str:
    """The learner's stats as a compact grid of label/value pairs (a failure shows its error).

    >>> "examples" in stats_table({"total_examples": 3, "state": "idle"})
    True
    """
    cells = "".join(
        f"<div style='display:flex;justify-content:space-between;gap:0.5em'>"
        f"<span style='color:#666'>{label}</span>"
        f"<code>{html.escape(_fmt(key, stats.get(key)))}</code></div>"
        for key, label in _STATS
        if key in stats
    )
    table = (
        "<div style='display:grid;grid-template-columns:repeat(auto-fill,minmax(140px,1fr));"
        f"column-gap:1.5em;font-size:0.85em;white-space:nowrap'>{cells}</div>"
    )
    if stats.get("state") == "failed" and stats.get("last_error"):
        table += (
            "<div style='color:#cf222e;white-space:normal'>⚠ learning stopped: "
            f"{html.escape(str(stats['last_error']))} (turn learning on again to retry)</div>"
        )
    return table


class LearningPanel(RuntimeMembers, w.VBox):
    """Learning on/off, learning rate (log slider), loss, update frequency, Force update, stats.

    Parameters
    ----------
    learner : Learner
    auto_refresh : bool
        Refresh the stats in the background (≤ 5 Hz); tests pass False and call ``refresh()``.
    interval : float
        Seconds between refreshes; at least 0.2.
    """

    def __init__(self, learner: Learner, auto_refresh: bool = True, interval: float = 0.5) -> None:
        self._connect(learner, "learning")
        self.last_loss: float | None = None
        cfg = learner.config
        self._syncing = False  # set while refresh() writes learner values into the controls

        self.enabled = w.ToggleButton(
            value=bool(learner.enabled),
            description="Learning on" if learner.enabled else "Learning off",
            icon="play" if learner.enabled else "pause",
            button_style="success" if learner.enabled else "",
            tooltip="Train in the background as examples arrive",
            layout=w.Layout(width="130px"),
        )
        self.learning_rate = w.FloatLogSlider(
            value=_clamp_lr(cfg.learning_rate),
            base=10,
            min=LR_MIN_EXP,
            max=LR_MAX_EXP,
            step=0.1,
            description="learning rate",
            readout_format=".1e",
            continuous_update=False,  # one request when the slider is released, not per pixel
            style={"description_width": "90px"},
            layout=w.Layout(flex="1 1 auto", min_width="0"),
        )
        self.loss_fn = labelled(
            w.Dropdown, "loss", "90px", "260px", options=list(LOSSES), value=cfg.loss_fn
        )
        self.learning_rate_box = number_input(
            self.learning_rate, "learning rate", self.status.error
        )
        # Not a BoundedIntText: its box clamps a typed 0 to 1 without a word; refused below.
        self.update_frequency = labelled(
            w.IntText,
            "update every",
            "90px",
            "170px",
            value=cfg.update_frequency,
            tooltip="examples per background update",
        )
        self.force = button(
            "Force update",
            "bolt",
            "140px",
            button_style="warning",
            tooltip="Run one update now on pending examples plus replay",
        )
        self.undo = button(
            "Undo last update",
            "undo",
            "160px",
            tooltip="Put the weights back to before the newest update (its new examples are undone)",
        )
        self.stats = w.HTML()
        self.stats.add_class("wb-compact")

        self.enabled.observe(self._on_enabled, "value")
        self.learning_rate.observe(self._on_lr, "value")
        self.loss_fn.observe(self._on_loss, "value")
        self.update_frequency.observe(self._on_frequency, "value")
        self.force.on_click(self._on_force)
        self.undo.on_click(self._on_undo)

        self._lay_out(
            "Learning",
            [
                row(self.enabled, self.force, self.undo),
                self.status,  # next to the buttons: the result of Force update shows here
                row(self.learning_rate, self.learning_rate_box, wrap=False),
                row(self.loss_fn, self.update_frequency),
                self.stats,
            ],
        )
        self.refresh()
        self.poller = self.runtime.poll(self.refresh, interval, start=auto_refresh)

    # ------------------------------------------------------------------ callbacks
    @guarded
    def _on_enabled(self, change: dict[str, Any]) -> None:
        on = bool(change["new"])
        self.enabled.description = "Learning on" if on else "Learning off"
        self.enabled.icon = "play" if on else "pause"
        self.enabled.button_style = "success" if on else ""
        if self._syncing:
            return
        self.status.show("turning learning on…" if on else "turning learning off…", "busy")
        self.runtime.submit(
            self.learner.enable if on else self.learner.disable,
            lambda _: self.status.show("learning on" if on else "learning off", "ok"),
            "enable" if on else "disable",
        )

    @guarded
    def _on_lr(self, change: dict[str, Any]) -> None:
        if self._syncing:
            return
        lr = float(change["new"])
        self.runtime.submit(
            lambda: self.learner.set_learning_rate(lr),
            lambda _: self.status.show(f"learning rate {lr:.2e} from the next update", "ok"),
            "set learning rate",
        )

    @guarded
    def _on_loss(self, change: dict[str, Any]) -> None:
        if not self._syncing:
            self._configure(loss_fn=change["new"])

    @guarded
    def _on_frequency(self, change: dict[str, Any]) -> None:
        if self._syncing:
            return
        value = int(change["new"])
        problem = check_range("update every", value, 1, MAX_UPDATE_FREQUENCY)
        if problem is not None:
            self._sync_controls()  # put the learner's value back
            self.status.error(f"{problem}; kept {self.learner.config.update_frequency}")
            return
        self._configure(update_frequency=value)

    def _configure(self, **changes: Any) -> None:
        what = ", ".join(f"{k}={v}" for k, v in changes.items())

        def apply() -> LearningConfig:
            try:
                return self.learner.configure(**changes)
            except Exception:
                self._sync_controls()  # show the learner's value again, not the refused one
                raise

        self.runtime.submit(apply, lambda _: self.status.show(f"set {what}", "ok"), what)

    @guarded
    def _on_force(self, _button: Any = None) -> None:
        self.force.disabled = True
        self.status.show("updating…", "busy")

        def run() -> float:
            try:
                return float(self.learner.force_update())
            finally:
                with UI_LOCK:
                    self.force.disabled = False

        def done(loss: float) -> None:
            self.last_loss = loss
            self.status.show(f"forced update done: loss {loss:.4g}", "ok")
            self.refresh()

        self.runtime.submit(run, done, "force update")

    @guarded
    def _on_undo(self, _button: Any = None) -> None:
        self.undo.disabled = True
        self.status.show("undoing the last update…", "busy")

        def run() -> dict[str, Any]:
            try:
                return self.learner.undo_last_update()
            finally:
                with UI_LOCK:
                    self.undo.disabled = False

        def done(info: dict[str, Any]) -> None:
            n = info["examples_undone"]
            self.status.show(
                f"undid update {info['undone_update']}: weights as after update {info['updates']}"
                f", {n} example{'s' * (n != 1)} undone",
                "ok",
            )
            self.refresh()

        self.runtime.submit(run, done, "undo last update")

    # ------------------------------------------------------------------ refresh
    @guarded
    def refresh(self) -> dict[str, Any]:
        """Show the learner's stats; returns them."""
        stats = self.learner.get_stats()
        self.stats.value = stats_table(stats)
        return stats

    def _sync_controls(self) -> None:
        """Put the controls back to the learner's settings (after a refused change)."""
        cfg = self.learner.config
        with UI_LOCK:
            self._sync_controls_to(cfg)

    def _sync_controls_to(self, cfg: LearningConfig) -> None:
        self._syncing = True
        try:
            self.loss_fn.value = cfg.loss_fn
            self.update_frequency.value = cfg.update_frequency
            self.enabled.value = bool(self.learner.enabled)
        finally:
            self._syncing = False


def _clamp_lr(lr: float) -> float:
    return min(max(lr, 10.0**LR_MIN_EXP), 10.0**LR_MAX_EXP) if math.isfinite(lr) else 1e-4
