"""Raw binary weights: concatenated little-endian tensors plus a JSON manifest beside them.

``model.bin`` holds the tensors back to back in the model's parameter order, nothing else; the
manifest ``model.bin.json`` names them (shape, offset, byte count), gives the dtype (float32,
float16 or bfloat16), the model config, the tokenizer and the sha256 of the data file. The data
has no magic number of its own, so the manifest is what identifies the format: without it (or
``format="binary"`` plus the manifest), a raw file cannot be recognised.

Loading checks the manifest strictly (known fields, limits, contiguous offsets, a total equal
to the file size to the byte, the sha256) before it allocates anything for the data. Of the
pair, the file the caller names is opened as named and the other one beneath its folder, through
:mod:`workbench.formats.opener` (a manifest or data file that links out of the folder is refused).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from workbench.formats import opener
from workbench.formats._common import (
    MAX_DIMS,
    MAX_TENSORS,
    LoadedWeights,
    ModelState,
    WeightLoadError,
    WeightSaveError,
    atomic_writer,
    check_finite_fast,
    convert_dtype,
    progress_bar,
    read_json_file,
    resolve_dtype,
    tensor_bytes,
)
from workbench.models.config import ModelConfig
from workbench.tokenizers import Tokenizer, TokenizerError, tokenizer_from_json

FORMAT_TAG = "markovian-workbench/raw-binary"
VERSION = 1
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}
_FIELDS = {"format", "version", "dtype", "byte_order", "total_bytes", "sha256", "tensors"}
_OPTIONAL = {"config", "tokenizer", "metadata"}
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
_CHUNK = 16 * 1024 * 1024


def manifest_path(data_path: str | Path) -> Path:
    """Where the manifest of ``data_path`` lives: the same name plus ``.json``."""
    p = Path(data_path)
    return p.with_name(p.name + ".json")


def is_manifest(head: bytes) -> bool:
    """True when the first bytes of a file look like one of our raw-binary manifests."""
    return head.lstrip()[:1] == b"{" and FORMAT_TAG.encode() in head


def data_and_manifest(path: str | Path) -> tuple[Path, Path]:
    """``(data, manifest)`` for either the data file or its manifest."""
    p = Path(path)
    if p.name.endswith(".json"):
        try:
            with opener.open_file(p) as f:
                if is_manifest(f.read(4096)):
                    return p.with_name(p.name[: -len(".json")]), p
        except OSError:
            pass
    return p, manifest_path(p)


def companion_files(path: str | Path) -> list[Path]:
    """The other file of the pair :func:`read_binary` opens for ``path`` (data or manifest).

    Examples
    --------
    >>> companion_files("weights/model.bin")
    [PosixPath('weights/model.bin.json')]
    """
    data, manifest = data_and_manifest(path)
    return [manifest] if Path(path) == data else [data]


def _check_manifest(
    m: Any, where: str
) -> tuple[torch.dtype, list[tuple[str, tuple[int, ...], int]]]:
    if not isinstance(m, dict):
        raise WeightLoadError(f"{where}: the manifest must be a JSON object")
    if m.get("format") != FORMAT_TAG:
        raise WeightLoadError(f"{where}: not a raw-binary manifest (format must be {FORMAT_TAG!r})")
    missing = sorted(_FIELDS - set(m))
    unknown = sorted(set(m) - _FIELDS - _OPTIONAL)
    if missing or unknown:
        raise WeightLoadError(f"{where}: missing fields {missing}, unknown fields {unknown}")
    if m["version"] != VERSION:
        raise WeightLoadError(
            f"{where}: version {str(m['version'])[:20]} (this reader knows {VERSION})"
        )
    if m["byte_order"] != "little":
        raise WeightLoadError(f"{where}: byte_order must be 'little'")
    dtype = _DTYPES.get(m["dtype"]) if isinstance(m["dtype"], str) else None
    if dtype is None:
        raise WeightLoadError(
            f"{where}: dtype {str(m['dtype'])[:40]!r} is not one of {', '.join(_DTYPES)}"
        )
    sha = m["sha256"]
    if not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)):
        raise WeightLoadError(f"{where}: sha256 must be 64 lowercase hex digits")
    items = m["tensors"]
    if not isinstance(items, list) or len(items) > MAX_TENSORS:
        raise WeightLoadError(f"{where}: 'tensors' must be a list of at most {MAX_TENSORS} entries")
    out: list[tuple[str, tuple[int, ...], int]] = []
    seen: set[str] = set()
    pos = 0
    for i, t in enumerate(items):
        if not isinstance(t, dict) or set(t) != {"name", "shape", "offset", "nbytes"}:
            raise WeightLoadError(
                f"{where}: tensor #{i} must have exactly name, shape, offset, nbytes"
            )
        name, shape, offset, nbytes = t["name"], t["shape"], t["offset"], t["nbytes"]
        if not isinstance(name, str) or name in seen:
            raise WeightLoadError(f"{where}: tensor #{i} name is not a string or is a duplicate")
        seen.add(name)
        if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
            raise WeightLoadError(f"{where}: tensor {name!r} shape must be non-negative integers")
        if len(shape) > MAX_DIMS:
            raise WeightLoadError(
                f"{where}: tensor {name!r} has {len(shape)} dimensions (at most {MAX_DIMS})"
            )
        if type(offset) is not int or type(nbytes) is not int:
            raise WeightLoadError(f"{where}: tensor {name!r} offset and nbytes must be integers")
        if offset != pos:
            raise WeightLoadError(
                f"{where}: tensor {name!r} starts at {offset}, expected {pos}: tensors must be "
                "back to back in order (overlap or gap)"
            )
        need = math.prod(shape) * dtype.itemsize
        if nbytes != need:
            raise WeightLoadError(
                f"{where}: tensor {name!r} of shape {shape} needs {need} bytes, manifest says {nbytes}"
            )
        pos += nbytes
        out.append((name, tuple(shape), offset))
    if m["total_bytes"] != pos:
        raise WeightLoadError(
            f"{where}: total_bytes {str(m['total_bytes'])[:30]} differs from the tensors' {pos}"
        )
    return dtype, out


def read_binary(
    path: str | Path, *, allow_nonfinite: bool = False, progress: bool | None = None
) -> LoadedWeights:
    """Load raw binary weights (pass the data file or its manifest).

    ``metadata`` is the manifest without its tensor list.
    """
    data, mpath = data_and_manifest(path)
    # The file named is opened as named; the other one of the pair only beside it.
    given = Path(path)
    folder = given.parent
    m_beneath, d_beneath = (None, folder) if mpath == given else (folder, None)
    try:
        has_manifest = opener.is_file(mpath, beneath=m_beneath)
    except OSError as e:
        raise WeightLoadError(f"cannot read {mpath}: {e}") from None
    if not has_manifest:
        raise WeightLoadError(
            f"{data} has no manifest {mpath.name} beside it: raw binary weights carry no names "
            "or shapes of their own, so they cannot be loaded without it"
        )
    manifest = read_json_file(mpath, "raw-binary manifest", MAX_MANIFEST_BYTES, beneath=m_beneath)
    dtype, entries = _check_manifest(manifest, mpath.name)
    try:
        f = opener.open_file(data, beneath=d_beneath)
    except OSError as e:
        raise WeightLoadError(f"cannot read {data}: {e}") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        if size != manifest["total_bytes"]:
            raise WeightLoadError(
                f"{data} is {size} bytes but its manifest describes {manifest['total_bytes']}: "
                "the file is truncated, padded or belongs to another manifest"
            )
        buf = _read_hashed(f, data, size, manifest["sha256"], progress)
    tensors: dict[str, Tensor] = {}
    for name, shape, offset in entries:
        count = math.prod(shape)
        tensors[name] = (
            torch.frombuffer(buf, dtype=dtype, count=count, offset=offset).reshape(shape)
            if count
            else torch.empty(shape, dtype=dtype)
        )
    check_finite_fast(tensors, allow_nonfinite)
    meta = {k: v for k, v in manifest.items() if k != "tensors"}
    return LoadedWeights(tensors, meta, "binary", data)


def _read_hashed(
    f: io.BufferedReader, data: Path, size: int, sha256: str, progress: bool | None
) -> bytearray:
    """All ``size`` bytes of ``f``, refused unless they hash to ``sha256``."""
    buf = bytearray(size)
    digest = hashlib.sha256()
    with progress_bar(size, f"loading {data.name}", progress) as bar:
        view = memoryview(buf)
        pos = 0
        while pos < size:
            n = f.readinto(view[pos : pos + _CHUNK])
            if not n:
                raise WeightLoadError(f"{data} shrank while it was being read")
            digest.update(view[pos : pos + n])
            pos += n
            bar.update(n)
    if digest.hexdigest() != sha256:
        raise WeightLoadError(f"{data}: sha256 does not match the manifest: the data is corrupt")
    return buf


def binary_model_state(loaded: LoadedWeights) -> ModelState:
    """Our names are the file's names; the manifest carries config and tokenizer."""
    meta = loaded.metadata
    if not isinstance(meta.get("config"), dict):
        raise WeightLoadError(
            f"{loaded.path}: the manifest has no model config, so no model can be built from it"
        )
    try:
        cfg = ModelConfig.from_dict(meta["config"])
        raw_tok = meta.get("tokenizer")
        tok: Tokenizer | None = None
        if raw_tok is not None:
            tok = tokenizer_from_json(raw_tok if isinstance(raw_tok, str) else json.dumps(raw_tok))
    except (TypeError, ValueError, TokenizerError) as e:
        raise WeightLoadError(
            f"{loaded.path}: manifest config or tokenizer is invalid: {e}"
        ) from None
    return ModelState(cfg, loaded.tensors, tok, "binary", dict(meta))


def write_binary(
    path: str | Path,
    state_dict: Mapping[str, Tensor],
    config: ModelConfig | None,
    tokenizer: Tokenizer | None = None,
    dtype: str | torch.dtype | None = "float32",
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write ``path`` and its manifest ``path.json``, each atomically; return the manifest path.

    Examples
    --------
    >>> import tempfile, torch
    >>> folder = tempfile.mkdtemp()
    >>> m = write_binary(f"{folder}/w.bin", {"a": torch.ones(2)}, None, dtype="bfloat16")
    >>> read_binary(f"{folder}/w.bin").tensors["a"]
    tensor([1., 1.], dtype=torch.bfloat16)
    """
    target = resolve_dtype(dtype) or torch.float32
    entries: list[dict[str, Any]] = []
    digest = hashlib.sha256()
    pos = 0
    with atomic_writer(path) as f:
        for name, t in state_dict.items():
            if not t.is_floating_point():
                raise WeightSaveError(f"raw binary holds float weights only; {name!r} is {t.dtype}")
            try:
                t = convert_dtype(t.detach(), target, name)
            except ValueError as e:
                raise WeightSaveError(str(e)) from None
            raw = tensor_bytes(t)
            f.write(raw)
            digest.update(raw)
            entries.append(
                {"name": name, "shape": list(t.shape), "offset": pos, "nbytes": raw.nbytes}
            )
            pos += raw.nbytes
    manifest: dict[str, Any] = {
        "format": FORMAT_TAG,
        "version": VERSION,
        "dtype": _DTYPE_NAMES[target],
        "byte_order": "little",
        "total_bytes": pos,
        "sha256": digest.hexdigest(),
        "config": config.to_dict() if config is not None else None,
        "tokenizer": tokenizer.to_json() if tokenizer is not None else None,
        "metadata": dict(metadata or {}),
        "tensors": entries,
    }
    mpath = manifest_path(path)
    with atomic_writer(mpath) as f:
        f.write(json.dumps(manifest, indent=1).encode())
    return mpath
