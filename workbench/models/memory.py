"""Edit memory: taught facts kept as keyed residuals beside one MLP layer, not in its weights.

A locate-and-edit update finds, for a key word such as an invented subject, the residual that
the layer's output needs at that word for the taught answers to come out. Writing it into the
down projection (ROME/MEMIT) is linear in the key: every other token's output moves too, by
the key's overlap with the edit's. Over 10 facts taught one after another on SmolLM2-135M that
leakage summed to 14 of 40 control facts answered wrong and +3% perplexity on general text.

The memory keeps each residual beside the layer instead (after GRACE, Hartvigsen et al. 2023):
a token whose key (the down projection's input) points within ``threshold`` cosine of a stored
key direction gets that entry's residual added to the layer's output; every other token is
computed exactly as before, bit for bit. On SmolLM2 the keys make this clean: at layer 8 a
taught subject's training and held-out phrasings sit at cosine 0.63-0.98 to its mean key, while
every token of 50 control prompts and of general text stays below 0.02 and the same template
with another invented subject below 0.15 (20 facts measured).

An ``EditMemory`` is immutable: ``put`` returns a new one. Published snapshots, undo points and
checkpoints can therefore share it by reference, and a reader never sees one change under it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["DEFAULT_THRESHOLD", "EditMemory", "has_memory"]

DEFAULT_THRESHOLD = 0.6  # cosine between a token's key and a stored key that applies the entry


@dataclass(frozen=True, eq=False)
class EditMemory:
    """Entries of one layer: unit key ``directions`` ``(n, width)``, the mean ``keys`` they
    came from ``(n, width)`` (for writing the entries into weights), and ``values``
    ``(n, d_model)``, the residual each entry adds to the layer's output."""

    layer: int
    threshold: float
    directions: Tensor
    keys: Tensor
    values: Tensor

    @classmethod
    def empty(
        cls,
        layer: int,
        width: int,
        d_model: int,
        threshold: float = DEFAULT_THRESHOLD,
        device: torch.device | str = "cpu",
    ) -> EditMemory:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"the edit memory's threshold must be in (0, 1), got {threshold}")
        z = torch.zeros(0, width, device=device)
        return cls(layer, threshold, z, z, torch.zeros(0, d_model, device=device))

    def to(self, device: torch.device | str) -> EditMemory:
        """This memory on ``device`` (itself when it is there already)."""
        if self.directions.device == torch.device(device):
            return self
        d, k, v = (t.to(device) for t in (self.directions, self.keys, self.values))
        return EditMemory(self.layer, self.threshold, d, k, v)

    def __len__(self) -> int:
        return self.directions.shape[0]

    def apply(self, keys: Tensor, out: Tensor) -> Tensor:
        """``out`` (the layer's output for ``keys``, ``(..., d_model)``) plus, at each token
        whose key lies within the threshold of an entry, the nearest entry's residual."""
        if not len(self):
            return out
        hit, nearest = self.nearest(keys)
        if not bool(hit.any()):
            return out
        return out + (self.values[nearest] * hit[..., None]).to(out.dtype)

    def nearest(self, keys: Tensor) -> tuple[Tensor, Tensor]:
        """Per key ``(...)``: whether an entry applies, and the nearest entry (index)."""
        sims = F.normalize(keys.float(), dim=-1) @ self.directions.T  # (..., n)
        best, nearest = sims.max(dim=-1)
        return best >= self.threshold, nearest

    def match(self, key: Tensor) -> int | None:
        """The entry whose direction ``key`` falls within the threshold of (nearest), if any."""
        if not len(self):
            return None
        hit, i = self.nearest(key)
        return int(i) if bool(hit) else None

    def put(self, key: Tensor, residual: Tensor) -> EditMemory:
        """A memory with ``residual`` added where ``key`` points: to the entry it already
        matches (the residual was found on top of that entry's, which the layer's output
        already carried), else as a new entry. The entry's key becomes ``key``."""
        key, residual = key.detach().float(), residual.detach().float()
        if not (bool(torch.isfinite(key).all()) and bool(torch.isfinite(residual).all())):
            raise ValueError("an edit memory entry must be finite")
        if float(key.norm()) == 0.0:
            raise ValueError("an edit memory key must not be zero")
        unit = F.normalize(key, dim=-1)
        i = self.match(key)
        if i is None:
            return EditMemory(
                self.layer,
                self.threshold,
                torch.cat([self.directions, unit[None]]),
                torch.cat([self.keys, key[None]]),
                torch.cat([self.values, residual[None]]),
            )
        directions, keys, values = self.directions.clone(), self.keys.clone(), self.values.clone()
        directions[i], keys[i], values[i] = unit, key, values[i] + residual
        return EditMemory(self.layer, self.threshold, directions, keys, values)

    def plan(self, keys: Tensor) -> tuple[EditMemory, list[int]]:
        """The memory after ``put`` of each row of ``keys`` ``(n, width)`` in turn with a zero
        residual, and the entry each row went to: an edit finds its residuals against this
        layout, then fills them in with ``with_values``."""
        mem, slots = self, []
        zero = self.values.new_zeros(self.values.shape[-1])
        for key in keys:
            i = mem.match(key)
            mem = mem.put(key, zero)
            slots.append(len(mem) - 1 if i is None else i)
        return mem, slots

    def with_values(self, values: Tensor) -> EditMemory:
        """This memory's entries with other residuals ``(n, d_model)``."""
        values = values.detach().float()
        if values.shape != self.values.shape or not bool(torch.isfinite(values).all()):
            raise ValueError(
                f"edit memory values must be finite, of shape {tuple(self.values.shape)}"
            )
        return EditMemory(self.layer, self.threshold, self.directions, self.keys, values)

    # ------------------------------------------------------------------ persistence
    def tensors(self) -> dict[str, Tensor]:
        """The memory as named tensors (a checkpoint's extra tensors; ``from_tensors``)."""
        return {
            "edit_memory.layer": torch.tensor(self.layer, dtype=torch.int64),
            "edit_memory.threshold": torch.tensor(self.threshold, dtype=torch.float64),
            "edit_memory.directions": self.directions.contiguous(),
            "edit_memory.keys": self.keys.contiguous(),
            "edit_memory.values": self.values.contiguous(),
        }

    def describe(self) -> dict[str, float | int]:
        return {"layer": self.layer, "threshold": self.threshold, "entries": len(self)}

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, Tensor], width: int, d_model: int) -> EditMemory:
        """Rebuild a memory saved by ``tensors``, for a model whose layers' keys have
        ``width`` and whose stream ``d_model`` features. Checks names, shapes and values
        (raises ``ValueError`` saying what is wrong)."""
        try:
            layer = int(tensors["edit_memory.layer"])
            threshold = float(tensors["edit_memory.threshold"])
            d = tensors["edit_memory.directions"].float()
            k = tensors["edit_memory.keys"].float()
            v = tensors["edit_memory.values"].float()
        except KeyError as e:
            raise ValueError(f"the saved edit memory lacks {e.args[0]}") from None
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(
                "the saved edit memory's layer and threshold must be scalars"
            ) from None
        n = d.shape[0] if d.ndim == 2 else -1
        if n < 0 or d.shape != (n, width) or k.shape != (n, width) or v.shape != (n, d_model):
            raise ValueError(
                f"the saved edit memory has shapes {tuple(d.shape)}, {tuple(k.shape)}, "
                f"{tuple(v.shape)}; this model needs (n, {width}), (n, {width}), (n, {d_model})"
            )
        if not all(bool(torch.isfinite(t).all()) for t in (d, k, v)):
            raise ValueError("the saved edit memory holds NaN or Inf")
        if not 0.0 < threshold < 1.0 or layer < 0:
            raise ValueError(
                f"the saved edit memory has layer {layer} and threshold {threshold}: "
                "the layer must be >= 0 and the threshold in (0, 1)"
            )
        return cls(layer, threshold, d, k, v)


def has_memory(tensors: Mapping[str, Tensor]) -> bool:
    """Whether a checkpoint's extra tensors carry an edit memory."""
    return any(name.startswith("edit_memory.") for name in tensors)
