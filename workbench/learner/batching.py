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


@dataclass
class Batch:
    ids: Tensor  # (B, T) token ids, right-padded
    labels: Tensor  # (B, T) next-token targets, IGNORE where no loss
    mask: Tensor  # (B, T) true on real tokens
    input_mask: Tensor  # (B, T) true on the input part (contrastive anchors)
    target_mask: Tensor  # (B, T) true on the target part (contrastive positives)
    weights: Tensor  # (B,)
    seqs: list[int]


def collate(examples: list[Encoded], pad_id: int, device: torch.device) -> Batch:
    T = max(len(e.ids) for e in examples)
    B = len(examples)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    labels = torch.full((B, T), IGNORE, dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.bool)
    input_mask = torch.zeros((B, T), dtype=torch.bool)
    for i, e in enumerate(examples):
        n = len(e.ids)
        ids[i, :n] = torch.tensor(e.ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = True
        input_mask[i, : e.input_len] = True
    target_mask = mask & ~input_mask
    weights = torch.tensor([e.weight for e in examples], dtype=torch.float32)
    return Batch(
        ids.to(device),
        labels.to(device),
        mask.to(device),
        input_mask.to(device),
        target_mask.to(device),
        weights.to(device),
        [e.seq for e in examples],
    )
