"""The handle on an offline fine-tune started by ``learner.train_offline``.

An :class:`OfflineJob` wraps the train package's ``TrainJob`` (torchrun as a subprocess): it
streams rank 0's metrics by cursor, cancels the whole process tree, and when the run succeeds
checks the export against its manifest and hands it to the learner (``adopt``, a callable the
learner gives it), by itself or on ``job.adopt()``. The boundary: no torch and no learner
state here; what adoption does to the learner is ``_offline.adopt`` on the worker's thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from workbench.learner.config import LearnerError
from workbench.train import TrainError, TrainJob

__all__ = ["OfflineJob", "OfflineState"]

OfflineState = Literal["running", "adopting", "adopted", "finished", "failed", "cancelled"]


class OfflineJob:
    """An offline fine-tune of the learner's weights: progress, metrics, cancel, adoption.

    ``state`` goes ``running`` → ``adopting`` → ``adopted`` when the learner takes the weights
    back by itself (``adopt=True``, the default), or ``running`` → ``finished`` with
    ``adopt=False`` (then ``job.adopt()`` does it); ``failed`` (``error`` says why, the learner
    kept its weights) and ``cancelled`` end it otherwise.

    Attributes
    ----------
    run_dir : Path
        The run folder: start weights, snapshot, ``metrics.jsonl``, ``model.safetensors``,
        ``manifest.json``.
    cutoff : int
        The snapshot's last example sequence number; later examples are replayed on adoption.
    examples, skipped_chat : int
        Examples the run trains on, and conversations it leaves out (not trained offline yet;
        they stay in the learner's buffers).
    total_steps, nproc : int
    error : str or None
        Why the run or its adoption failed.
    adoption : dict or None
        After adoption: ``output``, ``cutoff``, ``steps``, ``final_loss``, ``at_update`` (the
        learner's update count when the weights arrived), ``replayed`` (examples after the
        cutoff), ``replay_updates`` (updates run on them now; 0 while learning is off: they
        stay pending) and ``updates``.
    """

    def __init__(
        self,
        job: TrainJob,
        *,
        cutoff: int,
        examples: int,
        skipped_chat: int,
        nproc: int,
        start_seq: int,
        adopt: Callable[[Path, int, int], dict[str, Any]],
        auto_adopt: bool,
    ) -> None:
        self.train_job = job
        self.run_dir = job.out
        self.cutoff = cutoff
        self.examples = examples
        self.skipped_chat = skipped_chat
        self.total_steps = job.config.steps
        self.nproc = nproc
        self.start_seq = start_seq  # the newest example the start weights had learned
        self.auto_adopt = auto_adopt
        self.started = time.time()
        self.error: str | None = None
        self.output: Path | None = None
        self.adoption: dict[str, Any] | None = None
        self._adopt_fn = adopt
        self._state: OfflineState = "running"
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._cancelled = False
        self._watcher = threading.Thread(target=self._watch, name="workbench-offline", daemon=True)
        self._watcher.start()

    # ------------------------------------------------------------------ reading
    @property
    def state(self) -> OfflineState:
        return self._state

    @property
    def pid(self) -> int:
        """torchrun's process id (the workers are its children)."""
        return self.train_job.pid

    @property
    def metrics(self) -> list[dict[str, Any]]:
        """Rank 0's events so far (``start``, ``step``, ``checkpoint``, ``done``)."""
        return self.metrics_since(0)[0]

    def metrics_since(self, cursor: int = 0) -> tuple[list[dict[str, Any]], int]:
        """Events after ``cursor`` and the cursor to pass next time (for live plots)."""
        return self.train_job.metrics_since(cursor)

    def progress(self) -> dict[str, Any]:
        """``state``, ``step``, ``steps``, ``loss`` (the newest step's), ``error``, ``adoption``."""
        steps = [m for m in self.metrics if m.get("event") == "step"]
        last = steps[-1] if steps else {}
        return {
            "state": self._state,
            "step": int(last.get("step", 0)),
            "steps": self.total_steps,
            "loss": last.get("loss"),
            "error": self.error,
            "adoption": self.adoption,
        }

    def summary(self) -> str:
        """One line for a person: what the run is doing or how it ended."""
        p = self.progress()
        loss = f" · loss {p['loss']:.4g}" if isinstance(p["loss"], float) else ""
        head = f"step {p['step']}/{p['steps']}{loss}"
        match self._state:
            case "running":
                return f"running on {self.nproc} process{'es' * (self.nproc > 1)} · {head}"
            case "adopting":
                return f"finished ({head}); adopting the weights…"
            case "adopted":
                a = self.adoption or {}
                n, trained = a.get("replayed", 0), a.get("replay_updates", 0)
                later = (
                    f"replayed the {n} example(s) logged after the cutoff in {trained} update(s)"
                    if trained or not n
                    else f"the {n} example(s) logged after the cutoff wait for learning to be on"
                )
                return f"adopted at update {a.get('at_update')} ({head}); {later}"
            case "finished":
                return f"finished ({head}); adopt the weights with job.adopt()"
            case "cancelled":
                return f"cancelled at {head}; the learner kept its weights"
        first = (self.error or "").splitlines()[0] if self.error else "unknown error"
        return f"failed: {first}"

    # ------------------------------------------------------------------ control
    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        """Block until the run (and its adoption) ended; returns ``adoption`` (or, for an
        unadopted run, ``{"output": path}``). A failed or cancelled run raises ``LearnerError``."""
        if not self._done.wait(timeout):
            raise LearnerError(
                f"the offline run is still {self._state} after {timeout} s: wait longer or "
                "cancel it (job.cancel())"
            )
        if self._state in ("failed", "cancelled"):
            raise LearnerError(
                self.error or f"the offline run was {self._state}; the learner kept its weights"
            )
        return dict(self.adoption) if self.adoption else {"output": str(self.output)}

    def cancel(self, timeout: float = 10.0) -> bool:
        """End torchrun and every worker (SIGTERM, then SIGKILL half-way through ``timeout``);
        the learner keeps its weights. Returns whether no process of the run is left. A run
        whose weights were already adopted stays adopted (``reset_to_base`` does not undo it;
        load earlier weights instead)."""
        self._cancelled = True
        gone = self.train_job.cancel(timeout)
        self._watcher.join(max(0.1, timeout))
        return gone

    def adopt(self) -> dict[str, Any]:
        """Hand a finished run's weights to the learner now (for ``adopt=False``)."""
        with self._lock:
            if self._state != "finished":
                wait = "; wait for it (job.wait())" if self._state == "running" else ""
                raise LearnerError(
                    f"this run is {self._state}: only a finished run not yet adopted can be adopted{wait}"
                )
            self._state = "adopting"
            self._done.clear()
        return self._adopt_now()

    # ------------------------------------------------------------------ plumbing
    def _watch(self) -> None:
        try:
            path = self.train_job.wait()
            _check_export(path, self.run_dir, self.cutoff)
            self.output = path
        except (TrainError, LearnerError) as e:
            if self._cancelled:
                self._finish(
                    "cancelled", "the offline run was cancelled; the learner kept its weights"
                )
            else:
                self._finish("failed", f"{e}\n(the learner kept its weights)")
            return
        with self._lock:
            if self._cancelled:
                self._state = "cancelled"
            elif self.auto_adopt:
                self._state = "adopting"
            else:
                self._state = "finished"
        if self._state == "adopting":
            with contextlib.suppress(Exception):  # _adopt_now records it in state and error
                self._adopt_now()
        else:
            self._done.set()

    def _adopt_now(self) -> dict[str, Any]:
        assert self.output is not None
        try:
            info = self._adopt_fn(self.output, self.cutoff, self.start_seq)
        except Exception as e:
            self._finish(
                "failed",
                f"the run finished but its weights were not adopted: {e} "
                "(the learner kept its weights; the export stays in the run folder)",
            )
            raise
        steps = [m for m in self.metrics if m.get("event") == "step"]
        self.adoption = {
            "output": str(self.output),
            "cutoff": self.cutoff,
            "steps": self.total_steps,
            "final_loss": steps[-1]["loss"] if steps else None,
            **info,
        }
        self._finish("adopted", None)
        return dict(self.adoption)

    def _finish(self, state: OfflineState, error: str | None) -> None:
        with self._lock:
            self._state = state
            self.error = error
        self._done.set()


def _check_export(path: Path, run_dir: Path, cutoff: int) -> None:
    """The export is the one its manifest describes (sha256), for this cutoff."""
    try:
        manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except (OSError, ValueError) as e:
        raise LearnerError(f"cannot read the run's export in {run_dir}: {e}") from None
    if manifest.get("sha256") != digest:
        raise LearnerError(
            f"{path} does not match its manifest's sha256: the file changed after the run "
            "wrote it; start the run again"
        )
    if manifest.get("cutoff") != cutoff:
        raise LearnerError(
            f"the run trained up to example {manifest.get('cutoff')}, not {cutoff}: its run "
            "folder was reused; start the run again in a new folder"
        )
