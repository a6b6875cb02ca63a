"""A labeling session: the model suggests, a person answers, the learner learns from it.

``LabelingSession`` ties the pieces together: items (``items``), label scores and calibration
(``scoring``), the acquisition order (``acquisition``), the durable answers (``table``) and
export (``export``). Each answer is committed to the session's SQLite before ``answer``
returns, then becomes a weighted ``TrainingExample`` through ``learner.add_example``, so the
next update moves the next suggestions. The session reads the model only through the
learner's published snapshot and changes it only through the learner's public calls.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.labeling import export, stats, undo
from workbench.labeling._checks import ACTIONS, check_weight, resolve, session_config, task_hash
from workbench.labeling.acquisition import NEEDS_SCORES, Order, check_order, margin, pick
from workbench.labeling.items import Item, LabelingError, input_hash, load_items
from workbench.labeling.scoring import (
    Calibration,
    PromptFormat,
    Scorer,
    calibrate,
    match_prior,
    mean_distribution,
    score_labels,
)
from workbench.labeling.table import Answer, AnswerTable
from workbench.learner import LearnerError, OnlineLearner
from workbench.tokenizers import Tokenizer

__all__ = ["LabelingSession", "Suggestion"]

CALIBRATIONS = ("contextual", "batch", "answers", "none")
BATCH_MIN = 16  # items scored before batch calibration trusts its mean


@dataclass(frozen=True)
class Suggestion:
    """The model's view of one item: calibrated probabilities and raw log-likelihoods."""

    item_id: str
    text: str
    label: str  # the most likely label after calibration
    scores: dict[str, float]  # label -> calibrated probability (sums to 1)
    raw: dict[str, float]  # label -> log-likelihood of its verbalization
    margin: float  # top-1 minus top-2 probability
    version: int  # the published model version that scored it


@contextmanager
def _published(learner: OnlineLearner) -> Iterator[tuple[Scorer, Tokenizer, int]]:
    # One snapshot for the prompt's pass and the labels'. The fp32 model, not the int8 copy
    # built for decoding one token at a time: a ~150-token prompt took 4.6 s on that copy
    # against 1.8 s in fp32 (SmolLM2, shared 2-core machine).
    with learner.reading() as snap:
        yield snap.model, snap.tokenizer, snap.version


class LabelingSession(AbstractContextManager["LabelingSession"]):
    """Label ``items`` with ``labels`` while ``learner`` learns from every answer.

    Parameters
    ----------
    learner: the live ``OnlineLearner`` that suggests and learns.
    items: texts, dicts with a text field, a CSV/TSV/JSONL path, a DataFrame or a
        ``datasets.Dataset``; ``None`` resumes the items stored under ``name`` in ``folder``.
    labels: label names; ``None`` resumes the stored ones.
    verbalizations: what the model should answer for each label (default: the names).
    prompt: template with ``{text}`` (and ``{labels}``); the default suits an instruct model
        through its chat template, or a raw prompt when the model has none.
    chat: whether to go through the chat template (default: when the model has one).
    order: ``"uncertainty"`` (smallest margin), ``"entropy"``, ``"random"``, ``"sequential"``.
    random_share: share of ``next()`` picks drawn at random whatever the order.
    calibration: ``"contextual"`` (content-free inputs), ``"batch"`` (mean over scored
        items), ``"answers"`` (batch, moved to the answered labels' frequencies) or ``"none"``.
    candidates: unscored or stale items scored per ``next()`` in the uncertainty and entropy
        orders (which rank every unanswered item by its latest scores).
    folder: where the SQLite file lives (default: the learner's session folder, in its
        ``examples.sqlite``); the same folder and ``name`` resume a session.
    weight: training weight of an answer (``answer(..., weight=)`` overrides it).

    Examples
    --------
    >>> from workbench.learner import LearningConfig
    >>> from workbench.models import ModelConfig, Transformer
    >>> from workbench.tokenizers import ByteTokenizer
    >>> learner = OnlineLearner(Transformer(ModelConfig.preset("tiny-gpt2")), ByteTokenizer(),
    ...                         LearningConfig(checkpoint_frequency=None))
    >>> s = LabelingSession(learner, ["great", "awful"], ["pos", "neg"], order="sequential")
    >>> item = s.next()
    >>> _ = s.answer(item.item_id, "pos")
    >>> s.stats()["answered"], s.stats()["remaining"]
    (1, 1)
    >>> learner.close()
    """

    def __init__(
        self,
        learner: OnlineLearner,
        items: Any = None,
        labels: Sequence[str] | None = None,
        *,
        verbalizations: Sequence[str] | None = None,
        prompt: str | None = None,
        chat: bool | None = None,
        order: Order = "uncertainty",
        random_share: float = 0.1,
        calibration: Calibration = "contextual",
        content_free: Sequence[str] = ("N/A",),
        candidates: int = 2,
        folder: str | Path | None = None,
        name: str = "labeling",
        weight: float = 1.0,
        text_field: str | None = None,
        seed: int | None = None,
    ) -> None:
        check_order(order, random_share)
        if calibration not in CALIBRATIONS:
            raise LabelingError(
                f"calibration must be one of {', '.join(CALIBRATIONS)}, got {calibration!r}"
            )
        if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 2:
            raise LabelingError(  # one new item per answer: the ranked pool would never grow
                f"candidates must be an integer >= 2 (items scored per next()), got {candidates!r}"
            )
        if not content_free or not all(isinstance(t, str) and t for t in content_free):
            raise LabelingError("content_free must hold at least one non-empty text, e.g. 'N/A'")
        self.weight = check_weight(weight)
        self.learner = learner
        self.order: Order = order
        self.random_share = float(random_share)
        self.calibration: Calibration = calibration
        self.content_free = tuple(content_free)
        self.candidates = candidates
        self.name = name
        self.folder = Path(folder) if folder is not None else Path(learner.session_dir)
        self._table = AnswerTable(
            self.folder / "examples.sqlite", name, fsync=bool(learner.config.durable_fsync)
        )
        self._rng = random.Random(seed)
        self._cache_lock = threading.Lock()  # scores and priors; held for dict operations only
        self._write_lock = threading.RLock()  # answers and undo, one at a time
        self._raw: dict[str, tuple[int, list[float]]] = {}  # item id -> (version, log-likelihoods)
        self._priors: dict[int, list[float]] = {}  # version -> content-free distribution
        self._asked: dict[str, Suggestion] = {}
        try:
            self._setup(items, labels, verbalizations, prompt, chat, text_field)
        except BaseException:
            self._table.close()
            raise
        self.reconciled = self._reconcile()

    # =================================================================== setup and resume
    def _setup(
        self,
        items: Any,
        labels: Sequence[str] | None,
        verbalizations: Sequence[str] | None,
        prompt: str | None,
        chat: bool | None,
        text_field: str | None,
    ) -> None:
        stored = self._table.config()
        where = f"session {self.name!r} in {self.folder}"
        if chat is None and labels is not None:
            chat = self.learner.chat_template() is not None
        config = session_config(stored, labels, verbalizations, prompt, bool(chat), where)
        if stored is None:
            self._table.save_config(config)
        self.labels: tuple[str, ...] = tuple(config["labels"])
        self.format = PromptFormat(
            config["template"], tuple(config["verbalizations"]), bool(config["chat"])
        )
        if items is not None:
            self._table.add_items(load_items(items, text_field))
        self.items: list[Item] = self._table.items()
        if not self.items:
            raise LabelingError(
                f"no items in session {self.name!r} of {self.folder}: pass items=[...]"
            )
        self._by_id = {item.id: item for item in self.items}

    def _reconcile(self) -> int:
        """Send the learner any stored answer whose example it may not have: a crash between
        the answer's commit and ``add_example``. The example id makes a resend a no-op when
        the learner stored it after all."""
        sent = 0
        for a in self._table.answers():
            if a.example_id is not None and not a.example_added:
                self._send(a)
                sent += 1
        return sent

    def close(self) -> None:
        """Close the session's tables (the learner stays open)."""
        self._table.close()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # =================================================================== scores
    def _item(self, item: str | Item) -> Item:
        if isinstance(item, Item):
            item = item.id
        if not isinstance(item, str):
            raise LabelingError(f"an item id is a string, got {type(item).__name__}")
        found = self._by_id.get(item)
        if found is None:
            raise LabelingError(
                f"unknown item id {item!r}: use an id from next() or session.items, "
                "or pass the text itself to suggest()"
            )
        return found

    def _raw_scores(
        self, text: str, key: str | None, cached: bool = False
    ) -> tuple[list[float], int]:
        """Log-likelihoods of ``text`` and the model version that computed them: the current
        one, or with ``cached=True`` whichever version scored ``key`` last (no pass then)."""
        if cached and key is not None:
            with self._cache_lock:
                hit = self._raw.get(key)
            if hit is not None:
                return hit[1], hit[0]
        with _published(self.learner) as (model, tok, version):
            if key is not None:
                with self._cache_lock:
                    hit = self._raw.get(key)
                if hit is not None and hit[0] == version:
                    return hit[1], version
            context, tails = self.format.encode(tok, text, self.learner.config.max_seq_len)
            raw = score_labels(model, context, tails)
        if key is not None:
            with self._cache_lock:
                self._raw[key] = (version, raw)
        return raw, version

    def _prior(self, version: int, cached: bool = False) -> list[float] | None:
        if self.calibration == "none":
            return None
        if self.calibration == "contextual":
            with self._cache_lock:  # cached: the content-free scores of any version will do
                prior = self._priors.get(version) or (
                    next(iter(self._priors.values()), None) if cached else None
                )
            if prior is None:
                rows = [self._raw_scores(t, None)[0] for t in self.content_free]
                prior = mean_distribution(rows)
                with self._cache_lock:
                    self._priors = {version: prior}
            return prior
        with self._cache_lock:
            scored = len(self._raw)
        if scored < BATCH_MIN:  # score a random sample of the pool once, to start from
            pool = [i for i in self.items if i.id not in self._raw]
            for item in self._rng.sample(pool, min(len(pool), BATCH_MIN - scored)):
                self._raw_scores(item.text, item.id)
        with self._cache_lock:
            rows = [raw for _, raw in self._raw.values()]
        if self.calibration == "batch":
            return mean_distribution(rows)
        counts = Counter(a.label for a in self._table.answers() if a.label is not None)
        return match_prior(mean_distribution(rows), [counts[lab] for lab in self.labels])

    def suggest(self, item: str | Item, cached: bool = False) -> Suggestion:
        """The model's calibrated label scores for an item (an id from ``items``, an ``Item``,
        or any text not among the ids). ``cached=True``: from the item's last scores whatever
        model version computed them (``version`` says which), scoring only if it has none.

        A suggestion for an item that ``next()`` handed out and nobody answered yet becomes the
        one ``answer()`` records (the person saw the newest scores)."""
        if isinstance(item, str) and item not in self._by_id:
            if not item.strip():
                raise LabelingError("the text to score is empty: pass an item id or a text")
            found = Item(input_hash(item), item)
            key = None
        else:
            found = self._item(item)
            key = found.id
        raw, version = self._raw_scores(found.text, key, cached)
        probs = calibrate(raw, self._prior(version, cached))
        scores = dict(zip(self.labels, probs, strict=True))
        best = max(self.labels, key=scores.__getitem__)
        raws = dict(zip(self.labels, raw, strict=True))
        out = Suggestion(found.id, found.text, best, scores, raws, margin(probs), version)
        with self._cache_lock:
            if found.id in self._asked:
                self._asked[found.id] = out
        return out

    def _remaining(self) -> list[Item]:
        done = {a.item_id for a in self._table.answers()}
        return [i for i in self.items if i.id not in done]

    def next(self, rescore: bool = True) -> Suggestion | None:
        """The next unanswered item by the session's order, with its suggestion; None when
        every item is answered.

        ``rescore=False`` picks from the scores already computed and returns the chosen item's
        last scores whatever model version gave them (``Suggestion.version``), scoring only an
        item that has none: a panel shows the item at once, then ``suggest(item_id)`` brings
        its current scores and ``prefetch()`` scores candidates while the person reads."""
        remaining = self._remaining()
        if not remaining:
            return None
        order: Order = self.order
        if order != "sequential" and self._rng.random() < self.random_share:
            order = "random"
        if order in NEEDS_SCORES:
            chosen = self._by_scores(order, remaining, rescore)
        else:
            item = remaining[pick(order, [[1.0]] * len(remaining), self._rng)]
            chosen = self.suggest(item.id, cached=not rescore)
        with self._cache_lock:
            self._asked[chosen.item_id] = chosen
        return chosen

    def prefetch(self, n: int | None = None, stop: Callable[[], bool] | None = None) -> int:
        """Score up to ``n`` (default ``candidates``) unanswered items, unscored ones first,
        then the stalest, so the next ``next()`` ranks on fresher scores; ``stop()`` is asked
        before each pass (a panel stops when a key asks for the next item). Returns the count."""
        remaining = self._remaining()
        version = int(self.learner.get_stats()["version"])
        with self._cache_lock:
            known = {i.id: self._raw[i.id][0] for i in remaining if i.id in self._raw}
            asked = set(self._asked)
        n = self.candidates if n is None else n
        new = [i for i in remaining if i.id not in known and i.id not in asked]
        todo = self._rng.sample(new, min(n, len(new)))
        stale = [i for i in remaining if known.get(i.id, version) < version and i.id not in asked]
        todo += sorted(stale, key=lambda i: known[i.id])[: n - len(todo)]
        for done, item in enumerate(todo):
            if stop is not None and stop():
                return done
            self._raw_scores(item.text, item.id)
        return len(todo)

    def _by_scores(self, order: Order, remaining: list[Item], rescore: bool) -> Suggestion:
        """Rank every unanswered item that has scores by its latest ones (from whichever model
        version gave them), after scoring ``candidates`` more (``prefetch``; with
        ``rescore=False`` only when no item has scores). A forward pass is the cost that
        matters on a CPU, so a call makes at most ``candidates + 1`` of them (the last: the
        chosen item afresh, unless ``rescore=False``) however large the pool."""
        with self._cache_lock:
            scored = any(i.id in self._raw for i in remaining)
        if rescore or not scored:
            self.prefetch(None if rescore else 1)
        with self._cache_lock:
            rows = [(i, self._raw[i.id]) for i in remaining if i.id in self._raw]
        if not rows:  # every unscored item is out on an unanswered next(): score one of those
            return self.suggest(remaining[0].id)
        version = max(v for _, (v, _) in rows)
        prior = self._prior(version, cached=not rescore)
        best = pick(order, [calibrate(raw, prior) for _, (_, raw) in rows], self._rng)
        return self.suggest(rows[best][0].id, cached=not rescore)

    # =================================================================== answers
    def answer(
        self,
        item_id: str,
        label: str,
        weight: float | None = None,
        agent: str = "person",
    ) -> dict[str, Any]:
        """Record an answer for ``item_id``: a label name, or ``"accept"`` (the suggestion is
        right), ``"reject"`` (it is wrong) or ``"skip"``.

        The answer is committed to SQLite before this returns; a labeled answer then becomes
        a training example of ``weight``. A reject teaches the other label when there are
        exactly two, and nothing otherwise (the learner takes no negative examples). Answering
        an item again replaces its earlier answer (whose example is removed).
        """
        item = self._item(item_id)
        if not isinstance(label, str) or (label not in self.labels and label not in ACTIONS):
            raise LabelingError(
                f"unknown label {label!r}: use one of {', '.join(self.labels)} or "
                "accept / reject / skip"
            )
        w = self.weight if weight is None else check_weight(weight)
        if not isinstance(agent, str) or not agent:
            raise LabelingError("agent must be a non-empty string such as 'person'")
        with self._cache_lock:
            asked = self._asked.pop(item.id, None)
        suggestion = asked if asked is not None else self.suggest(item.id)
        kind, given = resolve(label, suggestion.label, self.labels)
        with self._write_lock:
            earlier = [a for a in self._table.answers() if a.item_id == item.id]
            for old in earlier:
                self._table.set(old.n, undone=1)
                if old.example_id is not None:
                    self.learner.remove_example(old.example_id)
            ihash = input_hash(item.text)
            row = self._table.add(
                item_id=item.id,
                answer=kind,
                label=given,
                model_label=suggestion.label,
                scores=suggestion.scores,
                weight=w,
                time=time.time(),
                model_version=suggestion.version,
                updates_at=int(self.learner.get_stats()["total_updates"]),
                example_id=None if given is None else f"label-{ihash}-{uuid.uuid4().hex[:12]}",
                input_hash=ihash,
                task_hash=task_hash(ihash, given, kind),
                agent=agent,
            )
            message = self._send(row) if row.example_id is not None else "stored; nothing to learn"
        return {
            "n": row.n,
            "item_id": item.id,
            "answer": kind,
            "label": given,
            "model_label": suggestion.label,
            "agreed": kind != "skip" and given == suggestion.label,
            "replaced": len(earlier),
            "message": message,
        }

    def _send(self, row: Answer) -> str:
        assert row.example_id is not None and row.label is not None
        text = self._by_id[row.item_id].text
        ex = self.format.example(text, self.labels.index(row.label), row.weight, row.example_id)
        try:
            result = self.learner.add_example(ex)
        except LearnerError as e:
            raise LabelingError(f"the answer is stored, but the learner refused it: {e}") from None
        self._table.set(row.n, example_added=1)
        return result.message

    def undo(self) -> dict[str, Any]:
        """Take back the newest answer: its row is marked undone (kept on disk), its training
        example removed, and its learning undone when the learner's last update was the only
        one since the answer (``undo_last_update``). Learning from earlier updates cannot be
        taken back; the result's ``learning`` and ``message`` say which case happened."""
        with self._write_lock:
            live = self._table.answers()
            if not live:
                raise LabelingError("nothing to undo: no answers in this session")
            last = live[-1]
            self._table.set(last.n, undone=1)
            learning, message = "none", "the answer had no training example"
            if last.example_id is not None:
                learning, message = undo.take_back(
                    self.learner,
                    last,
                    lambda: undo.resend_undone(self.learner, live[:-1], self._table, self._send),
                )
        with self._cache_lock:
            self._raw.pop(last.item_id, None)
        return {
            "n": last.n,
            "item_id": last.item_id,
            "label": last.label,
            "learning": learning,
            "message": message,
        }

    # =================================================================== stats and export
    def answers(self) -> list[Answer]:
        """The live answers, oldest first."""
        return self._table.answers()

    def stats(self, window: int = 50) -> dict[str, Any]:
        """Progress, the model's agreement with the person over the last ``window`` answers
        (its accuracy estimate, with a 95% Wilson interval) and labels per minute."""
        return stats.summary(self._table.answers(), len(self.items), self.labels, window)

    def agreement_curve(self, window: int = 20) -> list[float]:
        """Running agreement of suggestion and answer over the last ``window`` judged answers,
        one point per judged answer (for the panel's curve)."""
        return stats.agreement_curve(self._table.answers(), window)

    def records(self) -> list[dict[str, Any]]:
        """One dict per live answer with the export fields."""
        texts = {i.id: i.text for i in self.items}
        return export.records(self._table.answers(), texts)

    def export_jsonl(self, path: str | Path) -> Path:
        """Write one JSON line per live answer (text, label, answer, scores, model_label,
        timestamp, hashes); returns the path."""
        return export.to_jsonl(self.records(), path)

    def to_pandas(self) -> Any:
        """The answers as a pandas DataFrame (one row per live answer)."""
        return export.to_pandas(self.records())
