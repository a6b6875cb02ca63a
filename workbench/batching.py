"""Examples to tensors: tokenize once, then collate into padded batches.

A supervised example is ``input ++ target ++ [eos]`` with loss only on the target and the eos
(so the model learns to stop); a self-supervised one is its input with loss on every token
that has something before it. Batches are right-padded, which a causal model never sees.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from workbench.losses import IGNORE
from workbench.tokenizers import Tokenizer

__all__ = ["Batch", "Encoded", "collate", "encode_example"]


@dataclass(frozen=True)
class Encoded:
    """One tokenized example: ``ids`` and next-token ``labels`` of the same length."""

    seq: int  # the store's sequence number
    ids: tuple[int, ...]
    labels: tuple[int, ...]  # labels[t] is the token ids[t] should predict, or IGNORE
    weight: float
    input_len: int  # tokens of the input part (for the contrastive loss)
    key_from: int = 0  # where an edit may look for the key word (a chat's last user turn)
    method: str | None = None  # "edit" / "finetune" for this example; None: the learner's


def encode_example(
    tokenizer: Tokenizer, seq: int, input: str, target: str | None, weight: float, max_len: int
) -> Encoded:
    """Tokenize an example and cut it to ``max_len`` tokens.

    Supervised: the target is kept and the input cut from the left (the end of a prompt
    matters most); a target longer than ``max_len`` keeps its beginning.

    >>> from workbench.tokenizers import ByteTokenizer
    >>> e = encode_example(ByteTokenizer(), 1, "ab", "c", 1.0, 16)
    >>> e.ids, e.labels
    ((97, 98, 99), (-100, 99, 256))
    """
    src = tokenizer.encode(input)
    if target is None:
        ids = src[:max_len]
        labels = [*ids[1:], IGNORE]
        return Encoded(seq, tuple(ids), tuple(labels), weight, len(ids))
    tgt = tokenizer.encode(target)
    eos = tokenizer.eos_id
    tail = [*tgt, eos] if eos is not None else list(tgt)
    # ids = src + tgt; the label of the last id is eos (or nothing without one).
    room = max(1, max_len - len(tgt))
    src = src[-room:] if len(src) > room else src
    ids = (src + tgt)[:max_len]
    labels = ([IGNORE] * (len(src) - 1) + tail)[: len(ids)]
    if not src:  # an input that tokenizes to nothing: the first target token is unpredictable
        labels = tail[1 : len(ids) + 1]
    labels += [IGNORE] * (len(ids) - len(labels))
    return Encoded(seq, tuple(ids), tuple(labels), weight, len(src))


@dataclass(frozen=True)
class Batch:
    ids: Tensor  # (B, T) token ids, right-padded
    labels: Tensor  # (B, T) next-token targets, IGNORE where no loss


def collate(examples: list[Encoded], pad_id: int, device: torch.device) -> Batch:
    """Right-pad ``examples`` into one batch on ``device``.

    >>> from workbench.tokenizers import ByteTokenizer
    >>> e = encode_example(ByteTokenizer(), 1, "ab", "c", 1.0, 16)
    >>> b = collate([e, encode_example(ByteTokenizer(), 2, "a", None, 1.0, 16)], 0, torch.device("cpu"))
    >>> b.ids.tolist(), b.labels.tolist()
    ([[97, 98, 99], [97, 0, 0]], [[-100, 99, 256], [-100, -100, -100]])
    """
    T = max(len(e.ids) for e in examples)
    B = len(examples)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    labels = torch.full((B, T), IGNORE, dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.ids)
        ids[i, :n] = torch.tensor(e.ids)
        labels[i, :n] = torch.tensor(e.labels)
    return Batch(ids.to(device), labels.to(device))
