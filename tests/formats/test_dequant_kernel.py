"""The C++ dequantization kernel (csrc/dequant_cpu.cpp) against gguf-py and our numpy/torch
ports, bit for bit, on random blocks of every type it decodes; and the loader on both paths."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from gguf.quants import dequantize as ref_dequantize

from tests.formats.llama_cpp_files import convert_permute
from tests.formats.test_gguf_model import llama_cpp_tensors, write_llama_cpp_file
from tests.formats.test_gguf_quants import QUANT_NAMES, random_blocks
from workbench.formats import WeightLoadError, _dequant_build, load_model
from workbench.formats.gguf import read_gguf, read_gguf_model_state
from workbench.formats.gguf_quants import GGML_TYPES, QUANTIZED, SCALE_OFFSETS, TYPE_IDS
from workbench.formats.gguf_quants import dequantize as port_dequantize
from workbench.models import ModelConfig, Transformer


@pytest.fixture
def kernel() -> None:
    if not _dequant_build.ensure_loaded():
        pytest.skip(f"dequantization kernel unavailable: {_dequant_build.kernel_state()['reason']}")


def kernel_decode(
    raw: np.ndarray,
    tid: int,
    dtype: torch.dtype = torch.float32,
    rows: torch.Tensor | None = None,
    threads: int = 2,
) -> tuple[torch.Tensor, int]:
    """The kernel's decode of the ``(n_blocks, type_size)`` blocks ``raw``, and its count of
    blocks with a non-finite scale."""
    out = torch.empty(raw.shape[0] * GGML_TYPES[tid][1], dtype=dtype)
    raw_t = torch.from_numpy(np.ascontiguousarray(raw).reshape(-1))
    (bad,) = _dequant_build.dequantize_many([raw_t], [tid], [out], [rows], threads)
    return out, bad


def bits(t: torch.Tensor | np.ndarray) -> np.ndarray:
    arr = t.numpy() if isinstance(t, torch.Tensor) else t
    return arr.view(np.uint32 if arr.dtype == np.float32 else np.uint16)


def test_kernel_covers_every_port() -> None:
    assert frozenset(QUANTIZED) == _dequant_build.KERNEL_TYPES


@pytest.mark.usefixtures("kernel")
@pytest.mark.parametrize("name", QUANT_NAMES)
@pytest.mark.parametrize("seed", [0, 1])
def test_bit_exact_with_gguf_py_and_the_port(name: str, seed: int) -> None:
    tid = TYPE_IDS[name]
    _, block, _ = GGML_TYPES[tid]
    n_blocks = 301  # not a multiple of the kernel's chunk: a short last chunk
    raw = random_blocks(tid, n_blocks, seed)
    # subnormal and largest float16 scales in a few blocks
    for off in SCALE_OFFSETS[tid]:
        raw[3, off : off + 2] = np.array([3e-6], dtype=np.float16).view(np.uint8)
        raw[4, off : off + 2] = np.array([-65504.0], dtype=np.float16).view(np.uint8)
    ours, bad = kernel_decode(raw, tid)
    assert bad == 0
    expected = ref_dequantize(raw, GGMLQuantizationType(tid)).reshape(-1)
    np.testing.assert_array_equal(bits(ours), bits(expected.astype(np.float32)))
    port = port_dequantize(torch.from_numpy(raw.reshape(-1).copy()), tid, (n_blocks * block,))
    assert torch.equal(ours.view(torch.int32), port.view(torch.int32))
    assert not (ours == 0).all()


@pytest.mark.usefixtures("kernel")
@pytest.mark.parametrize("name", QUANT_NAMES)
def test_bfloat16_output_is_the_cast_of_float32(name: str) -> None:
    tid = TYPE_IDS[name]
    raw = random_blocks(tid, 40, 7)
    f32, _ = kernel_decode(raw, tid)
    bf16, bad = kernel_decode(raw, tid, torch.bfloat16)
    assert bad == 0 and bf16.dtype == torch.bfloat16
    assert torch.equal(bf16.view(torch.int16), f32.to(torch.bfloat16).view(torch.int16))


@pytest.mark.usefixtures("kernel")
@pytest.mark.parametrize("name", ["Q4_1", "Q5_0", "Q6_K", "Q3_K"])
def test_rows_taken_in_the_given_order(name: str) -> None:
    tid = TYPE_IDS[name]
    n_rows, per_row = 12, 3
    raw = random_blocks(tid, n_rows * per_row, 11)
    order = torch.randperm(n_rows, generator=torch.Generator().manual_seed(2))
    got, _ = kernel_decode(raw, tid, rows=order)
    plain, _ = kernel_decode(raw, tid)
    assert torch.equal(got.view(n_rows, -1), plain.view(n_rows, -1)[order])


@pytest.mark.usefixtures("kernel")
def test_threads_and_many_tensors_in_one_call() -> None:
    gen = np.random.default_rng(5)
    raws, types, outs, wants = [], [], [], []
    for k, name in enumerate(QUANT_NAMES * 2):
        tid = TYPE_IDS[name]
        _, block, _ = GGML_TYPES[tid]
        n_blocks = int(gen.integers(1, 2000 if block == 32 else 300))
        raw = random_blocks(tid, n_blocks, 100 + k)
        raws.append(torch.from_numpy(raw.reshape(-1)))
        types.append(tid)
        outs.append(torch.empty(n_blocks * block))
        wants.append(ref_dequantize(raw, GGMLQuantizationType(tid)).reshape(-1))
    for threads in (1, 3, 8):
        for out in outs:
            out.fill_(float("nan"))
        counts = _dequant_build.dequantize_many(raws, types, outs, [None] * len(raws), threads)
        assert counts == [0] * len(raws)
        for out, want in zip(outs, wants, strict=True):
            np.testing.assert_array_equal(bits(out), bits(want.astype(np.float32)))


@pytest.mark.usefixtures("kernel")
@pytest.mark.parametrize("name", QUANT_NAMES)
def test_nonfinite_scales_are_counted(name: str) -> None:
    tid = TYPE_IDS[name]
    raw = random_blocks(tid, 50, 3)
    offsets = SCALE_OFFSETS[tid]
    raw[7, offsets[0] : offsets[0] + 2] = np.array([np.inf], dtype=np.float16).view(np.uint8)
    raw[30, offsets[-1] : offsets[-1] + 2] = np.array([np.nan], dtype=np.float16).view(np.uint8)
    out, bad = kernel_decode(raw, tid)
    assert bad == 2
    with np.errstate(invalid="ignore"):  # gguf-py multiplies NaN and Inf too
        expected = ref_dequantize(raw, GGMLQuantizationType(tid)).reshape(-1)
    finite = np.isfinite(expected)
    assert not finite.all()
    np.testing.assert_array_equal(np.isfinite(out.numpy()), finite)
    np.testing.assert_array_equal(bits(out)[finite], bits(expected.astype(np.float32))[finite])


# ---------------------------------------------------------------------------- the loader

CFG = ModelConfig.preset(
    "tiny-llama",
    n_embd=256,
    n_head=4,
    n_kv_head=2,
    intermediate_size=512,
    n_layer=2,
    norm_eps=float(np.float32(1e-5)),
)
# Each weight matrix of the file gets a different type; norms stay F32.
WEIGHT_TYPES = {
    "token_embd": "Q8_0",
    "attn_q": "Q4_1",
    "attn_k": "Q5_0",
    "attn_v": "Q4_K",
    "attn_output": "Q5_1",
    "ffn_gate": "Q2_K",
    "ffn_up": "Q3_K",
    "ffn_down": "Q6_K",
}


def quantized_llama(path: Path, *, bad_tensor: str | None = None) -> dict[str, np.ndarray]:
    """A llama-layout GGUF whose weights are random blocks; their gguf-py decodes by name."""
    sd = {k: v.numpy() for k, v in Transformer(CFG, seed=1).state_dict().items()}
    tensors: dict[str, Any] = {}
    decoded: dict[str, np.ndarray] = {}
    for seed, (name, like) in enumerate(llama_cpp_tensors(CFG, sd).items()):
        kind = name.split(".")[-2]
        if kind not in WEIGHT_TYPES:
            tensors[name] = like
            continue
        tid = TYPE_IDS[WEIGHT_TYPES[kind]]
        n_blocks = like.size // GGML_TYPES[tid][1]
        raw = random_blocks(tid, n_blocks, seed)
        if name == bad_tensor:
            off = SCALE_OFFSETS[tid][0]
            raw[n_blocks // 2, off : off + 2] = np.array([np.nan], np.float16).view(np.uint8)
        raw = raw.reshape(like.shape[0], -1)
        with np.errstate(invalid="ignore"):
            decoded[name] = ref_dequantize(raw, GGMLQuantizationType(tid)).reshape(like.shape)
        tensors[name] = (raw, tid)
    write_llama_cpp_file(path, CFG, tensors)
    return decoded


def read_both(
    read: Callable[[], dict[str, torch.Tensor]],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``read()`` with the kernel, then with the ports: the same names and bits."""
    assert _dequant_build.ensure_loaded(), _dequant_build.kernel_state()
    fast = read()
    _dequant_build._reset_for_tests("reference")
    try:
        slow = read()
    finally:
        _dequant_build._reset_for_tests(None)
    assert set(fast) == set(slow)
    for name in fast:
        assert fast[name].dtype == slow[name].dtype, name
        assert torch.equal(fast[name].view(torch.uint8), slow[name].view(torch.uint8)), name
    return fast, slow


@pytest.mark.usefixtures("kernel")
def test_read_gguf_kernel_equals_gguf_py_and_the_ports(tmp_path: Path) -> None:
    path = tmp_path / "q.gguf"
    decoded = quantized_llama(path)
    fast, _ = read_both(lambda: read_gguf(path).tensors)
    for name, want in decoded.items():
        np.testing.assert_array_equal(bits(fast[name]), bits(want.astype(np.float32)), name)


@pytest.mark.usefixtures("kernel")
def test_one_pass_reorders_qk_rows_like_the_ports(tmp_path: Path) -> None:
    path = tmp_path / "q.gguf"
    decoded = quantized_llama(path)
    fast, _ = read_both(lambda: read_gguf_model_state(path).state_dict)
    # q rows are llama.cpp's permutation of ours: permuting ours back gives the file's
    q = fast["blocks.1.attn.q.weight"].numpy()
    np.testing.assert_array_equal(convert_permute(q, CFG.n_head), decoded["blk.1.attn_q.weight"])


@pytest.mark.usefixtures("kernel")
def test_bfloat16_load_decodes_straight_to_bfloat16(tmp_path: Path) -> None:
    path = tmp_path / "q.gguf"
    quantized_llama(path)
    model, _ = load_model(path, dtype="bfloat16")
    f32, _ = load_model(path, dtype="float32")
    got, ref = model.state_dict(), f32.state_dict()
    for name, t in got.items():
        assert t.dtype == torch.bfloat16, name
        assert torch.equal(t.view(torch.int16), ref[name].to(torch.bfloat16).view(torch.int16))
    state = read_gguf_model_state(path, dtype=torch.bfloat16)
    assert state.state_dict["blocks.0.mlp.down.weight"].dtype == torch.bfloat16
    assert state.state_dict["norm.weight"].dtype == torch.float32  # F32 in the file: cast later
    # without the kernel: decoded to float32, then cast, to the same bits
    read_both(lambda: load_model(path, dtype="bfloat16")[0].state_dict())


@pytest.mark.parametrize("path_kind", ["kernel", "reference"])
def test_nonfinite_block_refused_on_both_paths(tmp_path: Path, path_kind: str) -> None:
    path = tmp_path / "q.gguf"
    quantized_llama(path, bad_tensor="blk.1.ffn_up.weight")
    _dequant_build._reset_for_tests(None if path_kind == "kernel" else "reference")
    try:
        if path_kind == "kernel" and not _dequant_build.ensure_loaded():
            pytest.skip(f"kernel unavailable: {_dequant_build.kernel_state()['reason']}")
        with pytest.raises(WeightLoadError, match=r"'blk\.1\.ffn_up\.weight' contains NaN or Inf"):
            read_gguf_model_state(path)
        loaded = read_gguf(path, allow_nonfinite=True)
        assert not bool(torch.isfinite(loaded.tensors["blk.1.ffn_up.weight"]).all())
    finally:
        _dequant_build._reset_for_tests(None)


def test_without_a_compiler_the_ports_decode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "q.gguf"
    decoded = quantized_llama(path)
    monkeypatch.setattr(_dequant_build, "kernel_sources_dir", lambda: tmp_path / "nowhere")
    _dequant_build._reset_for_tests(None)
    try:
        with pytest.warns(RuntimeWarning, match="source missing"):
            loaded = read_gguf(path)
        assert _dequant_build.kernel_state()["impl"] == "reference"
    finally:
        _dequant_build._reset_for_tests(None)
    for name, want in decoded.items():
        np.testing.assert_array_equal(bits(loaded.tensors[name]), bits(want.astype(np.float32)))


_LOAD = (
    "from workbench.formats import _dequant_build as b; assert b.ensure_loaded(), b.kernel_state()"
)


@pytest.mark.slow
def test_a_fresh_cache_builds_and_a_cut_library_is_linked_again(tmp_path: Path) -> None:
    env = {**os.environ, "WORKBENCH_CACHE_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", _LOAD], env=env, check=True, timeout=600)
    (library,) = tmp_path.glob("kernels/dequant-*/workbench_dequant.so")
    size = library.stat().st_size
    assert (library.parent / "built").read_text() == str(size)
    subprocess.run([sys.executable, "-c", _LOAD], env=env, check=True, timeout=60)
    with open(library, "r+b") as f:  # as a build killed while linking leaves it
        f.truncate(size // 3)
    subprocess.run([sys.executable, "-c", _LOAD], env=env, check=True, timeout=600)
    assert library.stat().st_size == size
