"""The efficacy benchmark's two sides and their instruments (``bench/efficacy.py`` runs them):
ours (an ``OnlineLearner`` per ``Variant``, a learner configuration from the command line) and
the plain-torch AdamW baseline, both behind the ``Side`` protocol; the generation thread that
measures latency while they learn, and the process's resident memory. Judging lives in
``_efficacy_data``, the scenarios in ``_efficacy_scenarios``.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import math
import os
import resource
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from _efficacy_data import BenchError, Example, StopAtLineEnd

from workbench.batching import Encoded, collate, encode_example
from workbench.chat import encode_chat, encode_prompt, stop_token_ids
from workbench.learner import LearningConfig, OnlineLearner, TrainingExample
from workbench.models import Transformer
from workbench.tokenizers import Tokenizer

LATENCY_TOKENS = 8
# Set by the bench's protocol (one update per submission, no checkpoints in a temp session).
RESERVED = {
    "session_dir": "each side gets a temporary session",
    "update_frequency": "the bench sets it to the submission's size (one update per submission)",
    "enabled": "the bench teaches with background learning on",
}


# ============================================================================ sides
@dataclass
class SubmitResult:
    updates: int  # optimizer updates the submission caused
    stepped: int  # of which changed the weights (not all examples skipped as known)
    train_s: float  # seconds spent in those updates (forward, backward, optimizer)


class Side(Protocol):
    """One contestant: takes submissions, answers prompts."""

    label: str
    learning: threading.Event  # set while an update runs

    def submit(self, examples: Sequence[Example]) -> SubmitResult: ...
    def generate(self, prompt: str, max_new_tokens: int, chat: bool = False) -> str:
        """The side's answer to ``prompt``, or with ``chat`` to it as a user turn."""
        ...

    def background_generate(self, prompt: str) -> str:
        """What a user's request runs while the side may be updating (latency only)."""
        ...

    def perplexity(self, text: str) -> float: ...
    def close(self) -> None: ...


def user_turn(text: str) -> list[dict[str, str]]:
    """A conversation of one user turn (``--form chat``)."""
    return [{"role": "user", "content": text}]


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def greedy(
    model: Transformer, tokenizer: Tokenizer, prompt: str, max_new_tokens: int, chat: bool = False
) -> str:
    """Greedy continuation as ``learner.generate`` decodes it (one intra-op thread, stop at
    EOS), also stopping once a line with content has ended. ``chat``: ``prompt`` is a user
    turn, answered as ``learner.chat`` does (the chat template, stop at end of turn)."""
    ids = encode_prompt(tokenizer, user_turn(prompt)) if chat else tokenizer.encode(prompt)
    stops = set(stop_token_ids(tokenizer)) if chat else set()
    if tokenizer.eos_id is not None:
        stops.add(tokenizer.eos_id)
    new: list[int] = []
    stop = StopAtLineEnd()

    def on_token(tok: torch.Tensor) -> bool:
        t = int(tok[0])
        if t in stops:
            return True
        new.append(t)
        text = tokenizer.decode(new)
        if text.endswith("\ufffd"):
            return False
        stop.text = ""
        return stop(text)

    was_training = model.training
    model.eval()
    try:
        with torch_threads(1), torch.inference_mode():
            model.generate(
                torch.tensor([ids], device=model.device), max_new_tokens, callback=on_token
            )
    finally:
        model.train(was_training)
    return tokenizer.decode(new)


@torch.no_grad()
def perplexity(model: Transformer, tokenizer: Tokenizer, text: str, max_len: int = 1024) -> float:
    """exp(mean next-token cross-entropy) of ``text``, in windows of ``max_len`` tokens."""
    ids = tokenizer.encode(text)
    max_len = min(max_len, model.cfg.n_ctx)
    was_training = model.training
    model.eval()
    nll, n = 0.0, 0
    try:
        with torch_threads(1):
            for start in range(0, len(ids) - 1, max_len):
                chunk = torch.tensor([ids[start : start + max_len + 1]], device=model.device)
                logits = model(chunk[:, :-1])  # (1, T, V)
                nll += float(F.cross_entropy(logits[0].float(), chunk[0, 1:], reduction="sum"))
                n += chunk.shape[1] - 1
    finally:
        model.train(was_training)
    return math.exp(nll / n)


class LatencyProbe:
    """Generates from another thread whenever ``learning`` is set: what a user sees while an
    update runs. Both sides get one, so both train under the same extra load."""

    def __init__(
        self,
        generate: Callable[[], str],
        learning: threading.Event,
        gap_s: float = 0.5,
        timeout_s: float = 60.0,
    ) -> None:
        self._generate = generate
        self._gap = gap_s
        self._timeout = timeout_s
        self.learning = learning
        self.busy_ms: list[float] = []  # calls made while an update ran
        self.idle_ms: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="efficacy-latency", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self.learning.wait(timeout=0.05) or self._stop.is_set():
                continue
            start = time.perf_counter()
            try:
                text = self._generate()
            except Exception as e:  # reported, never raised into the bench
                self.failures.append(f"{type(e).__name__}: {e}")
                continue
            ms = (time.perf_counter() - start) * 1000
            if not text.strip():
                self.failures.append("empty answer")
            elif ms > self._timeout * 1000:
                self.failures.append(f"took {ms / 1000:.1f} s")
            self.busy_ms.append(ms)
            self._stop.wait(self._gap)

    def measure_idle(self, calls: int) -> None:
        """The same request with no training running: the reference for ``busy_ms``."""
        for _ in range(calls):
            start = time.perf_counter()
            self._generate()
            self.idle_ms.append((time.perf_counter() - start) * 1000)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self._timeout)


class OurSide:
    """The online learner, taught the way a user does: add examples, learning runs."""

    def __init__(
        self,
        label: str,
        model: Transformer,
        tokenizer: Tokenizer,
        config: dict[str, Any],
    ) -> None:
        self.label = label
        self.learning = threading.Event()
        self._tmp = tempfile.TemporaryDirectory(prefix="efficacy-")
        # The learner as a pretrained model gets it (edits, answered by the int8 fast copy).
        # The base answers were taken greedy on float32: a control the copy answers otherwise
        # counts as changed, so this errs against ours (the step-0 check below the table warns
        # when the copy and float32 differ); ``--config inference=reference`` answers on fp32.
        cfg = LearningConfig.for_pretrained(
            **{"checkpoint_frequency": None, **config, "session_dir": self._tmp.name}
        )
        self.learner = OnlineLearner(model, tokenizer, cfg)
        self._cursor = 0

    def submit(self, examples: Sequence[Example]) -> SubmitResult:
        learner = self.learner
        if learner.config.update_frequency != len(examples):
            learner.configure(update_frequency=len(examples))
        self.learning.set()
        try:
            for e in examples:
                if e.chat:
                    learner.add_example(
                        TrainingExample.from_chat(user_turn(e.input), e.target, e.weight)
                    )
                else:
                    learner.add_example(TrainingExample(e.input, e.target, e.weight))
            if not learner.wait_idle(timeout=1800):
                raise RuntimeError("the learner did not finish the submission within 30 min")
        finally:
            self.learning.clear()
        stats = learner.get_stats()
        if stats["state"] == "failed":
            raise RuntimeError(f"the learner failed: {stats['last_error']}")
        records, self._cursor = learner.metrics_since(self._cursor)
        return SubmitResult(
            len(records),
            sum(r.grad_norm is not None for r in records),
            sum(r.duration_ms for r in records) / 1000,
        )

    def generate(self, prompt: str, max_new_tokens: int, chat: bool = False) -> str:
        if chat:
            return self.learner.chat(
                user_turn(prompt), max_new_tokens=max_new_tokens, stream=StopAtLineEnd()
            )
        return self.learner.generate(prompt, max_new_tokens=max_new_tokens, stream=StopAtLineEnd())

    def background_generate(self, prompt: str) -> str:
        return self.learner.generate(prompt, max_new_tokens=LATENCY_TOKENS)

    def perplexity(self, text: str) -> float:
        # The published snapshot; no update runs between submissions.
        return perplexity(self.learner.model, self.learner.tokenizer, text)

    def close(self) -> None:
        self.learner.close(checkpoint=False)
        self._tmp.cleanup()


class TorchBaseline:
    """Plain full fine-tune: ``torch.optim.AdamW``, one step per submission on exactly its
    examples, full-vocabulary cross-entropy on the target tokens (the learner's tokenization),
    weighted like the learner (sum of weight x mean token loss, over the total weight)."""

    def __init__(
        self, label: str, model: Transformer, tokenizer: Tokenizer, cfg: LearningConfig
    ) -> None:
        self.label = label
        self.learning = threading.Event()
        self.model = model.train()
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.optimizer = torch.optim.AdamW(
            model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay
        )
        self.threads = cfg.train_threads or max(1, (os.cpu_count() or 2) - 1)

    def submit(self, examples: Sequence[Example]) -> SubmitResult:
        cfg, tok = self.cfg, self.tokenizer
        enc = [self._encode(i, e) for i, e in enumerate(examples)]
        pad = tok.eos_id if tok.eos_id is not None else 0
        total_w = sum(e.weight for e in enc)
        self.learning.set()
        start = time.perf_counter()
        with torch_threads(self.threads):
            self.optimizer.zero_grad(set_to_none=True)
            for i in range(0, len(enc), cfg.batch_size):
                chunk = enc[i : i + cfg.batch_size]
                batch = collate(chunk, pad, self.model.device)
                logits = self.model(batch.ids)  # (B, T, V)
                B, T, V = logits.shape
                tok_loss = F.cross_entropy(
                    logits.reshape(B * T, V).float(),
                    batch.labels.reshape(B * T),
                    ignore_index=-100,
                    reduction="none",
                ).view(B, T)
                mask = (batch.labels != -100).float()
                per = (tok_loss * mask).sum(1) / mask.sum(1).clamp_min(1)  # (B,)
                w = torch.tensor([e.weight for e in chunk], device=per.device)
                ((per * w).sum() / total_w).backward()
            if cfg.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
            self.optimizer.step()
        seconds = time.perf_counter() - start
        self.learning.clear()
        return SubmitResult(1, 1, seconds)

    def _encode(self, i: int, e: Example) -> Encoded:
        """The learner's tokenization: a plain example, or a chat turn with its reply."""
        if not e.chat:
            return encode_example(
                self.tokenizer, i, e.input, e.target, e.weight, self.cfg.max_seq_len
            )
        c = encode_chat(self.tokenizer, user_turn(e.input), e.target, self.cfg.max_seq_len)
        return Encoded(i, c.ids, c.labels, e.weight, c.input_len)

    def generate(self, prompt: str, max_new_tokens: int, chat: bool = False) -> str:
        return greedy(self.model, self.tokenizer, prompt, max_new_tokens, chat)

    def background_generate(self, prompt: str) -> str:
        # A plain loop has no published copy: this reads the weights the step is changing
        # (the text may be torn; only its latency is used). No train/eval switch mid-step.
        ids = torch.tensor([self.tokenizer.encode(prompt)], device=self.model.device)
        with torch_threads(1), torch.inference_mode():
            out = self.model.generate(ids, LATENCY_TOKENS)
        return self.tokenizer.decode(out[0, ids.shape[1] :].tolist())

    def perplexity(self, text: str) -> float:
        return perplexity(self.model, self.tokenizer, text)

    def close(self) -> None:
        self.optimizer.state.clear()


# ============================================================================ memory
class RssMonitor:
    """Samples this process's resident memory; ``peak()`` since the last ``reset()``."""

    def __init__(self, every_s: float = 0.05) -> None:
        self._every = every_s
        self._peak = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._read = _rss_reader()
        threading.Thread(target=self._run, name="efficacy-rss", daemon=True).start()

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            rss = self._read()
            with self._lock:
                self._peak = max(self._peak, rss)

    def reset(self) -> int:
        """Start a new peak from the current resident size, which it returns."""
        with self._lock:
            self._peak = self._read()
            return self._peak

    def peak(self) -> int:
        with self._lock:
            return max(self._peak, self._read())

    def now(self) -> int:
        return self._read()

    def close(self) -> None:
        self._stop.set()


def release_freed_memory() -> None:
    """Hand memory that Python and torch freed back to the OS (glibc keeps it in its heaps
    otherwise), so a side's peak RSS does not include what the previous side left."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _rss_reader() -> Callable[[], int]:
    try:
        import psutil

        proc = psutil.Process()
        return lambda: int(proc.memory_info().rss)
    except ImportError:
        page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

        def statm() -> int:
            try:
                with open("/proc/self/statm") as f:
                    return int(f.read().split()[1]) * page
            except OSError:  # not Linux: the process's lifetime peak is the best we have
                return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

        return statm


# ============================================================================ variants
def parse_value(text: str) -> Any:
    """A ``--config`` value: JSON (numbers, true/false, null, lists, quoted strings), the
    words None/True/False, or else the bare string.

    >>> parse_value("1e-4"), parse_value("None"), parse_value("true"), parse_value("adamw")
    (0.0001, None, True, 'adamw')
    """
    words = {"none": None, "null": None, "true": True, "false": False}
    if text.strip().lower() in words:
        return words[text.strip().lower()]
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["key=value", ...]`` → LearningConfig overrides; unknown or reserved keys raise.

    >>> parse_overrides(["learning_rate=3e-5", "skip_known_below=None"])
    {'learning_rate': 3e-05, 'skip_known_below': None}
    >>> try:
    ...     parse_overrides(["learnig_rate=1"])
    ... except BenchError as e:
    ...     print(str(e).split(';')[0])
    unknown LearningConfig key 'learnig_rate'
    """
    known = [f.name for f in dataclasses.fields(LearningConfig)]
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise BenchError(f"expected key=value, got {item!r}")
        if key in RESERVED:
            raise BenchError(f"{key} cannot be overridden: {RESERVED[key]}")
        if key not in known:
            settable = sorted(set(known) - set(RESERVED))
            raise BenchError(
                f"unknown LearningConfig key {key!r}; known keys: {', '.join(settable)}"
            )
        out[key] = parse_value(value)
    return out


@dataclass(frozen=True)
class Variant:
    label: str
    config: dict[str, Any]  # LearningConfig overrides

    def learning_config(self) -> LearningConfig:
        return LearningConfig(**self.config)

    def baseline_key(self) -> tuple[Any, ...]:
        c = self.learning_config()
        return (c.learning_rate, c.weight_decay, c.max_grad_norm, c.batch_size, c.max_seq_len)


def build_variants(
    common: Sequence[str], variants: Sequence[str], sweep: str | None
) -> list[Variant]:
    """Rows to run: ``--variant "label: k=v k=v"`` each, plus ``--sweep key=v1,v2``; the
    default LearningConfig when neither is given. ``common`` applies to all. Validates every
    resulting LearningConfig before anything runs.

    >>> [v.label for v in build_variants([], [], "learning_rate=1e-4,3e-5")]
    ['learning_rate=1e-4', 'learning_rate=3e-5']
    >>> build_variants(["batch_size=8"], ["lo: learning_rate=1e-5"], None)[0].config
    {'batch_size': 8, 'learning_rate': 1e-05}
    """
    base = parse_overrides(common)
    out: list[Variant] = []
    for spec in variants:
        label, sep, rest = spec.partition(":")
        if not sep or not label.strip():
            raise BenchError(f"--variant needs 'label: key=value ...', got {spec!r}")
        out.append(Variant(label.strip(), {**base, **parse_overrides(rest.split())}))
    if sweep:
        key, sep, values = sweep.partition("=")
        if not sep or not values:
            raise BenchError(f"--sweep needs key=v1,v2,..., got {sweep!r}")
        for value in values.split(","):
            out.append(Variant(f"{key}={value}", {**base, **parse_overrides([f"{key}={value}"])}))
    if not out:
        label = " ".join(common) if common else "default"
        out.append(Variant(label, base))
    for v in out:
        try:
            v.learning_config()
        except (ValueError, TypeError) as e:
            raise BenchError(f"variant {v.label!r}: {e}") from None
    labels = [v.label for v in out]
    if len(set(labels)) != len(labels):
        raise BenchError(f"variant labels must differ: {labels}")
    return out
