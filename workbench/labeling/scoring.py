"""Label scores: the log-likelihood of each label's verbalization after the item's prompt.

The scored tokens are exactly those the learner trains on when a person gives that label (a
chat reply and its end-of-turn token through the chat template, or ``" label"`` and EOS for a
raw-completion model), so scoring and learning share one objective. One forward pass runs the
prompt into a KV cache; the labels' continuations then run together as one batch on copies of
that cache. ``reference_scores`` is the same computation without a cache, one full pass per
label, kept for the tests.

Calibration turns raw log-likelihoods into probabilities over the labels:
``"contextual"`` (Zhao et al. 2021) divides by the label distribution of a content-free input
such as "N/A"; ``"batch"`` (Zhou et al. 2023) divides by the mean distribution over the pool;
``"answers"`` moves the label marginal from the pool's mean distribution to the label
frequencies of the answers so far (``match_prior``; batch calibration before any answer);
``"none"`` is a plain softmax. This module knows models and tokenizers, nothing of sessions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from string import Formatter
from typing import Literal

import torch
from torch import Tensor

from workbench.batching import encode_example
from workbench.chat import ChatError, encode_chat
from workbench.labeling.items import LabelingError
from workbench.learner.config import TrainingExample
from workbench.losses import IGNORE
from workbench.models import KVCache, Transformer
from workbench.models.fast import FastTransformer
from workbench.tokenizers import Tokenizer

__all__ = [
    "CHAT_PROMPT",
    "RAW_PROMPT",
    "Calibration",
    "PromptFormat",
    "Scorer",
    "calibrate",
    "match_prior",
    "mean_distribution",
    "reference_scores",
    "score_labels",
]

Calibration = Literal["contextual", "batch", "answers", "none"]
Scorer = Transformer | FastTransformer  # the fp32 model or the learner's int8 inference copy
CHAT_PROMPT = (
    "Classify the text as one of: {labels}.\n\nText: {text}\n\nAnswer with one word from: {labels}."
)
RAW_PROMPT = "Text: {text}\nLabel ({labels}):"


@dataclass(frozen=True)
class PromptFormat:
    """How an item becomes a prompt and a label becomes the answer the model should give.

    ``template`` has the fields ``{text}`` and optionally ``{labels}`` (the verbalizations, comma
    separated). With ``chat=True`` the filled template is the user turn of a conversation
    rendered with the model's chat template and the verbalization is the assistant's reply;
    otherwise the template is a raw prompt continued by ``" " + verbalization``.
    """

    template: str
    verbalizations: tuple[str, ...]
    chat: bool

    def __post_init__(self) -> None:
        fields = {f for _, f, _, _ in Formatter().parse(self.template) if f is not None}
        if "text" not in fields:
            raise LabelingError(
                f"the prompt template must contain {{text}} where the item goes: {self.template!r}"
            )
        unknown = sorted(fields - {"text", "labels"})
        if unknown:
            raise LabelingError(
                f"the prompt template has unknown field(s) {unknown}: only {{text}} and "
                "{labels} are filled (write a literal brace as {{ or }})"
            )

    def prompt(self, text: str) -> str:
        return self.template.format(text=text, labels=", ".join(self.verbalizations))

    def example(self, text: str, label_index: int, weight: float, id: str) -> TrainingExample:
        """The training example that teaches label ``label_index`` for ``text``."""
        verb = self.verbalizations[label_index]
        # A label must generalize to other texts, which an edit keyed on one word of this
        # text would not: labels are always fine-tuned, whatever the learner's update_method.
        if self.chat:
            messages = [{"role": "user", "content": self.prompt(text)}]
            return TrainingExample.from_chat(messages, verb, weight, id=id, method="finetune")
        return TrainingExample(self.prompt(text), " " + verb, weight, id=id, method="finetune")

    def encode(
        self, tokenizer: Tokenizer, text: str, max_len: int
    ) -> tuple[list[int], list[list[int]]]:
        """The shared context ids and, per label, the continuation tokens that are scored."""
        context: list[int] | None = None
        tails: list[list[int]] = []
        for i, verb in enumerate(self.verbalizations):
            ex = self.example(text, i, 1.0, "x")
            if ex.messages is not None:
                try:
                    enc = encode_chat(tokenizer, ex.messages, verb, max_len)
                except ChatError as e:
                    raise LabelingError(f"cannot build the chat prompt: {e}") from None
                ids, labels, n = list(enc.ids), list(enc.labels), enc.input_len
            else:
                raw = encode_example(tokenizer, 0, ex.input, ex.target, 1.0, max_len)
                ids, labels, n = list(raw.ids), list(raw.labels), raw.input_len
            if n < 1:
                raise LabelingError("the prompt encodes to no tokens: give a non-empty template")
            if context is None:
                context = ids[:n]
            elif ids[:n] != context:
                raise LabelingError(
                    f"the verbalization {verb!r} changes how the prompt's end is tokenized, so "
                    "labels would be scored on different prompts: end the template with a space "
                    "or punctuation, or change the verbalization"
                )
            tail = [t for t in labels[n - 1 :] if t != IGNORE]
            if not tail:
                raise LabelingError(
                    f"the verbalization {verb!r} does not fit in max_seq_len ({max_len}) after "
                    "the prompt: shorten the template or raise max_seq_len"
                )
            tails.append(tail)
        assert context is not None
        return context, tails


def _check_tails(tails: Sequence[Sequence[int]]) -> None:
    if len({tuple(t) for t in tails}) != len(tails):
        raise LabelingError("two labels have the same verbalization tokens: make them differ")


@torch.inference_mode()
def score_labels(
    model: Scorer, context: Sequence[int], tails: Sequence[Sequence[int]]
) -> list[float]:
    """Sum of log-probabilities of each tail after ``context``, sharing the context's KV cache.

    One pass over the context (batch 1) fills the cache; the cache is copied to one row per
    label and all tails run as one right-padded batch (padding comes after each row's real
    tokens, so causal attention keeps it out of the scores).
    """
    _check_tails(tails)
    dev = model.device
    longest = max(len(t) for t in tails)
    if len(context) + longest - 1 > model.cfg.n_ctx:
        raise LabelingError(
            f"the prompt and label need {len(context) + longest - 1} tokens, more than the "
            f"model's context ({model.cfg.n_ctx}): shorten the item or the template"
        )
    cache = KVCache(model.cfg, 1, len(context) + longest, dev, model.dtype)
    logits = model(torch.tensor([list(context)], device=dev), cache)  # (1, P, V)
    first = torch.log_softmax(logits[0, -1].float(), dim=-1)  # (V,)
    scores = [float(first[t[0]]) for t in tails]
    if longest == 1:
        return scores
    K = len(tails)
    cache.reorder(torch.zeros(K, dtype=torch.long, device=dev))
    rows = [list(t[:-1]) + [0] * (longest - len(t)) for t in tails]  # inputs after the first
    rest = torch.log_softmax(model(torch.tensor(rows, device=dev), cache).float(), dim=-1)
    for k, t in enumerate(tails):  # rest: (K, longest-1, V); rest[k, j-1] predicts t[j]
        for j in range(1, len(t)):
            scores[k] += float(rest[k, j - 1, t[j]])
    return scores


@torch.inference_mode()
def reference_scores(
    model: Scorer, context: Sequence[int], tails: Sequence[Sequence[int]]
) -> list[float]:
    """``score_labels`` without a cache: one full forward pass per label (tests only)."""
    out = []
    for t in tails:
        ids = list(context) + list(t[:-1])
        lp = torch.log_softmax(model(torch.tensor([ids], device=model.device))[0].float(), -1)
        P = len(context)
        out.append(sum(float(lp[P - 1 + j, tok]) for j, tok in enumerate(t)))
    return out


def calibrate(scores: Sequence[float], prior: Sequence[float] | None) -> list[float]:
    """Probabilities over labels: softmax of ``scores`` divided by ``prior`` (a distribution
    over the same labels), renormalized; ``prior=None`` is a plain softmax.

    >>> [round(p, 3) for p in calibrate([-1.0, -1.0], [0.8, 0.2])]
    [0.2, 0.8]
    """
    logp = torch.log_softmax(torch.tensor(list(scores), dtype=torch.float64), 0)
    if prior is not None:
        logp = logp - torch.tensor(list(prior), dtype=torch.float64).clamp_min(1e-12).log()
    return [float(p) for p in torch.softmax(logp, 0)]


def mean_distribution(rows: Sequence[Sequence[float]]) -> list[float]:
    """The mean of the softmax of each row of raw scores: batch calibration's prior."""
    if not rows:
        raise LabelingError("batch calibration needs at least one scored item")
    probs: Tensor = torch.softmax(torch.tensor([list(r) for r in rows], dtype=torch.float64), 1)
    return [float(p) for p in probs.mean(0)]


def match_prior(mean: Sequence[float], counts: Sequence[int]) -> list[float]:
    """The prior for ``calibrate`` that turns a pool whose mean distribution is ``mean`` into
    one whose labels come out at the answers' frequencies (``counts`` per label, add-one
    smoothed): dividing by it multiplies each label's probability by frequency / mean.

    >>> [round(p, 3) for p in calibrate([0.0, 0.0], match_prior([0.5, 0.5], [2, 0]))]
    [0.75, 0.25]
    """
    if len(mean) != len(counts) or any(c < 0 for c in counts):
        raise LabelingError("match_prior needs one non-negative count per label")
    total = sum(counts) + len(counts)
    ratio = [m * total / (c + 1) for m, c in zip(mean, counts, strict=True)]
    return [r / sum(ratio) for r in ratio]
