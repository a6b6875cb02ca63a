"""bfloat16 mixed precision for the learner's fine-tuning steps.

A step's forward and backward run on bfloat16 copies of the weight matrices ("shadows"),
under autocast, while the float32 weights stay the masters: the optimizer updates them, undo,
publishing and checkpoints read them. Matrix gradients arrive in bfloat16 and are added into
the masters' float32 gradients after each pass. The residual stream stays float32 (the
embedding's output is cast up), as do norms, attention on CPU and the loss.

Why shadows rather than plain autocast: autocast casts every weight at every forward and every
weight gradient back at every backward; on SmolLM2-135M (2-core Xeon with AMX) those casts ate
most of the gain (forward + backward 0.49 s against 0.57 s in float32), while shadows refreshed
once per optimizer step ran it in 0.30 s. In the learner's worker forward and backward took
0.37 s against 0.51 s, but the refresh and the gradients' copy to float32 take ~50 ms each, so
a whole update takes 0.84-0.91x float32's: an optimizer that reads the bfloat16 gradients and
writes the shadows itself would save both copies. bfloat16 matrix products are only fast on
hardware with bfloat16 units, so ``compute_dtype="auto"`` uses them for a pretrained model on
a CPU with AMX or AVX512-BF16 (see :func:`resolve_compute`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor, nn

from workbench.learner._undo import stamp

__all__ = ["Shadows", "bf16_units", "resolve_compute"]


@lru_cache(maxsize=8)
def bf16_units(device: torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices natively (fast, not emulated)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    # torch.cpu's feature probes are private; a torch without them gets float32
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def resolve_compute(setting: str, model: nn.Module, device: torch.device) -> torch.dtype:
    """The dtype a fine-tuning step computes in: ``setting`` as given, or for "auto"
    bfloat16 when the model is pretrained, its weights are float32 and ``device`` is a CPU
    with bfloat16 units; float32 otherwise (a random model learns from scratch: exact math).
    CUDA stays float32 under "auto" until it is measured there (no GPU was lent yet);
    "bfloat16" runs there too."""
    if setting == "float32":
        return torch.float32
    if setting == "bfloat16":
        return torch.bfloat16
    weights = {p.dtype for p in model.parameters()}
    pretrained = bool(getattr(model, "pretrained", False))
    if pretrained and weights == {torch.float32} and device.type == "cpu" and bf16_units(device):
        return torch.bfloat16
    return torch.float32


class Shadows:
    """bfloat16 copies of ``model``'s trainable float32 matrices, refreshed when the masters
    changed (any write: optimizer step, edit, undo, load) and swapped in for a forward.
    ``pause`` runs after each matrix's copy (the trainer's: readers go first)."""

    def __init__(self, model: nn.Module, pause: Callable[[], None] | None = None) -> None:
        self.model = model
        self.pause = pause
        self._slots: list[tuple[nn.Module, str, nn.Parameter]] = [
            (m, name, p)
            for m in model.modules()
            for name, p in m._parameters.items()
            if p is not None and p.requires_grad and p.ndim >= 2 and p.dtype == torch.float32
        ]
        masters = {id(p): p for _, _, p in self._slots}  # tied weights share one shadow
        self._masters = list(masters.values())
        self._half: dict[int, Tensor] = {}
        self._seen: tuple[Any, ...] | None = None
        self._embeddings = [m for m in model.modules() if isinstance(m, nn.Embedding)]

    def current(self) -> bool:
        """Whether the model still holds the parameters these shadows were made for."""
        return all(m._parameters.get(name) is p for m, name, p in self._slots)

    def refresh(self) -> None:
        """Copy the masters into the shadows if any master was written since the last copy."""
        now = stamp(self.model)
        if now == self._seen:
            return
        with torch.no_grad():
            for p in self._masters:
                h = self._half.get(id(p))
                if h is None or h.shape != p.shape or h.device != p.device:
                    self._half[id(p)] = p.detach().to(torch.bfloat16).requires_grad_()
                else:
                    h.copy_(p)
                if self.pause is not None:
                    self.pause()
        self._seen = now

    @contextmanager
    def swapped(self) -> Iterator[None]:
        """Run the block's forward on the shadows under bfloat16 autocast; the graph it builds
        keeps them, so its backward may run after the block."""
        self.refresh()
        for h in self._half.values():
            h.grad = None
        if not self.current():
            raise RuntimeError("the model's matrices were replaced since its shadows were made")
        hooks = [e.register_forward_hook(_upcast) for e in self._embeddings]
        try:
            for m, name, p in self._slots:
                m._parameters[name] = self._half[id(p)]  # type: ignore[assignment]
            with torch.autocast(self._device_type(), dtype=torch.bfloat16):
                yield
        finally:
            for m, name, p in self._slots:
                m._parameters[name] = p  # the master itself, as before the swap
            for hook in hooks:
                hook.remove()

    def collect(self) -> None:
        """Add the shadows' gradients into the masters' float32 gradients (and clear them)."""
        with torch.no_grad():
            for p in self._masters:
                h = self._half.get(id(p))
                if h is None or h.grad is None:
                    continue
                if p.grad is None:
                    p.grad = h.grad.to(torch.float32)
                else:
                    p.grad.add_(h.grad)
                h.grad = None
                if self.pause is not None:
                    self.pause()

    def _device_type(self) -> str:
        return self._masters[0].device.type if self._masters else "cpu"


def _upcast(module: nn.Module, args: Any, output: Tensor) -> Tensor:
    """The embedding's bfloat16 rows as float32: the residual stream stays float32."""
    return output.float()
