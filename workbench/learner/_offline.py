"""Offline fine-tunes of a live learner's weights, and the way their weights come back.

``learner.train_offline(...)`` saves the training weights (through the worker's queue), takes
an immutable snapshot of the example log up to a cutoff, and starts ``workbench.train`` under
torchrun as a subprocess (``workbench.train.launch``: the kernel is never forked). The
returned ``OfflineJob`` (``_offline_job``) streams rank 0's metrics, cancels the whole process
tree, and on success hands the weights back: the learner adopts the exported SafeTensors through the same
all-or-nothing load as ``load_weights`` (a ``AdoptOffline`` command on the worker's queue),
then replays every example logged after the cutoff, so nothing taught during the run is lost.

The boundary: this module knows the train package's public API and the worker's buffers; the
run itself (DDP/FSDP2, checkpoints, export) lives in ``workbench.train``, which never imports
the learner. Adoption is automatic by default and visible: ``job.state`` becomes "adopted",
``job.adoption`` says what was replayed, and the live loss plot marks the update it happened at.
"""

from __future__ import annotations

import math
import shutil
import time
import uuid
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench.learner._commands import AdoptOffline, SaveWeights
from workbench.learner._offline_job import OfflineJob
from workbench.learner.config import LearnerError
from workbench.train import Snapshot, TrainConfig, TrainError, launch, snapshot_store
from workbench.train.launch import SNAPSHOT_FILE

if TYPE_CHECKING:
    from workbench.learner._worker import Worker
    from workbench.learner.config import LearningConfig

__all__ = ["OfflineTraining", "adopt"]

START_FILE = "start.safetensors"  # the learner's weights the run starts from
EXPORT_DTYPES = ("float32", "float16", "bfloat16")


# ---------------------------------------------------------------------- the worker's side
def adopt(worker: Worker, path: Path, cutoff: int, start_seq: int) -> dict[str, Any]:
    """On the worker thread: load ``path`` all or nothing, then re-queue every example after
    ``cutoff`` and train on them now when learning is on.

    The weights replace whatever the live learner learned while the run went on (those updates
    saw only examples after the cutoff, which are replayed). The model keeps what it was
    (``pretrained``, the file metadata a save carries, its float type); the optimizer starts
    afresh, since its moments belonged to the weights before. Conversations after
    ``start_seq`` (the newest example the start weights had learned) and up to the cutoff were
    left out of the run, so they are re-queued too.
    """
    trainer = worker.trainer
    kept = trainer.model.pretrained, dict(trainer.metadata)
    dtype = str(trainer.model.dtype).removeprefix("torch.")
    before = worker._trained_seq
    # _load re-encodes the buffers around _trained_seq: pending becomes what follows the cutoff.
    worker._trained_seq = cutoff
    try:
        info = worker._load(path, "safetensors", dtype)
        if not info.get("tokenizer_changed"):
            worker._pending, worker._replay = worker._encode_buffers("this session's tokenizer")
    except BaseException:
        worker._trained_seq = before
        raise
    trainer.model.pretrained, trainer.metadata = kept[0], kept[1]
    trainer.rebuild_optimizer()
    chats = {
        r.seq
        for r in worker.store.examples_after(start_seq)
        if r.messages is not None and r.seq <= cutoff
    }
    if chats:  # left out of the run: still to be learned
        back = [e for e in worker._replay if e.seq in chats]
        worker._replay = deque(
            (e for e in worker._replay if e.seq not in chats), maxlen=worker._replay.maxlen
        )
        worker._pending = deque([*back, *worker._pending])
    at_update = trainer.updates
    replayed = len(worker._pending)
    result: dict[str, Any] = {"at_update": at_update, "replayed": replayed, "replay_error": None}
    runs = 0
    try:
        while worker._pending and worker.enabled:
            worker._update()
            runs += 1
    except Exception as e:  # the weights are adopted; the rest stays pending, as after any update
        worker._fail(e)
        result["replay_error"] = f"{type(e).__name__}: {e}"
    result.update(replay_updates=runs, updates=trainer.updates)
    return result


# ---------------------------------------------------------------------- the learner's side
class OfflineTraining:
    """``train_offline`` and ``offline_job`` for ``OnlineLearner`` (a mixin, so the facade's
    file stays one concept); it uses the learner's worker, session folder and settings."""

    _worker: Worker
    session_dir: Path
    _offline_job: OfflineJob | None = None

    @property
    def config(self) -> LearningConfig:
        raise NotImplementedError

    def _check_open(self) -> None:
        raise NotImplementedError

    @property
    def offline_job(self) -> OfflineJob | None:
        """The newest offline fine-tune started by ``train_offline`` (None before the first)."""
        return self._offline_job

    def train_offline(
        self,
        steps: int | None = None,
        *,
        epochs: float | None = None,
        nproc: int = 1,
        learning_rate: float | None = None,
        global_batch: int = 8,
        cutoff: int | None = None,
        adopt: bool = True,
        **overrides: Any,
    ) -> OfflineJob:
        """Fine-tune the current weights offline on every example logged so far, in ``nproc``
        torchrun processes (DDP; ``strategy="fsdp2"`` shards), and hand the weights back.

        Returns at once with an :class:`OfflineJob` (``job.metrics``, ``job.progress()``,
        ``job.cancel()``, ``job.wait()``); the live learner goes on learning meanwhile.
        ``steps`` or ``epochs`` (default: one epoch) sets the length; ``learning_rate``
        defaults to the learner's. ``cutoff``: the last example sequence number to train on
        (default: every example stored now). With ``adopt=True`` the learner adopts the
        exported weights by itself when the run succeeds and replays the examples logged after
        the cutoff (``job.state == "adopted"``, ``job.adoption``); with ``adopt=False`` call
        ``job.adopt()``. Other keyword arguments are ``workbench.train.TrainConfig`` fields
        (``strategy``, ``warmup_steps``, ``max_grad_norm``...). The loss is weighted
        cross-entropy on (input, target) examples, whatever ``loss_fn`` the learner uses.
        """
        self._check_open()
        current = self._offline_job
        if current is not None and current.state in ("running", "adopting"):
            raise LearnerError(
                "an offline fine-tune is already running: wait for it "
                "(learner.offline_job.wait()) or cancel it (learner.offline_job.cancel())"
            )
        n_steps = _check_offline_args(steps, epochs, nproc, global_batch, cutoff)
        run_dir = (
            self.session_dir
            / "offline"
            / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        )
        # The weights first, then the snapshot: every example they learned is inside the cutoff.
        # Read before the save, so an update between the two errs towards training again.
        start_seq = self._worker._trained_seq
        # The edit memory stays out: the run trains on the examples it was taught with, and the
        # learner drops it when it adopts the run's weights.
        save = SaveWeights(run_dir / START_FILE, "safetensors", None, weights_only=True)
        start = Path(self._worker.call(save))
        launched = False
        try:
            try:
                snap = snapshot_store(self.session_dir, run_dir / SNAPSHOT_FILE, cutoff)
            except TrainError as e:
                raise LearnerError(str(e)) from None
            if snap.examples == 0:
                chat = f" ({snap.skipped_chat} conversations are not trained offline yet)"
                raise LearnerError(
                    f"no examples up to the cutoff {snap.cutoff} to train on"
                    + (chat if snap.skipped_chat else "")
                    + ": add (input, target) examples first"
                )
            if n_steps is None:
                n_steps = max(1, math.ceil((epochs or 1.0) * snap.examples / global_batch))
            values = self._run_settings(start, snap, run_dir, n_steps, global_batch, learning_rate)
            try:
                train_cfg = TrainConfig.from_dict(
                    {**values, **overrides}, source="train_offline's arguments"
                )
                job = launch(train_cfg, nproc)
            except TrainError as e:
                raise LearnerError(str(e)) from None
            launched = True
        finally:
            if not launched:  # nothing runs: leave no half-made run folder behind
                shutil.rmtree(run_dir, ignore_errors=True)
        self._offline_job = OfflineJob(
            job,
            cutoff=snap.cutoff,
            examples=snap.examples,
            skipped_chat=snap.skipped_chat,
            nproc=nproc,
            start_seq=start_seq,
            adopt=self._adopt_offline,
            auto_adopt=adopt,
        )
        return self._offline_job

    def _run_settings(
        self,
        start: Path,
        snap: Snapshot,
        run_dir: Path,
        steps: int,
        global_batch: int,
        learning_rate: float | None,
    ) -> dict[str, Any]:
        """The run's ``TrainConfig`` fields: the learner's optimizer settings and lengths."""
        cfg, trainer = self.config, self._worker.trainer
        dtype = str(trainer.model.dtype).removeprefix("torch.")
        return {
            "model": str(start),
            "data": str(snap.path),
            "out": str(run_dir),
            "steps": steps,
            "global_batch": global_batch,
            "max_len": cfg.max_seq_len,
            "lr": learning_rate if learning_rate is not None else trainer.base_lr,
            "optimizer": cfg.optimizer,
            "weight_decay": cfg.weight_decay,
            "momentum": cfg.momentum,
            "max_grad_norm": cfg.max_grad_norm,
            "seed": cfg.seed,
            "checkpoint_every": 0,
            "resume": False,
            "export_dtype": dtype if dtype in EXPORT_DTYPES else "float32",
        }

    def _adopt_offline(self, path: Path, cutoff: int, start_seq: int) -> dict[str, Any]:
        self._check_open()
        return dict(self._worker.call(AdoptOffline(path, cutoff, start_seq)))

    def _cancel_offline(self) -> None:
        """On close: no run outlives its learner, and an adoption under way finishes first
        (its command must reach the worker before the stop does)."""
        job = self._offline_job
        if job is None:
            return
        if job.state == "running":
            job.cancel()
        if job.state == "adopting":
            job._done.wait(600)


def _check_offline_args(
    steps: int | None, epochs: float | None, nproc: int, global_batch: int, cutoff: int | None
) -> int | None:
    if steps is not None and epochs is not None:
        raise LearnerError("give steps or epochs, not both")
    named = {"steps": steps, "nproc": nproc, "global_batch": global_batch, "cutoff": cutoff}
    for name, value in named.items():
        if (value is not None or name in ("nproc", "global_batch")) and (
            not isinstance(value, int) or isinstance(value, bool) or value < 1
        ):
            raise LearnerError(f"{name} must be a positive integer, got {value!r}")
    if epochs is not None and (
        not isinstance(epochs, int | float) or not math.isfinite(epochs) or epochs <= 0
    ):
        raise LearnerError(f"epochs must be a finite number > 0, got {epochs!r}")
    if global_batch < nproc:
        raise LearnerError(
            f"global_batch {global_batch} is smaller than nproc {nproc}: every process needs an "
            f"example per step; use global_batch >= {nproc} or fewer processes"
        )
    return steps
