"""A watch list: pinned prompts the published model re-answers after every update.

Forgetting is silent: a fact the model knew before a session of teaching ("The capital of France
is") can change while held-out perplexity hardly moves. A ``WatchList`` makes it visible: each
pinned prompt keeps the answer it had when pinned (its baseline), and after every update the
published model answers again, greedily and in a few tokens, on a background thread. An answer
that differs from its baseline is marked ``changed``.

How a prompt is asked: a prompt that ends with "?" goes through ``learner.chat`` (as one user
turn) when the model has a chat template; every other prompt, and every prompt of a model without
a template, is raw completion through ``learner.generate``. ``WatchResult.mode`` says which.

The boundary: core, above the learner, below the skins. It calls only the learner's public API
(the ``Learner`` protocol) plus ``on_update`` where the learner has it; the hook it registers only
wakes the watch thread (it never generates on the learner's worker). A version check every
``interval`` seconds also catches new weights that come without an update (load, reset, undo).
Panels render ``results()``; they compute nothing.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from workbench.learner import Learner

__all__ = ["DEFAULT_PROMPTS", "WatchList", "WatchResult"]

log = logging.getLogger("workbench.watch")
log.addHandler(logging.NullHandler())

# General facts a base model usually completes right; the ones a session should not disturb.
DEFAULT_PROMPTS: tuple[str, ...] = (
    "The capital of France is",
    "The capital of Japan is",
    "Water is made of",
    "The opposite of hot is",
    "The largest planet in the solar system is",
    "Two plus two equals",
)

Mode = Literal["complete", "chat"]


@dataclass(frozen=True)
class WatchResult:
    """One pinned prompt's answers.

    ``baseline`` is the answer when pinned and ``answer`` the latest (None until computed);
    ``version`` is the published weights' version ``answer`` came from; ``error`` the last
    failure to answer, if any.
    """

    prompt: str
    baseline: str | None
    answer: str | None
    changed: bool
    version: int | None
    mode: Mode = "complete"
    error: str | None = None


@dataclass
class _Entry:
    prompt: str
    baseline: str | None = None
    answer: str | None = None
    version: int | None = None
    mode: Mode = "complete"
    error: str | None = None


def normalize(answer: str) -> str:
    """What two answers are compared on: whitespace runs collapsed, ends stripped.

    >>> normalize("  Paris.\\n\\n") == normalize("Paris.")
    True
    """
    return " ".join(answer.split())


def is_changed(baseline: str | None, answer: str | None) -> bool:
    """True when both answers exist and differ beyond whitespace.

    >>> is_changed(" Paris", "Paris "), is_changed(" Paris", " Rome"), is_changed(None, " Rome")
    (False, True, False)
    """
    if baseline is None or answer is None:
        return False
    return normalize(baseline) != normalize(answer)


def _wake_on_update(watch: weakref.ReferenceType[WatchList]) -> Any:
    # A weak reference: a hook cannot be unregistered, so a closed or forgotten WatchList must
    # not stay alive through the learner. The hook runs on the learner's worker, where an error
    # would fail the worker: it only sets an event.
    def hook(_learner: object, _record: object) -> None:
        target = watch()
        if target is not None:
            target._wake.set()

    return hook


class WatchList:
    """Pinned prompts, each with its baseline answer and its latest answer.

    Parameters
    ----------
    learner : Learner
        Answers through ``generate`` / ``chat``; its ``on_update`` (if any) triggers re-answers.
    prompts : iterable of str, optional
        Pinned at start; None pins ``DEFAULT_PROMPTS``, ``()`` pins none.
    max_new_tokens : int
        Tokens per answer (greedy); a few are enough to see a fact change.
    background : bool
        Re-answer on a daemon thread after every update; tests pass False and call
        ``refresh_now()``.
    interval : float
        Seconds between version checks of the background thread (updates wake it at once).
    """

    def __init__(
        self,
        learner: Learner,
        prompts: Iterable[str] | None = None,
        max_new_tokens: int = 8,
        background: bool = True,
        interval: float = 2.0,
    ) -> None:
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        self.learner = learner
        self.max_new_tokens = int(max_new_tokens)
        self.interval = max(float(interval), 0.2)
        self._lock = threading.RLock()  # guards _entries; never held while generating
        self._answering = threading.Lock()  # one pass at a time (thread or refresh_now)
        self._entries: dict[str, _Entry] = {}
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        for prompt in DEFAULT_PROMPTS if prompts is None else prompts:
            self.pin(prompt)
        on_update = getattr(learner, "on_update", None)
        if callable(on_update):
            on_update(_wake_on_update(weakref.ref(self)))
        if background:
            self._thread = threading.Thread(target=self._run, name="workbench-watch", daemon=True)
            self._thread.start()

    # ---------------------------------------------------------------- pinning
    def pin(self, prompt: str) -> bool:
        """Pin ``prompt``; its baseline is its next answer. False if it was already pinned."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("a pinned prompt must be non-empty text")
        with self._lock:
            if prompt in self._entries:
                return False
            self._entries[prompt] = _Entry(prompt)
        self._wake.set()
        return True

    def unpin(self, prompt: str) -> bool:
        """Stop watching ``prompt``; False if it was not pinned."""
        with self._lock:
            return self._entries.pop(prompt, None) is not None

    def rebaseline(self) -> None:
        """Take every latest answer as the new baseline (after a person accepted a change)."""
        with self._lock:
            for entry in self._entries.values():
                if entry.answer is not None:
                    entry.baseline = entry.answer

    @property
    def prompts(self) -> list[str]:
        """The pinned prompts, in pinning order."""
        with self._lock:
            return list(self._entries)

    # ---------------------------------------------------------------- reading
    def results(self) -> list[WatchResult]:
        """Every pinned prompt's baseline, latest answer and whether it changed, pin order."""
        with self._lock:
            return [
                WatchResult(
                    e.prompt,
                    e.baseline,
                    e.answer,
                    is_changed(e.baseline, e.answer),
                    e.version,
                    e.mode,
                    e.error,
                )
                for e in self._entries.values()
            ]

    @property
    def changed_count(self) -> int:
        """How many pinned prompts answer differently from when they were pinned."""
        return sum(r.changed for r in self.results())

    # ---------------------------------------------------------------- answering
    def refresh_now(self) -> list[WatchResult]:
        """Answer every prompt that is new or whose answer predates the published weights."""
        with self._answering:
            version = self._version()
            with self._lock:
                todo = [
                    e.prompt
                    for e in self._entries.values()
                    if e.baseline is None or e.version != version
                ]
            for prompt in todo:
                if self._closed.is_set():
                    break
                self._answer(prompt, version)
        return self.results()

    def _version(self) -> int | None:
        version = self.learner.get_stats().get("version")
        return version if isinstance(version, int) else None

    def _mode(self, prompt: str) -> Mode:
        if prompt.rstrip().endswith("?") and self.learner.chat_template() is not None:
            return "chat"
        return "complete"

    def _answer(self, prompt: str, version: int | None) -> None:
        mode: Mode = "complete"
        try:
            mode = self._mode(prompt)
            if mode == "chat":
                text = self.learner.chat(
                    [{"role": "user", "content": prompt}], max_new_tokens=self.max_new_tokens
                )
            else:
                text = self.learner.generate(prompt, max_new_tokens=self.max_new_tokens)
            error = None
        except Exception as e:  # shown beside the prompt; the other prompts still answer
            log.warning("watch: answering %r failed: %s", prompt, e)
            text, error = None, f"{type(e).__name__}: {e}"
        with self._lock:
            entry = self._entries.get(prompt)
            if entry is None:  # unpinned meanwhile
                return
            entry.mode, entry.error = mode, error
            if text is None:
                return
            if entry.baseline is None:
                entry.baseline = text
            entry.answer, entry.version = text, version

    def _run(self) -> None:
        while not self._closed.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._closed.is_set():
                return
            try:
                if self.learner.get_stats().get("state") == "closed":
                    return
                self.refresh_now()
            except Exception as e:  # a failed pass is retried on the next wake
                log.warning("watch: refresh failed: %s", e)

    def close(self) -> None:
        """Stop the background thread (it finishes the answer in progress)."""
        self._closed.set()
        self._wake.set()

    def __enter__(self) -> WatchList:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
