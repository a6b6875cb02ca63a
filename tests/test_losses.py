from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from workbench import losses


@pytest.fixture
def batch(rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    logits = torch.randn(3, 7, 11, generator=rng)
    targets = torch.randint(0, 11, (3, 7), generator=rng)
    targets[0, :3] = losses.IGNORE
    targets[2, 5:] = losses.IGNORE
    weights = torch.rand(3, generator=rng) * 5 + 0.1
    return logits, targets, weights


def test_cross_entropy_matches_torch_per_example(batch) -> None:
    logits, targets, weights = batch
    per = losses.cross_entropy(logits, targets, reduction="none")
    for i in range(3):
        keep = targets[i] != losses.IGNORE
        ref = F.cross_entropy(logits[i][keep], targets[i][keep])
        torch.testing.assert_close(per[i], ref)
    want = (per * weights).sum() / weights.sum()
    torch.testing.assert_close(losses.cross_entropy(logits, targets, weights), want)
    torch.testing.assert_close(losses.cross_entropy(logits, targets), per.mean())


def test_mse_is_the_brier_score(batch) -> None:
    logits, targets, weights = batch
    per = losses.mse(logits, targets, reduction="none")
    probs = logits.softmax(-1)
    for i in range(3):
        keep = targets[i] != losses.IGNORE
        onehot = F.one_hot(targets[i][keep], 11).float()
        ref = ((probs[i][keep] - onehot) ** 2).sum(-1).mean()
        torch.testing.assert_close(per[i], ref)
    torch.testing.assert_close(
        losses.mse(logits, targets, weights), (per * weights).sum() / weights.sum()
    )


def test_contrastive_is_infonce(rng: torch.Generator) -> None:
    a = torch.randn(5, 8, generator=rng)
    p = torch.randn(5, 8, generator=rng)
    w = torch.rand(5, generator=rng) + 0.5
    sim = F.normalize(a, dim=-1) @ F.normalize(p, dim=-1).t() / 0.05
    ref = -(sim.diag() - sim.logsumexp(dim=1))
    torch.testing.assert_close(losses.contrastive(a, p, reduction="none"), ref)
    torch.testing.assert_close(losses.contrastive(a, p, w), (ref * w).sum() / w.sum())
    # Aligned pairs score better than shuffled ones.
    assert losses.contrastive(a, a + 0.01 * p) < losses.contrastive(a, p)


def test_weights_change_the_gradient(batch) -> None:
    logits, targets, _ = batch
    x = logits.clone().requires_grad_(True)
    losses.cross_entropy(x, targets, torch.tensor([1.0, 1.0, 1.0])).backward()
    g1 = x.grad.clone()
    x.grad = None
    losses.cross_entropy(x, targets, torch.tensor([5.0, 1.0, 1.0])).backward()
    assert x.grad[0].abs().sum() > g1[0].abs().sum() * 1.5


def test_mean_pool_ignores_padding(rng: torch.Generator) -> None:
    h = torch.randn(2, 4, 3, generator=rng)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    out = losses.mean_pool(h, mask)
    torch.testing.assert_close(out[0], h[0, :2].mean(0))
    torch.testing.assert_close(out[1], h[1].mean(0))
