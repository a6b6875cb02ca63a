"""Crafted and mutated GGUF files: each load succeeds or raises WeightLoadError, in bounded time
and memory, in a subprocess (tests/formats/harness.py). Each crafted file also names the check
that must fire."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np
import pytest

from tests.formats.harness import assert_clean, check_files, mutate
from workbench.formats._common import ModelState
from workbench.formats.gguf import gguf_model_state, read_gguf, write_gguf
from workbench.models import ModelConfig, Transformer
from workbench.tokenizers import ByteTokenizer

READ = "workbench.formats.gguf:read_gguf"
MODEL = "tests.formats.test_gguf_malformed:load_model_state"
ONE_PASS = "workbench.formats.gguf:read_gguf_model_state"  # what load_model uses
U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)


def load_model_state(path: str) -> ModelState:
    """The harness loader for whole-model files: parse, decode, map names, build the tokenizer."""
    return gguf_model_state(read_gguf(path, progress=False))


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
    wrong = [
        f"{o.path.stem}: {o.status}: {o.message[:200]}"
        for o, (_, pattern) in zip(outcomes, cases.values(), strict=True)
        if o.status != "WeightLoadError" or not re.search(pattern, o.message)
    ]
    assert not wrong, "\n".join(wrong)


def tiny_model_file(path: Path) -> bytes:
    cfg = ModelConfig(
        family="llama",
        vocab_size=257,
        n_ctx=32,
        n_embd=32,
        n_layer=1,
        n_head=2,
        n_kv_head=1,
        intermediate_size=64,
    )
    write_gguf(path, Transformer(cfg, seed=0).state_dict(), cfg, ByteTokenizer(), dtype="q8_0")
    return path.read_bytes()


def test_model_level_errors(tmp_path: Path) -> None:
    base = tiny_model_file(tmp_path / "base.gguf")
    cases = {
        "arch": (base.replace(b"llama", b"llamb", 1), "unsupported GGUF architecture"),
        "config-json": (
            base.replace(b'"n_layer": 1', b'"n_layer": 9', 1),
            "claims 9 layers|missing tensors",
        ),
        "layers-huge": (base.replace(b'"n_layer": 1', b'"n_layer":99', 1), "claims 99 layers"),
    }
    paths = []
    for name, (data, _) in cases.items():
        assert data != base, name
        (tmp_path / name).write_bytes(data)
        paths.append(tmp_path / name)
    outcomes = check_files(paths, loader=MODEL)
    for o, (_, pattern) in zip(outcomes, cases.values(), strict=True):
        assert o.status == "WeightLoadError" and re.search(pattern, o.message), (
            o.path.name,
            o.message,
        )


@pytest.mark.slow
def test_mutation_fuzz(tmp_path: Path) -> None:
    base = tiny_model_file(tmp_path / "base.gguf")
    assert load_model_state(str(tmp_path / "base.gguf")).config.n_layer == 1
    folder = tmp_path / "mutants"
    folder.mkdir()
    paths = []
    for i, blob in enumerate(mutate(base, 1000, seed=20240601)):
        p = folder / f"m{i:04d}.gguf"
        p.write_bytes(blob)
        paths.append(p)
    outcomes = check_files(paths, loader=MODEL, timeout=5.0, mem_mb=512)
    assert_clean(outcomes)
    # The mutants must reach past the magic: a fair share load or fail deep in the file.
    assert sum(o.status == "ok" for o in outcomes) > 20
    assert max(o.seconds for o in outcomes) < 5.0


@pytest.mark.slow
def test_mutation_fuzz_every_tensor_type(tmp_path: Path) -> None:
    from tests.formats.test_gguf_reader import write_reference_file

    write_reference_file(tmp_path / "ref.gguf")
    base = (tmp_path / "ref.gguf").read_bytes()
    paths = []
    for i, blob in enumerate(mutate(base, 300, seed=7)):
        p = tmp_path / f"r{i:04d}.gguf"
        p.write_bytes(blob)
        paths.append(p)
    assert_clean(check_files(paths, loader=READ, timeout=5.0, mem_mb=512))


def metadata_cases() -> dict[str, tuple[dict[str, tuple[str, object] | None], str]]:
    """name → (changes to the tiny model's metadata, regex the error must match)."""
    generic = {"workbench.tokenizer": None}  # the vocabulary path, not our byte shortcut
    llama_keys = {"workbench.config": None}  # the config from llama.cpp's keys
    return {
        "chat-template-u32": ({"tokenizer.chat_template": ("UINT32", 7)}, "must be a string"),
        "chat-template-array": (
            {"tokenizer.chat_template": ("ARRAY:STRING", ["{{ x }}"])},
            "chat_template' must be a string",
        ),
        "chat-template-u32-generic": (
            {**generic, "tokenizer.chat_template": ("UINT32", 7)},
            "must be a string",
        ),
        "unk-out-of-range": (
            {**generic, "tokenizer.ggml.unknown_token_id": ("UINT32", 257)},
            "unknown_token_id' is 257, outside the vocabulary of 257",
        ),
        "pad-u32-max": (
            {**generic, "tokenizer.ggml.padding_token_id": ("UINT32", 2**32 - 1)},
            "padding_token_id.*outside the vocabulary",
        ),
        "pad-negative": (
            {**generic, "tokenizer.ggml.padding_token_id": ("INT32", -1)},
            "padding_token_id.*outside the vocabulary",
        ),
        "pad-string": (
            {**generic, "tokenizer.ggml.padding_token_id": ("STRING", "2")},
            "padding_token_id' must be a token id",
        ),
        "pad-bool": (
            {**generic, "tokenizer.ggml.padding_token_id": ("BOOL", True)},
            "must be a token id",
        ),
        "bos-out-of-range": (
            {**generic, "tokenizer.ggml.bos_token_id": ("UINT64", 2**40)},
            "bos_token_id.*outside the vocabulary",
        ),
        "eos-float": (
            {**generic, "tokenizer.ggml.eos_token_id": ("FLOAT32", 2.0)},
            "eos_token_id' must be a token id",
        ),
        "pre-u32": ({**generic, "tokenizer.ggml.pre": ("UINT32", 1)}, "pre' must be a string"),
        "model-u32": ({"tokenizer.ggml.model": ("UINT32", 1)}, "model' must be a string"),
        "name-u32": ({"general.name": ("UINT32", 5)}, "general.name' must be a string"),
        "name-array": ({"general.name": ("ARRAY:STRING", ["a"])}, "must be a string"),
        "rope-yarn": (
            {**llama_keys, "llama.rope.scaling.type": ("STRING", "yarn")},
            "rope scaling is not supported",
        ),
        "rope-factor-negative": (
            {
                **llama_keys,
                "llama.rope.scaling.type": ("STRING", "linear"),
                "llama.rope.scaling.factor": ("FLOAT32", -8.0),
            },
            "scaling.factor' must be positive",
        ),
        "rope-factor-string": (
            {**llama_keys, "llama.rope.scaling.factor": ("STRING", "x")},
            "must be a number",
        ),
        "rope-type-u32": (
            {**llama_keys, "llama.rope.scaling.type": ("UINT32", 1)},
            "scaling.type' must be a string",
        ),
        "rope-base-zero": (
            {**llama_keys, "llama.rope.freq_base": ("FLOAT32", 0.0)},
            "freq_base' must be positive",
        ),
        "head-width-odd": (
            {**llama_keys, "llama.attention.key_length": ("UINT32", 15)},
            "key_length' must be a positive even head width",
        ),
        "value-width": (
            {**llama_keys, "llama.attention.value_length": ("UINT32", 8)},
            "only equal widths",
        ),
        "partial-rotary": (
            {**llama_keys, "llama.rope.dimension_count": ("UINT32", 8)},
            r"8 rotated dims.*full rotary",
        ),
        "window-string": (
            {**llama_keys, "llama.attention.sliding_window": ("STRING", "4")},
            "sliding_window' must be an integer",
        ),
        "window-negative": (
            {**llama_keys, "llama.attention.sliding_window": ("INT32", -4)},
            "sliding_window' is -4; it must be a positive token count",
        ),
    }


def tiny_gemma_file(path: Path) -> bytes:
    """A Gemma 2 file whose heads are wider than n_embd / n_head (as every Gemma's)."""
    cfg = ModelConfig(
        family="gemma2",
        vocab_size=257,
        n_ctx=32,
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_kv_head=1,
        head_size=24,
        intermediate_size=64,
        sliding_window=4,
        global_every=2,
        query_pre_attn_scalar=24.0,
        attn_softcap=50.0,
        final_softcap=30.0,
    )
    write_gguf(path, Transformer(cfg, seed=0).state_dict(), cfg, ByteTokenizer())
    return path.read_bytes()


def family_metadata_cases() -> dict[str, tuple[dict[str, tuple[str, object] | None], str]]:
    """Keys of the newer families, on the Gemma 2 file without our exact config."""
    keys = {"workbench.config": None}
    return {
        "missing-head-width": (
            {**keys, "gemma2.attention.key_length": None, "gemma2.attention.value_length": None},
            r"lacks 'gemma2.attention.key_length' \(the head width\).*add the key \(24 for 2",
        ),
        "softcap-negative": (
            {**keys, "gemma2.attn_logit_softcapping": ("FLOAT32", -1.0)},
            "attn_logit_softcapping' must be positive",
        ),
        "softcap-string": (
            {**keys, "gemma2.final_logit_softcapping": ("STRING", "30")},
            "final_logit_softcapping' must be a number",
        ),
        "pattern-string": (
            {**keys, "gemma2.attention.sliding_window_pattern": ("STRING", "2")},
            "sliding_window_pattern' must be an integer",
        ),
        "gemma-config-family": (
            {"workbench.config": ("STRING", '{"family": "llama"}')},
            "says llama, the file gemma2",
        ),
    }


@pytest.mark.parametrize("loader", [MODEL, ONE_PASS])
def test_family_metadata_key_errors(tmp_path: Path, loader: str) -> None:
    from tests.formats.gguf_edit import rewrite_metadata

    tiny_gemma_file(tmp_path / "base.gguf")
    rewrite_metadata(tmp_path / "base.gguf", tmp_path / "plain.gguf", {"workbench.config": None})
    ok = check_files([tmp_path / "plain.gguf"], loader=loader)
    assert ok[0].status == "ok", ok[0].message
    cases = family_metadata_cases()
    paths = []
    for name, (changes, _) in cases.items():
        rewrite_metadata(tmp_path / "base.gguf", tmp_path / f"{name}.gguf", changes)
        paths.append(tmp_path / f"{name}.gguf")
    outcomes = check_files(paths, loader=loader)
    wrong = [
        f"{o.path.stem}: {o.status}: {o.message[:300]}"
        for o, (_, pattern) in zip(outcomes, cases.values(), strict=True)
        if o.status != "WeightLoadError" or not re.search(pattern, o.message)
    ]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("loader", [MODEL, ONE_PASS])
def test_metadata_key_errors(tmp_path: Path, loader: str) -> None:
    from tests.formats.gguf_edit import rewrite_metadata

    tiny_model_file(tmp_path / "base.gguf")
    cases = metadata_cases()
    paths = []
    for name, (changes, _) in cases.items():
        rewrite_metadata(tmp_path / "base.gguf", tmp_path / f"{name}.gguf", changes)
        paths.append(tmp_path / f"{name}.gguf")
    # Each edit alone is the fault: without it the same file loads.
    rewrite_metadata(
        tmp_path / "base.gguf", tmp_path / "generic.gguf", {"workbench.tokenizer": None}
    )
    ok = check_files([tmp_path / "generic.gguf"], loader=loader)
    assert ok[0].status == "ok", ok[0].message
    outcomes = check_files(paths, loader=loader)
    wrong = [
        f"{o.path.stem}: {o.status}: {o.message[:300]}"
        for o, (_, pattern) in zip(outcomes, cases.values(), strict=True)
        if o.status != "WeightLoadError" or not re.search(pattern, o.message)
    ]
    assert not wrong, "\n".join(wrong)


@pytest.mark.slow
def test_mutation_fuzz_one_pass(tmp_path: Path) -> None:
    base = tiny_model_file(tmp_path / "base.gguf")
    paths = []
    for i, blob in enumerate(mutate(base, 500, seed=20251202)):
        p = tmp_path / f"m{i:04d}.gguf"
        p.write_bytes(blob)
        paths.append(p)
    outcomes = check_files(paths, loader=ONE_PASS, timeout=5.0, mem_mb=512)
    assert_clean(outcomes)
    assert sum(o.status == "ok" for o in outcomes) > 10


@pytest.mark.slow
def test_mutation_fuzz_family_keys(tmp_path: Path) -> None:
    """Mutants of files described by llama.cpp's keys alone (no exact config of ours): a
    Gemma 2 and a Llama 3 with its ``rope_freqs.weight``."""
    from tests.formats.gguf_edit import rewrite_metadata

    tiny_gemma_file(tmp_path / "gemma.gguf")
    cfg = ModelConfig(
        family="llama",
        vocab_size=257,
        n_ctx=32,
        n_embd=32,
        n_layer=1,
        n_head=2,
        intermediate_size=64,
        rope_scaling="llama3",
        rope_factor=8.0,
        rope_original_ctx=64,
    )
    write_gguf(tmp_path / "llama3.gguf", Transformer(cfg, seed=0).state_dict(), cfg, None)
    paths = []
    for stem in ("gemma", "llama3"):
        plain = tmp_path / f"{stem}-plain.gguf"
        rewrite_metadata(tmp_path / f"{stem}.gguf", plain, {"workbench.config": None})
        for i, blob in enumerate(mutate(plain.read_bytes(), 250, seed=99)):
            p = tmp_path / f"{stem}{i:04d}.gguf"
            p.write_bytes(blob)
            paths.append(p)
    outcomes = check_files(paths, loader=ONE_PASS, timeout=5.0, mem_mb=512)
    assert_clean(outcomes)
    assert sum(o.status == "ok" for o in outcomes) > 10
