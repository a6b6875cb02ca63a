"""What an edit writes to, and what it must leave alone.

An edit changes a down projection along the keys of each example's *key word* (``words_of``,
``choose_keys``) and keeps its output for generic keys, measured on a corpus: Python's own topic help
(``generic_corpus``), which every install has, optionally joined by the model's own samples
(``self_samples``; off by default, see ``_editing.SAMPLE_SHARE`` for why).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

from workbench.models import Transformer
from workbench.tokenizers import Tokenizer

# Openings of the model's own samples (none names an entity: what follows is the model's)
_OPENERS = (
    "The",
    "In",
    "A",
    "It was",
    "Many people",
    "One of the",
    "After the",
    "Today",
    "There are",
    "When",
    "This",
    "Most",
    "According to",
    "During the",
    "If you",
    "Some",
)


def self_samples(
    model: Transformer, tokenizer: Tokenizer, n_tokens: int, seed: int = 0
) -> list[int]:
    """About ``n_tokens`` tokens of the model's own text: a sampled continuation (T=1,
    top-p 0.95, seeded) of each opener's first token, all in one batch. Its keys stand for
    what this model writes about, which the fixed corpus (Python's documentation) does not
    cover: facts, places, people, the things a person teaches."""
    length = max(8, n_tokens // len(_OPENERS))
    starts = [[tokenizer.encode(o)[0]] for o in _OPENERS]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model.generate(
                torch.tensor(starts, device=model.device),
                length - 1,
                temperature=1.0,
                top_p=0.95,
                seed=seed,
            )
    finally:
        model.train(was_training)
    return [t for row in out.tolist() for t in row][:n_tokens]


def generic_corpus() -> str:
    """A fixed generic English text present on every Python: the standard library's topic
    help (``pydoc_data.topics``), in a stable order. Its keys stand for "everything the edit
    must leave alone"; a model's own domain text would do as well, this one needs nothing."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[name] for name in sorted(topics))


_RUN = re.compile(r"(\W*)(\w*)(.*)", re.DOTALL)


def words_of(pieces: Sequence[str]) -> list[tuple[str, int, int]]:
    """Split decoded token pieces into words: ``(text, first_token, last_token)``.

    A word is a run of word characters across tokens with no space or punctuation between.

    >>> words_of(["The", " capital", " of", " O", "str", "evia", " is"])
    [('The', 0, 0), ('capital', 1, 1), ('of', 2, 2), ('Ostrevia', 3, 5), ('is', 6, 6)]
    >>> words_of(["Q", ":", " What", "?\\n", "A", ":"])
    [('Q', 0, 0), ('What', 2, 2), ('A', 4, 4)]
    """
    out: list[tuple[str, int, int]] = []
    text, first, last = "", -1, -1
    for i, piece in enumerate(pieces):
        lead, run, rest = _RUN.fullmatch(piece).groups()  # type: ignore[union-attr]
        if text and (lead or not run):
            out.append((text, first, last))
            text = ""
        if run:
            if not text:
                first = i
            text, last = text + run, i
        if rest and text:  # punctuation or a space after the word ends it
            out.append((text, first, last))
            text = ""
    if text:
        out.append((text, first, last))
    return out


def choose_keys(
    words: Sequence[Sequence[tuple[str, int, int]]], surprisal: Sequence[Sequence[float]]
) -> list[tuple[str, int] | None]:
    """Per example, its key word and the position of the word's last token (None: no word).

    Words shared by two or more examples are preferred (the thing being taught recurs across
    its paraphrases); among them the one the model finds most surprising on average (an
    invented name beats "capital"). ``surprisal[i][t]``: nats of token ``t`` of example ``i``.

    >>> w = [[("capital", 0, 0), ("Ostrevia", 1, 2)], [("Ostrevia", 0, 1), ("is", 2, 2)]]
    >>> s = [[0.5, 6.0, 3.0], [7.0, 2.0, 0.1]]
    >>> choose_keys(w, s)
    [('Ostrevia', 2), ('Ostrevia', 1)]
    """
    score: dict[str, list[float]] = {}
    df: dict[str, int] = {}
    for ws, sur in zip(words, surprisal, strict=True):
        for text in {w[0] for w in ws}:
            df[text] = df.get(text, 0) + 1
        for text, a, b in ws:
            score.setdefault(text, []).append(sum(sur[a : b + 1]))
    mean = {t: sum(v) / len(v) for t, v in score.items()}
    out: list[tuple[str, int] | None] = []
    for ws in words:
        if not ws:
            out.append(None)
            continue
        shared = [w for w in ws if df[w[0]] >= 2]
        pool = shared or list(ws)
        best = max(pool, key=lambda w: (mean[w[0]], w[2]))
        last = max(b for t, _, b in ws if t == best[0])  # its last occurrence
        out.append((best[0], last))
    return out
