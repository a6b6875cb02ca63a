"""Rotary position embeddings: inverse frequencies, with the scalings real checkpoints use.

- ``none``: ``1 / theta ** (2i / d)``, as Hugging Face's default RoPE;
- ``linear``: every frequency divided by ``factor`` (Gemma 3's global layers);
- ``llama3``: Llama 3.1's piecewise rule: wavelengths shorter than
  ``original_ctx / high_freq_factor`` are kept, longer than ``original_ctx / low_freq_factor``
  divided by ``factor``, and those between interpolated. Computed with Hugging Face's float32
  operations (``_compute_llama3_parameters``) so logits match theirs.

llama.cpp does not store these parameters: its converter writes the per-frequency divisors as
the tensor ``rope_freqs.weight`` (:func:`llama3_divisors`); :func:`llama3_from_divisors` finds
parameters that reproduce a file's divisors, for files written without our exact config.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from workbench.models.config import ModelConfig


def base_inv_freq(theta: float, head_dim: int) -> Tensor:
    """``(head_dim/2,)`` float32 inverse frequencies without scaling."""
    steps = torch.arange(0, head_dim, 2, dtype=torch.float32, device="cpu")
    return 1.0 / (theta ** (steps / head_dim))


def _llama3(inv: Tensor, factor: float, low: float, high: float, old_ctx: float) -> Tensor:
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > low_wavelen, inv / factor, inv)
    smooth = (old_ctx / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, scaled)


def inv_freq(cfg: ModelConfig, *, local: bool = False) -> Tensor:
    """The inverse frequencies of ``cfg``'s global layers, or with ``local`` of its sliding
    layers when they have a base of their own (``rope_local_theta``, never scaled)."""
    if local and cfg.rope_local_theta is not None:
        return base_inv_freq(cfg.rope_local_theta, cfg.head_dim)
    inv = base_inv_freq(cfg.rope_theta, cfg.head_dim)
    if cfg.rope_scaling == "linear":
        return inv / cfg.rope_factor
    if cfg.rope_scaling == "llama3":
        return _llama3(
            inv,
            cfg.rope_factor,
            cfg.rope_low_freq_factor,
            cfg.rope_high_freq_factor,
            cfg.rope_original_ctx,
        )
    return inv


def llama3_divisors(cfg: ModelConfig) -> Tensor:
    """llama.cpp's ``rope_freqs.weight`` for a llama3-scaled config: ``(head_dim/2,)`` float32
    divisors of the unscaled frequencies (1 for kept ones, ``factor`` for fully scaled ones).

    The rule of ``convert_hf_to_gguf.py`` (``LlamaModel.generate_extra_tensors``), in float64
    as Python computes it there.
    """
    freqs = base_inv_freq(cfg.rope_theta, cfg.head_dim).tolist()
    factor, low, high = cfg.rope_factor, cfg.rope_low_freq_factor, cfg.rope_high_freq_factor
    old = cfg.rope_original_ctx
    out = []
    for f in freqs:
        wavelen = 2 * math.pi / f
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return torch.tensor(out, dtype=torch.float32)


def llama3_from_divisors(divisors: Tensor, theta: float, head_dim: int) -> dict[str, Any] | None:
    """llama3 parameters (``rope_factor``, ``rope_low_freq_factor``, ``rope_high_freq_factor``,
    ``rope_original_ctx``) whose divisors match ``divisors`` within 1e-4; None when none do.

    The divisors fix ``factor`` (the largest) and, through the interpolated ones, the two
    numbers ``old / (high - low)`` and ``low / (high - low)``; ``low = 1`` fixes the rest, as in
    every Llama 3.x release (1, 4, 8192). Without two interpolated frequencies, the boundaries
    are put between the kept and the scaled ones.
    """
    try:
        return _llama3_from_divisors(divisors, theta, head_dim)
    except (ArithmeticError, ValueError):  # crafted values: overflow, NaN, invalid configs
        return None


def _llama3_from_divisors(divisors: Tensor, theta: float, head_dim: int) -> dict[str, Any] | None:
    d = divisors.double()
    if d.numel() != head_dim // 2 or not bool(torch.isfinite(d).all()) or float(d.min()) < 1.0:
        return None
    factor = float(d.max())
    if factor == 1.0:
        return None
    wavelen = 2 * math.pi / base_inv_freq(theta, head_dim).double()
    tol = 1e-6 * factor
    kept, full = d <= 1.0 + tol, d >= factor - tol
    mid = ~kept & ~full
    if int(mid.sum()) >= 2:
        # 1/d = (1 - s)/factor + s, with s = a/wavelen - b linear in 1/wavelen
        s = (1 / d[mid] - 1 / factor) / (1 - 1 / factor)
        x = 1 / wavelen[mid]
        a = float(((x - x.mean()) * (s - s.mean())).sum() / ((x - x.mean()) ** 2).sum())
        b = a * float(x.mean()) - float(s.mean())
        if not (a > 0 and b > 0):
            return None
        low, high, old = 1.0, 1.0 + 1.0 / b, a / b
    else:
        short = float(wavelen[kept].max()) if bool(kept.any()) else float(wavelen.min()) / 2
        long = float(wavelen[full].min()) if bool(full.any()) else float(wavelen.max()) * 2
        if not short < long:
            return None
        # kept below old / high, scaled above old / low: both boundaries strictly between
        old = float(round(short * (long / short) ** (2 / 3)))
        low, high = 1.0, old / (short * (long / short) ** (1 / 3))
    if abs(old - round(old)) < 1e-3 * old:
        old = float(round(old))
    high = round(high, 6)
    found: dict[str, Any] = {
        "rope_factor": factor,
        "rope_low_freq_factor": low,
        "rope_high_freq_factor": high,
        "rope_original_ctx": round(old),
    }
    cfg = ModelConfig(
        family="llama", n_embd=head_dim, n_head=1, rope_theta=theta, rope_scaling="llama3", **found
    )
    if not torch.allclose(llama3_divisors(cfg).double(), d, rtol=1e-4, atol=0):
        return None
    return found
