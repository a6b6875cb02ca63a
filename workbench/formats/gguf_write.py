"""GGUF writing: a model in llama.cpp's layout, atomically.

``write_gguf`` writes F32, F16, BF16 or Q8_0 with the tokenizer, so llama.cpp,
``gguf.GGUFReader`` and our reader all read it. We write the bytes ourselves (the format is a
few dozen lines) so the write goes through ``atomic_writer``; with ``q8_0`` or the half types,
1-D tensors (norms, biases) and rows not divisible by 32 stay F32, as llama.cpp's converter
keeps 1-D tensors. Each tensor is encoded just before it is written. Phi-3's q/k/v and
gate/up are concatenated into llama.cpp's fused tensors, and Llama 3's RoPE divisors are
written as ``rope_freqs.weight`` (:mod:`gguf_names`, :mod:`gguf_config`).
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Callable, Mapping
from functools import lru_cache, partial
from typing import IO, Any

import numpy as np
import torch
from torch import Tensor

from workbench.formats._common import F16_MAX, WeightSaveError, atomic_writer
from workbench.formats.gguf_names import (
    carried_metadata,
    config_to_metadata,
    derived_tensors,
    fused_gguf_map,
    gguf_name_map,
    permute_qk,
    permuted_heads,
    tokenizer_to_metadata,
)
from workbench.formats.gguf_quants import TYPE_IDS, quantize_q8_0, tensor_nbytes
from workbench.formats.gguf_reader import DEFAULT_ALIGNMENT, GGUF_MAGIC, VALUE_TYPE_NAMES
from workbench.models.config import ModelConfig
from workbench.models.transformer import Transformer
from workbench.tokenizers import Tokenizer

__all__ = ["GGUF_DTYPES", "expected_shapes", "write_gguf"]

GGUF_DTYPES = ("float32", "float16", "bfloat16", "q8_0")
_FILE_TYPES = {"float32": 0, "float16": 1, "q8_0": 7, "bfloat16": 32}  # llama.cpp's LlamaFileType


def _same(t: Tensor) -> Tensor:
    return t


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Our parameter names and shapes for ``cfg``, in the model's order."""
    return dict(_shapes(cfg))


@lru_cache(maxsize=8)
def _shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    # Cached: building even a meta model costs ~20 ms, every GGUF load and save asks again.
    with torch.device("meta"):
        model = Transformer(cfg, init=False)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


_PACK = {
    "UINT8": "<B", "INT8": "<b", "UINT16": "<H", "INT16": "<h", "UINT32": "<I", "INT32": "<i",
    "FLOAT32": "<f", "BOOL": "<?", "UINT64": "<Q", "INT64": "<q", "FLOAT64": "<d",
}  # fmt: skip
_NP = {
    "UINT8": "<u1", "INT8": "<i1", "UINT16": "<u2", "INT16": "<i2", "UINT32": "<u4",
    "INT32": "<i4", "FLOAT32": "<f4", "BOOL": "<u1", "UINT64": "<u8", "INT64": "<i8",
    "FLOAT64": "<f8",
}  # fmt: skip


def _vt(name: str) -> bytes:
    return struct.pack("<I", VALUE_TYPE_NAMES.index(name))


def _str(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def _infer_type(v: Any) -> str:
    if isinstance(v, bool):
        return "BOOL"
    if isinstance(v, int):
        return "INT64" if v < 2**63 else "UINT64"
    if isinstance(v, float):
        return "FLOAT64"
    if isinstance(v, str):
        return "STRING"
    if isinstance(v, list | tuple):
        items = {_infer_type(x) for x in v} or {"INT32"}
        if len(items) != 1:
            raise WeightSaveError(f"GGUF arrays hold one type; got {sorted(items)}")
        return f"ARRAY:{items.pop()}"
    raise WeightSaveError(f"cannot store {type(v).__name__} as GGUF metadata")


def _pack_value(vtype: str, v: Any) -> bytes:
    """Value bytes (without the leading type); ``vtype`` like ``UINT32`` or ``ARRAY:STRING``."""
    if vtype == "STRING":
        return _str(v)
    if vtype.startswith("ARRAY:"):
        item = vtype[6:]
        head = _vt(item.split(":")[0]) + struct.pack("<Q", len(v))
        if item in _NP:
            return head + np.asarray(v, dtype=_NP[item]).tobytes()
        return head + b"".join(_pack_value(item, x) for x in v)
    return struct.pack(_PACK[vtype], v)


def _to_float16(name: str, t: Tensor) -> Tensor:
    """``t`` as float16, refusing finite values beyond float16's ±65504 (as ``convert_dtype``).

    One min/max reduction decides for the usual tensor; only one that holds values out of
    range (or NaN/Inf) pays for the masked look at its finite values. ``convert_dtype`` makes
    that masked copy of every tensor, which made an F16 save several times slower than F32.
    """
    if t.numel():
        lo, hi = torch.aminmax(t)
        if not (float(lo) >= -F16_MAX and float(hi) <= F16_MAX):
            finite = t[torch.isfinite(t)]
            worst = float(finite.abs().max()) if finite.numel() else 0.0
            if worst > F16_MAX:
                raise WeightSaveError(
                    f"{name} holds {worst:.6g}, beyond float16's ±65504: save as bfloat16 or "
                    "float32 instead"
                )
    return t.to(torch.float16)


def _ggml_type(shape: tuple[int, ...], dtype: str) -> int:
    """The ggml type a tensor of ``shape`` is written as under ``dtype``."""
    if dtype == "float32" or len(shape) < 2:
        return TYPE_IDS["F32"]
    if dtype == "q8_0":
        return TYPE_IDS["F32"] if shape[-1] % 32 else TYPE_IDS["Q8_0"]
    return TYPE_IDS["F16"] if dtype == "float16" else TYPE_IDS["BF16"]


def _tensor_bytes(name: str, t: Tensor, ggml_type: int) -> Tensor:
    """The uint8 bytes of one tensor encoded as ``ggml_type`` (F32, F16, BF16 or Q8_0)."""
    t = t.detach().cpu().contiguous()
    if ggml_type == TYPE_IDS["F32"]:
        return t.float().contiguous().view(torch.uint8)
    if ggml_type == TYPE_IDS["Q8_0"]:
        return quantize_q8_0(t.float())
    if ggml_type == TYPE_IDS["F16"]:
        return _to_float16(name, t).view(torch.uint8)
    return t.to(torch.bfloat16).contiguous().view(torch.uint8)


def write_gguf(
    path: str | os.PathLike[str],
    state_dict: Mapping[str, Tensor],
    config: ModelConfig,
    tokenizer: Tokenizer | None,
    dtype: str = "float32",
    metadata: Mapping[str, Any] | None = None,
) -> None:
    """Write a model in llama.cpp's GGUF layout, atomically.

    ``state_dict`` uses our names and must match ``config`` exactly. ``dtype`` is one of
    ``float32``, ``float16``, ``bfloat16``, ``q8_0`` (2-D tensors; 1-D ones stay F32).
    ``tokenizer`` brings the vocabulary, its special ids and its chat template.

    ``metadata`` adds keys and may be a loaded file's whole metadata (``ModelState.metadata``):
    ``general.name`` and the other keys :func:`gguf_names.carried_metadata` keeps are written
    back, with llama.cpp's types for the keys it reads (special token ids as UINT32); what the
    writer derives from the model and tokenizer (architecture, file type, hyperparameters,
    vocabulary, chat template) is never taken from it. Other values are typed from Python's:
    bool, int → INT64, float → FLOAT64, str, homogeneous lists.
    """
    dtype = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}.get(
        dtype.lower(), dtype.lower()
    )
    if dtype not in GGUF_DTYPES:
        raise WeightSaveError(f"unsupported GGUF dtype {dtype!r}; use one of {GGUF_DTYPES}")
    expected = expected_shapes(config)
    missing = sorted(set(expected) - set(state_dict))
    unknown = sorted(set(state_dict) - set(expected))
    if missing or unknown:
        raise WeightSaveError(
            f"state_dict does not match the config: missing {missing}, unknown {unknown}"
        )
    inverse = {ours: src for src, ours in gguf_name_map(config).items()}
    fused_into = {part: f for f, parts in fused_gguf_map(config).items() for part in parts}

    kv: dict[str, tuple[str, Any]] = {
        "general.architecture": ("STRING", config.family),
        "general.alignment": ("UINT32", DEFAULT_ALIGNMENT),
        "general.file_type": ("UINT32", _FILE_TYPES[dtype]),
    }
    kv.update(config_to_metadata(config))
    if dtype == "q8_0":
        kv["general.quantization_version"] = ("UINT32", 2)
    if tokenizer is not None:
        kv.update(tokenizer_to_metadata(tokenizer))
    for key, (vtype, value) in carried_metadata(metadata or {}, config.family, tokenizer).items():
        kv.setdefault(key, (vtype or _infer_type(value), value))

    # The layout comes from shapes alone, so each tensor is encoded just before it is written:
    # one encoded tensor in memory at a time, not the whole file.
    infos = bytearray()
    plan: list[tuple[str, Callable[[], Tensor], int, int]] = []  # (ours, tensor, type, bytes)
    offset = 0
    # file name → (our name, shape, the tensor as written: computed when it is written)
    tensors: dict[str, tuple[str, tuple[int, ...], Callable[[], Tensor]]] = {}
    for ours in expected:  # the model's own order: embeddings, blocks, norm, head
        t = state_dict[ours]
        if tuple(t.shape) != expected[ours]:
            raise WeightSaveError(
                f"{ours} has shape {tuple(t.shape)}, the config needs {expected[ours]}"
            )
        if ours in fused_into:  # written once, where its first part would be
            name = fused_into[ours]
            if name not in tensors:
                parts = [state_dict[p] for p in fused_gguf_map(config)[name]]
                shape = (sum(p.shape[0] for p in parts), *t.shape[1:])
                tensors[name] = (name, shape, partial(torch.cat, parts))
            continue
        heads = permuted_heads(config, ours)
        tensors[inverse[ours]] = (
            ours,
            tuple(t.shape),
            partial(_same, t) if heads is None else partial(permute_qk, t, heads),
        )
    for name, d in derived_tensors(config).items():
        tensors[name] = (name, tuple(d.shape), partial(_same, d))
    for name, (ours, shape, make) in tensors.items():
        ggml_type = _ggml_type(shape, dtype)
        nbytes = tensor_nbytes(ggml_type, math.prod(shape))
        infos += _str(name) + struct.pack("<I", len(shape))
        infos += b"".join(struct.pack("<Q", d) for d in reversed(shape))
        infos += struct.pack("<IQ", ggml_type, offset)
        plan.append((ours, make, ggml_type, nbytes))
        offset += -(-nbytes // DEFAULT_ALIGNMENT) * DEFAULT_ALIGNMENT

    head = bytearray(GGUF_MAGIC + struct.pack("<IQQ", 3, len(plan), len(kv)))
    for key, (vtype, value) in kv.items():
        head += _str(key) + _vt(vtype.split(":")[0]) + _pack_value(vtype, value)
    head += infos

    def pad(f: IO[bytes], n: int) -> None:
        f.write(b"\0" * (-n % DEFAULT_ALIGNMENT))

    with atomic_writer(path) as f:  # an error below leaves no file behind
        f.write(head)
        pad(f, len(head))
        for ours, make, ggml_type, nbytes in plan:
            try:
                blob = _tensor_bytes(ours, make(), ggml_type).reshape(-1)
            except ValueError as e:
                raise WeightSaveError(str(e)) from e
            assert blob.numel() == nbytes, (ours, blob.numel(), nbytes)
            f.write(blob.numpy().data)
            pad(f, nbytes)
