"""SafeTensors: a bounded header check, memory-mapped loading, our own streaming writer.

The boundary: this module reads and writes SafeTensors files and byte strings (single files,
Hugging Face shard folders) and lists the files a read opens besides the one it is given
(:func:`companion_files`). Files are opened through :mod:`workbench.formats.opener`: a folder's
index and shards beneath that folder's descriptor (a shard that links out of the folder is
refused, whoever calls), a descriptor path beneath its descriptor. The Hugging Face
``config.json`` / ``tokenizer.json`` beside the weights are :mod:`workbench.formats.hf`'s;
renaming Hugging Face parameters is :mod:`workbench.formats.hf_names`'; which format a path
holds is :mod:`workbench.formats.detection`'s.

Every header is validated here before ``torch.frombuffer`` sees the data (a private memory map
of the very descriptor that was opened and checked): header length within limits and within the
file, JSON that parses, known dtypes, at most ``MAX_DIMS`` dimensions, byte ranges that match
``numel * itemsize``, sorted and contiguous inside the data section. Whatever still goes wrong
becomes ``WeightLoadError``.
"""

from __future__ import annotations

import io
import json
import math
import mmap
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

import torch
from torch import Tensor

from workbench.formats import opener
from workbench.formats._common import (
    MAX_DIMS,
    MAX_HEADER_BYTES,
    MAX_TENSORS,
    LoadedWeights,
    WeightLoadError,
    WeightSaveError,
    atomic_writer,
    check_finite_fast,
    parse_json,
    progress_bar,
    read_json_file,
    tensor_bytes,
)

SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_DTYPE_NAMES = {v: k for k, v in SAFETENSORS_DTYPES.items()}
MAX_SHARDS = 10_000
# What a Hugging Face folder holds its weights in: one file, or shards listed by an index.
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
INDEX_SUFFIX = ".index.json"  # any file so named is read as a shard index

META_CONFIG = "markovian.config"
META_TOKENIZER = "markovian.tokenizer"
META_NAMES = "markovian.names"  # "workbench" (ours) or "hf" (Hugging Face layout)


class Writable(Protocol):
    def write(self, data: bytes | memoryview, /) -> int: ...


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a SafeTensors header; ``begin``/``end`` are relative to the data section."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class SafetensorsHeader:
    entries: list[TensorEntry]  # sorted by byte offset
    metadata: dict[str, str]
    data_start: int  # offset of the data section from the start of the blob


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _entry(name: str, info: Any, where: str) -> TensorEntry:
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise WeightLoadError(
            f"{where}: tensor {name!r} must be an object with exactly dtype, shape and "
            f"data_offsets, got {str(info)[:100]}"
        )
    dtype = SAFETENSORS_DTYPES.get(info["dtype"]) if isinstance(info["dtype"], str) else None
    if dtype is None:
        raise WeightLoadError(
            f"{where}: tensor {name!r} has unsupported dtype {str(info['dtype'])[:40]!r}; "
            f"supported: {', '.join(SAFETENSORS_DTYPES)}"
        )
    shape = info["shape"]
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise WeightLoadError(
            f"{where}: tensor {name!r} shape must be a list of non-negative integers"
        )
    if len(shape) > MAX_DIMS:
        raise WeightLoadError(
            f"{where}: tensor {name!r} has {len(shape)} dimensions (at most {MAX_DIMS})"
        )
    offsets = info["data_offsets"]
    if (
        not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets))
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise WeightLoadError(
            f"{where}: tensor {name!r} data_offsets must be [begin, end] with 0 <= begin <= end"
        )
    nbytes = math.prod(shape) * dtype.itemsize
    if offsets[1] - offsets[0] != nbytes:
        raise WeightLoadError(
            f"{where}: tensor {name!r} of shape {shape} and dtype {info['dtype']} needs "
            f"{nbytes} bytes but data_offsets span {offsets[1] - offsets[0]}"
        )
    return TensorEntry(name, dtype, tuple(shape), offsets[0], offsets[1])


def read_header(f: IO[bytes], size: int, where: str) -> SafetensorsHeader:
    """Validate the SafeTensors header of the ``size``-byte blob that starts at ``f``'s position.

    Examples
    --------
    >>> import io, torch
    >>> blob = safetensors_bytes({"w": torch.zeros(2, 3)}, {"k": "v"})
    >>> h = read_header(io.BytesIO(blob), len(blob), "example")
    >>> [(e.name, e.shape, e.end) for e in h.entries], h.metadata
    ([('w', (2, 3), 24)], {'k': 'v'})
    """
    if size < 8:
        raise WeightLoadError(f"{where} is too short for a SafeTensors header ({size} bytes)")
    (n,) = struct.unpack("<Q", f.read(8))
    if n < 2 or n > MAX_HEADER_BYTES:
        raise WeightLoadError(
            f"{where}: SafeTensors header length {n} is outside [2, {MAX_HEADER_BYTES}]"
        )
    if 8 + n > size:
        raise WeightLoadError(
            f"{where}: SafeTensors header length {n} runs past the end of the data "
            f"({size} bytes): the file is truncated or not SafeTensors"
        )
    raw = f.read(n)
    if len(raw) != n:
        raise WeightLoadError(f"{where}: file is truncated inside the SafeTensors header")
    if raw[:1] != b"{":
        raise WeightLoadError(f"{where}: SafeTensors header does not start with '{{'")
    header = parse_json(raw, f"{where}: SafeTensors header")
    if not isinstance(header, dict):
        raise WeightLoadError(f"{where}: SafeTensors header must be a JSON object")
    if len(header) > MAX_TENSORS + 1:
        raise WeightLoadError(f"{where}: {len(header)} tensors exceed the limit of {MAX_TENSORS}")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise WeightLoadError(f"{where}: __metadata__ must map strings to strings")
    entries = sorted(
        (_entry(name, info, where) for name, info in header.items()),
        key=lambda e: (e.begin, e.end),
    )
    data_size = size - 8 - n
    pos = 0
    prev = "the start of the data"
    for e in entries:
        if e.end > data_size:
            raise WeightLoadError(
                f"{where}: tensor {e.name!r} byte range [{e.begin}, {e.end}) runs past the end "
                f"of the data section ({data_size} bytes): the file is truncated"
            )
        if e.begin < pos:
            raise WeightLoadError(f"{where}: tensors {prev!r} and {e.name!r} overlap")
        if e.begin > pos:
            raise WeightLoadError(
                f"{where}: {e.begin - pos} unused bytes between {prev!r} and {e.name!r}"
            )
        pos, prev = e.end, e.name
    if pos != data_size:
        raise WeightLoadError(
            f"{where}: {data_size - pos} bytes after the last tensor are not described by the header"
        )
    return SafetensorsHeader(entries, metadata, 8 + n)


def tensors_from_buffer(
    buf: bytearray | memoryview | mmap.mmap, header: SafetensorsHeader
) -> dict[str, Tensor]:
    """Tensors that view ``buf`` (no copy) at the ranges a validated header gives."""
    out: dict[str, Tensor] = {}
    for e in header.entries:
        count = math.prod(e.shape)
        if count == 0:
            out[e.name] = torch.empty(e.shape, dtype=e.dtype)
            continue
        t = torch.frombuffer(buf, dtype=e.dtype, count=count, offset=header.data_start + e.begin)
        out[e.name] = t.reshape(e.shape)
    return out


def _load_file(
    path: Path, *, beneath: Path | None = None
) -> tuple[dict[str, Tensor], dict[str, str], int]:
    """Tensors, metadata and size of one file, viewing a private memory map of its descriptor.

    The descriptor opened and checked is the one mapped; pages are read when a tensor is first
    touched, not here. ``beneath``: the folder a shard must stay inside.
    """
    try:
        with opener.open_file(path, beneath=beneath) as f:
            size = os.fstat(f.fileno()).st_size
            header = read_header(f, size, str(path))
            # ACCESS_COPY: the tensors are writable views, and writing one never writes the file.
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    except OSError as e:
        raise WeightLoadError(f"cannot read {path}: {e}") from None
    except ValueError as e:  # mmap of a file that shrank to nothing meanwhile
        raise WeightLoadError(f"cannot map {path}: {e}") from None
    return tensors_from_buffer(buf, header), header.metadata, size


def read_safetensors(
    path: str | Path, *, allow_nonfinite: bool = False, progress: bool | None = None
) -> LoadedWeights:
    """Load a SafeTensors file, or a Hugging Face folder (single file or sharded with an index).

    Tensors keep the file's names; ``metadata`` holds the header's ``__metadata__`` (for shards,
    the union, plus ``"shards"``).
    """
    path = Path(path)
    try:
        if opener.is_dir(path):
            index = path / INDEX_FILE
            if opener.is_file(index, beneath=path):
                return _read_sharded(
                    index, allow_nonfinite=allow_nonfinite, progress=progress, folder=path
                )
            single = path / SINGLE_FILE
            if not opener.is_file(single, beneath=path):
                raise WeightLoadError(f"{path} is a folder without {SINGLE_FILE} or {INDEX_FILE}")
            return _read_single(single, allow_nonfinite, progress, beneath=path)
    except OSError as e:
        raise WeightLoadError(f"cannot read {path}: {e}") from None
    if path.name.endswith(INDEX_SUFFIX):
        return _read_sharded(path, allow_nonfinite=allow_nonfinite, progress=progress)
    return _read_single(path, allow_nonfinite, progress)


def _read_single(
    path: Path, allow_nonfinite: bool, progress: bool | None, beneath: Path | None = None
) -> LoadedWeights:
    tensors, metadata, size = _load_file(path, beneath=beneath)
    with progress_bar(size, f"loading {path.name}", progress) as bar:
        check_finite_fast(tensors, allow_nonfinite)  # touches every page: the actual read
        bar.update(size)
    return LoadedWeights(tensors, dict(metadata), "safetensors", path)


def companion_files(path: Path) -> list[Path]:
    """The files :func:`read_safetensors` may open for ``path`` besides ``path`` itself.

    A folder: its index, its single file and the shards the index lists; a shard index: its
    shards; a single file: nothing. Listed whether or not they exist; shards only when the
    index is a regular file the reader would accept (it refuses a bad index before it opens
    any shard).

    Examples
    --------
    >>> [p.name for p in companion_files(Path("no-such-folder") / INDEX_FILE)]
    []
    """
    if opener.is_dir(path):
        index = path / INDEX_FILE
        return [index, path / SINGLE_FILE, *_shard_files(index, beneath=path)]
    if path.name.endswith(INDEX_SUFFIX):
        return _shard_files(path)
    return []


def _shard_files(index_path: Path, beneath: Path | None = None) -> list[Path]:
    try:
        if not opener.is_file(index_path, beneath=beneath):
            return []
        index = read_json_file(index_path, "shard index", beneath=beneath)
        shards = _shards(index, index_path)
    except (WeightLoadError, OSError):
        return []
    return [index_path.parent / shard for shard in sorted(shards)]


def _shards(index: Any, index_path: Path) -> dict[str, set[str]]:
    """Shard file name → the tensor names the index puts in it, validated."""
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise WeightLoadError(f"{index_path}: 'weight_map' must map tensor names to shard files")
    shards: dict[str, set[str]] = {}
    for name, shard in weight_map.items():
        shards.setdefault(shard, set()).add(name)
    if len(shards) > MAX_SHARDS:
        raise WeightLoadError(f"{index_path}: {len(shards)} shards exceed the limit {MAX_SHARDS}")
    for shard in shards:
        # Shard names are plain file names in the same folder: never a path out of it.
        if Path(shard).name != shard or shard in ("", ".", ".."):
            raise WeightLoadError(f"{index_path}: shard {shard!r} is not a plain file name")
    return shards


def _read_sharded(
    index_path: Path,
    *,
    allow_nonfinite: bool,
    progress: bool | None,
    folder: Path | None = None,
) -> LoadedWeights:
    """Every shard an index lists, each opened beneath the index's folder.

    ``folder``: the folder the caller named, when it named a folder rather than the index (then
    the index is confined to it too).
    """
    index = read_json_file(index_path, "shard index", beneath=folder)
    shards = _shards(index, index_path)
    beside = index_path.parent  # shards are plain names in the index's folder: never a way out
    tensors: dict[str, Tensor] = {}
    metadata: dict[str, str] = {}
    total = 0
    for shard in shards:
        try:
            info = opener.stat(beside / shard, beneath=beside)
        except FileNotFoundError:
            raise WeightLoadError(f"{index_path}: shard file {shard} is missing") from None
        except OSError as e:
            raise WeightLoadError(f"{index_path}: shard file {shard}: {e}") from None
        total += info.st_size
    with progress_bar(total, f"loading {beside.name}", progress) as bar:
        for shard, names in sorted(shards.items()):
            part, meta, size = _load_file(beside / shard, beneath=beside)
            bar.update(size)
            if set(part) != names:
                extra = sorted(set(part) - names)[:5]
                missing = sorted(names - set(part))[:5]
                raise WeightLoadError(
                    f"{shard} does not hold what the index says: missing {missing}, "
                    f"not in the index {extra}"
                )
            tensors.update(part)
            metadata.update(meta)
        check_finite_fast(tensors, allow_nonfinite)
    index_meta = index.get("metadata")
    if isinstance(index_meta, dict):
        metadata.update({k: str(v) for k, v in index_meta.items()})
    metadata["shards"] = json.dumps(sorted(shards))
    return LoadedWeights(tensors, metadata, "safetensors", index_path)


# ---------------------------------------------------------------------------- writing


def _header_bytes(tensors: Mapping[str, Tensor], metadata: Mapping[str, str] | None) -> bytes:
    header: dict[str, Any] = {}
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise WeightSaveError("SafeTensors metadata must map strings to strings")
        header["__metadata__"] = dict(metadata)
    pos = 0
    for name, t in tensors.items():
        if t.dtype not in _DTYPE_NAMES:
            raise WeightSaveError(f"tensor {name!r} has dtype {t.dtype}, which SafeTensors lacks")
        nbytes = t.numel() * t.element_size()
        header[name] = {
            "dtype": _DTYPE_NAMES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [pos, pos + nbytes],
        }
        pos += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # pad so the data section starts 8-byte aligned
    return struct.pack("<Q", len(raw)) + raw


def write_safetensors_to(
    f: Writable, tensors: Mapping[str, Tensor], metadata: Mapping[str, str] | None = None
) -> int:
    """Stream a SafeTensors blob into ``f`` one tensor at a time; return its length."""
    head = _header_bytes(tensors, metadata)
    f.write(head)
    n = len(head)
    for t in tensors.values():
        if t.numel():
            n += f.write(tensor_bytes(t))
    return n


def safetensors_bytes(
    tensors: Mapping[str, Tensor], metadata: Mapping[str, str] | None = None
) -> bytes:
    """A SafeTensors blob in memory (for tests and checkpoint parts)."""
    buf = io.BytesIO()
    write_safetensors_to(buf, tensors, metadata)
    return buf.getvalue()


def write_safetensors(
    path: str | Path, tensors: Mapping[str, Tensor], metadata: Mapping[str, str] | None = None
) -> None:
    """Write a SafeTensors file atomically (temp file, fsync, rename, fsync the folder)."""
    with atomic_writer(path) as f:
        write_safetensors_to(f, tensors, metadata)
