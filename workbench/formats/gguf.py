"""GGUF weights: read (quantized or not) into torch tensors, map to our model, and write.

- ``read_gguf`` parses the header with our bounded reader (``gguf_reader``), maps the file and
  decodes each tensor with the torch ports in ``gguf_quants``; names stay the file's own.
- ``gguf_model_state`` turns that into our parameter names, a ``ModelConfig`` and the embedded
  tokenizer, undoing llama.cpp's q/k row permutation (``gguf_names``).
- ``write_gguf`` writes F32, F16, BF16 or Q8_0 in llama.cpp's layout with the tokenizer, so
  llama.cpp, ``gguf.GGUFReader`` and our reader all read it. We write the bytes ourselves (the
  format is a few dozen lines) so the write goes through ``atomic_writer``; with ``q8_0`` or the
  half types, 1-D tensors (norms, biases) and rows not divisible by 32 stay F32, as llama.cpp's
  converter keeps 1-D tensors.

The embedded tokenizer, and two keys of our own (``workbench.config``: the exact config JSON;
``workbench.tokenizer = "byte"`` for our byte tokenizer) are described in ``gguf_names``.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from workbench.formats._common import (
    LoadedWeights,
    ModelState,
    WeightLoadError,
    WeightSaveError,
    atomic_writer,
    check_finite,
    convert_dtype,
)
from workbench.formats.gguf_names import (
    config_from_metadata,
    config_to_metadata,
    gguf_name_map,
    permute_qk,
    tokenizer_from_metadata,
    tokenizer_to_metadata,
    unpermute_qk,
)
from workbench.formats.gguf_quants import (
    GGML_TYPES,
    QUANTIZED,
    RAW_VIEWS,
    SCALE_OFFSETS,
    TYPE_IDS,
    dequantize,
    dequantize_into,
    is_finite,
    quantize_q8_0,
)
from workbench.formats.gguf_reader import (
    DEFAULT_ALIGNMENT,
    GGUF_MAGIC,
    VALUE_TYPE_NAMES,
    is_gguf,
    open_gguf,
)
from workbench.models.config import ModelConfig
from workbench.models.transformer import Transformer
from workbench.tokenizers import Tokenizer

__all__ = ["gguf_model_state", "is_gguf", "read_gguf", "write_gguf"]

GGUF_DTYPES = ("float32", "float16", "bfloat16", "q8_0")
_FILE_TYPES = {"float32": 0, "float16": 1, "q8_0": 7, "bfloat16": 32}  # llama.cpp's LlamaFileType


# ---------------------------------------------------------------------------- reading


def _decode_fallback(raw: Tensor, ggml_type: int, shape: tuple[int, ...], name: str) -> Tensor:
    # Types we have not ported (IQ*, TQ*, ...): gguf-py's numpy reference, when it has one.
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize as np_dequantize

    try:
        arr = np_dequantize(raw.numpy(), GGMLQuantizationType(ggml_type))
    except (NotImplementedError, ValueError):
        raise WeightLoadError(
            f"tensor {name!r} has type {GGML_TYPES[ggml_type][0]}, which cannot be decoded; "
            "re-quantize the model to a K-quant or Q8_0"
        ) from None
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).reshape(shape)


def read_gguf(
    path: str | os.PathLike[str], *, allow_nonfinite: bool = False, progress: bool | None = None
) -> LoadedWeights:
    """Read every tensor of a GGUF file under its own name, dequantized.

    Quantized tensors come back as float32; F32/F16/BF16 keep their dtype (views on a private,
    copy-on-write mapping of the file when aligned). ``metadata`` holds the key-value pairs
    (arrays as lists). A progress bar appears for loads over a second unless ``progress=False``.
    """
    header, buf = open_gguf(path)
    # All quantized tensors decode into slices of one float32 buffer: one allocation instead of
    # hundreds, which on this kind of machine halves the load time (fresh pages are costly).
    quantized = [i for i in header.tensors if i.ggml_type in QUANTIZED]
    arena = torch.empty(sum(math.prod(i.shape) for i in quantized), dtype=torch.float32)
    pos = 0
    tensors: dict[str, Tensor] = {}
    for info in tqdm(
        header.tensors, desc="GGUF", unit="tensor", delay=1.0, disable=progress is False
    ):
        raw = torch.frombuffer(buf, dtype=torch.uint8, count=info.nbytes, offset=info.offset)
        if info.ggml_type in QUANTIZED:
            n = math.prod(info.shape)
            out = arena[pos : pos + n].view(info.shape)
            pos += n
            dequantize_into(raw, info.ggml_type, out)
        elif info.ggml_type in RAW_VIEWS:
            # Views need their dtype's alignment; an odd offset (alignment 1) gets a copy.
            out = dequantize(
                raw if info.offset % 8 == 0 else raw.clone(), info.ggml_type, info.shape
            )
        else:
            out = _decode_fallback(raw, info.ggml_type, info.shape, info.name)
        tensors[info.name] = out
        if allow_nonfinite:
            continue
        # Checked on the file's bytes (scales or raw floats), which is exact and single-threaded.
        if info.ggml_type in SCALE_OFFSETS or info.ggml_type in RAW_VIEWS:
            if not is_finite(raw.numpy(), info.ggml_type):
                raise WeightLoadError(
                    f"tensor {info.name!r} contains NaN or Inf; pass allow_nonfinite=True to "
                    "load it anyway"
                )
        else:
            check_finite({info.name: out}, allow_nonfinite)
    return LoadedWeights(tensors=tensors, metadata=header.metadata, format="gguf", path=Path(path))


def _expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = Transformer(cfg, seed=None)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def gguf_model_state(loaded: LoadedWeights) -> ModelState:
    """Our parameter names, config and tokenizer from what ``read_gguf`` returned.

    Strict: tensors with no place in our layout, missing tensors and shape mismatches are all
    listed in one ``WeightLoadError``.
    """
    md = loaded.metadata
    shapes = {k: tuple(v.shape) for k, v in loaded.tensors.items()}
    cfg = config_from_metadata(md, shapes)
    if cfg.n_layer > len(shapes):
        # Checked before building the layout: a crafted block_count must not make us build
        # millions of (meta) modules.
        raise WeightLoadError(
            f"GGUF metadata claims {cfg.n_layer} layers but the file holds {len(shapes)} tensors"
        )
    name_map = gguf_name_map(cfg)
    expected = _expected_shapes(cfg)
    state: dict[str, Tensor] = {}
    unknown: list[str] = []
    for name, t in loaded.tensors.items():
        ours = name_map.get(name)
        if ours is None or ours not in expected:
            if ours == "lm_head.weight" and cfg.tie_embeddings:
                continue  # a tied head stored anyway (GPT-2 converters copy the embedding)
            unknown.append(name)
            continue
        if cfg.family == "llama" and name.startswith("blk.") and ".attn_q." in name:
            t = unpermute_qk(t, cfg.n_head)
        elif cfg.family == "llama" and name.startswith("blk.") and ".attn_k." in name:
            t = unpermute_qk(t, cfg.kv_heads)
        state[ours] = t
    missing = sorted(set(expected) - set(state))
    wrong = [
        f"{k}: file {tuple(state[k].shape)}, model {expected[k]}"
        for k in expected
        if k in state and tuple(state[k].shape) != expected[k]
    ]
    if unknown or missing or wrong:
        parts = []
        if unknown:
            parts.append(f"unknown tensors: {', '.join(sorted(unknown))}")
        if missing:
            inverse = {v: k for k, v in name_map.items()}
            parts.append("missing tensors: " + ", ".join(inverse.get(m, m) for m in missing))
        if wrong:
            parts.append("shape mismatches: " + "; ".join(wrong))
        raise WeightLoadError(
            f"GGUF file {loaded.path} does not match a {cfg.family} model ({cfg.n_layer} layers): "
            + " | ".join(parts)
        )
    return ModelState(
        config=cfg,
        state_dict=state,
        tokenizer=tokenizer_from_metadata(md),
        format="gguf",
        metadata=dict(md),
    )


# ---------------------------------------------------------------------------- writing

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


def _tensor_bytes(name: str, t: Tensor, dtype: str) -> tuple[int, Tensor]:
    """(ggml type, uint8 bytes) for one tensor written as ``dtype``."""
    t = t.detach().cpu().contiguous()
    if dtype == "float32" or t.ndim < 2:
        return TYPE_IDS["F32"], t.float().contiguous().view(torch.uint8)
    if dtype == "q8_0":
        if t.shape[-1] % 32:
            return TYPE_IDS["F32"], t.float().contiguous().view(torch.uint8)
        return TYPE_IDS["Q8_0"], quantize_q8_0(t.float())
    if dtype == "float16":
        return TYPE_IDS["F16"], convert_dtype(t, torch.float16, name).contiguous().view(torch.uint8)
    return TYPE_IDS["BF16"], t.to(torch.bfloat16).contiguous().view(torch.uint8)


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
    ``metadata`` adds keys (bool, int → INT64, float → FLOAT64, str, homogeneous lists).
    """
    dtype = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}.get(
        dtype.lower(), dtype.lower()
    )
    if dtype not in GGUF_DTYPES:
        raise WeightSaveError(f"unsupported GGUF dtype {dtype!r}; use one of {GGUF_DTYPES}")
    expected = _expected_shapes(config)
    missing = sorted(set(expected) - set(state_dict))
    unknown = sorted(set(state_dict) - set(expected))
    if missing or unknown:
        raise WeightSaveError(
            f"state_dict does not match the config: missing {missing}, unknown {unknown}"
        )
    inverse = {ours: src for src, ours in gguf_name_map(config).items()}

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
    for key, value in (metadata or {}).items():
        kv[str(key)] = (_infer_type(value), value)

    infos = bytearray()
    blobs: list[Tensor] = []
    offset = 0
    for ours in expected:  # the model's own order: embeddings, blocks, norm, head
        name, t = inverse[ours], state_dict[ours]
        if tuple(t.shape) != expected[ours]:
            raise WeightSaveError(
                f"{ours} has shape {tuple(t.shape)}, the config needs {expected[ours]}"
            )
        if config.family == "llama" and ".attn.q." in ours:
            t = permute_qk(t, config.n_head)
        elif config.family == "llama" and ".attn.k." in ours:
            t = permute_qk(t, config.kv_heads)
        try:
            ggml_type, blob = _tensor_bytes(ours, t, dtype)
        except ValueError as e:
            raise WeightSaveError(str(e)) from e
        infos += _str(name) + struct.pack("<I", t.ndim)
        infos += b"".join(struct.pack("<Q", d) for d in reversed(t.shape))
        infos += struct.pack("<IQ", ggml_type, offset)
        blobs.append(blob.reshape(-1))
        offset += -(-blob.numel() // DEFAULT_ALIGNMENT) * DEFAULT_ALIGNMENT

    head = bytearray(GGUF_MAGIC + struct.pack("<IQQ", 3, len(blobs), len(kv)))
    for key, (vtype, value) in kv.items():
        head += _str(key) + _vt(vtype.split(":")[0]) + _pack_value(vtype, value)
    head += infos

    def pad(f: IO[bytes], n: int) -> None:
        f.write(b"\0" * (-n % DEFAULT_ALIGNMENT))

    with atomic_writer(path) as f:
        f.write(head)
        pad(f, len(head))
        for blob in blobs:
            f.write(blob.numpy().data)
            pad(f, blob.numel())
