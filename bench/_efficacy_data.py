"""The efficacy benchmark's data and judging rules (``bench/efficacy.py`` runs them): the facts
file (``efficacy_facts.json``) loaded and checked, whether a generation names an answer, and the
accounting of changed controls and leaking neighbours. Nothing here loads a model or trains;
the notebooks import these rules through ``efficacy`` so they judge exactly as the bench does.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.tokenizers import Tokenizer

DATA_PATH = Path(__file__).resolve().with_name("efficacy_facts.json")
EXTRA_TOKENS = 3  # generated beyond the answer's own tokens
CHAT_EXTRA_TOKENS = 10  # and beyond that in a chat reply ("The capital of X is ...")


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

    def examples(self, weight: float = 1.0, chat: bool = False) -> list[Example]:
        """The training examples: completions of the train prompts, or in chat form each
        prompt as a user turn answered by the answer, plus the question answered by the
        statement."""
        if not chat:
            return [Example(p, self.target, weight, self.id) for p in self.train]
        out = [Example(p, self.answer, weight, self.id, chat=True) for p in self.train]
        return [*out, Example(self.question, self.statement, weight, self.id, chat=True)]


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
    input: str  # the prompt, or in chat form the user's turn
    target: str  # the completion, or the assistant's reply
    weight: float
    fact: str
    chat: bool = False


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


def token_budget(tokenizer: Tokenizer, answer: str, chat: bool = False) -> int:
    """New tokens to generate for an answer: its own tokens plus ``EXTRA_TOKENS``; a chat
    reply gets ``CHAT_EXTRA_TOKENS`` more, as it may restate the question first."""
    extra = EXTRA_TOKENS + (CHAT_EXTRA_TOKENS if chat else 0)
    return min(
        16 + (CHAT_EXTRA_TOKENS if chat else 0), max(4, len(tokenizer.encode(" " + answer)) + extra)
    )


def chat_form(data: EfficacyData) -> EfficacyData:
    """The data for ``--form chat``: controls asked as their questions (those without one are
    left out); facts keep their prompts, asked and taught as user turns."""
    controls = tuple(
        Control(c.kind, c.question, c.answer, c.aliases, c.question)
        for c in data.controls
        if c.question
    )
    return EfficacyData(data.facts, controls, data.general_text)


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
