"""A bounded GGUF header parser: magic, version, metadata, tensor infos — validated before use.

``gguf.GGUFReader`` trusts the counts and lengths a file declares (a crafted file makes it
allocate without bound or hang) and spends seconds building per-token field objects. This
parser checks every count against the bytes that remain before it allocates, so memory and time
stay proportional to the file's size, and reads the 49k-token vocabulary of a real model in tens
of milliseconds. It maps the file (copy-on-write, so tensors built on the mapping are writable
without touching the file) and returns the mapping with the header; it never decodes tensors.

Layout (little-endian; https://github.com/ggml-org/ggml/blob/master/docs/gguf.md)::

    "GGUF" u32 version, u64 n_tensors, u64 n_kv
    n_kv × (string key, u32 value_type, value)         string = u64 length + UTF-8 bytes
    n_tensors × (string name, u32 n_dims, n_dims × u64 ne, u32 ggml_type, u64 offset)
    padding to general.alignment (default 32), then tensor data at the given offsets
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from workbench.formats._common import (
    MAX_ARRAY_ITEMS,
    MAX_HEADER_BYTES,
    MAX_NESTING,
    MAX_STRING_BYTES,
    MAX_TENSORS,
    WeightLoadError,
)
from workbench.formats.gguf_quants import GGML_TYPES

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_KV = 1_000_000
MAX_KEY_BYTES = 65_535
MAX_TENSOR_NAME_BYTES = 256
MAX_ELEMENTS = 2**62
# ggml's GGML_MAX_DIMS: llama.cpp's gguf reader refuses a tensor with more dimensions.
GGUF_MAX_DIMS = 4

# GGUF value types.
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = (
    range(13)
)
VALUE_TYPE_NAMES = [
    "UINT8",
    "INT8",
    "UINT16",
    "INT16",
    "UINT32",
    "INT32",
    "FLOAT32",
    "BOOL",
    "STRING",
    "ARRAY",
    "UINT64",
    "INT64",
    "FLOAT64",
]
# Scalar types: struct format and the numpy dtype used for arrays of them.
_SCALARS: dict[int, tuple[str, str]] = {
    UINT8: ("<B", "<u1"),
    INT8: ("<b", "<i1"),
    UINT16: ("<H", "<u2"),
    INT16: ("<h", "<i2"),
    UINT32: ("<I", "<u4"),
    INT32: ("<i", "<i4"),
    FLOAT32: ("<f", "<f4"),
    BOOL: ("<B", "<u1"),
    UINT64: ("<Q", "<u8"),
    INT64: ("<q", "<i8"),
    FLOAT64: ("<d", "<f8"),
}
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


def is_gguf(head: bytes) -> bool:
    """True when the first bytes of a file are GGUF's magic.

    Examples
    --------
    >>> is_gguf(b"GGUF\\x03\\x00\\x00\\x00"), is_gguf(b"PK\\x03\\x04")
    (True, False)
    """
    return head[:4] == GGUF_MAGIC


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as the header declares it."""

    name: str
    shape: tuple[int, ...]  # torch order: outermost first (GGUF's ne reversed)
    ggml_type: int
    offset: int  # absolute byte offset in the file
    nbytes: int

    @property
    def type_name(self) -> str:
        return GGML_TYPES[self.ggml_type][0]


@dataclass
class GGUFHeader:
    """Everything before the tensor data, validated."""

    version: int
    metadata: dict[str, Any]
    value_types: dict[str, tuple[int, ...]]  # key → (type,) or (ARRAY, item type, ...)
    tensors: list[TensorInfo]
    alignment: int
    data_start: int
    file_size: int


class _Cursor:
    """Reads little-endian values from a buffer, refusing to run past its end."""

    def __init__(self, buf: memoryview, size: int) -> None:
        self.buf = buf
        self.size = size
        self.pos = 0

    def need(self, n: int, what: str) -> None:
        if n > self.size - self.pos:
            raise WeightLoadError(
                f"GGUF file is truncated: {what} needs {n} bytes at offset {self.pos} but only "
                f"{self.size - self.pos} remain; the file is incomplete or corrupt"
            )

    def u32(self, what: str) -> int:
        self.need(4, what)
        (v,) = _U32.unpack_from(self.buf, self.pos)
        self.pos += 4
        return int(v)

    def u64(self, what: str) -> int:
        self.need(8, what)
        (v,) = _U64.unpack_from(self.buf, self.pos)
        self.pos += 8
        return int(v)

    def string(self, what: str, limit: int = MAX_STRING_BYTES) -> str:
        n = self.u64(f"length of {what}")
        if n > limit:
            raise WeightLoadError(f"{what} claims {n} bytes, over the limit of {limit}")
        self.need(n, what)
        try:
            s = str(self.buf[self.pos : self.pos + n], "utf-8")
        except UnicodeDecodeError as e:
            raise WeightLoadError(f"{what} at offset {self.pos} is not valid UTF-8: {e}") from None
        self.pos += n
        return s

    def scalar(self, vtype: int, what: str) -> Any:
        fmt, _ = _SCALARS[vtype]
        size = struct.calcsize(fmt)
        self.need(size, what)
        (v,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        if vtype == BOOL:
            return bool(v)
        return v

    def string_array(self, n: int, what: str) -> list[str]:
        # The vocabulary is ~49k strings: a tight loop with local names, no per-item method calls.
        buf, size, pos = self.buf, self.size, self.pos
        unpack = _U64.unpack_from
        out: list[str] = []
        append = out.append
        try:
            for i in range(n):
                if pos + 8 > size:
                    self.pos = pos
                    self.need(8, f"length of {what}[{i}]")
                (ln,) = unpack(buf, pos)
                pos += 8
                if ln > MAX_STRING_BYTES or ln > size - pos:
                    self.pos = pos
                    if ln > MAX_STRING_BYTES:
                        raise WeightLoadError(
                            f"{what}[{i}] claims {ln} bytes, over the limit of {MAX_STRING_BYTES}"
                        )
                    self.need(ln, f"{what}[{i}]")
                append(str(buf[pos : pos + ln], "utf-8"))
                pos += ln
        except UnicodeDecodeError as e:
            raise WeightLoadError(f"{what} item {len(out)} is not valid UTF-8: {e}") from None
        self.pos = pos
        return out

    def value(self, vtype: int, what: str, depth: int) -> tuple[Any, tuple[int, ...]]:
        if vtype in _SCALARS:
            return self.scalar(vtype, what), (vtype,)
        if vtype == STRING:
            return self.string(what), (vtype,)
        if vtype != ARRAY:
            raise WeightLoadError(f"{what} has unknown value type {vtype}; GGUF defines 0..12")
        if depth >= MAX_NESTING:
            raise WeightLoadError(f"{what} nests arrays deeper than {MAX_NESTING} levels")
        itype = self.u32(f"item type of {what}")
        n = self.u64(f"length of {what}")
        if n > MAX_ARRAY_ITEMS:
            raise WeightLoadError(f"{what} claims {n} items, over the limit of {MAX_ARRAY_ITEMS}")
        # Each item takes at least this many bytes, so a count the file cannot hold fails here,
        # before anything is allocated for it.
        if itype in _SCALARS:
            min_item = struct.calcsize(_SCALARS[itype][0])
        elif itype == STRING:
            min_item = 8
        elif itype == ARRAY:
            min_item = 12
        else:
            raise WeightLoadError(f"{what} has unknown array item type {itype}; GGUF defines 0..12")
        self.need(n * min_item, f"{n} items of {what}")
        if itype in _SCALARS:
            arr = np.frombuffer(self.buf, dtype=_SCALARS[itype][1], count=n, offset=self.pos)
            self.pos += n * min_item
            items: list[Any] = arr.astype(bool).tolist() if itype == BOOL else arr.tolist()
            return items, (ARRAY, itype)
        if itype == STRING:
            return self.string_array(n, what), (ARRAY, STRING)
        nested: list[Any] = []
        sub: tuple[int, ...] = (ARRAY, ARRAY)
        for i in range(n):
            v, t = self.value(ARRAY, f"{what}[{i}]", depth + 1)
            nested.append(v)
            sub = (ARRAY, *t)
        return nested, sub


def _shape_and_size(name: str, ne: list[int], ggml_type: int) -> tuple[tuple[int, ...], int]:
    tname, block, type_size = GGML_TYPES[ggml_type]
    for d in ne:
        if d <= 0:
            raise WeightLoadError(
                f"tensor {name!r} has a dimension of {d}; every dimension must be > 0"
            )
    count = 1
    for d in ne:
        count *= d
        if count > MAX_ELEMENTS:
            raise WeightLoadError(
                f"tensor {name!r} with dims {ne} overflows: more than 2^62 elements"
            )
    if ne[0] % block:
        raise WeightLoadError(
            f"tensor {name!r} of type {tname} has rows of {ne[0]} elements, not a multiple of its "
            f"block size {block}"
        )
    return tuple(reversed(ne)), count // block * type_size


def _check_version(cur: _Cursor) -> int:
    version = cur.u32("version")
    if version in SUPPORTED_VERSIONS:
        return version
    swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
    if swapped in (1, 2, 3):
        raise WeightLoadError(
            f"GGUF file is big-endian (version {swapped} byte-swapped); only little-endian GGUF "
            "is supported: convert it with a little-endian writer"
        )
    if version == 1:
        raise WeightLoadError(
            "GGUF version 1 is not supported (32-bit counts); re-convert the model"
        )
    raise WeightLoadError(
        f"unsupported GGUF version {version}; expected one of {SUPPORTED_VERSIONS}"
    )


def parse_header(buf: memoryview, size: int) -> GGUFHeader:
    """Parse and validate the header of the GGUF bytes ``buf`` (``size`` long)."""
    cur = _Cursor(buf, size)
    cur.need(4, "magic")
    magic = bytes(buf[0:4])
    if magic != GGUF_MAGIC:
        raise WeightLoadError(f"not a GGUF file: magic is {magic!r}, expected b'GGUF'")
    cur.pos = 4
    version = _check_version(cur)
    n_tensors = cur.u64("tensor count")
    n_kv = cur.u64("metadata count")
    if n_tensors > MAX_TENSORS:
        raise WeightLoadError(f"GGUF declares {n_tensors} tensors, over the limit of {MAX_TENSORS}")
    if n_kv > MAX_KV:
        raise WeightLoadError(f"GGUF declares {n_kv} metadata entries, over the limit of {MAX_KV}")
    # Smallest possible entry: a KV is key length + type + one byte; a tensor info 32 bytes.
    cur.need(n_kv * 13 + n_tensors * 32, f"{n_kv} metadata entries and {n_tensors} tensor infos")

    metadata: dict[str, Any] = {}
    vtypes: dict[str, tuple[int, ...]] = {}
    for i in range(n_kv):
        key = cur.string(f"metadata key #{i}", MAX_KEY_BYTES)
        if key in metadata:
            raise WeightLoadError(f"metadata key {key!r} appears twice")
        vtype = cur.u32(f"value type of {key!r}")
        metadata[key], vtypes[key] = cur.value(vtype, f"metadata {key!r}", 0)

    alignment = DEFAULT_ALIGNMENT
    if "general.alignment" in metadata:
        alignment = metadata["general.alignment"]
        if vtypes["general.alignment"] != (UINT32,):
            raise WeightLoadError("general.alignment must be a UINT32")
        if alignment <= 0 or alignment & (alignment - 1):
            raise WeightLoadError(f"general.alignment is {alignment}; it must be a power of two")

    raw: list[tuple[str, tuple[int, ...], int, int, int]] = []
    names: set[str] = set()
    for i in range(n_tensors):
        name = cur.string(f"name of tensor #{i}", MAX_TENSOR_NAME_BYTES)
        if name in names:
            raise WeightLoadError(f"tensor name {name!r} appears twice")
        names.add(name)
        n_dims = cur.u32(f"n_dims of tensor {name!r}")
        if not 1 <= n_dims <= GGUF_MAX_DIMS:
            raise WeightLoadError(
                f"tensor {name!r} has n_dims {n_dims}; GGUF tensors have 1..{GGUF_MAX_DIMS} "
                "dimensions (ggml's GGML_MAX_DIMS, which llama.cpp enforces): reshape it to at "
                "most 4 dimensions before writing the file"
            )
        ne = [cur.u64(f"dim {j} of tensor {name!r}") for j in range(n_dims)]
        ggml_type = cur.u32(f"type of tensor {name!r}")
        if ggml_type not in GGML_TYPES:
            raise WeightLoadError(f"tensor {name!r} has unknown ggml type id {ggml_type}")
        offset = cur.u64(f"offset of tensor {name!r}")
        shape, nbytes = _shape_and_size(name, ne, ggml_type)
        if offset % alignment:
            raise WeightLoadError(
                f"tensor {name!r} offset {offset} is not a multiple of the alignment {alignment}"
            )
        raw.append((name, shape, ggml_type, offset, nbytes))
    if cur.pos > MAX_HEADER_BYTES:
        raise WeightLoadError(
            f"GGUF header is {cur.pos} bytes, over the limit of {MAX_HEADER_BYTES}"
        )

    data_start = -(-cur.pos // alignment) * alignment
    tensors: list[TensorInfo] = []
    prev_offset, prev_end, prev_name = 0, 0, ""
    for name, shape, ggml_type, offset, nbytes in raw:
        end = offset + nbytes
        if data_start + end > size:
            raise WeightLoadError(
                f"tensor {name!r} data [{offset}, {end}) runs past the end of the file "
                f"({size - data_start} data bytes); the file is truncated or corrupt"
            )
        if offset < prev_offset:
            raise WeightLoadError(
                f"tensor {name!r} at offset {offset} comes after {prev_name!r} at a higher offset; "
                "tensor data must be sorted by offset"
            )
        if offset < prev_end:
            raise WeightLoadError(
                f"tensor {name!r} data [{offset}, {end}) overlaps {prev_name!r} (ends at {prev_end})"
            )
        tensors.append(TensorInfo(name, shape, ggml_type, data_start + offset, nbytes))
        prev_offset, prev_end, prev_name = offset, end, name
    return GGUFHeader(version, metadata, vtypes, tensors, alignment, data_start, size)


def open_gguf(path: str | os.PathLike[str]) -> tuple[GGUFHeader, mmap.mmap]:
    """Map ``path`` and parse its header; the mapping backs the tensors the caller builds."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 24:
                head = f.read(4)
                if head != GGUF_MAGIC:
                    raise WeightLoadError(f"not a GGUF file: magic is {head!r}, expected b'GGUF'")
                raise WeightLoadError(f"GGUF file is truncated: {size} bytes, a header needs 24")
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    except OSError as e:
        raise WeightLoadError(f"cannot read {p}: {e}") from e
    header = parse_header(memoryview(mm), size)
    return header, mm
