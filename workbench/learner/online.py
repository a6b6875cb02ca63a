"""The online learner's public face: a background worker trains while inference reads weights.

Threads and ownership:

- the **worker thread** (``_worker.Worker``) owns the training model, the optimizer, the replay
  buffer and the checkpoints. Everything that changes them (new examples, learning-rate changes,
  enabling, weight loads, forced updates, saves) arrives as a typed command (``_commands``) on
  one queue, drained between steps;
- **callers** (notebook, panels, MCP) add examples (committed to the store before the call
  returns), and generate or score (``_inference``) on the published snapshot, which the worker
  swaps after each update. A caller never waits for a training step.

Intra-op threads are per OS thread in torch. Reads come first: an update waits between its
blocks while anyone generates or scores (``LearningConfig.reader_priority`` bounds the wait)
and reads then run on every core; past that bound the worker trains on ``train_threads`` (all
cores but one by default) and reads on one, so training and inference never fight over one.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch

from workbench._openmp import release_thread_team
from workbench.chat import encode_prompt
from workbench.learner import _checkpoints, _inference
from workbench.learner import _commands as cmd
from workbench.learner._editing import editable
from workbench.learner._offline import OfflineTraining
from workbench.learner._worker import LearnerState, Worker
from workbench.learner.config import (
    LOAD_DTYPES,
    LearnerError,
    LearningConfig,
    TrainingExample,
    check_learning_rate,
)
from workbench.learner.metrics import MetricsLog
from workbench.models import Transformer
from workbench.store import ExampleRecord, ExampleStore, UpdateRecord
from workbench.tokenizers import Tokenizer

__all__ = ["AddResult", "LearnerFailed", "LearnerState", "OnlineLearner"]

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
    tokens: int = 0  # the example's length in tokens (input + target)
    kept_tokens: int = 0  # what training sees: cut to max_seq_len beyond it


class OnlineLearner(OfflineTraining, AbstractContextManager["OnlineLearner"]):
    """Learns from weighted examples in the background while serving generation; fine-tunes
    offline in torchrun processes and takes the weights back (``train_offline``, ``_offline``).

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
        config = config if config is not None else LearningConfig()
        _check_vocab(model, tokenizer)
        self.device = torch.device(
            "cuda" if config.use_gpu and torch.cuda.is_available() else "cpu"
        )
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
        self._closed = False
        self._worker = Worker(
            model,
            tokenizer,
            config,
            self.device,
            self.session_dir,
            self.store,
            self.metrics,
            on_update=self._run_hooks,
        )
        self._status = self._worker.status
        self._publisher = self._worker.publisher
        self._chat_cache = _inference.PromptCache()
        release_thread_team()  # the loading thread's OpenMP team slows the worker's (_openmp)

    # =================================================================== public API
    @property
    def config(self) -> LearningConfig:
        """The settings in force (change them with ``configure``)."""
        return self._worker.config

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
        with self._publisher.reading() as snap:  # also refuses a chat without a template
            tokens = _inference.example_length(snap.tokenizer, example)
            if example.method == "edit" and not editable(snap.model):
                raise LearnerError(
                    "this model's MLP outputs pass through a norm (Gemma's post-norms), so it "
                    "cannot be edited: add the example with method='finetune' or None"
                )
        if example.method == "edit" and self.config.loss_fn != "cross_entropy":
            raise LearnerError(
                f"edits teach with the cross-entropy loss, and loss_fn is "
                f"{self.config.loss_fn!r}: add the example with method='finetune' or None"
            )
        record, created = self.store.add(
            example.id,
            example.input,
            example.target,
            example.weight,
            example.messages,
            example.method,
        )
        enabled = self._worker.enabled
        if created:
            with self._status.lock:
                self._status.total_examples += 1
                self._status.recent_adds.append(time.perf_counter())
            self._worker.submit(cmd.AddExample(record))
        if not created:
            message = "already stored (same id): nothing added"
        elif enabled:
            message = "stored; it will be trained on in the background"
        else:
            message = "stored; learning is disabled, so it was not trained on (it will be once learning is enabled)"
        kept = min(tokens, self.config.max_seq_len)
        if kept < tokens:
            cut = "end of the target" if example.target is None else "start of the input"
            message += (
                f"; it is {tokens:,} tokens long and training sees {kept:,} "
                f"(max_seq_len): the {cut} is cut"
            )
        return AddResult(
            record.id, record.seq, not created, created and enabled, message, tokens, kept
        )

    def remove_example(self, example_id: str) -> bool:
        """Undo an example: it stays on disk marked removed and is never trained on again."""
        self._check_open()
        removed = self.store.remove(example_id)
        if removed:
            with self._status.lock:
                self._status.total_examples -= 1
            self._worker.call(cmd.RemoveExample(example_id))
        return removed

    def enable(self) -> None:
        """Learn in the background again (also clears a ``failed`` state)."""
        self._check_open()
        self._worker.call(cmd.SetEnabled(True))

    def disable(self) -> None:
        """Stop background updates; examples are still stored."""
        self._check_open()
        self._worker.call(cmd.SetEnabled(False))

    @property
    def enabled(self) -> bool:
        return self._worker.enabled

    def set_learning_rate(self, learning_rate: float) -> None:
        """Set the peak learning rate (the schedule scales it); applies from the next update."""
        self._check_open()
        self._worker.call(cmd.SetLearningRate(check_learning_rate(learning_rate)))

    def force_update(self) -> float:
        """Run one update now on pending examples plus replay; returns its loss.

        Works whether or not background learning is enabled: it is an explicit request.
        """
        self._check_open()
        return float(self._worker.call(cmd.ForceUpdate()))

    def undo_last_update(self) -> dict[str, Any]:
        """Take back the newest update: weights and optimizer state return to what they were
        before it, bit for bit, and the examples it learned for the first time are marked
        undone (kept in the log, never trained on again; examples that arrived since stay
        pending). One level deep: a second call without a new update raises ``LearnerError``.
        Returns ``{"undone_update", "examples_undone", "updates"}``."""
        self._check_open()
        return dict(self._worker.call(cmd.UndoUpdate()))

    def reset_to_base(self) -> dict[str, Any]:
        """Return to the weights as loaded (at construction or the last ``load_weights``) with
        a fresh optimizer; stored examples stay as they are."""
        self._check_open()
        return dict(self._worker.call(cmd.ResetToBase()))

    def load_weights(
        self, path: str | Path, format: str | None = None, dtype: str | None = None
    ) -> dict[str, Any]:
        """Load weights (any format); a new architecture resets the optimizer, a checkpoint
        restores it. ``dtype``: the training copy's float type (default float32)."""
        self._check_open()
        if dtype is not None and dtype not in LOAD_DTYPES:
            raise LearnerError(
                f"dtype must be one of {', '.join(LOAD_DTYPES)} or None, got {dtype!r}"
            )
        return dict(self._worker.call(cmd.LoadWeights(Path(path), format, dtype)))

    def save_weights(
        self, path: str | Path, format: str = "custom", dtype: str | None = None
    ) -> Path:
        """Save the training weights: ``custom`` is a full checkpoint (optimizer, learner state,
        edit memory); in other formats the edit memory is merged into its layer's weights."""
        self._check_open()
        return Path(self._worker.call(cmd.SaveWeights(Path(path), format, dtype)))

    def checkpoint(self) -> Path:
        """Write a checkpoint into the session folder now."""
        self._check_open()
        return Path(self._worker.call(cmd.Checkpoint()))

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
        fixed = sorted(
            set(changes) & {"session_dir", "buffer_size", "use_gpu", "seed", "enabled", "keep_undo"}
        )
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
        return cast(LearningConfig, self._worker.call(cmd.Configure(new)))

    def describe(self) -> dict[str, Any]:
        """What the published model is: family, sizes, parameters, dtype, device, tokenizer,
        which path decodes it (``inference``: "fast" or "reference", with the reason), and how
        many taught words its edit memory holds (``edit_memory``)."""
        with self._publisher.reading() as snap:
            path, detail = self._publisher.inference_path(snap)
            cfg = snap.model.cfg
            return {
                "family": cfg.family,
                "parameters": snap.model.num_parameters(),
                "dtype": str(snap.model.dtype).removeprefix("torch."),
                "device": str(snap.model.device),
                "config": cfg.to_dict(),
                "tokenizer": repr(snap.tokenizer),
                "vocab_size": snap.tokenizer.vocab_size,
                "chat_template": snap.tokenizer.chat_template is not None,
                "version": snap.version,
                "inference": path,
                "inference_detail": detail,
                "edit_memory": 0 if snap.model.edit_memory is None else len(snap.model.edit_memory),
            }

    def on_update(self, hook: UpdateHook) -> None:
        """Call ``hook(learner, record)`` on the worker after each update, once the new weights
        are published and the metrics recorded. A hook that raises fails the worker (see
        ``get_stats()['last_error']``); ``enable()`` resumes."""
        self._hooks.append(hook)

    def metrics_since(self, cursor: int = 0) -> tuple[list[UpdateRecord], int]:
        """Update records after ``cursor`` and the next cursor (for live plots)."""
        return self.metrics.since(cursor)

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Block until the worker has no queued work (tests, notebooks, demos)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                left = max(0.01, deadline - time.monotonic())
                if self._worker.call(cmd.IsIdle(), timeout=left):
                    return True
            except TimeoutError:
                return False
            time.sleep(0.01)
        return False

    def reading(self) -> _inference.Reading:
        """``with learner.reading() as snap:`` holds the published ``snap.model``,
        ``snap.tokenizer`` and ``snap.version`` (read-only) across several passes."""
        return _inference.reading(self._publisher)

    def generate(
        self,
        prompt: str,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stream: Callable[[str], bool | None] | None = None,
        num_beams: int = 1,
        length_penalty: float = 1.0,
    ) -> str:
        """Continue ``prompt`` (raw completion) with the published weights; return the new text.

        ``stream`` receives text pieces as they are decoded and may return True to stop.
        ``num_beams > 1`` is beam search (greedy, no stream), scored by summed log-probability
        over ``length ** length_penalty`` as in transformers. Instruct models answer best
        through ``chat``.
        """
        if not isinstance(prompt, str) or not prompt:
            raise LearnerError("prompt must be a non-empty string")
        sampling = _inference.Sampling(
            max_new_tokens, temperature, top_k, top_p, seed, num_beams, length_penalty
        )
        return self._decode(lambda tok: tok.encode(prompt), sampling, stream, cached=False)

    def chat(
        self,
        messages: Sequence[Mapping[str, str]],
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stream: Callable[[str], bool | None] | None = None,
        num_beams: int = 1,
        length_penalty: float = 1.0,
    ) -> str:
        """The assistant's next reply to ``messages`` (``{"role", "content"}`` dicts), rendered
        with the model's chat template; generation stops at the template's end-of-turn token.

        The conversation's KV cache is kept between calls, so a follow-up turn computes only
        its new tokens. A model without a chat template, or a malformed conversation, raises
        ``LearnerError`` saying so (use ``generate`` for raw completion). Other arguments as in ``generate``.
        """
        sampling = _inference.Sampling(
            max_new_tokens, temperature, top_k, top_p, seed, num_beams, length_penalty
        )

        def prompt_ids(tok: Tokenizer) -> list[int]:
            with _inference.chat_errors():
                return encode_prompt(tok, messages)

        return self._decode(prompt_ids, sampling, stream, cached=True)

    def _decode(
        self,
        prompt_ids: Callable[[Tokenizer], list[int]],
        sampling: _inference.Sampling,
        stream: Callable[[str], bool | None] | None,
        cached: bool,
    ) -> str:
        """Validate, then decode on the published snapshot (a chat keeps its KV cache)."""
        cache = self._chat_cache if cached else None
        return _inference.decode(self._publisher, prompt_ids, sampling, stream, cache)

    def chat_template(self) -> str | None:
        """The published tokenizer's chat template (None: the model only does raw completion)."""
        with self._publisher.reading() as snap:
            return snap.tokenizer.chat_template

    def score(self, text: str, target: str | None = None) -> dict[str, float]:
        """Loss and perplexity of ``text`` (or of ``target`` after ``text``) under the published weights."""
        example = TrainingExample(text, target)
        with self.reading() as snap:
            return _inference.score(snap.model, snap.tokenizer, example, self.config.max_seq_len)

    def get_stats(self) -> dict[str, Any]:
        now = time.perf_counter()
        worker, status = self._worker, self._status
        trainer = worker.trainer
        with status.lock:
            adds = [t for t in status.recent_adds if now - t < 10.0]
            ups = [t for t in status.recent_updates if now - t < 30.0]
            losses = list(status.losses)
            return {
                "total_examples": status.total_examples,
                "total_updates": trainer.updates,
                "buffer_size": worker.buffered,
                "pending_examples": worker.pending,
                "average_loss": sum(losses) / len(losses) if losses else 0.0,
                "learning_rate": trainer.base_lr,
                "current_lr": trainer.current_lr,
                "enabled": worker.enabled,
                "examples_per_s": _rate(adds, now),
                "updates_per_s": _rate(ups, now),
                "last_update_ms": status.last_update_ms,
                "state": "closed" if self._closed else status.state,
                "last_error": status.last_error,
                "version": self._publisher.version,
                "device": str(self.device),
                "optimizer": trainer.optimizer_name,
                "loss_fn": self.config.loss_fn,
                "session_dir": str(self.session_dir),
            }

    def close(self, checkpoint: bool = True) -> None:
        """Stop the worker (after a final checkpoint when there are unsaved updates)."""
        if self._closed:
            return
        self._cancel_offline()  # no offline run outlives its learner
        try:
            self._worker.call(cmd.Stop(checkpoint), timeout=600)
        finally:
            self._worker.join(timeout=60)
            self.store.close()
            self._closed = True
            with self._status.lock:
                self._status.state = "closed"

    def __exit__(self, *exc: object) -> None:
        self.close()

    # =================================================================== plumbing
    def _check_open(self) -> None:
        if self._closed:
            raise LearnerError("this learner is closed; create a new one")

    def _run_hooks(self, record: UpdateRecord) -> None:
        for hook in self._hooks:
            hook(self, record)


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
