"""What every weight format shares: the error type, limits, dtypes, atomic writes, results.

Also the helpers more than one reader or writer uses: bounded JSON (``parse_json``,
``read_json_file``), the finiteness checks, the progress bar of a big load, a tensor's bytes,
and the ``{i}`` layer expansion of the name tables.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

import torch
from torch import Tensor

from workbench.formats import atomic, opener
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
MAX_JSON_FILE_BYTES = 64 * 1024 * 1024  # config.json, tokenizer.json, shard index
F16_MAX = 65504.0
# Below this many bytes a load is too quick for a progress bar (and a bar's monitor thread
# would be wasted); ``progress=True`` forces one.
PROGRESS_MIN_BYTES = 64 * 1024 * 1024


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


# Elements per step of a cast on the CPU: below ATen's grain size (32768), so each op runs on the
# calling thread. Measured on SmolLM2 (135M floats to float16, two busy cores): 0.34 s in steps
# against 1.85 s for whole-tensor ops, whose OpenMP regions wait on descheduled workers.
_CAST_STEP = 32768


def convert_dtype(t: Tensor, dtype: torch.dtype | None, name: str = "tensor") -> Tensor:
    """Cast a float tensor, refusing values that float16 would turn into infinity.

    Examples
    --------
    >>> convert_dtype(torch.tensor([1.0, 65504.0]), torch.float16)
    tensor([1.0000e+00, 6.5504e+04], dtype=torch.float16)
    >>> convert_dtype(torch.tensor([70000.0]), torch.float16, "w")
    Traceback (most recent call last):
    ...
    ValueError: w holds 70000, beyond float16's ±65504: save as bfloat16 or float32 instead
    """
    if dtype is None or t.dtype == dtype:
        return t
    check = dtype == torch.float16 and t.is_floating_point()
    if t.device.type != "cpu" or t.numel() <= _CAST_STEP:
        out = t.to(dtype)
        in_range = not check or not t.numel() or _below_f16_max(out)
    else:
        out = torch.empty(t.shape, dtype=dtype)
        src, dst = t.reshape(-1), out.view(-1)
        in_range = True
        for i in range(0, dst.numel(), _CAST_STEP):
            step = dst[i : i + _CAST_STEP]
            step.copy_(src[i : i + _CAST_STEP])
            in_range = in_range and (not check or _below_f16_max(step))
    if not in_range:  # the exact, element-wise look (it copies the finite values)
        finite = t[torch.isfinite(t)]
        if finite.numel() and float(finite.abs().max()) > F16_MAX:
            raise ValueError(
                f"{name} holds {float(finite.abs().max()):.6g}, beyond float16's ±65504: "
                "save as bfloat16 or float32 instead"
            )
    return out


def _below_f16_max(cast: Tensor) -> bool:
    """Whether every value of a float16 cast lies strictly inside ±65504.

    A value beyond ±65504 became ±65504 or ±Inf in the cast, and NaN fails both comparisons:
    True proves the source in range; False calls for the exact check on the source.
    """
    lo, hi = torch.aminmax(cast)
    return float(lo) > -F16_MAX and float(hi) < F16_MAX


def check_finite(tensors: dict[str, Tensor], allow_nonfinite: bool) -> None:
    """Raise ``WeightLoadError`` naming the first tensor with NaN or Inf (unless allowed)."""
    if allow_nonfinite:
        return
    for name, t in tensors.items():
        if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
            raise WeightLoadError(
                f"tensor {name!r} contains NaN or Inf; pass allow_nonfinite=True to load it anyway"
            )


def check_finite_fast(tensors: Mapping[str, Tensor], allow_nonfinite: bool) -> None:
    """``check_finite`` at the cost of one sum per tensor.

    A finite sum proves every element finite (NaN and ±Inf propagate through addition), so the
    exact elementwise check runs only when the sum is not finite, which also catches a sum that
    overflowed on large but finite values.
    """
    if allow_nonfinite:
        return
    for name, t in tensors.items():
        if not t.is_floating_point() or not t.numel():
            continue
        acc = torch.float64 if t.dtype == torch.float64 else torch.float32
        if not math.isfinite(float(t.sum(dtype=acc))):
            check_finite({name: t}, False)


def _pairs_no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise WeightLoadError(f"duplicate key {key!r} in JSON")
        out[key] = value
    return out


def parse_json(raw: bytes, where: str) -> Any:
    """Parse bounded JSON bytes; every failure (bad UTF-8, syntax, nesting) → WeightLoadError.

    Examples
    --------
    >>> parse_json(b'{"a": 1}', "example")
    {'a': 1}
    >>> parse_json(b'{"a": 1, "a": 2}', "example")
    Traceback (most recent call last):
    ...
    workbench.formats._common.WeightLoadError: example: duplicate key 'a' in JSON
    """
    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=_pairs_no_duplicates)
    except WeightLoadError as e:
        raise WeightLoadError(f"{where}: {e}") from None
    except UnicodeDecodeError as e:
        raise WeightLoadError(
            f"{where} is not valid UTF-8 ({e.reason} at byte {e.start})"
        ) from None
    except RecursionError:
        raise WeightLoadError(f"{where}: JSON nested too deeply") from None
    except ValueError as e:
        raise WeightLoadError(f"{where} is not valid JSON: {e}") from None


def read_json_file(
    path: Path, what: str, limit: int = MAX_JSON_FILE_BYTES, *, beneath: Path | None = None
) -> Any:
    """Read a small JSON file beside the weights, refusing anything over ``limit`` bytes.

    ``beneath``: the folder it must stay inside (see :func:`workbench.formats.opener.open_file`).
    """
    try:
        with opener.open_file(path, beneath=beneath) as f:
            raw = f.read(limit + 1)
    except OSError as e:
        raise WeightLoadError(f"cannot read {what} {path}: {e}") from None
    if len(raw) > limit:
        raise WeightLoadError(f"{what} {path} is larger than the {limit}-byte limit")
    return parse_json(raw, f"{what} {path.name}")


class Progress:
    """A tqdm bar shown only for big loads, and only once a load has run for a second."""

    def __init__(self, total: int, desc: str, progress: bool | None) -> None:
        self.bar: Any = None
        if progress or (progress is None and total >= PROGRESS_MIN_BYTES):
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total, desc=desc, unit="B", unit_scale=True, delay=0 if progress else 1.0
            )

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@contextmanager
def progress_bar(total: int, desc: str, progress: bool | None) -> Iterator[Progress]:
    """A :class:`Progress` over ``total`` bytes, closed on exit.

    ``progress``: None shows a bar for loads of ``PROGRESS_MIN_BYTES`` or more that last over a
    second, True always, False never.
    """
    bar = Progress(total, desc, progress)
    try:
        yield bar
    finally:
        bar.close()


def tensor_bytes(t: Tensor) -> memoryview:
    """The bytes of a tensor in little-endian order, as SafeTensors and our raw binary store them.

    Examples
    --------
    >>> bytes(tensor_bytes(torch.tensor([1], dtype=torch.int16)))
    b'\\x01\\x00'
    """
    if sys.byteorder != "little":
        raise WeightSaveError("writing weights on a big-endian machine is not supported")
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().data


def expand_layers(table: Mapping[str, str], n_layer: int) -> dict[str, str]:
    """A name table (file name → our name) with each ``{i}`` row written out once per layer.

    Examples
    --------
    >>> expand_layers({"wte": "tok_emb", "h.{i}.w": "blocks.{i}.w"}, 2)
    {'wte': 'tok_emb', 'h.0.w': 'blocks.0.w', 'h.1.w': 'blocks.1.w'}
    """
    out: dict[str, str] = {}
    for src, ours in table.items():
        if "{i}" in src:
            for i in range(n_layer):
                out[src.format(i=i)] = ours.format(i=i)
        else:
            out[src] = ours
    return out


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_writer(path: str | os.PathLike[str]) -> AbstractContextManager[IO[bytes]]:
    """Write ``path`` all or nothing (see :func:`workbench.formats.atomic.atomic_writer`).

    A temp file in the same folder, fsync, rename, fsync the folder: a crash at any point
    leaves either the old file or the new one, never a torn file. A descriptor path is
    written through its descriptor, without leaving the folder it holds.
    """
    return atomic.atomic_writer(path)


def write_atomic(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> None:
    with atomic_writer(path) as f:
        write(f)
