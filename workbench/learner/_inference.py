"""Inference on a published snapshot: completion, chat, and scoring.

Functions of (model, tokenizer, request): the facade holds the snapshot and the thread
settings; nothing here knows about training or the worker. ``PromptCache`` keeps the KV cache
of the last conversation, so a chat's next turn computes only its new tokens.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from workbench import losses
from workbench._openmp import release_thread_team
from workbench.batching import collate, encode_example
from workbench.chat import ChatError, encode_chat, stop_token_ids
from workbench.learner.config import LearnerError, TrainingExample
from workbench.learner.publish import Publisher, Snapshot
from workbench.models import KVCache, Transformer
from workbench.models.fast import FastTransformer
from workbench.tokenizers import Tokenizer

__all__ = [
    "PromptCache",
    "Reading",
    "Sampling",
    "chat_errors",
    "check_sampling",
    "decode",
    "example_length",
    "generate_ids",
    "reading",
    "score",
]

Stream = Callable[[str], bool | None]
Decoder = Transformer | FastTransformer  # the published fp32 model or its fast copy
MAX_NEW_TOKENS = 4096
MAX_BEAMS = 16
Reading = AbstractContextManager[Snapshot]  # what ``OnlineLearner.reading()`` returns


@dataclass(frozen=True)
class Sampling:
    """How to decode: greedy at ``temperature=0``; beam search with ``num_beams > 1``."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    num_beams: int = 1
    length_penalty: float = 1.0


def _int_in(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise LearnerError(f"{name} must be an integer in [{low}, {high}], got {value!r}")


def check_sampling(s: Sampling, streaming: bool) -> Sampling:
    """Validate a request at the boundary, with messages that say the fix."""
    _int_in("max_new_tokens", s.max_new_tokens, 0, MAX_NEW_TOKENS)
    _int_in("num_beams", s.num_beams, 1, MAX_BEAMS)
    t = s.temperature
    if isinstance(t, bool) or not isinstance(t, int | float) or not (math.isfinite(t) and t >= 0):
        raise LearnerError(f"temperature must be a finite number >= 0, got {t!r}")
    if s.top_k is not None:
        _int_in("top_k", s.top_k, 1, 1 << 30)
    p = s.top_p
    if p is not None and (isinstance(p, bool) or not isinstance(p, int | float) or not 0 < p <= 1):
        raise LearnerError(f"top_p must be in (0, 1], got {p!r}")
    lp = s.length_penalty
    if isinstance(lp, bool) or not isinstance(lp, int | float) or not math.isfinite(lp):
        raise LearnerError(f"length_penalty must be a finite number, got {lp!r}")
    if s.num_beams > 1 and (t != 0 or streaming):
        raise LearnerError(
            "beam search (num_beams > 1) is greedy and knows its answer only at the end: "
            "use temperature=0 and no stream"
        )
    return s


class PromptCache:
    """The KV cache of the newest conversation on one published version.

    A turn that starts with the cached tokens reuses their keys and values (the cache is cut
    back to the longest common prefix) so its time to first token does not grow with the
    history. One request uses the cache at a time; a concurrent one runs without it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._version = -1
        self._decoder = 0  # id() of the model the cache was computed by
        self._ids: list[int] = []
        self._cache: KVCache | None = None
        self.reused = 0  # prompt tokens the last request took from the cache

    @contextmanager
    def take(
        self, model: Decoder, version: int, ids: list[int], room: int
    ) -> Iterator[KVCache | None]:
        """A cache holding a prefix of ``ids`` with room for ``room`` tokens, or None if busy.

        The caller generates from it; afterwards the cache is kept for the next turn.
        """
        if not self._lock.acquire(blocking=False):
            yield None
            return
        try:
            cache = self._cache
            # Keys computed by the fast copy differ slightly from the reference's: a cache is
            # reused only by the model (and version) that filled it.
            same = self._version == version and self._decoder == id(model)
            fits = cache is not None and cache.max_len >= room and same
            if cache is None or not fits:
                size = min(model.cfg.n_ctx, max(room, 1024))
                cache = KVCache(model.cfg, 1, size, model.device, model.dtype)
                self._ids = []
            common = 0
            for a, b in zip(self._ids, ids[:-1], strict=False):  # keep >= 1 token to compute
                if a != b:
                    break
                common += 1
            cache.pos = self.reused = common
            self._cache, self._version, self._ids = None, version, []
            self._decoder = id(model)
            yield cache
            self._cache = cache
        finally:
            self._lock.release()

    def remember(self, ids: Sequence[int]) -> None:
        """The tokens whose keys and values the cache now holds (called inside ``take``)."""
        self._ids = list(ids)


@contextmanager
def reading(publisher: Publisher) -> Iterator[Snapshot]:
    """Hold ``publisher``'s current snapshot for a read that may span several passes, in
    inference mode, paced (``Publisher.pace``): on one intra-op thread while the worker
    computes (it trains on the others), on this thread's usual count while it waits, for work
    or for the readers (SmolLM2 on 2 cores: a token of the fast copy takes 6 ms on 2 threads
    and 10 ms on 1, of the float32 model 30 and 55).

    The snapshot is never changed in place: a publish swaps in a new one, and the held one
    stays valid (its ``version`` says which) until the block ends.
    """
    old = torch.get_num_threads()
    try:
        with publisher.reading(threads=old) as snap, torch.inference_mode():
            publisher.pace()  # its thread count from the start
            yield snap
    finally:
        torch.set_num_threads(old)
        # a team this thread keeps from other work makes the worker's wait at every barrier
        release_thread_team()


@contextmanager
def chat_errors() -> Iterator[None]:
    """The learner's callers get one error type: a ChatError becomes a LearnerError."""
    try:
        yield
    except ChatError as e:
        raise LearnerError(str(e)) from e


def example_length(tokenizer: Tokenizer, example: TrainingExample) -> int:
    """Tokens of ``example`` before any cut (a chat one rendered with its template)."""
    if example.messages is not None:
        with chat_errors():
            enc = encode_chat(tokenizer, example.messages, example.target or "", 1 << 30)
        return len(enc.ids)
    target = 0 if example.target is None else len(tokenizer.encode(example.target))
    return len(tokenizer.encode(example.input)) + target


def decode(
    publisher: Publisher,
    prompt_ids: Callable[[Tokenizer], list[int]],
    sampling: Sampling,
    stream: Stream | None,
    prompt_cache: PromptCache | None,
) -> str:
    """Validate ``sampling``, then decode on the published snapshot, its threads paced
    against the worker's (``Publisher.pace``) block by block, or token by token on the fast
    copy."""
    check_sampling(sampling, streaming=stream is not None)
    with reading(publisher) as snap:
        ids = prompt_ids(snap.tokenizer)
        return generate_ids(
            snap.decoder,
            snap.tokenizer,
            ids,
            sampling,
            stream,
            prompt_cache,
            snap.version,
            publisher.pace,
        )


def generate_ids(
    model: Decoder,
    tokenizer: Tokenizer,
    ids: list[int],
    sampling: Sampling,
    stream: Stream | None,
    prompt_cache: PromptCache | None = None,
    version: int = 0,
    between: Callable[[], None] | None = None,
) -> str:
    """Continue token ``ids``; stop at EOS or the chat template's end-of-turn tokens.
    ``between`` runs after each token (``Publisher.pace``)."""
    if not ids:
        raise LearnerError("the prompt encodes to no tokens")
    n = sampling.max_new_tokens
    room = model.cfg.n_ctx - n
    if room < 1:
        raise LearnerError(
            f"max_new_tokens ({n}) leaves no room for the prompt in the model's "
            f"context ({model.cfg.n_ctx})"
        )
    ids = ids[-room:]  # keep the end of a long prompt
    stops = stop_token_ids(tokenizer)
    new_ids: list[int] = []
    emitted = ""

    def on_token(tok: Tensor) -> bool:
        nonlocal emitted
        if between is not None:
            between()
        t = int(tok[0])
        if t in stops:
            return True
        new_ids.append(t)
        if stream is None:
            return False
        text = tokenizer.decode(new_ids)
        if text.endswith("\ufffd"):  # a multi-byte character is not complete yet
            return False
        piece, emitted = text[len(emitted) :], text
        return bool(piece and stream(piece))

    def run(cache: KVCache | None) -> Tensor:
        return model.generate(
            torch.tensor([ids], device=model.device),
            n,
            temperature=sampling.temperature,
            top_k=sampling.top_k,
            top_p=sampling.top_p,
            eos_token_id=stops or None,
            seed=sampling.seed,
            callback=on_token if sampling.num_beams == 1 else None,
            num_beams=sampling.num_beams,
            length_penalty=sampling.length_penalty,
            cache=cache,
        )

    if n == 0:
        return ""
    if sampling.num_beams > 1:
        best: list[int] = run(None)[0, len(ids) :].tolist()
        new_ids = best[: next((i for i, t in enumerate(best) if t in stops), len(best))]
    elif prompt_cache is None:
        run(None)
    else:
        with prompt_cache.take(model, version, ids, len(ids) + n) as cache:
            seq = run(cache)
            if cache is not None:
                prompt_cache.remember(seq[0, : cache.pos].tolist())
    text = tokenizer.decode(new_ids)
    if stream is not None and len(text) > len(emitted):
        stream(text[len(emitted) :])
    return text


def score(
    model: Transformer, tokenizer: Tokenizer, example: TrainingExample, max_len: int
) -> dict[str, float]:
    enc = encode_example(tokenizer, 0, example.input, example.target, 1.0, max_len)
    if all(label == losses.IGNORE for label in enc.labels):
        raise LearnerError("the text is too short to score: it needs at least two tokens")
    pad = tokenizer.eos_id if tokenizer.eos_id is not None else 0
    batch = collate([enc], pad, model.device)
    logits = model(batch.ids)
    loss = float(losses.cross_entropy(logits, batch.labels))
    tokens = sum(label != losses.IGNORE for label in enc.labels)
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "tokens": float(tokens)}
