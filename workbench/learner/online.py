"""The online learner: a background worker trains while inference reads published weights.

Threads and ownership:

- the **worker thread** owns the training model, the optimizer, the replay buffer and the
  checkpoints. Everything that changes them (new examples, learning-rate changes, weight loads,
  forced updates, saves) arrives as a command on one queue, drained between steps;
- **callers** (notebook, panels, MCP) add examples (committed to the store before the call
  returns), and generate or score on the published snapshot, which the worker swaps after each
  update. A caller never waits for a training step.

Intra-op threads are per OS thread in torch: the worker uses ``train_threads`` (all cores but
one by default) and each inference call uses one, so on two cores training and inference each
get a core instead of fighting over both.
"""

from __future__ import annotations

import dataclasses
import queue
import random
import tempfile
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import torch

from workbench.learner import _checkpoints, _training
from workbench.learner.batching import Encoded, encode_example
from workbench.learner.config import (
    LearnerError,
    LearningConfig,
    TrainingExample,
    check_learning_rate,
)
from workbench.learner.metrics import MetricsLog
from workbench.learner.publish import Publisher
from workbench.models import Transformer
from workbench.store import ExampleRecord, ExampleStore, UpdateRecord
from workbench.tokenizers import Tokenizer

__all__ = ["AddResult", "LearnerFailed", "LearnerState", "OnlineLearner"]

LearnerState = Literal["idle", "training", "failed", "closed"]
UpdateHook = Callable[["OnlineLearner", UpdateRecord], None]


class LearnerFailed(RuntimeError):
    """The worker hit an error; ``get_stats()['last_error']`` has the details."""


@dataclass(frozen=True)
class AddResult:
    """The answer to ``add_example``: the example is durably stored when this exists."""

    id: str
    seq: int
    duplicate: bool  # the id was already stored: nothing new was added
    will_train: bool  # learning is on, so the worker will train on it
    message: str


def _infer_threads() -> int:
    return 1


class OnlineLearner:
    """Learns from weighted examples in the background while serving generation.

    Examples
    --------
    >>> from workbench.models import ModelConfig, Transformer
    >>> from workbench.tokenizers import ByteTokenizer
    >>> learner = OnlineLearner(Transformer(ModelConfig.preset("tiny-gpt2")), ByteTokenizer(),
    ...                         LearningConfig(update_frequency=2, checkpoint_frequency=None))
    >>> _ = learner.add_example(TrainingExample("2 + 2 =", " 4"))
    >>> loss = learner.force_update()
    >>> learner.get_stats()["total_updates"]
    1
    >>> learner.close()
    """

    def __init__(
        self, model: Transformer, tokenizer: Tokenizer, config: LearningConfig | None = None
    ) -> None:
        self.config = config = config if config is not None else LearningConfig()
        _check_vocab(model, tokenizer)
        self.device = torch.device(
            "cuda" if config.use_gpu and torch.cuda.is_available() else "cpu"
        )
        self._own_dir = config.session_dir is None
        self.session_dir = Path(
            config.session_dir or tempfile.mkdtemp(prefix="workbench-session-")
        ).resolve()
        self.session_dir.mkdir(parents=True, exist_ok=True)
        self.store = ExampleStore(
            self.session_dir / "examples.sqlite",
            synchronous="FULL" if config.durable_fsync else "NORMAL",
        )
        self.metrics = MetricsLog()
        self._hooks: list[UpdateHook] = []
        self._commands: queue.Queue[tuple[str, Any, Future[Any] | None]] = queue.Queue()
        self._state: LearnerState = "idle"
        self._last_error: str | None = None
        self._enabled = config.enabled
        self._lock = threading.Lock()  # guards the counters read by get_stats
        self._recent_adds: deque[float] = deque(maxlen=200)
        self._recent_updates: deque[float] = deque(maxlen=50)
        self._last_update_ms: float | None = None

        # Worker-owned training state, set up here before the worker starts.
        self._trainer = _training.Trainer(
            model.to(self.device).train(), tokenizer, config, self.device
        )
        self._pending: deque[Encoded] = deque()
        self._replay: deque[Encoded] = deque(maxlen=config.buffer_size)
        self._rng = random.Random(config.seed)
        self._trained_seq = 0
        self._losses: deque[float] = deque(maxlen=100)
        self._last_checkpoint_update = 0
        self._restore()
        self._total_examples = self.store.count()
        self._publisher = Publisher(
            self._trainer.model, tokenizer=self._trainer.tokenizer, version=self._trainer.updates
        )

        self._thread = threading.Thread(target=self._run, name="workbench-learner", daemon=True)
        self._thread.start()

    # =================================================================== public API
    @property
    def model(self) -> Transformer:
        """The published (inference) model: read-only, replaced after each update."""
        with self._publisher.reading() as snap:
            return snap.model

    @property
    def tokenizer(self) -> Tokenizer:
        with self._publisher.reading() as snap:
            return snap.tokenizer

    def add_example(
        self, example: TrainingExample | str, target: str | None = None, weight: float = 1.0
    ) -> AddResult:
        """Store an example durably, then queue it for training; returns at once."""
        self._check_open()
        if not isinstance(example, TrainingExample):
            example = TrainingExample(example, target, weight)
        record, created = self.store.add(example.id, example.input, example.target, example.weight)
        enabled = self._enabled
        if created:
            with self._lock:
                self._total_examples += 1
                self._recent_adds.append(time.perf_counter())
            self._commands.put(("example", record, None))
        if not created:
            message = "already stored (same id): nothing added"
        elif enabled:
            message = "stored; it will be trained on in the background"
        else:
            message = "stored; learning is disabled, so it was not trained on (it will be once learning is enabled)"
        return AddResult(record.id, record.seq, not created, created and enabled, message)

    def remove_example(self, example_id: str) -> bool:
        """Undo an example: it stays on disk marked removed and is never trained on again."""
        self._check_open()
        removed = self.store.remove(example_id)
        if removed:
            with self._lock:
                self._total_examples -= 1
            self._call("remove", example_id)
        return removed

    def enable(self) -> None:
        """Learn in the background again (also clears a ``failed`` state)."""
        self._check_open()
        self._enabled = True
        self._call("enable", None)

    def disable(self) -> None:
        """Stop background updates; examples are still stored."""
        self._check_open()
        self._enabled = False
        self._call("disable", None)

    @property
    def enabled(self) -> bool:
        return self._enabled

    def set_learning_rate(self, learning_rate: float) -> None:
        """Set the peak learning rate (the schedule scales it); applies from the next update."""
        self._check_open()
        lr = check_learning_rate(learning_rate)
        self._call("lr", lr)

    def force_update(self) -> float:
        """Run one update now on pending examples plus replay; returns its loss.

        Works whether or not background learning is enabled: it is an explicit request.
        """
        self._check_open()
        return float(self._call("force", None))

    def load_weights(self, path: str | Path, format: str | None = None) -> dict[str, Any]:
        """Load weights (any format). A different architecture replaces the model and resets
        the optimizer; a custom checkpoint also restores optimizer and learner state."""
        self._check_open()
        return dict(self._call("load", (Path(path), format)))

    def save_weights(
        self, path: str | Path, format: str = "custom", dtype: str | None = None
    ) -> Path:
        """Save the training weights; ``custom`` is a full checkpoint (optimizer, learner state)."""
        self._check_open()
        return Path(self._call("save", (Path(path), format, dtype)))

    def checkpoint(self) -> Path:
        """Write a checkpoint into the session folder now."""
        self._check_open()
        return Path(self._call("checkpoint", None))

    def list_checkpoints(self) -> list[dict[str, Any]]:
        """The session's checkpoints, newest first: path, updates, bytes, modified."""
        return _checkpoints.list_checkpoints(self.session_dir)

    def recent_examples(self, limit: int = 20) -> list[ExampleRecord]:
        """The newest examples (oldest first) with their status: stored, trained or removed."""
        return self.store.latest(limit, include_removed=True)

    def configure(self, **changes: Any) -> LearningConfig:
        """Change settings while running (e.g. ``loss_fn``, ``update_frequency``,
        ``replay_fraction``, ``max_grad_norm``, ``optimizer``); validated like the constructor.

        A change of optimizer, weight decay or momentum rebuilds the optimizer (its state
        starts afresh). ``session_dir``, ``buffer_size``, ``use_gpu`` and ``seed`` are fixed.
        """
        self._check_open()
        fixed = sorted(set(changes) & {"session_dir", "buffer_size", "use_gpu", "seed", "enabled"})
        if fixed:
            raise LearnerError(
                f"{', '.join(fixed)} cannot change while running (enabled: use enable())"
            )
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(LearningConfig)})
        if unknown:
            raise LearnerError(f"unknown setting(s): {', '.join(unknown)}")
        if "learning_rate" in changes:
            check_learning_rate(changes["learning_rate"])
        new = dataclasses.replace(self.config, **changes)  # validates
        return cast(LearningConfig, self._call("configure", new))

    def describe(self) -> dict[str, Any]:
        """What the published model is: family, sizes, parameters, dtype, device, tokenizer."""
        with self._publisher.reading() as snap:
            cfg = snap.model.cfg
            return {
                "family": cfg.family,
                "parameters": snap.model.num_parameters(),
                "dtype": str(snap.model.dtype).removeprefix("torch."),
                "device": str(snap.model.device),
                "config": cfg.to_dict(),
                "tokenizer": repr(snap.tokenizer),
                "vocab_size": snap.tokenizer.vocab_size,
                "version": snap.version,
            }

    def serve_mcp(self, port: int = 0, host: str = "127.0.0.1", **kwargs: Any) -> Any:
        """Serve this learner to AI agents over MCP (streamable HTTP with a bearer token).

        Returns a handle with ``.url``, ``.token``, ``.headers`` and ``.stop()``. Pass
        ``root=FOLDER`` to enable the file tools (paths must stay inside it; without a root
        they are off); ``token=`` and ``max_body_bytes=`` pass through to
        ``workbench.mcp.serve_http``. Imported lazily: the core never imports the MCP SDK.
        """
        from workbench.mcp import serve_http

        return serve_http(self, host=host, port=port, **kwargs)

    def on_update(self, hook: UpdateHook) -> None:
        """Call ``hook(learner, record)`` on the worker after each update, before publishing."""
        self._hooks.append(hook)

    def metrics_since(self, cursor: int = 0) -> tuple[list[UpdateRecord], int]:
        """Update records after ``cursor`` and the next cursor (for live plots)."""
        return self.metrics.since(cursor)

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Block until the worker has no queued work (tests, notebooks, demos)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self._call("idle?", None, timeout=max(0.01, deadline - time.monotonic())):
                    return True
            except TimeoutError:
                return False
            time.sleep(0.01)
        return False

    @contextmanager
    def _reading(self) -> Iterator[Any]:
        old = torch.get_num_threads()
        torch.set_num_threads(_infer_threads())
        try:
            with self._publisher.reading() as snap, torch.inference_mode():
                yield snap
        finally:
            torch.set_num_threads(old)

    def generate(
        self,
        prompt: str,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stream: Callable[[str], bool | None] | None = None,
    ) -> str:
        """Continue ``prompt`` with the published weights; return the new text.

        ``stream`` receives text pieces as they are decoded and may return True to stop.
        """
        if not isinstance(prompt, str) or not prompt:
            raise LearnerError("prompt must be a non-empty string")
        if (
            isinstance(max_new_tokens, bool)
            or not isinstance(max_new_tokens, int)
            or not 0 <= max_new_tokens <= 4096
        ):
            raise LearnerError(
                f"max_new_tokens must be an integer in [0, 4096], got {max_new_tokens!r}"
            )
        with self._reading() as snap:
            return _training.generate_text(
                snap.model,
                snap.tokenizer,
                prompt,
                max_new_tokens,
                temperature,
                top_k,
                top_p,
                seed,
                stream,
            )

    def score(self, text: str, target: str | None = None) -> dict[str, float]:
        """Loss and perplexity of ``text`` (or of ``target`` after ``text``) under the published weights."""
        example = TrainingExample(text, target)
        with self._reading() as snap:
            return _training.score(snap.model, snap.tokenizer, example, self.config.max_seq_len)

    def get_stats(self) -> dict[str, Any]:
        now = time.perf_counter()
        with self._lock:
            adds = [t for t in self._recent_adds if now - t < 10.0]
            ups = [t for t in self._recent_updates if now - t < 30.0]
            losses = list(self._losses)
            stats = {
                "total_examples": self._total_examples,
                "total_updates": self._trainer.updates,
                "buffer_size": len(self._replay) + len(self._pending),
                "pending_examples": len(self._pending),
                "average_loss": sum(losses) / len(losses) if losses else 0.0,
                "learning_rate": self._trainer.base_lr,
                "current_lr": self._trainer.current_lr,
                "enabled": self._enabled,
                "examples_per_s": _rate(adds, now),
                "updates_per_s": _rate(ups, now),
                "last_update_ms": self._last_update_ms,
                "state": self._state,
                "last_error": self._last_error,
                "version": self._publisher.version,
                "device": str(self.device),
                "optimizer": self._trainer.optimizer_name,
                "loss_fn": self.config.loss_fn,
                "session_dir": str(self.session_dir),
            }
        return stats

    def close(self, checkpoint: bool = True) -> None:
        """Stop the worker (after a final checkpoint when there are unsaved updates)."""
        if self._state == "closed":
            return
        try:
            self._call("stop", checkpoint, timeout=600)
        finally:
            self._thread.join(timeout=60)
            self.store.close()
            self._state = "closed"

    def __enter__(self) -> OnlineLearner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # =================================================================== plumbing
    def _check_open(self) -> None:
        if self._state == "closed":
            raise LearnerError("this learner is closed; create a new one")

    def _call(self, kind: str, arg: Any, timeout: float | None = None) -> Any:
        fut: Future[Any] = Future()
        self._commands.put((kind, arg, fut))
        return fut.result(timeout=timeout)

    # =================================================================== worker
    def _run(self) -> None:
        torch.set_num_threads(self.config.train_threads or max(1, torch.get_num_threads() - 1))
        worker = threading.get_ident()
        publisher = self._publisher

        def yield_point(max_wait: float) -> float:
            if threading.get_ident() != worker:
                return 0.0
            return publisher.yield_to_readers(max_wait)

        self._trainer.yield_point = yield_point
        stop = False
        while not stop:
            block = not self._update_due()
            try:
                kind, arg, fut = self._commands.get(block=block, timeout=None)
            except queue.Empty:
                kind, arg, fut = "tick", None, None
            try:
                result = self._handle(kind, arg)
                if fut is not None:
                    fut.set_result(result)
            except BaseException as e:
                if fut is not None:
                    fut.set_exception(e)
                else:
                    self._fail(e)
            stop = kind == "stop"
            if not stop and self._update_due() and self._commands.empty():
                try:
                    self._update(forced=False)
                except BaseException as e:
                    self._fail(e)

    def _update_due(self) -> bool:
        return (
            self._enabled
            and self._state != "failed"
            and len(self._pending) >= self.config.update_frequency
        )

    def _fail(self, error: BaseException) -> None:
        with self._lock:
            self._state = "failed"
            self._last_error = f"{type(error).__name__}: {error}"
        self._trace = traceback.format_exc()

    def _handle(self, kind: str, arg: Any) -> Any:
        if kind == "example":
            record: ExampleRecord = arg
            self._pending.append(self._encode(record))
        elif kind == "remove":
            rec = self.store.get(arg)
            if rec is not None:
                self._pending = deque(e for e in self._pending if e.seq != rec.seq)
                self._replay = deque(
                    (e for e in self._replay if e.seq != rec.seq), maxlen=self.config.buffer_size
                )
        elif kind == "enable":
            if self._state == "failed":
                self._state = "idle"
        elif kind == "disable":
            pass
        elif kind == "configure":
            old = self.config
            self.config = self._trainer.cfg = arg
            if (old.optimizer, old.weight_decay, old.momentum) != (
                arg.optimizer,
                arg.weight_decay,
                arg.momentum,
            ):
                self._trainer.rebuild_optimizer()
            if old.learning_rate != arg.learning_rate:
                self._trainer.base_lr = arg.learning_rate
            return arg
        elif kind == "lr":
            self._trainer.base_lr = arg
        elif kind == "force":
            if self._state == "failed":
                self._state = "idle"
            return self._update(forced=True)
        elif kind == "load":
            return self._load(*arg)
        elif kind == "save":
            return self._save(*arg)
        elif kind == "checkpoint":
            return self._checkpoint()
        elif kind == "idle?":
            return self._commands.empty() and not self._update_due()
        elif kind == "stop":
            if (
                arg
                and self._trainer.updates > self._last_checkpoint_update
                and self.config.checkpoint_frequency is not None
            ):
                self._checkpoint()
        elif kind == "tick":
            pass
        else:  # pragma: no cover - internal
            raise AssertionError(f"unknown command {kind}")
        return None

    def _encode(self, r: ExampleRecord) -> Encoded:
        return encode_example(
            self._trainer.tokenizer, r.seq, r.input, r.target, r.weight, self.config.max_seq_len
        )

    def _update(self, forced: bool) -> float:
        """One update: the oldest ``update_frequency`` pending examples plus replay samples.

        The composition depends only on the order of examples and the seeded replay sampler,
        never on timing, so a resumed session repeats an uninterrupted one exactly.
        """
        cfg = self.config
        new = [self._pending[i] for i in range(min(len(self._pending), cfg.update_frequency))]
        if new:
            rf = cfg.replay_fraction
            n_replay = round(len(new) * rf / (1 - rf))
        else:  # a forced update with nothing new: replay only
            n_replay = cfg.batch_size
        n_replay = min(n_replay, len(self._replay))
        replay = self._rng.sample(list(self._replay), n_replay) if n_replay else []
        batch = new + replay
        if not batch:
            raise LearnerError("no examples to train on: add an example first")
        with self._lock:
            self._state = "training"
        start = time.perf_counter()
        try:
            loss, grad_norm = self._trainer.step(batch)
        finally:
            with self._lock:
                if self._state == "training":
                    self._state = "idle"
        duration = (time.perf_counter() - start) * 1000
        for _ in new:
            self._replay.append(self._pending.popleft())
        if new:
            self._trained_seq = new[-1].seq
        self.store.mark_trained([e.seq for e in batch])
        record = UpdateRecord(
            self._trainer.updates,
            loss,
            self._trainer.current_lr,
            time.time(),
            duration,
            len(batch),
            grad_norm,
        )
        self.store.add_updates([record])
        with self._lock:
            self._losses.append(loss)
            self._recent_updates.append(time.perf_counter())
            self._last_update_ms = duration
        for hook in self._hooks:
            hook(self, record)
        self._publisher.publish(self._trainer.model, self._trainer.updates, self._trainer.tokenizer)
        self.metrics.extend([record])
        freq = cfg.checkpoint_frequency
        if freq is not None and self._trainer.updates % freq == 0:
            self._checkpoint()
        return loss

    # ------------------------------------------------------------------- persistence
    def _learner_state(self) -> dict[str, Any]:
        return {
            "trained_seq": self._trained_seq,
            "losses": list(self._losses),
            "rng": _checkpoints.rng_to_json(self._rng),
            "enabled": self._enabled,
            **self._trainer.state(),
        }

    def _checkpoint(self) -> Path:
        path = _checkpoints.write(
            self.session_dir, self._trainer, self._learner_state(), self.config.keep_checkpoints
        )
        self._last_checkpoint_update = self._trainer.updates
        return path

    def _restore(self) -> None:
        found = _checkpoints.latest_valid(self.session_dir)
        if found is not None:
            ckpt, _path = found
            self._trainer.restore(ckpt)
            state = ckpt.learner_state or {}
            self._trained_seq = int(state.get("trained_seq", 0))
            self._losses.extend(float(x) for x in state.get("losses", []))
            if "rng" in state:
                self._rng.setstate(_checkpoints.rng_from_json(state["rng"]))
            self._last_checkpoint_update = self._trainer.updates
        self.store.truncate_updates(self._trainer.updates)
        self.metrics.extend(self.store.updates())
        for r in self.store.latest(self.config.buffer_size, up_to_seq=self._trained_seq):
            self._replay.append(self._encode(r))
        for r in self.store.examples_after(self._trained_seq):
            self._pending.append(self._encode(r))

    def _load(self, path: Path, format: str | None) -> dict[str, Any]:
        info = self._trainer.load(path, format)
        if info.get("learner_state") is not None:
            state = info.pop("learner_state")
            if "rng" in state:
                self._rng.setstate(_checkpoints.rng_from_json(state["rng"]))
        if info.get("tokenizer_changed"):
            self._pending = deque(
                self._encode(r) for r in self.store.examples_after(self._trained_seq)
            )
            self._replay = deque(
                (
                    self._encode(r)
                    for r in self.store.latest(self.config.buffer_size, up_to_seq=self._trained_seq)
                ),
                maxlen=self.config.buffer_size,
            )
        self._publisher.publish(self._trainer.model, self._trainer.updates, self._trainer.tokenizer)
        return info

    def _save(self, path: Path, format: str, dtype: str | None) -> Path:
        if format == "custom":
            return _checkpoints.write_to(path, self._trainer, self._learner_state())
        return self._trainer.save(path, format, dtype)


def _rate(times: list[float], now: float) -> float:
    if len(times) < 2:
        return 0.0
    span = max(now - times[0], 1e-9)
    return len(times) / span


def _check_vocab(model: Transformer, tokenizer: Tokenizer) -> None:
    if not isinstance(model, Transformer):
        raise LearnerError(f"model must be a workbench Transformer, got {type(model).__name__}")
    if tokenizer.vocab_size > model.cfg.vocab_size:
        raise LearnerError(
            f"the tokenizer has {tokenizer.vocab_size} tokens but the model only "
            f"{model.cfg.vocab_size} embeddings: use a matching tokenizer"
        )
