"""Malformed SafeTensors files: each must raise WeightLoadError saying what is wrong."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.formats.harness import assert_clean, check_files, write_mutants
from workbench.formats import WeightLoadError, load_weights, save_weights
from workbench.models import ModelConfig, Transformer

MICRO = ModelConfig(family="gpt2", vocab_size=257, n_ctx=16, n_embd=8, n_layer=1, n_head=2)
A = {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}
B = {"dtype": "F16", "shape": [4], "data_offsets": [24, 32]}
DATA = struct.pack("<6f", *range(6)) + torch.ones(4, dtype=torch.float16).numpy().tobytes()


def blob(header: Any, data: bytes = DATA, length: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def h(**tensors: Any) -> dict[str, Any]:
    return {"a": A, "b": B, **tensors}


def cases() -> list[tuple[str, bytes, str]]:
    nan = struct.pack("<6f", 0, 1, float("nan"), 3, 4, 5) + DATA[24:]
    inf = struct.pack("<6f", 0, 1, float("inf"), 3, 4, 5) + DATA[24:]
    f16inf = (
        DATA[:24] + torch.tensor([1, float("inf"), 1, 1], dtype=torch.float16).numpy().tobytes()
    )
    many = {f"t{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(100_002)}
    deep = b'{"__metadata__":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    c = [
        ("empty", b"", "unrecognised format"),
        ("seven_bytes", b"\x08\0\0\0\0\0\0", "unrecognised format"),
        ("len_zero", struct.pack("<Q", 0) + b"{}", "header length 0 is outside"),
        ("len_max_u64", blob(h(), length=2**64 - 1), "is outside"),
        ("len_2_63", blob(h(), length=2**63), "is outside"),
        ("len_past_end", blob(h(), length=10_000), "runs past the end"),
        (
            "len_one_past_end",
            blob(h(), data=b"", length=len(json.dumps(h())) + 1),
            "runs past the end",
        ),
        ("len_short", blob(h(), length=5), "not valid JSON"),
        ("not_json", blob(b"{nope}"), "not valid JSON"),
        ("bad_utf8", blob(b'{"\xff": 1}'), "not valid UTF-8"),
        ("trailing_garbage", blob(json.dumps(h()).encode() + b"xyz"), "not valid JSON"),
        ("nul_padding", blob(json.dumps(h()).encode() + b"\0\0"), "not valid JSON"),
        ("deep_nesting", blob(deep, b""), "nested too deeply"),
        (
            "huge_int",
            blob(b'{"a": {"dtype": "F32", "shape": [1' + b"0" * 5000 + b"]}}"),
            "not valid JSON",
        ),
        (
            "duplicate_name",
            blob(
                b'{"a": %s, "a": %s, "b": %s}'
                % ((json.dumps(A).encode(),) * 2 + (json.dumps(B).encode(),))
            ),
            "duplicate key",
        ),
        ("too_many_tensors", blob(many, b""), "exceed the limit"),
        ("meta_not_dict", blob(h(__metadata__=[1])), "__metadata__ must map"),
        ("meta_value_int", blob(h(__metadata__={"k": 1})), "__metadata__ must map"),
        ("info_not_dict", blob(h(a=[1, 2])), "must be an object"),
        (
            "info_missing_dtype",
            blob(h(a={"shape": [2, 3], "data_offsets": [0, 24]})),
            "must be an object",
        ),
        ("info_extra_key", blob(h(a={**A, "x": 1})), "must be an object"),
        ("dtype_unknown", blob(h(a={**A, "dtype": "F8_E4M3"})), "unsupported dtype"),
        ("dtype_lower", blob(h(a={**A, "dtype": "f32"})), "unsupported dtype"),
        ("dtype_int", blob(h(a={**A, "dtype": 7})), "unsupported dtype"),
        ("dtype_null", blob(h(a={**A, "dtype": None})), "unsupported dtype"),
        ("dtype_wrong_size", blob(h(a={**A, "dtype": "F64"})), "needs 48 bytes"),
        ("shape_negative", blob(h(a={**A, "shape": [-2, -3]})), "non-negative integers"),
        ("shape_float", blob(h(a={**A, "shape": [2.0, 3]})), "non-negative integers"),
        ("shape_bool", blob(h(a={**A, "shape": [True, 6]})), "non-negative integers"),
        ("shape_string", blob(h(a={**A, "shape": "2,3"})), "non-negative integers"),
        ("shape_9_dims", blob(h(a={**A, "shape": [1] * 8 + [6]})), "9 dimensions"),
        ("shape_100_dims", blob(h(a={**A, "shape": [1] * 100})), "100 dimensions"),
        ("shape_absurd", blob(h(a={**A, "shape": [2**40, 2**40]})), "needs"),
        ("shape_product_mismatch", blob(h(a={**A, "shape": [2, 4]})), "needs 32 bytes"),
        ("shape_zero_with_bytes", blob(h(a={**A, "shape": [0, 3]})), "needs 0 bytes"),
        ("scalar_with_bytes", blob(h(a={**A, "shape": []})), "needs 4 bytes"),
        ("offsets_three", blob(h(a={**A, "data_offsets": [0, 12, 24]})), "data_offsets must be"),
        ("offsets_reversed", blob(h(a={**A, "data_offsets": [24, 0]})), "data_offsets must be"),
        ("offsets_negative", blob(h(a={**A, "data_offsets": [-24, 0]})), "data_offsets must be"),
        ("offsets_float", blob(h(a={**A, "data_offsets": [0.0, 24.0]})), "data_offsets must be"),
        ("offsets_string", blob(h(a={**A, "data_offsets": "0-24"})), "data_offsets must be"),
        (
            "offsets_nan",
            blob(b'{"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [NaN, 24]}}'),
            "data_offsets must be",
        ),
        (
            "offsets_past_end",
            blob(h(b={**B, "data_offsets": [2**40, 2**40 + 8]})),
            "runs past the end",
        ),
        ("offsets_huge", blob(h(b={**B, "data_offsets": [2**64 - 8, 2**64]})), "runs past the end"),
        ("overlap", blob(h(b={**B, "data_offsets": [20, 28]}), DATA[:28]), "overlap"),
        ("overlap_same", blob(h(b={**A})), "overlap"),
        ("gap", blob(h(b={**B, "data_offsets": [28, 36]}), DATA + b"\0" * 4), "unused bytes"),
        ("trailing_bytes", blob(h(), DATA + b"\0" * 8), "after the last tensor"),
        ("truncated_data", blob(h(), DATA[:-1]), "runs past the end"),
        ("truncated_half", blob(h(), DATA[:16]), "runs past the end"),
        ("header_list", blob([1, 2]), "unrecognised format"),
        ("header_spaces_first", blob(b"   " + json.dumps(h()).encode()), "unrecognised format"),
        ("nan_weights", blob(h(), nan), "NaN or Inf"),
        ("inf_weights", blob(h(), inf), "NaN or Inf"),
        ("f16_inf_weights", blob(h(), f16inf), "NaN or Inf"),
        ("torch_zip", b"PK\x03\x04" + b"\0" * 26 + b"archive/data.pkl", "pickle"),
        ("raw_pickle", b"\x80\x02}q\x00.", "pickle"),
        ("random_bytes", bytes(range(256)) * 4, "unrecognised format"),
        ("zeros", b"\0" * 100, "unrecognised format"),
    ]
    return c


def _write(tmp: Path) -> list[tuple[Path, str]]:
    out = []
    for name, data, expected in cases():
        p = tmp / f"{name}.safetensors"
        p.write_bytes(data)
        out.append((p, expected))
    return out


def test_corpus_has_enough_cases() -> None:
    assert len(cases()) >= 50


@pytest.mark.parametrize("case", cases(), ids=lambda c: c[0])
def test_malformed_in_process(case: tuple[str, bytes, str], tmp_path: Path) -> None:
    _name, data, expected = case
    p = tmp_path / "x.safetensors"
    p.write_bytes(data)
    with pytest.raises(WeightLoadError, match=expected):
        load_weights(p)


def test_malformed_under_limits(tmp_path: Path) -> None:
    files = _write(tmp_path)
    outcomes = check_files([p for p, _ in files])
    assert_clean(outcomes)
    for (p, expected), o in zip(files, outcomes, strict=True):
        assert o.status == "WeightLoadError" and expected in o.message, (p.name, o.message)


def _micro_file(tmp: Path) -> bytes:
    model = Transformer(MICRO, seed=0)
    p = save_weights(model, tmp / "base.safetensors", "safetensors")
    return p.read_bytes()


@pytest.mark.slow
def test_mutation_fuzz_load_weights(tmp_path: Path) -> None:
    paths = write_mutants(
        _micro_file(tmp_path), tmp_path / "m", 1000, seed=1, suffix=".safetensors"
    )
    assert_clean(check_files(paths))


@pytest.mark.slow
def test_mutation_fuzz_load_model(tmp_path: Path) -> None:
    paths = write_mutants(_micro_file(tmp_path), tmp_path / "m", 300, seed=2, suffix=".safetensors")
    assert_clean(check_files(paths, loader="workbench.formats:load_model"))
