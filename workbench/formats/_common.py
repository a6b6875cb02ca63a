"""What every weight format shares: the error type, limits, dtypes, atomic writes, results."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

import torch
from torch import Tensor

from workbench.models.config import ModelConfig
from workbench.tokenizers import Tokenizer

WeightFormat = Literal["safetensors", "gguf", "binary", "custom"]
WEIGHT_FORMATS: tuple[WeightFormat, ...] = ("safetensors", "gguf", "binary", "custom")

DTypeName = Literal["float32", "float16", "bfloat16"]
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "f32": torch.float32,
    "float16": torch.float16,
    "f16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}

# Bounds every reader enforces before it allocates.
MAX_HEADER_BYTES = 256 * 1024 * 1024  # JSON headers, GGUF metadata sections
MAX_TENSORS = 100_000
MAX_DIMS = 8
MAX_STRING_BYTES = 16 * 1024 * 1024
MAX_ARRAY_ITEMS = 50_000_000
MAX_NESTING = 4
F16_MAX = 65504.0


class WeightLoadError(ValueError):
    """A weights file cannot be loaded; the message says what is wrong and how to fix it."""


class WeightSaveError(ValueError):
    """Weights cannot be saved as asked; the message says why."""


@dataclass
class LoadedWeights:
    """Tensors as a file names them, plus the file's metadata."""

    tensors: dict[str, Tensor]
    metadata: dict[str, Any]
    format: WeightFormat
    path: Path


@dataclass
class ModelState:
    """A model's weights in our parameter names, with what is needed to build it."""

    config: ModelConfig
    state_dict: dict[str, Tensor]
    tokenizer: Tokenizer | None
    format: WeightFormat
    metadata: dict[str, Any] = field(default_factory=dict)


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``"bf16"``/``"bfloat16"``/``torch.bfloat16`` → ``torch.bfloat16``; None stays None."""
    if dtype is None or isinstance(dtype, torch.dtype):
        if isinstance(dtype, torch.dtype) and dtype not in DTYPES.values():
            raise ValueError(f"unsupported dtype {dtype}; use float32, float16 or bfloat16")
        return dtype
    try:
        return DTYPES[dtype.lower()]
    except KeyError:
        raise ValueError(
            f"unsupported dtype {dtype!r}; use one of float32, float16, bfloat16"
        ) from None


def convert_dtype(t: Tensor, dtype: torch.dtype | None, name: str = "tensor") -> Tensor:
    """Cast a float tensor, refusing values that float16 would turn into infinity."""
    if dtype is None or t.dtype == dtype:
        return t
    if dtype == torch.float16 and t.is_floating_point() and t.numel():
        finite = t[torch.isfinite(t)]
        if finite.numel() and float(finite.abs().max()) > F16_MAX:
            raise ValueError(
                f"{name} holds {float(finite.abs().max()):.6g}, beyond float16's ±65504: "
                "save as bfloat16 or float32 instead"
            )
    return t.to(dtype)


def check_finite(tensors: dict[str, Tensor], allow_nonfinite: bool) -> None:
    """Raise ``WeightLoadError`` naming the first tensor with NaN or Inf (unless allowed)."""
    if allow_nonfinite:
        return
    for name, t in tensors.items():
        if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
            raise WeightLoadError(
                f"tensor {name!r} contains NaN or Inf; pass allow_nonfinite=True to load it anyway"
            )


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_writer(path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """Write ``path`` all or nothing: a temp file in the same folder, fsync, rename, fsync dir.

    A crash at any point leaves either the old file or the new one, never a torn file.
    """
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        fsync_dir(folder)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_atomic(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> None:
    with atomic_writer(path) as f:
        write(f)
