"""GGUF weights: read (quantized or not) into torch tensors, map to our model, and write.

- ``read_gguf`` parses the header with our bounded reader (``gguf_reader``), maps the file and
  decodes each tensor with the ports in ``gguf_quants``; names stay the file's own.
- ``gguf_model_state`` turns that into our parameter names, a ``ModelConfig`` and the embedded
  tokenizer, undoing llama.cpp's q/k row permutation (``gguf_names``).
- ``read_gguf_model_state`` does both in one pass, the way ``load_model`` wants it: the layout is
  checked against the header before anything is decoded, q/k rows are decoded straight into our
  order, and a tied head the file repeats is never decoded.
- ``write_gguf`` writes F32, F16, BF16 or Q8_0 in llama.cpp's layout with the tokenizer, so
  llama.cpp, ``gguf.GGUFReader`` and our reader all read it. We write the bytes ourselves (the
  format is a few dozen lines) so the write goes through ``atomic_writer``; with ``q8_0`` or the
  half types, 1-D tensors (norms, biases) and rows not divisible by 32 stay F32, as llama.cpp's
  converter keeps 1-D tensors. Each tensor is encoded just before it is written. A loaded
  file's metadata can be passed back in: what describes the model beyond its config and
  tokenizer (``general.name``, special token ids) is written again with llama.cpp's types.

The embedded tokenizer (with its chat template), and two keys of our own (``workbench.config``: the exact config JSON;
``workbench.tokenizer = "byte"`` for our byte tokenizer) are described in ``gguf_names``.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from workbench.formats._common import (
    F16_MAX,
    LoadedWeights,
    ModelState,
    WeightLoadError,
    WeightSaveError,
    atomic_writer,
    check_finite,
)
from workbench.formats.gguf_names import (
    carried_metadata,
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
    tensor_nbytes,
)
from workbench.formats.gguf_reader import (
    DEFAULT_ALIGNMENT,
    GGUF_MAGIC,
    VALUE_TYPE_NAMES,
    GGUFHeader,
    TensorInfo,
    is_gguf,
    open_gguf,
)
from workbench.models.config import ModelConfig
from workbench.models.transformer import Transformer
from workbench.tokenizers import Tokenizer

__all__ = ["gguf_model_state", "is_gguf", "read_gguf", "read_gguf_model_state", "write_gguf"]

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


@dataclass(frozen=True)
class _Job:
    """One tensor to decode; ``rows``: the order to take its rows in (None: the file's)."""

    info: TensorInfo
    rows: np.ndarray | None = None


def _decode_one(buf: Any, job: _Job, out: Tensor | None, allow_nonfinite: bool) -> Tensor:
    """Decode one tensor (into ``out`` for quantized types), checking finiteness first."""
    info = job.info
    raw = torch.frombuffer(buf, dtype=torch.uint8, count=info.nbytes, offset=info.offset)
    # Checked on the file's bytes (scales or raw floats), which is exact and cheap.
    checked = info.ggml_type in SCALE_OFFSETS or info.ggml_type in RAW_VIEWS
    if checked and not allow_nonfinite and not is_finite(raw.numpy(), info.ggml_type):
        raise WeightLoadError(
            f"tensor {info.name!r} contains NaN or Inf; pass allow_nonfinite=True to load it anyway"
        )
    if job.rows is not None:  # rows are whole blocks, so reordering the bytes reorders rows
        raw = torch.from_numpy(np.take(raw.numpy().reshape(info.shape[0], -1), job.rows, axis=0))
        raw = raw.reshape(-1)
    if info.ggml_type in QUANTIZED:
        assert out is not None
        dequantize_into(raw, info.ggml_type, out)
        return out
    if info.ggml_type in RAW_VIEWS:
        # Views need their dtype's alignment; an odd offset (alignment 1) gets a copy.
        aligned = job.rows is not None or info.offset % 8 == 0
        return dequantize(raw if aligned else raw.clone(), info.ggml_type, info.shape)
    decoded = _decode_fallback(raw, info.ggml_type, info.shape, info.name)
    check_finite({info.name: decoded}, allow_nonfinite)
    return decoded


def _fresh_floats(n: int) -> Tensor:
    """``n`` float32s of fresh memory, for every decoded tensor of a file.

    One allocation instead of hundreds: fresh pages cost more than the arithmetic here. Small
    pages, faulted in as the decoder writes them (the kernel clears each just before we fill
    it, so it is still in cache). Measured alternatives, for SmolLM2's 513 MiB: numpy's
    allocator asks for huge pages, which cost 0.1-1.7 s of kernel time per load here (finding
    free 2 MiB pages) against a steady 0.25-0.4 s; ``MAP_POPULATE`` saved 0.1 s of kernel time
    and cost as much user time, writing into pages cleared long before.
    """
    return torch.empty(n, dtype=torch.float32)


def _decode(
    buf: Any, jobs: list[_Job], *, allow_nonfinite: bool, progress: bool | None
) -> dict[str, Tensor]:
    """Decode ``jobs`` on this thread; tensors by file name, in file order.

    Quantized tensors decode into slices of one float32 buffer (:func:`_fresh_floats`).
    F32/F16/BF16 stay views on the mapping. One thread: decoding on two threads of our own
    made loads slower on two busy cores (a thread descheduled while holding the GIL stalls the
    other), as torch's thread pool did.
    """
    quantized = [j for j in jobs if j.info.ggml_type in QUANTIZED]
    arena = _fresh_floats(sum(math.prod(j.info.shape) for j in quantized))
    outs: dict[str, Tensor] = {}
    pos = 0
    for j in quantized:
        n = math.prod(j.info.shape)
        outs[j.info.name] = arena[pos : pos + n].view(j.info.shape)
        pos += n
    tensors: dict[str, Tensor] = {}
    for j in tqdm(jobs, desc="GGUF", unit="tensor", delay=1.0, disable=progress is False):
        tensors[j.info.name] = _decode_one(buf, j, outs.get(j.info.name), allow_nonfinite)
    return tensors


def read_gguf(
    path: str | os.PathLike[str], *, allow_nonfinite: bool = False, progress: bool | None = None
) -> LoadedWeights:
    """Read every tensor of a GGUF file under its own name, dequantized.

    Quantized tensors come back as float32; F32/F16/BF16 keep their dtype (views on a private,
    copy-on-write mapping of the file when aligned). ``metadata`` holds the key-value pairs
    (arrays as lists). A progress bar appears for loads over a second unless ``progress=False``.
    """
    header, buf = open_gguf(path)
    jobs = [_Job(info) for info in header.tensors]
    tensors = _decode(buf, jobs, allow_nonfinite=allow_nonfinite, progress=progress)
    return LoadedWeights(tensors=tensors, metadata=header.metadata, format="gguf", path=Path(path))


def _expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = Transformer(cfg, init=False)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _layout(
    md: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]], path: Path
) -> tuple[ModelConfig, dict[str, str]]:
    """The config the metadata describes and ``file name → our name`` for every tensor used.

    Strict: tensors with no place in our layout, missing tensors and shape mismatches are all
    listed in one ``WeightLoadError``. A tied head the file stores anyway is left out.
    """
    cfg = config_from_metadata(md, shapes)
    if cfg.n_layer > len(shapes):
        # Checked before building the layout: a crafted block_count must not make us build
        # millions of (meta) modules.
        raise WeightLoadError(
            f"GGUF metadata claims {cfg.n_layer} layers but the file holds {len(shapes)} tensors"
        )
    name_map = gguf_name_map(cfg)
    expected = _expected_shapes(cfg)
    used: dict[str, str] = {}
    unknown: list[str] = []
    for name in shapes:
        ours = name_map.get(name)
        if ours is None or ours not in expected:
            if ours == "lm_head.weight" and cfg.tie_embeddings:
                continue  # a tied head stored anyway (GPT-2 converters copy the embedding)
            unknown.append(name)
            continue
        used[name] = ours
    got = {ours: shapes[name] for name, ours in used.items()}
    missing = sorted(set(expected) - set(got))
    wrong = [
        f"{k}: file {got[k]}, model {expected[k]}"
        for k in expected
        if k in got and tuple(got[k]) != expected[k]
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
            f"GGUF file {path} does not match a {cfg.family} model ({cfg.n_layer} layers): "
            + " | ".join(parts)
        )
    return cfg, used


def _qk_heads(cfg: ModelConfig, ours: str) -> int | None:
    """Heads whose rows llama.cpp permuted in ``ours`` (None: not a permuted tensor)."""
    if cfg.family != "llama":
        return None
    if ".attn.q." in ours:
        return cfg.n_head
    if ".attn.k." in ours:
        return cfg.kv_heads
    return None


def gguf_model_state(loaded: LoadedWeights) -> ModelState:
    """Our parameter names, config and tokenizer from what ``read_gguf`` returned.

    Strict: tensors with no place in our layout, missing tensors and shape mismatches are all
    listed in one ``WeightLoadError``. ``metadata`` is the file's, whole.
    """
    md = loaded.metadata
    shapes = {k: tuple(v.shape) for k, v in loaded.tensors.items()}
    cfg, used = _layout(md, shapes, loaded.path)
    state: dict[str, Tensor] = {}
    for name, ours in used.items():
        t = loaded.tensors[name]
        heads = _qk_heads(cfg, ours)
        state[ours] = t if heads is None else unpermute_qk(t, heads)
    return ModelState(
        config=cfg,
        state_dict=state,
        tokenizer=tokenizer_from_metadata(md),
        format="gguf",
        metadata=dict(md),
    )


def read_gguf_model_state(
    path: str | os.PathLike[str],
    *,
    allow_nonfinite: bool = False,
    progress: bool | None = None,
    label: str | os.PathLike[str] | None = None,
) -> ModelState:
    """``gguf_model_state(read_gguf(path))`` in one pass, without its intermediate copies.

    The layout is checked against the header before any tensor is decoded; q/k rows decode
    straight into our order. ``metadata`` is the file's, whole (``general.name``, special
    token ids, ...), for a save to carry over. ``label`` names the file in errors (default:
    ``path``).
    """
    header: GGUFHeader
    header, buf = open_gguf(path)
    md = header.metadata
    infos = {info.name: info for info in header.tensors}
    cfg, used = _layout(md, {k: v.shape for k, v in infos.items()}, Path(label or path))
    jobs: list[_Job] = []
    for name, ours in used.items():
        info = infos[name]
        heads = _qk_heads(cfg, ours)
        rows = None
        if heads is not None:
            rows = unpermute_qk(torch.arange(info.shape[0]), heads).numpy()
        jobs.append(_Job(info, rows))
    tokenizer = tokenizer_from_metadata(md)
    tensors = _decode(buf, jobs, allow_nonfinite=allow_nonfinite, progress=progress)
    return ModelState(
        config=cfg,
        state_dict={used[name]: t for name, t in tensors.items()},
        tokenizer=tokenizer,
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
    for key, (vtype, value) in carried_metadata(metadata or {}, config.family, tokenizer).items():
        kv.setdefault(key, (vtype or _infer_type(value), value))

    # The layout comes from shapes alone, so each tensor is encoded just before it is written:
    # one encoded tensor in memory at a time, not the whole file.
    infos = bytearray()
    plan: list[tuple[str, Tensor, int, int]] = []  # (our name, tensor, ggml type, bytes)
    offset = 0
    for ours in expected:  # the model's own order: embeddings, blocks, norm, head
        name, t = inverse[ours], state_dict[ours]
        if tuple(t.shape) != expected[ours]:
            raise WeightSaveError(
                f"{ours} has shape {tuple(t.shape)}, the config needs {expected[ours]}"
            )
        ggml_type = _ggml_type(tuple(t.shape), dtype)
        nbytes = tensor_nbytes(ggml_type, t.numel())
        infos += _str(name) + struct.pack("<I", t.ndim)
        infos += b"".join(struct.pack("<Q", d) for d in reversed(t.shape))
        infos += struct.pack("<IQ", ggml_type, offset)
        plan.append((ours, t, ggml_type, nbytes))
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
        for ours, t, ggml_type, nbytes in plan:
            if config.family == "llama" and ".attn.q." in ours:
                t = permute_qk(t, config.n_head)
            elif config.family == "llama" and ".attn.k." in ours:
                t = permute_qk(t, config.kv_heads)
            try:
                blob = _tensor_bytes(ours, t, ggml_type).reshape(-1)
            except ValueError as e:
                raise WeightSaveError(str(e)) from e
            assert blob.numel() == nbytes, (ours, blob.numel(), nbytes)
            f.write(blob.numpy().data)
            pad(f, nbytes)
