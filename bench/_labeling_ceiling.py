"""bench/labeling.py's ceiling: a linear probe on SmolLM2's hidden states, fitted on true labels."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from workbench.formats import load_model


def probe_predictions(
    model_path: Path,
    pool: Sequence[tuple[str, str]],
    held: Sequence[tuple[str, str]],
    sizes: Sequence[int],
    labels: Sequence[str],
) -> dict[int, list[str]]:
    """What the model's own representation can tell, with true labels: a logistic regression on
    its hidden states (layer ``n_layer // 2``, mean over the review's tokens; the middle layer
    separated these reviews best of 8/15/22/30 in exploration) fitted on the first k pool items;
    its labels for the held-out slice, per k. Not the session's method: a ceiling for what any
    suggestion read from this model's features can reach with k answers."""
    model, tok = load_model(model_path)
    layer = model.cfg.n_layer // 2

    @torch.inference_mode()
    def features(texts: Sequence[str]) -> torch.Tensor:
        rows = []
        for t in texts:
            x, rope = model.embed(torch.tensor([tok.encode(t)[: model.cfg.n_ctx]]))
            rows.append(model.run_blocks(x, rope, 0, layer)[0].double().mean(0))
        return torch.stack(rows)

    train_x, held_x = features([t for t, _ in pool[: max(sizes)]]), features([t for t, _ in held])
    train_y = torch.tensor([labels.index(y) for _, y in pool[: max(sizes)]])
    return {
        k: [labels[i] for i in _fit_probe(train_x[:k], train_y[:k], held_x, len(labels))]
        for k in sizes
    }


def _fit_probe(x: torch.Tensor, y: torch.Tensor, held_x: torch.Tensor, classes: int) -> list[int]:
    """L2-regularized multinomial logistic regression (standardized features, L-BFGS)."""
    mu, sd = x.mean(0), x.std(0) + 1e-6
    w = torch.zeros(x.shape[1], classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        z = ((x - mu) / sd) @ w + b
        loss = torch.nn.functional.cross_entropy(z, y) + 0.1 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return [int(i) for i in (((held_x - mu) / sd) @ w + b).argmax(1)]
