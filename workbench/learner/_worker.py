"""The learner's worker: the one thread that owns the training state.

It owns the training model and optimizer (through ``Trainer``), the pending and replay buffers,
the replay sampler's RNG and the checkpoint cadence. It drains typed commands (``_commands``)
between steps, runs an update whenever ``update_frequency`` new examples are pending, publishes
the new weights for inference, and only then tells the metrics log and the user hooks. Callers
never touch this state: the facade (``online.OnlineLearner``) sends commands and reads the
small status block below under its lock; an offline run's weights arrive as a command too.
"""

from __future__ import annotations

import dataclasses
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from workbench._cpu_pool import pooled
from workbench._openmp import release_thread_team
from workbench.batching import Encoded, encode_example
from workbench.chat import encode_chat
from workbench.learner import _checkpoints, _offline
from workbench.learner._buffers import encode_buffers
from workbench.learner._commands import (
    AddExample,
    AdoptOffline,
    Checkpoint,
    Command,
    Configure,
    ForceUpdate,
    IsIdle,
    LoadWeights,
    RemoveExample,
    ResetToBase,
    SaveWeights,
    SetEnabled,
    SetLearningRate,
    Stop,
    UndoUpdate,
)
from workbench.learner._training import Trainer
from workbench.learner._undo import TrainerRollback, UndoPoint, WeightCopy
from workbench.learner.config import LearnerError, LearningConfig
from workbench.learner.metrics import MetricsLog
from workbench.learner.publish import Publisher
from workbench.models import Transformer
from workbench.store import ExampleRecord, ExampleStore, UpdateRecord
from workbench.tokenizers import Tokenizer

__all__ = ["LearnerState", "Status", "Worker"]

LearnerState = Literal["idle", "training", "failed", "closed"]


@dataclass
class Status:
    """What ``get_stats`` reads while the worker runs; every field is guarded by ``lock``."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    state: LearnerState = "idle"
    last_error: str | None = None
    losses: deque[float] = field(default_factory=lambda: deque(maxlen=100))
    recent_updates: deque[float] = field(default_factory=lambda: deque(maxlen=50))
    recent_adds: deque[float] = field(default_factory=lambda: deque(maxlen=200))
    last_update_ms: float | None = None
    total_examples: int = 0


class Worker:
    """Owns training; ``submit`` is the only way in (see the module docstring)."""

    def __init__(
        self,
        model: Transformer,
        tokenizer: Tokenizer,
        config: LearningConfig,
        device: torch.device,
        session_dir: Path,
        store: ExampleStore,
        metrics: MetricsLog,
        on_update: Callable[[UpdateRecord], None],
    ) -> None:
        self.config = config
        self.session_dir = session_dir
        self.store = store
        self.metrics = metrics
        self.status = Status()
        self.enabled = config.enabled  # written by the worker thread only (SetEnabled)
        self._on_update = on_update
        self._queue: queue.Queue[tuple[Command, Future[Any] | None]] = queue.Queue()

        self.trainer = Trainer(model.to(device).train(), tokenizer, config, device)
        # Undo: the state before the newest update, and the weights as loaded (reset_to_base).
        self._undo = UndoPoint()
        self._undo_batch: tuple[list[int], list[int]] = ([], [])  # (new, all) seqs of it
        self._base = WeightCopy()
        self.trainer.undo = self._undo  # asked before the update's first write
        if config.keep_undo:
            self._base.save(self.trainer.model)
        self._pending: deque[Encoded] = deque()
        self._replay: deque[Encoded] = deque(maxlen=config.buffer_size)
        self._rng = random.Random(config.seed)
        self._trained_seq = 0
        self._last_checkpoint_update = 0
        self._restore()
        self.status.total_examples = store.count()
        self.publisher = Publisher(
            self.trainer.model,
            tokenizer=self.trainer.tokenizer,
            version=self.trainer.updates,
            inference=config.inference,
        )
        self._thread = threading.Thread(target=self._run, name="workbench-learner", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ the way in
    def submit(self, command: Command) -> None:
        """Queue a command whose result nobody waits for (a failure fails the worker)."""
        self._queue.put((command, None))

    def call(self, command: Command, timeout: float | None = None) -> Any:
        """Queue a command and wait for its result (or its exception)."""
        fut: Future[Any] = Future()
        self._queue.put((command, fut))
        return fut.result(timeout=timeout)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout=timeout)

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def buffered(self) -> int:
        return len(self._replay) + len(self._pending)

    # ------------------------------------------------------------------ the loop
    def _run(self) -> None:
        with pooled():  # its big allocations reuse the blocks it freed (workbench._cpu_pool)
            self._serve()

    def _serve(self) -> None:
        torch.set_num_threads(self.config.train_threads or max(1, torch.get_num_threads() - 1))
        worker = threading.get_ident()
        publisher = self.publisher

        def yield_point(max_wait: float) -> float:
            if threading.get_ident() != worker:
                return 0.0
            return publisher.yield_to_readers(max_wait)

        self.trainer.yield_point, self.trainer.readers = yield_point, publisher.readers_recent
        while True:
            if not self._update_due() and self._idle_work():
                continue  # prepared something: look for commands again before waiting
            due = publisher.busy = self._update_due()  # waiting: readers may take every core
            if not due:
                # Its idle OpenMP team would take the readers' teams off their spinning wait
                # (workbench._openmp): SmolLM2 decoded 8 tokens in 460 ms instead of 270.
                release_thread_team()
            try:
                command, fut = self._queue.get(block=not due)
            except queue.Empty:
                command, fut = None, None
            publisher.busy = True
            if command is not None:
                try:
                    result = self._apply(command)
                    if fut is not None:
                        fut.set_result(result)
                except BaseException as e:
                    if fut is not None:
                        fut.set_exception(e)
                    else:
                        self._fail(e)
                if isinstance(command, Stop):
                    return
            if self._update_due() and self._queue.empty():
                try:
                    self._update()
                except BaseException as e:
                    self._fail(e)

    def _apply(self, command: Command) -> Any:
        match command:
            case AddExample(record):
                self._pending.append(self._encode(record))
            case RemoveExample(example_id):
                self._forget(example_id)
            case SetEnabled(enabled):
                self.enabled = enabled
                if enabled:
                    self._clear_failure()
            case Configure(config):
                return self._configure(config)
            case SetLearningRate(lr):
                self.trainer.base_lr = lr
            case ForceUpdate():
                self._clear_failure()
                return self._update()
            case LoadWeights(path, format, dtype):
                return self._load(path, format, dtype)
            case AdoptOffline(path, cutoff, start_seq):
                return _offline.adopt(self, path, cutoff, start_seq)
            case SaveWeights(path, format, dtype, weights_only):
                return self._save(path, format, dtype, weights_only)
            case Checkpoint():
                return self._checkpoint()
            case UndoUpdate():
                return self._undo_update()
            case ResetToBase():
                return self._reset_to_base()
            case IsIdle():
                return self._queue.empty() and not self._update_due()
            case Stop(checkpoint):
                unsaved = self.trainer.updates > self._last_checkpoint_update
                if checkpoint and unsaved and self.config.checkpoint_frequency is not None:
                    self._checkpoint()
        return None

    def _idle_work(self) -> bool:
        """With nothing queued, prepare what the next update needs (an edit's key statistics,
        once per loaded model), so a person's first correction does not wait for it. Returns
        whether it did something."""
        if not self._queue.empty() or not self.enabled or self.status.state == "failed":
            return False
        try:
            return self.trainer.prepare()
        except Exception:  # an update reports the same problem, with its context
            return False

    def _update_due(self) -> bool:
        return (
            self.enabled
            and self.status.state != "failed"
            and len(self._pending) >= self.config.update_frequency
        )

    def _fail(self, error: BaseException) -> None:
        with self.status.lock:
            self.status.state = "failed"
            self.status.last_error = f"{type(error).__name__}: {error}"

    def _clear_failure(self) -> None:
        with self.status.lock:
            if self.status.state == "failed":
                self.status.state = "idle"

    # ------------------------------------------------------------------ commands
    def _forget(self, example_id: str) -> None:
        rec = self.store.get(example_id)
        if rec is None:
            return
        self._pending = deque(e for e in self._pending if e.seq != rec.seq)
        self._replay = deque(
            (e for e in self._replay if e.seq != rec.seq), maxlen=self.config.buffer_size
        )
        saved = self._undo.learner
        for key in ("pending", "replay"):  # an undo must not bring it back
            if key in saved:
                saved[key] = [e for e in saved[key] if e.seq != rec.seq]

    def _configure(self, new: LearningConfig) -> LearningConfig:
        old = self.config
        self.config = self.trainer.cfg = new
        if (old.optimizer, old.weight_decay, old.momentum) != (
            new.optimizer,
            new.weight_decay,
            new.momentum,
        ):
            self.trainer.rebuild_optimizer()
            self._undo.valid = False  # the saved optimizer state is of the old optimizer
        if old.learning_rate != new.learning_rate:
            self.trainer.base_lr = new.learning_rate
        trainer = self.trainer
        self.publisher.set_inference(
            new.inference, trainer.model, trainer.updates, trainer.tokenizer
        )
        return new

    def _encode(self, r: ExampleRecord) -> Encoded:
        tok, max_len = self.trainer.tokenizer, self.config.max_seq_len
        if r.messages is not None and r.target is not None:
            # A conversation: the template renders the context, only the reply is trained.
            c = encode_chat(tok, r.messages, r.target, max_len)
            return Encoded(r.seq, c.ids, c.labels, r.weight, c.input_len, c.turn_from, r.method)
        plain = encode_example(tok, r.seq, r.input, r.target, r.weight, max_len)
        return plain if r.method is None else dataclasses.replace(plain, method=r.method)

    def _update(self) -> float:
        """One update: the oldest ``update_frequency`` pending examples plus replay samples.

        The composition depends only on the order of examples and the seeded replay sampler,
        never on timing, so a resumed session repeats an uninterrupted one exactly. Hooks run
        last, after the weights are published and the metrics recorded, so a failing hook
        cannot leave store, metrics and weights disagreeing.
        """
        cfg = self.config
        new = [self._pending[i] for i in range(min(len(self._pending), cfg.update_frequency))]
        if new:
            rf = cfg.replay_fraction
            n_replay = round(len(new) * rf / (1 - rf))
        else:  # a forced update with nothing new: replay only
            n_replay = cfg.batch_size
        n_replay = min(n_replay, len(self._replay))
        if not new and not n_replay:
            raise LearnerError("no examples to train on: add an example first")
        if cfg.keep_undo:  # before the replay draw: an undo rewinds the sampler too
            self._save_undo_point()
        replay = self._rng.sample(list(self._replay), n_replay) if n_replay else []
        batch = new + replay
        status = self.status
        with status.lock:
            status.state = "training"
        start = time.perf_counter()
        try:
            loss, grad_norm = self.trainer.step(batch)
            self._undo.settle(ok=True)  # (takes the deferred copy if nothing wrote)
        except BaseException:
            self._undo.settle(ok=False)  # it holds this failed update's start, not the last's
            raise
        finally:
            with status.lock:
                if status.state == "training":
                    status.state = "idle"
        duration = (time.perf_counter() - start) * 1000
        for _ in new:
            self._replay.append(self._pending.popleft())
        if new:
            self._trained_seq = new[-1].seq
        self.store.mark_trained([e.seq for e in batch])
        self._undo_batch = ([e.seq for e in new], [e.seq for e in batch])
        trainer = self.trainer
        record = UpdateRecord(
            trainer.updates, loss, trainer.current_lr, time.time(), duration, len(batch), grad_norm
        )
        self.store.add_updates([record])
        with status.lock:
            status.losses.append(loss)
            status.recent_updates.append(time.perf_counter())
            status.last_update_ms = duration
        self.publisher.publish(trainer.model, trainer.updates, trainer.tokenizer)
        self.metrics.extend([record])
        freq = cfg.checkpoint_frequency
        if freq is not None and trainer.updates % freq == 0:
            self._checkpoint()
        self._on_update(record)
        return loss

    # ------------------------------------------------------------------ undo
    def _save_undo_point(self) -> None:
        trainer = self.trainer
        with self.status.lock:
            losses = list(self.status.losses)
        learner = {
            "trainer": trainer.state(),
            "rng": self._rng.getstate(),
            "trained_seq": self._trained_seq,
            "pending": list(self._pending),
            "replay": list(self._replay),
            "losses": losses,
            "last_checkpoint_update": self._last_checkpoint_update,
        }
        self._undo.save(trainer.model, trainer.optimizer, learner, self.publisher.spare_cores)

    def _undo_update(self) -> dict[str, Any]:
        if not self.config.keep_undo:
            raise LearnerError("undo is off (keep_undo=False): turn it on to undo updates")
        if not self._undo.valid:
            raise LearnerError("nothing to undo: no update since the last undo, load or reset")
        trainer = self.trainer
        undone_update = trainer.updates
        saved = self._undo.restore(trainer.model, trainer.optimizer)
        trainer.updates = int(saved["trainer"]["updates"])
        trainer.base_lr = float(saved["trainer"]["base_lr"])
        trainer.generator.set_state(torch.tensor(saved["trainer"]["generator"], dtype=torch.uint8))
        self._rng.setstate(saved["rng"])
        self._trained_seq = saved["trained_seq"]
        self._last_checkpoint_update = saved["last_checkpoint_update"]
        # Examples that arrived after the update stay pending; its own new ones are undone.
        new, batch = self._undo_batch
        known = {e.seq for e in saved["pending"]}
        arrived = [e for e in self._pending if e.seq not in known]
        undone = set(new)
        self._pending = deque(e for e in [*saved["pending"], *arrived] if e.seq not in undone)
        self._replay = deque(saved["replay"], maxlen=self.config.buffer_size)
        count = self.store.undo_update(new, batch)
        self.store.truncate_updates(trainer.updates)
        _checkpoints.drop_newer_than(self.session_dir, trainer.updates)
        with self.status.lock:
            self.status.losses.clear()
            self.status.losses.extend(saved["losses"])
            self.status.total_examples -= count
        self.publisher.publish(trainer.model, trainer.updates, trainer.tokenizer)
        return {
            "undone_update": undone_update,
            "examples_undone": count,
            "updates": trainer.updates,
        }

    def _reset_to_base(self) -> dict[str, Any]:
        if not self.config.keep_undo:
            raise LearnerError("reset is off (keep_undo=False): the loaded weights were not kept")
        trainer = self.trainer
        self._base.restore(trainer.model)
        trainer.rebuild_optimizer()
        self._undo.valid = False
        self.publisher.publish(trainer.model, trainer.updates, trainer.tokenizer)
        return {"updates": trainer.updates, "optimizer": "reset"}

    # ------------------------------------------------------------------ persistence
    def _learner_state(self) -> dict[str, Any]:
        with self.status.lock:
            losses = list(self.status.losses)
        return {
            "trained_seq": self._trained_seq,
            "losses": losses,
            "rng": _checkpoints.rng_to_json(self._rng),
            "enabled": self.enabled,
            **self.trainer.state(),
        }

    def _checkpoint(self) -> Path:
        path = _checkpoints.write(
            self.session_dir, self.trainer, self._learner_state(), self.config.keep_checkpoints
        )
        self._last_checkpoint_update = self.trainer.updates
        return path

    def _restore(self) -> None:
        found = _checkpoints.latest_valid(self.session_dir)
        if found is not None:
            ckpt, _path = found
            self.trainer.restore(ckpt)
            state = ckpt.learner_state or {}
            self._trained_seq = int(state.get("trained_seq", 0))
            self.status.losses.extend(float(x) for x in state.get("losses", []))
            if "rng" in state:
                self._rng.setstate(_checkpoints.rng_from_json(state["rng"]))
            self._last_checkpoint_update = self.trainer.updates
        self.store.truncate_updates(self.trainer.updates)
        self.metrics.extend(self.store.updates())
        self._pending, self._replay = self._encode_buffers("this session's tokenizer")

    def _encode_buffers(self, whose: str) -> tuple[deque[Encoded], deque[Encoded]]:
        """Pending and replay from the store with the trainer's tokenizer; assigns nothing."""
        size, seq = self.config.buffer_size, self._trained_seq
        return encode_buffers(self.store, self._encode, size, seq, whose)

    def _load(self, path: Path, format: str | None, dtype: str | None = None) -> dict[str, Any]:
        """Load all or nothing: buffered examples are re-encoded before anything is kept; a
        failure puts model, tokenizer and optimizer back (snapshot, buffers, undo point, RNG
        and store are touched only after success). Costs one weight copy while it runs."""
        trainer = self.trainer
        saved = TrainerRollback(trainer)
        try:
            info = trainer.load(path, format, dtype)
            buffers = None
            if info.get("tokenizer_changed"):
                buffers = self._encode_buffers(f"the tokenizer of {path.name}")
        except BaseException:
            saved.restore(trainer)
            raise
        del saved  # the weight copy goes before publishing allocates a snapshot
        if info.get("learner_state") is not None:
            state = info.pop("learner_state")
            if "rng" in state:
                self._rng.setstate(_checkpoints.rng_from_json(state["rng"]))
        if buffers is not None:
            self._pending, self._replay = buffers
        self._undo.valid = False  # an undo across a load would mix two models
        if self.config.keep_undo:
            self._base.save(trainer.model)
        self.publisher.publish(trainer.model, trainer.updates, trainer.tokenizer)
        return info

    def _save(self, path: Path, format: str, dtype: str | None, weights_only: bool) -> Path:
        if format == "custom":
            return _checkpoints.write_to(path, self.trainer, self._learner_state())
        return self.trainer.save(path, format, dtype, weights_only)
