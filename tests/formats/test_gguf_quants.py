"""Our torch dequantizers must agree bit for bit with gguf-py's numpy reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from gguf.quants import dequantize as ref_dequantize
from gguf.quants import quantize as ref_quantize

from workbench.formats.gguf_quants import (
    GGML_TYPES,
    QUANTIZED,
    SCALE_OFFSETS,
    TYPE_IDS,
    dequantize,
    is_finite,
    quantize_q8_0,
)

QUANT_NAMES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]


def random_blocks(type_id: int, n_blocks: int, seed: int) -> np.ndarray:
    """Random payload bytes with random finite, nonzero float16 scales."""
    rng = np.random.default_rng(seed)
    _, _, size = GGML_TYPES[type_id]
    blocks = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    for off in SCALE_OFFSETS[type_id]:
        mag = rng.uniform(1e-4, 4.0, size=n_blocks) * rng.choice([-1.0, 1.0], size=n_blocks)
        blocks[:, off : off + 2] = mag.astype(np.float16).view(np.uint8).reshape(n_blocks, 2)
    return blocks


def test_every_ported_type_is_tested() -> None:
    assert {TYPE_IDS[n] for n in QUANT_NAMES} == set(QUANTIZED)


@pytest.mark.parametrize("name", QUANT_NAMES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dequantize_bit_exact(name: str, seed: int) -> None:
    tid = TYPE_IDS[name]
    _, block, size = GGML_TYPES[tid]
    rows, blocks_per_row = 7, 3
    raw = random_blocks(tid, rows * blocks_per_row, seed).reshape(rows, blocks_per_row * size)
    expected = ref_dequantize(raw, GGMLQuantizationType(tid))
    ours = dequantize(torch.from_numpy(raw.copy()).reshape(-1), tid, (rows, blocks_per_row * block))
    assert ours.dtype == torch.float32
    assert expected.shape == tuple(ours.shape)
    np.testing.assert_array_equal(ours.numpy().view(np.uint32), expected.view(np.uint32))


@pytest.mark.parametrize("name,np_dtype", [("F32", np.float32), ("F16", np.float16)])
def test_raw_float_types(name: str, np_dtype: type) -> None:
    tid = TYPE_IDS[name]
    x = np.random.default_rng(3).standard_normal((5, 8)).astype(np_dtype)
    raw = x.view(np.uint8)
    expected = ref_dequantize(raw.reshape(5, -1), GGMLQuantizationType(tid))
    ours = dequantize(torch.from_numpy(raw.copy()).reshape(-1), tid, (5, 8))
    np.testing.assert_array_equal(ours.float().numpy(), expected)


def test_bf16_matches_reference() -> None:
    x = np.random.default_rng(4).standard_normal((4, 16)).astype(np.float32)
    raw = ref_quantize(x, GGMLQuantizationType.BF16)
    expected = ref_dequantize(raw, GGMLQuantizationType.BF16)
    ours = dequantize(torch.from_numpy(raw.copy()).reshape(-1), TYPE_IDS["BF16"], (4, 16))
    assert ours.dtype == torch.bfloat16
    np.testing.assert_array_equal(ours.float().numpy(), expected)


@pytest.mark.parametrize("seed", [0, 1])
def test_quantize_q8_0_matches_reference(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(6, 96, generator=g) * torch.rand(6, 1, generator=g) * 3
    x[0, :32] = 0.0  # an all-zero block takes the d == 0 branch
    x[1, 5] = 2.5 * x[1].abs().max()  # exact halves after scaling are rare; a spike varies d
    ours = quantize_q8_0(x)
    expected = ref_quantize(x.numpy(), GGMLQuantizationType.Q8_0)
    np.testing.assert_array_equal(ours.numpy(), expected)
    back = dequantize(ours.reshape(-1), TYPE_IDS["Q8_0"], (6, 96))
    np.testing.assert_array_equal(back.numpy(), ref_dequantize(expected, GGMLQuantizationType.Q8_0))


def test_is_finite_reads_scales() -> None:
    tid = TYPE_IDS["Q4_K"]
    raw = random_blocks(tid, 4, 0)
    assert is_finite(raw.reshape(-1), tid)
    raw[2, 2:4] = np.array([np.inf], dtype=np.float16).view(np.uint8)  # dmin of block 2
    assert not is_finite(raw.reshape(-1), tid)
    bf = np.array([0x3F80, 0x7FC0], dtype="<u2").view(np.uint8)  # 1.0, NaN
    assert not is_finite(bf, TYPE_IDS["BF16"])
    assert is_finite(bf[:2], TYPE_IDS["BF16"])
