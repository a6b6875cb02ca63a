"""Malformed raw-binary weights (data file + manifest): WeightLoadError with a clear message."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.formats.harness import assert_clean, check_files, mutate
from workbench.formats import WeightLoadError, load_model, load_weights, save_weights
from workbench.models import ModelConfig, Transformer

MICRO = ModelConfig(
    family="llama", vocab_size=257, n_ctx=16, n_embd=8, n_layer=1, n_head=2, intermediate_size=16
)


def _base(tmp: Path) -> tuple[bytes, dict[str, Any]]:
    p = save_weights(Transformer(MICRO, seed=0), tmp / "base.bin", "binary")
    return p.read_bytes(), json.loads((tmp / "base.bin.json").read_text())


def _resha(m: dict[str, Any], data: bytes) -> dict[str, Any]:
    m["sha256"] = hashlib.sha256(data).hexdigest()
    return m


Edit = Callable[[bytes, dict[str, Any]], tuple[bytes, Any]]


def _set(key: str, value: Any) -> Edit:
    return lambda d, m: (d, {**m, key: value})


def _tensor(i: int, **changes: Any) -> Edit:
    def edit(d: bytes, m: dict[str, Any]) -> tuple[bytes, Any]:
        m = copy.deepcopy(m)
        m["tensors"][i].update(changes)
        return d, m

    return edit


def _drop(key: str) -> Edit:
    return lambda d, m: (d, {k: v for k, v in m.items() if k != key})


def _nan(d: bytes, m: dict[str, Any]) -> tuple[bytes, Any]:
    d = torch.tensor([float("nan")]).numpy().tobytes() + d[4:]
    return d, _resha(m, d)


CASES: list[tuple[str, Edit, str]] = [
    ("format_tag", _set("format", "other"), "not a raw-binary manifest"),
    ("version_2", _set("version", 2), "version 2"),
    ("version_str", _set("version", "1"), "version 1"),
    ("byte_order_big", _set("byte_order", "big"), "byte_order"),
    ("dtype_f64", _set("dtype", "float64"), "dtype 'float64'"),
    ("dtype_int", _set("dtype", 3), "dtype '3'"),
    ("dtype_q8", _set("dtype", "q8_0"), "dtype 'q8_0'"),
    ("dtype_f16_mismatch", _set("dtype", "float16"), "needs"),
    ("sha_short", _set("sha256", "abc"), "64 lowercase hex"),
    ("sha_upper", lambda d, m: (d, {**m, "sha256": m["sha256"].upper()}), "64 lowercase hex"),
    ("sha_wrong", _set("sha256", "0" * 64), "sha256 does not match"),
    ("sha_int", _set("sha256", 5), "64 lowercase hex"),
    ("missing_tensors", _drop("tensors"), "missing fields"),
    ("missing_sha", _drop("sha256"), "missing fields"),
    ("missing_total", _drop("total_bytes"), "missing fields"),
    ("unknown_field", _set("surprise", 1), "unknown fields"),
    ("tensors_dict", _set("tensors", {}), "must be a list"),
    ("tensors_huge_list", _set("tensors", [0] * 100_001), "must be a list"),
    ("tensor_not_dict", _set("tensors", [1]), "exactly name, shape"),
    ("tensor_extra_key", _tensor(0, dtype="F32"), "exactly name, shape"),
    ("name_int", _tensor(0, name=3), "duplicate"),
    ("name_duplicate", lambda d, m: _tensor(1, name=m["tensors"][0]["name"])(d, m), "duplicate"),
    ("shape_negative", _tensor(0, shape=[-1, 8]), "non-negative"),
    ("shape_float", _tensor(0, shape=[257.0, 8]), "non-negative"),
    ("shape_str", _tensor(0, shape="257x8"), "non-negative"),
    ("shape_9_dims", _tensor(0, shape=[1] * 7 + [257, 8]), "9 dimensions"),
    ("shape_deep", _tensor(0, shape=[[[[[1]]]]]), "non-negative"),
    ("shape_absurd", _tensor(0, shape=[2**40, 2**40]), "needs"),
    ("shape_mismatch", _tensor(0, shape=[256, 8]), "needs"),
    ("offset_gap", _tensor(1, offset=10**6), "back to back"),
    ("offset_overlap", _tensor(1, offset=4), "back to back"),
    ("offset_negative", _tensor(0, offset=-4), "back to back"),
    ("offset_float", _tensor(0, offset=0.0), "must be integers"),
    ("offset_huge", _tensor(1, offset=2**64), "back to back"),
    ("nbytes_wrong", _tensor(0, nbytes=4), "manifest says 4"),
    ("nbytes_bool", _tensor(0, nbytes=True), "must be integers"),
    ("total_wrong", lambda d, m: (d, {**m, "total_bytes": m["total_bytes"] + 4}), "differs"),
    ("total_huge", _set("total_bytes", 2**70), "differs"),
    ("data_truncated", lambda d, m: (d[:-4], m), "truncated"),
    ("data_padded", lambda d, m: (d + b"\0" * 4, m), "truncated, padded"),
    ("data_empty", lambda d, m: (b"", m), "truncated"),
    ("data_flipped", lambda d, m: (bytes([d[0] ^ 1]) + d[1:], m), "sha256 does not match"),
    ("nan_weights", _nan, "NaN or Inf"),
    ("manifest_list", lambda d, m: (d, [m]), "not a raw-binary manifest"),
    (
        "manifest_not_json",
        lambda d, m: (d, b'{"format": "markovian-workbench/raw-binary", '),
        "not valid JSON",
    ),
    (
        "manifest_bad_utf8",
        lambda d, m: (d, b'{"format": "markovian-workbench/raw-binary", "\xff": 1}'),
        "UTF-8",
    ),
    (
        "manifest_deep",
        lambda d, m: (
            d,
            b'{"format": "markovian-workbench/raw-binary", "x": '
            + b"[" * 50_000
            + b"]" * 50_000
            + b"}",
        ),
        "nested too deeply",
    ),
    (
        "manifest_duplicate_key",
        lambda d, m: (d, json.dumps(m)[:-1].encode() + b', "dtype": "float32"}'),
        "duplicate key",
    ),
    (
        "manifest_huge_int",
        lambda d, m: (
            d,
            json.dumps({**m, "version": 0})
            .replace('"version": 0', '"version": 1' + "0" * 5000)
            .encode(),
        ),
        "not valid JSON",
    ),
    ("config_bad", _set("config", {"family": "gpt3"}), "config or tokenizer is invalid"),
    (
        "config_unknown_field",
        _set("config", {"n_embd": 8, "wat": 1}),
        "config or tokenizer is invalid",
    ),
    ("tokenizer_bad", _set("tokenizer", '{"kind": "nope"}'), "config or tokenizer is invalid"),
    ("config_missing", _set("config", None), "no model config"),
    ("config_wrong_shape", _set("config", {**MICRO.to_dict(), "n_layer": 2}), "missing keys"),
]


def _write_case(tmp: Path, name: str, edit: Edit, data: bytes, manifest: dict[str, Any]) -> Path:
    d, m = edit(data, copy.deepcopy(manifest))
    p = tmp / f"{name}.bin"
    p.write_bytes(d)
    (tmp / f"{name}.bin.json").write_bytes(m if isinstance(m, bytes) else json.dumps(m).encode())
    return p


def test_corpus_has_enough_cases() -> None:
    assert len(CASES) >= 50


@pytest.mark.parametrize("case", CASES, ids=lambda c: c[0])
def test_malformed_in_process(case: tuple[str, Edit, str], tmp_path: Path) -> None:
    name, edit, expected = case
    data, manifest = _base(tmp_path)
    p = _write_case(tmp_path, name, edit, data, manifest)
    with pytest.raises(WeightLoadError, match=expected):
        load_model(p)


def test_no_manifest_is_explained(tmp_path: Path) -> None:
    p = tmp_path / "raw.bin"
    p.write_bytes(b"\0" * 64)
    with pytest.raises(WeightLoadError, match="no manifest"):
        load_weights(p, "binary")
    with pytest.raises(WeightLoadError, match="unrecognised format"):
        load_weights(p)


def test_malformed_under_limits(tmp_path: Path) -> None:
    data, manifest = _base(tmp_path)
    paths = [_write_case(tmp_path, n, e, data, manifest) for n, e, _ in CASES]
    outcomes = check_files(paths, loader="workbench.formats:load_model")
    assert_clean(outcomes)
    for (_, _, expected), o in zip(CASES, outcomes, strict=True):
        assert o.status == "WeightLoadError" and expected in o.message, (o.path.name, o.message)


@pytest.mark.slow
def test_mutation_fuzz(tmp_path: Path) -> None:
    data, manifest = _base(tmp_path)
    raw_manifest = json.dumps(manifest, indent=1).encode()
    paths = []
    # Half the mutants corrupt the data, half the manifest (against intact data, so the checks
    # past the sha256 are reached too).
    for i, blob in enumerate(mutate(data, 500, seed=3)):
        p = tmp_path / f"d{i}.bin"
        p.write_bytes(blob)
        (tmp_path / f"d{i}.bin.json").write_bytes(raw_manifest)
        paths.append(p)
    for i, blob in enumerate(mutate(raw_manifest, 500, seed=4)):
        p = tmp_path / f"m{i}.bin"
        p.write_bytes(data)
        (tmp_path / f"m{i}.bin.json").write_bytes(blob)
        paths.append(p)
    assert_clean(check_files(paths, loader="workbench.formats:load_model"))
