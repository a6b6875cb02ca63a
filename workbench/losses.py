"""Loss functions: pure functions of (logits or hidden states, targets, weights).

Each returns the weighted batch loss ``Σ wᵢ·Lᵢ / Σ wᵢ`` (``reduction="mean"``) or the
per-example losses ``Lᵢ`` (``reduction="none"``), where ``Lᵢ`` averages over example i's
target positions. Targets use ``IGNORE`` (-100) for positions that carry no loss, as
``torch.nn.functional.cross_entropy`` does. Nothing here knows about models or tokenizers.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "IGNORE",
    "LOSSES",
    "LossName",
    "contrastive",
    "cross_entropy",
    "mean_pool",
    "mse",
    "weighted_mean",
]

IGNORE = -100
LossName = Literal["cross_entropy", "mse", "contrastive"]
LOSSES: tuple[LossName, ...] = ("cross_entropy", "mse", "contrastive")
Reduction = Literal["mean", "none"]


def weighted_mean(losses: Tensor, weights: Tensor | None) -> Tensor:
    """``Σ wᵢ·Lᵢ / Σ wᵢ`` over examples; a plain mean without weights.

    >>> weighted_mean(torch.tensor([1.0, 3.0]), torch.tensor([1.0, 3.0]))
    tensor(2.5000)
    """
    if weights is None:
        return losses.mean()
    weights = weights.to(losses.dtype)
    return (losses * weights).sum() / weights.sum().clamp_min(torch.finfo(losses.dtype).tiny)


def _per_example(token_loss: Tensor, mask: Tensor) -> Tensor:
    # (B, T) token losses → (B,) mean over each example's target positions.
    counts = mask.sum(dim=1).clamp_min(1)
    return (token_loss * mask).sum(dim=1) / counts


def cross_entropy(
    logits: Tensor, targets: Tensor, weights: Tensor | None = None, reduction: Reduction = "mean"
) -> Tensor:
    """Next-token cross-entropy.

    ``logits`` ``(B, T, V)`` predict ``targets`` ``(B, T)`` at the same positions (the caller
    shifts); ``IGNORE`` positions carry no loss.

    >>> logits = torch.tensor([[[2.0, 0.0], [0.0, 2.0]]])
    >>> round(float(cross_entropy(logits, torch.tensor([[0, IGNORE]]))), 4)
    0.1269
    """
    B, T, V = logits.shape
    mask = (targets != IGNORE).to(torch.float32)
    token = F.cross_entropy(
        logits.reshape(B * T, V).float(),
        targets.reshape(B * T),
        ignore_index=IGNORE,
        reduction="none",
    ).view(B, T)
    per = _per_example(token, mask)
    return per if reduction == "none" else weighted_mean(per, weights)


def mse(
    logits: Tensor, targets: Tensor, weights: Tensor | None = None, reduction: Reduction = "mean"
) -> Tensor:
    """Squared error between the predicted next-token distribution and the one-hot target.

    This is the Brier score, ``Σᵥ (pᵥ − 1[v = y])²`` per position, in ``[0, 2]``.

    >>> logits = torch.tensor([[[0.0, 0.0]]])
    >>> float(mse(logits, torch.tensor([[1]])))
    0.5
    """
    mask = (targets != IGNORE).to(torch.float32)
    probs = logits.float().softmax(dim=-1)  # (B, T, V)
    safe = targets.clamp_min(0)
    p_true = probs.gather(-1, safe.unsqueeze(-1)).squeeze(-1)  # (B, T)
    # Σᵥ (pᵥ − onehot)² = Σᵥ pᵥ² − 2·p_y + 1, without materializing the one-hot.
    token = probs.pow(2).sum(dim=-1) - 2.0 * p_true + 1.0
    per = _per_example(token, mask)
    return per if reduction == "none" else weighted_mean(per, weights)


def mean_pool(hidden: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``hidden`` ``(B, T, C)`` over positions where ``mask`` ``(B, T)`` is true."""
    m = mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


def contrastive(
    anchors: Tensor,
    positives: Tensor,
    weights: Tensor | None = None,
    reduction: Reduction = "mean",
    temperature: float = 0.05,
) -> Tensor:
    """InfoNCE with in-batch negatives.

    Row i of ``anchors`` ``(B, C)`` should match row i of ``positives`` ``(B, C)`` and no other
    row; similarity is cosine over ``temperature``. With a batch of one there are no negatives
    and the loss is zero.

    >>> a = torch.eye(3)
    >>> float(contrastive(a, a)) < float(contrastive(a, a.roll(1, dims=0)))
    True
    """
    a = F.normalize(anchors.float(), dim=-1)
    p = F.normalize(positives.float(), dim=-1)
    sim = a @ p.t() / temperature  # (B, B)
    labels = torch.arange(sim.shape[0], device=sim.device)
    per = F.cross_entropy(sim, labels, reduction="none")
    return per if reduction == "none" else weighted_mean(per, weights)
