"""GGUF weights: read (quantized or not) into torch tensors and map them to our model.

- ``read_gguf`` parses the header with our bounded reader (``gguf_reader``), maps the file and
  decodes the quantized tensors with the C++ kernel (``_dequant_build``, all of them in one
  call on its own threads) or, where no compiler built it, with the ports in ``gguf_quants``
  (the same bits); names stay the file's own.
- ``gguf_model_state`` turns that into our parameter names, a ``ModelConfig`` and the embedded
  tokenizer, undoing llama.cpp's q/k row permutation and splitting its fused tensors
  (``gguf_names``).
- ``read_gguf_model_state`` does both in one pass, the way ``load_model`` wants it: the layout is
  checked against the header before anything is decoded, q/k rows are decoded straight into our
  order, and a tied head the file repeats is never decoded.
- ``write_gguf`` (in ``gguf_write``, re-exported here) writes F32, F16, BF16 or Q8_0 in
  llama.cpp's layout with the tokenizer. A loaded file's metadata can be passed back in: what
  describes the model beyond its config and tokenizer (``general.name``, special token ids) is
  written again with llama.cpp's types.

The embedded tokenizer (with its chat template) is ``gguf_vocab``'s; the hyperparameters and two
keys of our own (``workbench.config``: the exact config JSON; ``workbench.tokenizer = "byte"``
for our byte tokenizer) are ``gguf_config``'s and ``gguf_vocab``'s.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from workbench.formats import _dequant_build
from workbench.formats._common import LoadedWeights, ModelState, WeightLoadError, check_finite
from workbench.formats.gguf_names import (
    ROPE_FREQS,
    config_from_metadata,
    fused_gguf_map,
    gguf_name_map,
    permuted_heads,
    tokenizer_from_metadata,
    unpermute_qk,
)
from workbench.formats.gguf_quants import (
    GGML_TYPES,
    QUANTIZED,
    RAW_VIEWS,
    SCALE_OFFSETS,
    dequantize,
    dequantize_into,
    is_finite,
)
from workbench.formats.gguf_reader import GGUFHeader, TensorInfo, is_gguf, open_gguf
from workbench.formats.gguf_write import (  # re-exported: the writer's public names live here too
    GGUF_DTYPES,
    _infer_type,
    _pack_value,
    _str,
    _vt,
    expected_shapes,
    write_gguf,
)
from workbench.models.config import ModelConfig

__all__ = [
    "GGUF_DTYPES",
    "gguf_model_state",
    "is_gguf",
    "read_gguf",
    "read_gguf_model_state",
    "write_gguf",
]
_WRITER_HELPERS = (_infer_type, _pack_value, _str, _vt)  # for tests that craft files


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


def _nonfinite(name: str) -> str:
    return f"tensor {name!r} contains NaN or Inf; pass allow_nonfinite=True to load it anyway"


def _decode_one(buf: Any, job: _Job, out: Tensor | None, allow_nonfinite: bool) -> Tensor:
    """Decode one tensor (into ``out`` for quantized types), checking finiteness first."""
    info = job.info
    raw = torch.frombuffer(buf, dtype=torch.uint8, count=info.nbytes, offset=info.offset)
    # Checked on the file's bytes (scales or raw floats), which is exact and cheap.
    checked = info.ggml_type in SCALE_OFFSETS or info.ggml_type in RAW_VIEWS
    if checked and not allow_nonfinite and not is_finite(raw.numpy(), info.ggml_type):
        raise WeightLoadError(_nonfinite(info.name))
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


def _fresh_floats(n: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """``n`` floats of fresh memory, for every decoded tensor of a file.

    One allocation instead of hundreds: fresh pages cost more than the arithmetic here. Small
    pages, faulted in as the decoder writes them (the OS clears each just before we fill it,
    so it is still in cache). Measured alternatives, for SmolLM2's 513 MiB: numpy's
    allocator asks for huge pages, which cost 0.1-1.7 s of kernel time per load here (finding
    free 2 MiB pages) against a steady 0.25-0.4 s; ``MAP_POPULATE`` saved 0.1 s of kernel time
    and cost as much user time, writing into pages cleared long before.
    """
    return torch.empty(n, dtype=dtype)


# Elements per kernel call: each call decodes a group of tensors on all its threads; between
# groups the progress bar moves.
_KERNEL_GROUP = 1 << 25


def _decode_kernel(buf: Any, jobs: list[_Job], outs: dict[str, Tensor], bar: Any) -> dict[str, int]:
    """Decode quantized ``jobs`` into ``outs`` with the C++ kernel; blocks with a non-finite
    scale per tensor name (the caller decides whether that is an error)."""
    bad: dict[str, int] = {}
    group: list[_Job] = []
    size = 0
    for k, job in enumerate(jobs):
        group.append(job)
        size += outs[job.info.name].numel()
        if size < _KERNEL_GROUP and k + 1 < len(jobs):
            continue
        raws = [
            torch.frombuffer(buf, dtype=torch.uint8, count=j.info.nbytes, offset=j.info.offset)
            for j in group
        ]
        rows = [None if j.rows is None else torch.from_numpy(j.rows) for j in group]
        counts = _dequant_build.dequantize_many(
            raws, [j.info.ggml_type for j in group], [outs[j.info.name] for j in group], rows
        )
        bad.update(zip((j.info.name for j in group), counts, strict=True))
        bar.update(len(group))
        group, size = [], 0
    return bad


def _decode(
    buf: Any,
    jobs: list[_Job],
    *,
    allow_nonfinite: bool,
    progress: bool | None,
    dtype: torch.dtype | None = None,
) -> dict[str, Tensor]:
    """Decode ``jobs``; tensors by file name, in file order.

    Quantized tensors decode into slices of one buffer (:func:`_fresh_floats`): float32, or
    bfloat16 when ``dtype`` asks for it and the C++ kernel (``_dequant_build``) is there, which
    decodes them all on its own threads. Without the kernel, the numpy/torch ports decode on
    this thread (two threads of our own made loads slower on two busy cores: one descheduled
    while holding the GIL stalls the other). F32/F16/BF16 stay views on the mapping. The
    first tensor with NaN or Inf is refused, in file order, unless ``allow_nonfinite``.
    """
    quantized = [j for j in jobs if j.info.ggml_type in QUANTIZED]
    kernel = bool(quantized) and _dequant_build.ensure_loaded()
    out_dtype = torch.bfloat16 if kernel and dtype == torch.bfloat16 else torch.float32
    arena = _fresh_floats(sum(math.prod(j.info.shape) for j in quantized), out_dtype)
    outs: dict[str, Tensor] = {}
    pos = 0
    for j in quantized:
        n = math.prod(j.info.shape)
        outs[j.info.name] = arena[pos : pos + n].view(j.info.shape)
        pos += n
    tensors: dict[str, Tensor] = {}
    with tqdm(
        total=len(jobs), desc="GGUF", unit="tensor", delay=1.0, disable=progress is False
    ) as bar:
        bad = _decode_kernel(buf, quantized, outs, bar) if kernel else {}
        for j in jobs:
            name = j.info.name
            if name not in bad:
                tensors[name] = _decode_one(buf, j, outs.get(name), allow_nonfinite)
                bar.update(1)
            elif bad[name] and not allow_nonfinite:
                raise WeightLoadError(_nonfinite(name))
            else:
                tensors[name] = outs[name]
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


@dataclass(frozen=True)
class _Layout:
    """What a file's tensors become: ``used`` file name → our name, ``fused`` file name → our
    names it concatenates along rows (with their row counts)."""

    config: ModelConfig
    used: dict[str, str]
    fused: dict[str, tuple[tuple[str, int], ...]]

    def assemble(self, tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Our state dict from decoded tensors by file name (fused ones split, as views)."""
        state = {self.used[name]: t for name, t in tensors.items() if name in self.used}
        for name, parts in self.fused.items():
            pieces = tensors[name].split([rows for _, rows in parts])
            state.update(zip((ours for ours, _ in parts), pieces, strict=True))
        return state


def _layout(
    md: Mapping[str, Any],
    shapes: Mapping[str, tuple[int, ...]],
    path: Path,
    read: Any = None,
) -> _Layout:
    """The config the metadata describes and what each tensor of the file becomes.

    Strict: tensors with no place in our layout, missing tensors and shape mismatches are all
    listed in one ``WeightLoadError``. A tied head the file stores anyway is left out, and so
    are tensors that only carry configuration (``rope_freqs.weight``). ``read(name)`` decodes a
    tensor the config needs.
    """
    cfg = config_from_metadata(md, shapes, read)
    if cfg.n_layer > len(shapes):
        # Checked before building the layout: a crafted block_count must not make us build
        # millions of (meta) modules.
        raise WeightLoadError(
            f"GGUF metadata claims {cfg.n_layer} layers but the file holds {len(shapes)} tensors"
        )
    name_map = gguf_name_map(cfg)
    expected = expected_shapes(cfg)
    fused_map = fused_gguf_map(cfg)
    used: dict[str, str] = {}
    fused: dict[str, tuple[tuple[str, int], ...]] = {}
    got: dict[str, tuple[int, ...]] = {}
    unknown: list[str] = []
    wrong: list[str] = []
    for name in shapes:
        if name == ROPE_FREQS and cfg.rope_scaling == "llama3":
            continue  # configuration, read by config_from_metadata
        if name in fused_map:
            pieces = tuple((ours, expected[ours][0]) for ours in fused_map[name])
            want = (sum(rows for _, rows in pieces), *expected[pieces[0][0]][1:])
            if tuple(shapes[name]) != want:
                wrong.append(f"{name}: file {tuple(shapes[name])}, model {want}")
            fused[name] = pieces
            got.update((ours, expected[ours]) for ours, _ in pieces)
            continue
        ours = name_map.get(name)
        if ours is None or ours not in expected:
            if ours == "lm_head.weight" and cfg.tie_embeddings:
                continue  # a tied head stored anyway (GPT-2 converters copy the embedding)
            unknown.append(name)
            continue
        used[name] = ours
    got.update((ours, tuple(shapes[name])) for name, ours in used.items())
    missing = sorted(set(expected) - set(got))
    wrong += [
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
            inverse.update((o, f) for f, parts in fused_map.items() for o in parts)
            parts.append("missing tensors: " + ", ".join(inverse.get(m, m) for m in missing))
        if wrong:
            parts.append("shape mismatches: " + "; ".join(wrong))
        raise WeightLoadError(
            f"GGUF file {path} does not match a {cfg.family} model ({cfg.n_layer} layers): "
            + " | ".join(parts)
        )
    return _Layout(cfg, used, fused)


def gguf_model_state(loaded: LoadedWeights) -> ModelState:
    """Our parameter names, config and tokenizer from what ``read_gguf`` returned.

    Strict: tensors with no place in our layout, missing tensors and shape mismatches are all
    listed in one ``WeightLoadError``. ``metadata`` is the file's, whole.
    """
    md = loaded.metadata
    shapes = {k: tuple(v.shape) for k, v in loaded.tensors.items()}
    layout = _layout(md, shapes, loaded.path, loaded.tensors.__getitem__)
    state = layout.assemble(loaded.tensors)
    for ours, t in state.items():
        heads = permuted_heads(layout.config, ours)
        if heads is not None:
            state[ours] = unpermute_qk(t, heads)
    return ModelState(
        config=layout.config,
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
    dtype: torch.dtype | None = None,
) -> ModelState:
    """``gguf_model_state(read_gguf(path))`` in one pass, without its intermediate copies.

    The layout is checked against the header before any tensor is decoded; q/k rows decode
    straight into our order. ``metadata`` is the file's, whole (``general.name``, special
    token ids, ...), for a save to carry over. ``label`` names the file in errors (default:
    ``path``). ``dtype=torch.bfloat16`` decodes quantized tensors straight into bfloat16 where
    the C++ kernel is built (the same bits as a cast of the float32 values); other tensors keep
    their file's type, for the caller to cast.
    """
    header: GGUFHeader
    header, buf = open_gguf(path)
    md = header.metadata
    infos = {info.name: info for info in header.tensors}

    def read_one(name: str) -> Tensor:
        job = [_Job(infos[name])]
        return _decode(buf, job, allow_nonfinite=allow_nonfinite, progress=False)[name]

    shapes = {k: v.shape for k, v in infos.items()}
    layout = _layout(md, shapes, Path(label or path), read_one)
    jobs: list[_Job] = [_Job(infos[name]) for name in layout.fused]
    for name, ours in layout.used.items():
        info = infos[name]
        heads = permuted_heads(layout.config, ours)
        rows = None
        if heads is not None:
            rows = unpermute_qk(torch.arange(info.shape[0]), heads).numpy()
        jobs.append(_Job(info, rows))
    # The tokenizer is built on a second thread while this one decodes: the kernel (and numpy)
    # release the GIL, so on a free core the two overlap (SmolLM2: 0.06 s of 0.3 s).
    with ThreadPoolExecutor(1, thread_name_prefix="gguf-vocab") as pool:
        vocab = pool.submit(tokenizer_from_metadata, md)
        try:
            tensors = _decode(
                buf, jobs, allow_nonfinite=allow_nonfinite, progress=progress, dtype=dtype
            )
        except WeightLoadError:
            vocab.result()  # a broken vocabulary is reported first, as when it was built first
            raise
        tokenizer = vocab.result()
    return ModelState(
        config=layout.config,
        state_dict=layout.assemble(tensors),
        tokenizer=tokenizer,
        format="gguf",
        metadata=dict(md),
    )
