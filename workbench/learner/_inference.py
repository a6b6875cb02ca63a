"""Inference on a published snapshot: text generation and scoring.

Pure functions of (model, tokenizer, request): the facade holds the snapshot and the thread
settings; nothing here knows about training or the worker.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from workbench import losses
from workbench.learner.batching import collate, encode_example
from workbench.learner.config import LearnerError, TrainingExample
from workbench.models import Transformer
from workbench.tokenizers import Tokenizer

__all__ = ["generate_text", "score"]


def generate_text(
    model: Transformer,
    tokenizer: Tokenizer,
    prompt: str,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    seed: int | None,
    stream: Callable[[str], bool | None] | None,
) -> str:
    ids = tokenizer.encode(prompt)
    if not ids:
        raise LearnerError("the prompt encodes to no tokens")
    room = model.cfg.n_ctx - max_new_tokens
    if room < 1:
        raise LearnerError(
            f"max_new_tokens ({max_new_tokens}) leaves no room for the prompt in the model's "
            f"context ({model.cfg.n_ctx})"
        )
    ids = ids[-room:]  # keep the end of a long prompt
    new_ids: list[int] = []
    emitted = ""

    def on_token(tok: Tensor) -> bool:
        nonlocal emitted
        t = int(tok[0])
        if t == tokenizer.eos_id:
            return True
        new_ids.append(t)
        if stream is None:
            return False
        text = tokenizer.decode(new_ids)
        if text.endswith("\ufffd"):  # a multi-byte character is not complete yet
            return False
        piece, emitted = text[len(emitted) :], text
        return bool(piece and stream(piece))

    model.generate(
        torch.tensor([ids], device=model.device),
        max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        callback=on_token,
    )
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
