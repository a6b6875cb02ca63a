"""Crafted and mutated GGUF files at the byte level: each read succeeds or raises WeightLoadError,
in bounded time and memory, in a subprocess (tests/formats/harness.py). Each crafted file also
names the check that must fire. Whole-model files (metadata keys, layouts) are in
test_gguf_malformed_model.py."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from tests.formats.harness import assert_clean, assert_refused, check_files, write_mutants
from workbench.formats.gguf import read_gguf

READ = "workbench.formats.gguf:read_gguf"
U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)


def u32(v: int) -> bytes:
    return struct.pack("<I", v)


def u64(v: int) -> bytes:
    return struct.pack("<Q", v)


def s(x: str | bytes) -> bytes:
    b = x.encode() if isinstance(x, str) else x
    return u64(len(b)) + b


def kv(key: str | bytes, vtype: int, payload: bytes) -> bytes:
    return s(key) + u32(vtype) + payload


def tinfo(name: str | bytes, dims: list[int], ggml_type: int, offset: int) -> bytes:
    return s(name) + u32(len(dims)) + b"".join(u64(d) for d in dims) + u32(ggml_type) + u64(offset)


F32_DATA = np.arange(4, dtype=np.float32).tobytes()
Q8_BLOCK = np.array([1.0], dtype=np.float16).tobytes() + bytes(range(32))
GOOD_KVS = [kv("general.architecture", STR, s("llama")), kv("general.alignment", U32, u32(32))]
GOOD_INFOS = [tinfo("a", [4], 0, 0), tinfo("b", [32], 8, 32)]
GOOD_DATA = F32_DATA + bytes(16) + Q8_BLOCK


def gguf_bytes(
    kvs: list[bytes] = GOOD_KVS,
    infos: list[bytes] = GOOD_INFOS,
    data: bytes = GOOD_DATA,
    *,
    magic: bytes = b"GGUF",
    version: bytes = u32(3),
    n_tensors: int | None = None,
    n_kv: int | None = None,
) -> bytes:
    head = magic + version + u64(len(infos) if n_tensors is None else n_tensors)
    head += u64(len(kvs) if n_kv is None else n_kv) + b"".join(kvs) + b"".join(infos)
    return head + bytes(-len(head) % 32) + data


def nested(depth: int) -> bytes:
    """An array nested ``depth`` levels deep around one UINT8."""
    payload = u32(U8) + u64(1) + b"\x07"
    for _ in range(depth - 1):
        payload = u32(ARR) + u64(1) + payload
    return payload


def crafted_cases() -> dict[str, tuple[bytes, str]]:
    """name → (file bytes, regex the WeightLoadError message must match)."""
    good = gguf_bytes()
    arch = kv("general.architecture", STR, s("llama"))
    c: dict[str, tuple[bytes, str]] = {
        "wrong-magic": (gguf_bytes(magic=b"GGUX"), "not a GGUF file"),
        "empty": (b"", "not a GGUF file"),
        "only-magic": (b"GGUF", "truncated"),
        "safetensors-like": (u64(10) + b'{"a": 1}  ', "not a GGUF file"),
        "big-endian": (gguf_bytes(version=struct.pack(">I", 3)), "big-endian"),
        "big-endian-v2": (gguf_bytes(version=struct.pack(">I", 2)), "big-endian"),
        "version-1": (gguf_bytes(version=u32(1)), "version 1"),
        "version-4": (gguf_bytes(version=u32(4)), "unsupported GGUF version"),
        "version-max": (gguf_bytes(version=u32(2**32 - 1)), "unsupported GGUF version"),
        "tensor-count-huge": (gguf_bytes(n_tensors=2**63), "tensors, over the limit"),
        "tensor-count-unbacked": (gguf_bytes(n_tensors=90_000), "truncated"),
        "kv-count-huge": (gguf_bytes(n_kv=2**64 - 1), "metadata entries, over the limit"),
        "kv-count-unbacked": (gguf_bytes(n_kv=900_000), "truncated"),
        # The tensor infos are read as a third key: key "a", value type 1 (INT8), then garbage.
        "kv-count-one-more": (gguf_bytes(n_kv=3), "n_dims 0"),
        "key-length-huge": (gguf_bytes([u64(2**60) + b"x"]), "over the limit"),
        "key-length-unbacked": (gguf_bytes([u64(60_000) + b"x" * 20]), "truncated"),
        "key-not-utf8": (gguf_bytes([kv(b"\xff\xfe", U8, b"\x01"), arch]), "UTF-8"),
        "string-length-huge": (gguf_bytes([kv("k", STR, u64(2**40))]), "over the limit"),
        "string-length-unbacked": (gguf_bytes([kv("k", STR, u64(10_000) + b"abc")]), "truncated"),
        "string-not-utf8": (gguf_bytes([kv("k", STR, s(b"\xc3\x28"))]), "UTF-8"),
        "value-type-13": (gguf_bytes([kv("k", 13, b"\x00" * 8)]), "unknown value type 13"),
        "value-type-max": (gguf_bytes([kv("k", 2**32 - 1, b"")]), "unknown value type"),
        "array-item-type-bad": (
            gguf_bytes([kv("k", ARR, u32(77) + u64(1) + b"\x00")]),
            "unknown array item type 77",
        ),
        "array-length-huge": (gguf_bytes([kv("k", ARR, u32(U8) + u64(2**62))]), "over the limit"),
        "array-u32-unbacked": (gguf_bytes([kv("k", ARR, u32(U32) + u64(10_000_000))]), "truncated"),
        "array-f64-unbacked": (gguf_bytes([kv("k", ARR, u32(F64) + u64(49_000_000))]), "truncated"),
        "string-array-unbacked": (
            gguf_bytes([kv("k", ARR, u32(STR) + u64(1_000_000) + s("a") * 3)]),
            "truncated",
        ),
        "string-array-item-huge": (
            gguf_bytes([kv("k", ARR, u32(STR) + u64(2) + s("a") + u64(2**50))]),
            "over the limit",
        ),
        "string-array-item-unbacked": (
            gguf_bytes([kv("k", ARR, u32(STR) + u64(2) + s("a") + u64(5000))]),
            "truncated",
        ),
        "nested-array-unbacked": (
            gguf_bytes([kv("k", ARR, u32(ARR) + u64(1_000_000) + nested(1))]),
            "truncated",
        ),
        "nested-depth-5": (gguf_bytes([kv("k", ARR, nested(5))]), "deeper than 4"),
        "nested-depth-200": (gguf_bytes([kv("k", ARR, nested(200))]), "deeper than 4"),
        "duplicate-key": (gguf_bytes([arch, arch]), "appears twice"),
        "alignment-48": (gguf_bytes([arch, kv("general.alignment", U32, u32(48))]), "power of two"),
        "alignment-0": (gguf_bytes([arch, kv("general.alignment", U32, u32(0))]), "power of two"),
        "alignment-u64": (
            gguf_bytes([arch, kv("general.alignment", U64, u64(32))]),
            "must be a UINT32",
        ),
        "n-dims-0": (gguf_bytes(infos=[tinfo("a", [], 0, 0)]), "n_dims 0"),
        # llama.cpp's GGML_MAX_DIMS is 4: a fifth dimension is refused, even of size 1.
        "n-dims-5": (gguf_bytes(infos=[tinfo("a", [4, 1, 1, 1, 1], 0, 0)]), "n_dims 5.*1..4"),
        "n-dims-9": (gguf_bytes(infos=[tinfo("a", [1] * 9, 0, 0)]), "n_dims 9"),
        "n-dims-max": (
            gguf_bytes(infos=[s("a") + u32(2**32 - 1) + u64(1) * 4]),
            "n_dims 4294967295",
        ),
        "dim-zero": (gguf_bytes(infos=[tinfo("a", [4, 0], 0, 0)]), "dimension of 0"),
        "dim-u64-max": (gguf_bytes(infos=[tinfo("a", [2**64 - 1], 0, 0)]), "overflows"),
        "product-overflow": (
            gguf_bytes(infos=[tinfo("a", [2**32, 2**32, 2**32], 0, 0)]),
            "overflows",
        ),
        "product-wraps-to-zero": (
            gguf_bytes(infos=[tinfo("a", [2**32, 2**32], 0, 0)]),
            "overflows",
        ),
        "absurd-dims": (gguf_bytes(infos=[tinfo("a", [2**31, 4], 0, 0)]), "past the end"),
        "ggml-type-4": (gguf_bytes(infos=[tinfo("a", [4], 4, 0)]), "unknown ggml type id 4"),
        "ggml-type-1000": (
            gguf_bytes(infos=[tinfo("a", [4], 1000, 0)]),
            "unknown ggml type id 1000",
        ),
        "q8-row-not-block": (
            gguf_bytes(infos=[tinfo("b", [33], 8, 0)]),
            "not a multiple of its block size",
        ),
        "offset-past-end": (gguf_bytes(infos=[tinfo("a", [4], 0, 2**40)]), "past the end"),
        "offset-near-u64-max": (gguf_bytes(infos=[tinfo("a", [4], 0, 2**64 - 32)]), "past the end"),
        "offset-misaligned": (
            gguf_bytes(infos=[tinfo("a", [4], 0, 4)]),
            "not a multiple of the alignment",
        ),
        "overlapping": (
            gguf_bytes(infos=[tinfo("a", [4], 0, 0), tinfo("b", [4], 0, 0)]),
            "overlaps",
        ),
        "overlap-partial": (
            gguf_bytes(infos=[tinfo("a", [16], 0, 0), tinfo("b", [32], 8, 32)]),
            "overlaps",
        ),
        "unsorted": (
            gguf_bytes(infos=[tinfo("b", [32], 8, 32), tinfo("a", [4], 0, 0)]),
            "sorted by offset",
        ),
        "duplicate-tensor": (
            gguf_bytes(infos=[tinfo("a", [4], 0, 0), tinfo("a", [4], 0, 32)]),
            "appears twice",
        ),
        "tensor-name-long": (gguf_bytes(infos=[tinfo("x" * 300, [4], 0, 0)]), "over the limit"),
        "tensor-name-not-utf8": (gguf_bytes(infos=[tinfo(b"\x80abc", [4], 0, 0)]), "UTF-8"),
        "data-truncated": (good[:-10], "past the end"),
        "nan-f32": (
            gguf_bytes(
                data=np.array([1, np.nan, 2, 3], np.float32).tobytes() + bytes(16) + Q8_BLOCK
            ),
            "NaN or Inf",
        ),
        "inf-q8-scale": (
            gguf_bytes(
                data=F32_DATA + bytes(16) + np.array([np.inf], np.float16).tobytes() + bytes(32)
            ),
            "NaN or Inf",
        ),
        "undecodable-q8_1": (
            gguf_bytes(
                infos=[tinfo("a", [4], 0, 0), tinfo("b", [32], 9, 32)],
                data=F32_DATA + bytes(16) + bytes(40),
            ),
            "cannot be decoded",
        ),
    }
    header_end = len(gguf_bytes(data=b"")) - 32  # roughly where the tensor infos end
    for cut in sorted(
        {
            5,
            8,
            12,
            16,
            20,
            23,
            24,
            30,
            40,
            50,
            60,
            70,
            80,
            90,
            100,
            110,
            header_end,
            header_end + 16,
            len(good) - 1,
        }
    ):
        c[f"truncated-at-{cut}"] = (good[:cut], "truncated|past the end|not a GGUF")
    return c


def test_crafted_corpus_is_valid_where_it_should_be(tmp_path: Path) -> None:
    path = tmp_path / "good.gguf"
    path.write_bytes(gguf_bytes())
    loaded = read_gguf(path)
    assert loaded.tensors["a"].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert loaded.tensors["b"].tolist() == [float(i if i < 128 else i - 256) for i in range(32)]


def test_crafted_corpus(tmp_path: Path) -> None:
    cases = crafted_cases()
    assert len(cases) >= 50
    paths = []
    for name, (data, _) in cases.items():
        p = tmp_path / f"{name}.gguf"
        p.write_bytes(data)
        paths.append(p)
    outcomes = check_files(paths, loader=READ, timeout=5.0, mem_mb=512)
    assert_clean(outcomes)
    assert_refused(outcomes, [pattern for _, pattern in cases.values()])


@pytest.mark.slow
def test_mutation_fuzz_every_tensor_type(tmp_path: Path) -> None:
    from tests.formats.test_gguf_reader import write_reference_file

    write_reference_file(tmp_path / "ref.gguf")
    paths = write_mutants((tmp_path / "ref.gguf").read_bytes(), tmp_path, 300, 7, ".gguf")
    assert_clean(check_files(paths, loader=READ, timeout=5.0, mem_mb=512))
