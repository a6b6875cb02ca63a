"""The worker's pending and replay buffers, rebuilt from the example store (a restore, or a
load that brings another tokenizer)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from workbench.batching import Encoded
from workbench.chat import ChatError
from workbench.learner.config import LearnerError
from workbench.store import ExampleRecord, ExampleStore

__all__ = ["encode_buffers"]


def encode_buffers(
    store: ExampleStore,
    encode: Callable[[ExampleRecord], Encoded],
    size: int,
    trained_seq: int,
    whose: str,
) -> tuple[deque[Encoded], deque[Encoded]]:
    """Pending (after ``trained_seq``) and replay (the newest ``size`` up to it) from
    ``store``, each example through ``encode``. A ``LearnerError`` names every example
    ``whose`` tokenizer cannot encode (a conversation needs a chat template), so a load can be
    refused before it counts."""
    records = [*store.latest(size, up_to_seq=trained_seq), *store.examples_after(trained_seq)]
    encoded: list[Encoded] = []
    failed: list[tuple[ExampleRecord, ChatError]] = []
    for r in records:
        try:
            encoded.append(encode(r))
        except ChatError as e:
            failed.append((r, e))
    if n := len(failed):
        shown = ", ".join(repr(r.id) for r, _ in failed[:5])
        more = f" and {n - 5} more" if n > 5 else ""
        raise LearnerError(
            f"{whose} cannot encode {n} buffered example{'s' if n > 1 else ''} "
            f"({shown}{more}): {failed[0][1]}. Nothing was changed: use weights whose "
            "tokenizer has a chat template that renders these conversations, or remove "
            "those examples first (remove_example)"
        )
    replay = deque((e for e in encoded if e.seq <= trained_seq), maxlen=size)
    return deque(e for e in encoded if e.seq > trained_seq), replay
