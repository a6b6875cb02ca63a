"""Our bounded GGUF reader against gguf-py's GGUFReader, on files gguf-py's writer produced."""

from __future__ import annotations

import math
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf import GGUFValueType as V

from tests.formats.test_gguf_quants import random_blocks
from workbench.formats.gguf import is_gguf, read_gguf
from workbench.formats.gguf_reader import open_gguf

SCALARS = {
    "t.u8": (V.UINT8, 200),
    "t.i8": (V.INT8, -100),
    "t.u16": (V.UINT16, 60000),
    "t.i16": (V.INT16, -30000),
    "t.u32": (V.UINT32, 4_000_000_000),
    "t.i32": (V.INT32, -2_000_000_000),
    "t.f32": (V.FLOAT32, 0.1),
    "t.bool": (V.BOOL, True),
    "t.str": (V.STRING, "naïve ☕ 日本語 \U0001f600"),
    "t.u64": (V.UINT64, 2**64 - 1),
    "t.i64": (V.INT64, -(2**62)),
    "t.f64": (V.FLOAT64, 1e-300),
}
ARRAYS = {
    "a.u8": (V.UINT8, [0, 1, 255]),
    "a.i16": (V.INT16, [-5, 7]),
    "a.i32": (V.INT32, list(range(-3, 40))),
    "a.f32": (V.FLOAT32, [0.5, -1.25, 3.0]),
    "a.bool": (V.BOOL, [True, False, True]),
    "a.str": (V.STRING, ["", "Ġthe", "<|im_start|>", "ü", "\n"]),
    "a.u64": (V.UINT64, [2**63, 1]),
    "a.f64": (V.FLOAT64, [math.pi]),
}
NESTED = [[1, 2, 3], [4], [5, 6]]
NESTED_STR = [["a", "bé"], ["☕"]]

TENSOR_TYPES = [
    "F32",
    "F16",
    "BF16",
    "Q8_0",
    "Q4_0",
    "Q4_1",
    "Q5_0",
    "Q5_1",
    "Q2_K",
    "Q3_K",
    "Q4_K",
    "Q5_K",
    "Q6_K",
]


def write_reference_file(path: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """A GGUF with metadata of every value type and a tensor of every type we decode."""
    w = gguf.GGUFWriter(path, "llama")
    for key, (vt, val) in SCALARS.items():
        w.add_key_value(key, val, vt)
    for key, (vt, val) in ARRAYS.items():
        w.add_key_value(key, val, V.ARRAY, sub_type=vt)
    w.add_key_value("a.nested", NESTED, V.ARRAY, sub_type=V.ARRAY)
    w.add_key_value("a.nested_str", NESTED_STR, V.ARRAY, sub_type=V.ARRAY)
    rng = np.random.default_rng(seed)
    raw: dict[str, np.ndarray] = {}
    for i, name in enumerate(TENSOR_TYPES):
        qt = Q[name]
        block, _ = gguf.GGML_QUANT_SIZES[qt]
        shape = (3, 2, 256) if i % 2 else (5, 512)  # torch order; 3-D too
        if name in ("F32", "F16"):
            data = rng.standard_normal(shape).astype(np.float32 if name == "F32" else np.float16)
            w.add_tensor(f"t.{name}", data)
            raw[f"t.{name}"] = data.view(np.uint8)
            continue
        if name == "BF16":
            data = gguf.quants.quantize(rng.standard_normal(shape).astype(np.float32), qt)
        else:
            n_blocks = math.prod(shape) // block
            data = random_blocks(int(qt), n_blocks, seed + i).reshape(*shape[:-1], -1)
        w.add_tensor(f"t.{name}", data, raw_shape=data.shape, raw_dtype=qt)
        raw[f"t.{name}"] = data
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return raw


@pytest.fixture(scope="module")
def ref_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gguf") / "ref.gguf"
    write_reference_file(path)
    return path


def test_metadata_matches_gguf_reader(ref_file: Path) -> None:
    header, _ = open_gguf(ref_file)
    reader = gguf.GGUFReader(ref_file)
    fields = {k: f for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert list(header.metadata) == list(fields)
    for key, field in fields.items():
        if key.startswith("a.nested"):
            continue  # GGUFReader.contents() cannot read nested arrays (a FIXME in gguf-py)
        expected = field.contents()
        assert header.metadata[key] == expected, key
        assert list(header.value_types[key]) == [int(t) for t in field.types], key
    assert header.metadata["a.nested"] == NESTED
    assert header.metadata["a.nested_str"] == NESTED_STR
    assert header.metadata["t.str"] == SCALARS["t.str"][1]
    assert header.version == 3 and header.alignment == 32


def test_tensors_match_gguf_reader(ref_file: Path) -> None:
    loaded = read_gguf(ref_file)
    reader = gguf.GGUFReader(ref_file)
    assert [t.name for t in reader.tensors] == list(loaded.tensors)
    for t in reader.tensors:
        ours = loaded.tensors[t.name]
        assert tuple(ours.shape) == tuple(int(d) for d in reversed(t.shape)), t.name
        expected = gguf.quants.dequantize(t.data, t.tensor_type).reshape(ours.shape)
        np.testing.assert_array_equal(ours.float().numpy(), expected, err_msg=t.name)
    assert loaded.tensors["t.F16"].dtype == torch.float16
    assert loaded.tensors["t.BF16"].dtype == torch.bfloat16
    assert loaded.tensors["t.Q4_K"].dtype == torch.float32
    assert loaded.format == "gguf"


def test_loaded_tensors_are_writable_and_leave_the_file_alone(ref_file: Path) -> None:
    before = ref_file.read_bytes()
    loaded = read_gguf(ref_file)
    loaded.tensors["t.F32"].add_(1.0)  # a view on a copy-on-write mapping
    assert ref_file.read_bytes() == before


def test_is_gguf(ref_file: Path) -> None:
    assert is_gguf(ref_file.read_bytes()[:8])
    assert not is_gguf(b"\x00" * 8)


def test_nonfinite_weights_are_refused(tmp_path: Path) -> None:
    for name in ("F32", "Q8_0"):
        w = gguf.GGUFWriter(tmp_path / f"{name}.gguf", "llama")
        if name == "F32":
            w.add_tensor("x", np.array([1.0, np.nan], dtype=np.float32))
        else:
            blocks = random_blocks(int(Q.Q8_0), 2, 0)
            blocks[1, :2] = np.array([np.inf], dtype=np.float16).view(np.uint8)
            w.add_tensor("x", blocks, raw_shape=blocks.shape, raw_dtype=Q.Q8_0)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        with pytest.raises(Exception, match="NaN or Inf"):
            read_gguf(tmp_path / f"{name}.gguf")
        loaded = read_gguf(tmp_path / f"{name}.gguf", allow_nonfinite=True)
        assert not bool(torch.isfinite(loaded.tensors["x"]).all())
