"""Rewrite the metadata of a GGUF file, keeping its tensors: for crafting files with bad keys.

The tensor infos are re-serialized from the parsed header and the data section is copied as it
is, so only the key-value section changes. Values are ``(GGUF type name, value)`` as
``workbench.formats.gguf``'s writer takes them (``"UINT32"``, ``"ARRAY:STRING"``, ...); a
value of None removes the key.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from workbench.formats.gguf import _pack_value, _str, _vt
from workbench.formats.gguf_reader import DEFAULT_ALIGNMENT, GGUF_MAGIC, VALUE_TYPE_NAMES, open_gguf


def _type_name(types: tuple[int, ...]) -> str:
    return ":".join(VALUE_TYPE_NAMES[t] for t in types)


def rewrite_metadata(src: Path, dst: Path, changes: Mapping[str, tuple[str, Any] | None]) -> None:
    """Copy ``src`` to ``dst`` with ``changes`` applied to its metadata."""
    header, buf = open_gguf(src)
    kv: dict[str, tuple[str, Any]] = {
        k: (_type_name(header.value_types[k]), v) for k, v in header.metadata.items()
    }
    for key, change in changes.items():
        if change is None:
            kv.pop(key, None)
        else:
            kv[key] = change
    alignment = kv.get("general.alignment", ("UINT32", DEFAULT_ALIGNMENT))[1]
    out = bytearray(GGUF_MAGIC + struct.pack("<IQQ", 3, len(header.tensors), len(kv)))
    for key, (vtype, value) in kv.items():
        out += _str(key) + _vt(vtype.split(":")[0]) + _pack_value(vtype, value)
    for info in header.tensors:
        out += _str(info.name) + struct.pack("<I", len(info.shape))
        out += b"".join(struct.pack("<Q", d) for d in reversed(info.shape))
        out += struct.pack("<IQ", info.ggml_type, info.offset - header.data_start)
    out += bytes(-len(out) % alignment)
    out += bytes(buf[header.data_start :])
    dst.write_bytes(bytes(out))
