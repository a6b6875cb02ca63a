"""GGML tensor types: block sizes, and torch ports of their dequantization (plus Q8_0 quantization).

Each port works on a ``(n_blocks, type_size)`` uint8 array at once, so the work is a handful of
vectorized ops per chunk of blocks rather than a Python loop per block. The arithmetic mirrors
``gguf.quants`` operation by operation (same products in the same order, float32 throughout,
no fused multiply-add), which is what makes the results bit-exact against it; the tests check
that on random blocks. This file knows nothing about files: the reader hands it bytes.

The legacy block types (Q4_0, Q4_1, Q8_0: what small models ship in) run on numpy: its ufuncs
never start a thread pool and release the GIL, so the loader can decode several tensors at once
on its own threads; measured on SmolLM2 Q4_1 they decode in about half the CPU time of the torch
ports. The K-quants and Q5 types keep their torch ports.

These ports are the reference and the fallback: where a compiler is available the loader decodes
with ``csrc/dequant_cpu.cpp`` (``_dequant_build``), which the tests hold to the same bits.

References: ggml's ``ggml-quants.c`` (block layouts) and gguf-py's ``gguf/quants.py``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

QK_K = 256

# ggml type id → (name, elements per block, bytes per block). Every id ggml defines, so the reader
# can size any tensor; DEQUANTIZERS below says which ones we turn into floats ourselves.
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24),
    8: ("Q8_0", 32, 34),
    9: ("Q8_1", 32, 40),
    10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66),
    17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18),
    21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1),
    25: ("I16", 1, 2),
    26: ("I32", 1, 4),
    27: ("I64", 1, 8),
    28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2),
    34: ("TQ1_0", 256, 54),
    35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17),
}
TYPE_IDS: dict[str, int] = {name: tid for tid, (name, _, _) in GGML_TYPES.items()}


def _f16(blocks: Tensor, start: int) -> Tensor:
    """The float16 at byte ``start`` of each block, as float32 ``(n, 1)``."""
    return blocks[:, start : start + 2].contiguous().view(torch.float16).float()


def _nibbles(qs: Tensor) -> Tensor:
    """``(n, k)`` bytes → ``(n, 2k)``: all low nibbles, then all high nibbles (ggml's order)."""
    return torch.cat((qs & 0x0F, qs >> 4), dim=1)


def _bits(qh: Tensor) -> Tensor:
    """``(n, k)`` bytes → ``(n, 8k)`` bits, little-endian within each byte (bit j of a uint32)."""
    shifts = torch.arange(8, dtype=torch.uint8)
    return ((qh[:, :, None] >> shifts) & 1).reshape(qh.shape[0], -1)


def _f32(blocks: Tensor) -> Tensor:
    return blocks.contiguous().view(torch.float32).reshape(-1)


def _f16_raw(blocks: Tensor) -> Tensor:
    return blocks.contiguous().view(torch.float16).reshape(-1)


def _bf16_raw(blocks: Tensor) -> Tensor:
    return blocks.contiguous().view(torch.bfloat16).reshape(-1)


# Each quantized port writes into ``out`` (float32, ``(n_blocks, block_size)``): the loader hands
# it slices of one preallocated buffer, so no per-tensor float temporaries are allocated (fresh
# pages cost more than the arithmetic on this kind of machine). ``out.copy_(ints)`` converts
# exactly, and ``out.mul_(d)`` is ``d * q`` (IEEE multiplication commutes), as gguf-py computes.


def _q4_0(b: Tensor, out: Tensor) -> None:
    d = _f16(b, 0)
    out.copy_(_nibbles(b[:, 2:]).to(torch.int8) - 8)
    out.mul_(d)


def _q4_1(b: Tensor, out: Tensor) -> None:
    d, m = _f16(b, 0), _f16(b, 2)
    out.copy_(_nibbles(b[:, 4:]))
    out.mul_(d).add_(m)


def _q5_0(b: Tensor, out: Tensor) -> None:
    d = _f16(b, 0)
    out.copy_((_nibbles(b[:, 6:]) | (_bits(b[:, 2:6]) << 4)).to(torch.int8) - 16)
    out.mul_(d)


def _q5_1(b: Tensor, out: Tensor) -> None:
    d, m = _f16(b, 0), _f16(b, 2)
    out.copy_(_nibbles(b[:, 8:]) | (_bits(b[:, 4:8]) << 4))
    out.mul_(d).add_(m)


def _q8_0(b: Tensor, out: Tensor) -> None:
    d = _f16(b, 0)
    out.copy_(b[:, 2:].contiguous().view(torch.int8))
    out.mul_(d)


_SHIFT_2BIT = torch.tensor([0, 2, 4, 6], dtype=torch.uint8)
_SHIFT_4BIT = torch.tensor([0, 4], dtype=torch.uint8)
_SHIFT_1BIT = torch.arange(8, dtype=torch.uint8)


def _q2_k(b: Tensor, out: Tensor) -> None:
    n = b.shape[0]
    scales, qs = b[:, :16], b[:, 16:80]
    d, dmin = _f16(b, 80), _f16(b, 82)
    dl = (d * (scales & 0x0F).float()).reshape(n, 16, 1)
    ml = (dmin * (scales >> 4).float()).reshape(n, 16, 1)
    q = (qs.reshape(n, 2, 1, 32) >> _SHIFT_2BIT.reshape(1, 1, 4, 1)) & 3
    o = out.view(n, 16, 16)
    o.copy_(q.reshape(n, 16, 16))
    o.mul_(dl).sub_(ml)


def _q3_k(b: Tensor, out: Tensor) -> None:
    n = b.shape[0]
    hmask, qs, sc = b[:, :32], b[:, 32:96], b[:, 96:108]
    d = _f16(b, 108)
    low = _nibbles(sc[:, :8])  # (n, 16): low 4 bits of the 16 six-bit scales
    high = (sc[:, 8:12].reshape(n, 1, 4) >> _SHIFT_2BIT.reshape(1, 4, 1)) & 3
    scales = (low | (high.reshape(n, 16) << 4)).to(torch.int8) - 32
    dl = (d * scales.float()).reshape(n, 16, 1)
    ql = ((qs.reshape(n, 2, 1, 32) >> _SHIFT_2BIT.reshape(1, 1, 4, 1)) & 3).reshape(n, 16, 16)
    qh = ((hmask.reshape(n, 1, 1, 32) >> _SHIFT_1BIT.reshape(1, 1, 8, 1)) & 1).reshape(n, 16, 16)
    # A set mask bit means "no offset"; a clear one subtracts 4.
    o = out.view(n, 16, 16)
    o.copy_(ql.to(torch.int8) - ((qh ^ 1) << 2).to(torch.int8))
    o.mul_(dl)


def _k_scale_min(sc: Tensor) -> tuple[Tensor, Tensor]:
    """Unpack the 12-byte 6-bit scales and mins of Q4_K/Q5_K → two ``(n, 8)`` uint8 tensors."""
    n = sc.shape[0]
    s = sc.reshape(n, 3, 4)
    d, m, md = s[:, 0], s[:, 1], s[:, 2]
    scale = torch.cat((d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)), dim=1)
    mins = torch.cat((m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)), dim=1)
    return scale, mins


def _k_scales(b: Tensor) -> tuple[Tensor, Tensor]:
    """Q4_K/Q5_K: each sub-block's scale ``d * sc`` and offset ``dmin * m``, ``(n, 8, 1)``."""
    n = b.shape[0]
    d, dmin = _f16(b, 0), _f16(b, 2)
    sc, mn = _k_scale_min(b[:, 4:16])
    return (d * sc.float()).reshape(n, 8, 1), (dmin * mn.float()).reshape(n, 8, 1)


def _q4_k(b: Tensor, out: Tensor) -> None:
    n = b.shape[0]
    dl, ml = _k_scales(b)
    q = (b[:, 16:].reshape(n, 4, 1, 32) >> _SHIFT_4BIT.reshape(1, 1, 2, 1)) & 0x0F
    o = out.view(n, 8, 32)
    o.copy_(q.reshape(n, 8, 32))
    o.mul_(dl).sub_(ml)


def _q5_k(b: Tensor, out: Tensor) -> None:
    n = b.shape[0]
    dl, ml = _k_scales(b)
    qh, qs = b[:, 16:48], b[:, 48:]
    ql = (qs.reshape(n, 4, 1, 32) >> _SHIFT_4BIT.reshape(1, 1, 2, 1)) & 0x0F
    hi = (qh.reshape(n, 1, 1, 32) >> _SHIFT_1BIT.reshape(1, 1, 8, 1)) & 1
    o = out.view(n, 8, 32)
    o.copy_(ql.reshape(n, 8, 32) | (hi.reshape(n, 8, 32) << 4))
    o.mul_(dl).sub_(ml)


def _q6_k(b: Tensor, out: Tensor) -> None:
    n = b.shape[0]
    ql, qh, sc = b[:, :128], b[:, 128:192], b[:, 192:208]
    d = _f16(b, 208)
    dl = (d * sc.contiguous().view(torch.int8).float()).reshape(n, 16, 1)
    lo = (ql.reshape(n, 2, 1, 64) >> _SHIFT_4BIT.reshape(1, 1, 2, 1)) & 0x0F
    hi = (qh.reshape(n, 2, 1, 32) >> _SHIFT_2BIT.reshape(1, 1, 4, 1)) & 3
    q = (lo.reshape(n, 8, 32) | (hi.reshape(n, 8, 32) << 4)).to(torch.int8) - 32
    o = out.view(n, 16, 16)
    o.copy_(q.reshape(n, 16, 16))
    o.mul_(dl)


# numpy ports of the legacy types: ``(b, out, scratch)`` with ``b`` the ``(n, type_size)`` uint8
# blocks, ``out`` the ``(n, 32)`` float32 destination and ``scratch`` an ``(n, 32)`` uint8 buffer.
# Integers are converted into ``out`` first (exact), then scaled in place: a quarter faster than
# one mixed-type ``int8 * float32`` ufunc, which converts through a buffer.


def _np_scale(b: np.ndarray, start: int) -> np.ndarray:
    """The float16 at byte ``start`` of each block, as float32 ``(n, 1)``."""
    return b[:, start : start + 2].view("<f2").astype(np.float32)


def _np_nibbles(qs: np.ndarray, scratch: np.ndarray) -> np.ndarray:
    """``(n, 16)`` bytes → ``scratch`` ``(n, 32)``: low nibbles, then high nibbles (ggml's order)."""
    np.bitwise_and(qs, 0x0F, out=scratch[:, :16])
    np.right_shift(qs, 4, out=scratch[:, 16:])
    return scratch


def _np_q4_0(b: np.ndarray, out: np.ndarray, scratch: np.ndarray) -> None:
    q = _np_nibbles(b[:, 2:], scratch)
    np.subtract(q, 8, out=q)  # wraps in uint8; read as int8 it is q - 8
    out[...] = q.view(np.int8)
    out *= _np_scale(b, 0)


def _np_q4_1(b: np.ndarray, out: np.ndarray, scratch: np.ndarray) -> None:
    out[...] = _np_nibbles(b[:, 4:], scratch)
    out *= _np_scale(b, 0)
    out += _np_scale(b, 2)


def _np_q8_0(b: np.ndarray, out: np.ndarray, scratch: np.ndarray) -> None:
    out[...] = b[:, 2:].view(np.int8)
    out *= _np_scale(b, 0)


NUMPY_PORTS: dict[int, Callable[[np.ndarray, np.ndarray, np.ndarray], None]] = {
    2: _np_q4_0,
    3: _np_q4_1,
    8: _np_q8_0,
}
# Blocks per numpy step: 2048 blocks of 32 floats (256 KiB) stay in a core's L2 between ops.
_NP_CHUNK_BLOCKS = 2048

# Raw types reinterpret their bytes (F16/BF16 keep their dtype; the loader may convert).
RAW_VIEWS: dict[int, Callable[[Tensor], Tensor]] = {0: _f32, 1: _f16_raw, 30: _bf16_raw}
QUANTIZED: dict[int, Callable[[Tensor, Tensor], None]] = {
    2: _q4_0,
    3: _q4_1,
    6: _q5_0,
    7: _q5_1,
    8: _q8_0,
    10: _q2_k,
    11: _q3_k,
    12: _q4_k,
    13: _q5_k,
    14: _q6_k,
}
SUPPORTED = frozenset(RAW_VIEWS) | frozenset(QUANTIZED)
# Elements per step. Below ATen's grain size (32768) every op runs on the calling thread: with
# two busy cores, OpenMP regions that wait on a descheduled worker made loads 10-40x slower;
# inline, a step costs microseconds and memory-bound decoding gains nothing from threads.
_CHUNK_ELEMENTS = 32768
# Byte offsets of each block's float16 scales: a quantized block decodes to finite values exactly
# when these are finite (integers times finite scales stay far below float32's range).
SCALE_OFFSETS: dict[int, tuple[int, ...]] = {
    2: (0,), 3: (0, 2), 6: (0,), 7: (0, 2), 8: (0,),
    10: (80, 82), 11: (108,), 12: (0, 2), 13: (0, 2), 14: (208,),
}  # fmt: skip


def tensor_nbytes(ggml_type: int, n_elements: int) -> int:
    """Bytes a tensor of ``n_elements`` occupies (``n_elements`` must fill whole blocks)."""
    _, block, size = GGML_TYPES[ggml_type]
    return n_elements // block * size


def is_finite(raw: np.ndarray, ggml_type: int) -> bool:
    """Whether the tensor in the uint8 bytes ``raw`` decodes to finite values only.

    Reads only the bytes that matter (scales, or the raw floats), in numpy, on one thread.
    """
    if ggml_type == 0:
        return bool(np.isfinite(raw.view("<f4")).all())
    # Half types on their bits: a value is NaN or Inf exactly when its exponent is all ones.
    if ggml_type == 1:
        return not bool(((raw.view("<u2") & 0x7C00) == 0x7C00).any())
    if ggml_type == 30:
        return not bool(((raw.view("<u2") & 0x7F80) == 0x7F80).any())
    size = GGML_TYPES[ggml_type][2]
    blocks = raw.reshape(-1, size)
    return all(
        not bool(((blocks[:, off : off + 2].view("<u2") & 0x7C00) == 0x7C00).any())
        for off in SCALE_OFFSETS[ggml_type]
    )


def dequantize_into(raw: Tensor, ggml_type: int, out: Tensor) -> None:
    """Decode the uint8 bytes ``raw`` of a quantized type into the float32 tensor ``out``.

    ``out`` must be contiguous. Safe to call from several threads at once on different tensors.
    """
    _, block, size = GGML_TYPES[ggml_type]
    if ggml_type in NUMPY_PORTS:
        port = NUMPY_PORTS[ggml_type]
        src = raw.numpy().reshape(-1, size)
        dst_np = out.numpy().reshape(-1, block)
        scratch = np.empty((min(_NP_CHUNK_BLOCKS, src.shape[0]), block), dtype=np.uint8)
        for start in range(0, src.shape[0], _NP_CHUNK_BLOCKS):
            b = src[start : start + _NP_CHUNK_BLOCKS]
            port(b, dst_np[start : start + _NP_CHUNK_BLOCKS], scratch[: b.shape[0]])
        return
    fn = QUANTIZED[ggml_type]
    blocks = raw.reshape(-1, size)
    dst = out.view(-1, block)
    step = max(1, _CHUNK_ELEMENTS // block)
    for start in range(0, blocks.shape[0], step):
        fn(blocks[start : start + step], dst[start : start + step])


def dequantize(raw: Tensor, ggml_type: int, shape: tuple[int, ...]) -> Tensor:
    """Decode the uint8 tensor ``raw`` holding one tensor of ``ggml_type`` into ``shape``.

    Quantized types give float32; F32/F16/BF16 give a view of ``raw`` in their own dtype.

    Examples
    --------
    >>> raw = torch.tensor([0, 60] + [1, 255] * 16, dtype=torch.uint8)  # d = 1.0 (f16 0x3C00)
    >>> dequantize(raw, TYPE_IDS["Q8_0"], (32,))[:4]
    tensor([ 1., -1.,  1., -1.])
    """
    if ggml_type in RAW_VIEWS:
        return RAW_VIEWS[ggml_type](raw).reshape(shape)
    if ggml_type not in QUANTIZED:
        raise NotImplementedError(f"no torch dequantizer for ggml type {GGML_TYPES[ggml_type][0]}")
    out = torch.empty(shape, dtype=torch.float32)
    dequantize_into(raw, ggml_type, out)
    return out


def quantize_q8_0(x: Tensor) -> Tensor:
    """Quantize float32 ``x`` (last dim a multiple of 32) to Q8_0 bytes ``(..., n/32*34)``.

    A port of ``gguf.quants.Q8_0.quantize_blocks`` (bit-exact with ggml's reference): scale
    ``d = max|x| / 127`` stored as float16, values rounded half away from zero.
    """
    if x.shape[-1] % 32:
        raise ValueError(f"Q8_0 needs rows that are a multiple of 32, got {x.shape[-1]}")
    blocks = x.detach().float().reshape(-1, 32)
    d = blocks.abs().amax(dim=1, keepdim=True) / 127
    inv = torch.where(d == 0, torch.zeros_like(d), 1 / d)
    v = blocks * inv
    a = v.abs()
    fl = a.floor()
    q = torch.sign(v) * (fl + (2 * (a - fl)).floor())  # round half away from zero
    out = torch.cat(
        (d.half().view(torch.uint8).reshape(-1, 2), q.to(torch.int8).view(torch.uint8)), dim=1
    )
    return out.reshape(*x.shape[:-1], x.shape[-1] // 32 * 34)
