"""Malformed whole-model GGUF files: layouts, llama.cpp's metadata keys and ours, and mutants of
small model files. Each load succeeds or raises WeightLoadError, in bounded time and memory, in a
subprocess (tests/formats/harness.py), through both model loaders: the two-step one and the one
pass ``load_model`` uses. Byte-level corruption of the container is test_gguf_malformed.py's."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tests.formats.gguf_edit import rewrite_metadata
from tests.formats.harness import assert_clean, assert_refused, check_files, write_mutants
from workbench.formats._common import ModelState
from workbench.formats.gguf import gguf_model_state, read_gguf, write_gguf
from workbench.models import ModelConfig, Transformer
from workbench.tokenizers import ByteTokenizer

MODEL = "tests.formats.test_gguf_malformed_model:load_model_state"
ONE_PASS = "workbench.formats.gguf:read_gguf_model_state"  # what load_model uses
# A one-layer llama small enough for thousands of mutants.
TINY = ModelConfig.preset(
    "tiny-llama", n_ctx=32, n_embd=32, n_layer=1, n_head=2, n_kv_head=1, intermediate_size=64
)
MetadataCases = dict[str, tuple[dict[str, tuple[str, object] | None], str]]


def load_model_state(path: str) -> ModelState:
    """The harness loader for whole-model files: parse, decode, map names, build the tokenizer."""
    return gguf_model_state(read_gguf(path, progress=False))


def rewritten(base: Path, cases: MetadataCases) -> list[Path]:
    """One copy of ``base`` per case, with that case's metadata changes, beside it."""
    paths = []
    for name, (changes, _) in cases.items():
        rewrite_metadata(base, base.parent / f"{name}.gguf", changes)
        paths.append(base.parent / f"{name}.gguf")
    return paths


def assert_loads(path: Path, loader: str) -> None:
    (ok,) = check_files([path], loader=loader)
    assert ok.status == "ok", ok.message


def tiny_model_file(path: Path) -> bytes:
    cfg = TINY
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
    assert_refused(outcomes, [pattern for _, pattern in cases.values()])


@pytest.mark.slow
def test_mutation_fuzz(tmp_path: Path) -> None:
    base = tiny_model_file(tmp_path / "base.gguf")
    assert load_model_state(str(tmp_path / "base.gguf")).config.n_layer == 1
    paths = write_mutants(base, tmp_path / "mutants", 1000, 20240601, ".gguf")
    outcomes = check_files(paths, loader=MODEL, timeout=5.0, mem_mb=512)
    assert_clean(outcomes)
    # The mutants must reach past the magic: a fair share load or fail deep in the file.
    assert sum(o.status == "ok" for o in outcomes) > 20
    assert max(o.seconds for o in outcomes) < 5.0


def metadata_cases() -> MetadataCases:
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


def family_metadata_cases() -> MetadataCases:
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
    tiny_gemma_file(tmp_path / "base.gguf")
    rewrite_metadata(tmp_path / "base.gguf", tmp_path / "plain.gguf", {"workbench.config": None})
    assert_loads(tmp_path / "plain.gguf", loader)
    cases = family_metadata_cases()
    outcomes = check_files(rewritten(tmp_path / "base.gguf", cases), loader=loader)
    assert_refused(outcomes, [pattern for _, pattern in cases.values()])


@pytest.mark.parametrize("loader", [MODEL, ONE_PASS])
def test_metadata_key_errors(tmp_path: Path, loader: str) -> None:
    tiny_model_file(tmp_path / "base.gguf")
    cases = metadata_cases()
    paths = rewritten(tmp_path / "base.gguf", cases)
    # Each edit alone is the fault: without it the same file loads.
    rewrite_metadata(
        tmp_path / "base.gguf", tmp_path / "generic.gguf", {"workbench.tokenizer": None}
    )
    assert_loads(tmp_path / "generic.gguf", loader)
    outcomes = check_files(paths, loader=loader)
    assert_refused(outcomes, [pattern for _, pattern in cases.values()])


@pytest.mark.slow
def test_mutation_fuzz_one_pass(tmp_path: Path) -> None:
    base = tiny_model_file(tmp_path / "base.gguf")
    paths = write_mutants(base, tmp_path / "mutants", 500, 20251202, ".gguf")
    outcomes = check_files(paths, loader=ONE_PASS, timeout=5.0, mem_mb=512)
    assert_clean(outcomes)
    assert sum(o.status == "ok" for o in outcomes) > 10


@pytest.mark.slow
def test_mutation_fuzz_family_keys(tmp_path: Path) -> None:
    """Mutants of files described by llama.cpp's keys alone (no exact config of ours): a
    Gemma 2 and a Llama 3 with its ``rope_freqs.weight``."""
    tiny_gemma_file(tmp_path / "gemma.gguf")
    cfg = dataclasses.replace(
        TINY, n_kv_head=None, rope_scaling="llama3", rope_factor=8.0, rope_original_ctx=64
    )
    write_gguf(tmp_path / "llama3.gguf", Transformer(cfg, seed=0).state_dict(), cfg, None)
    paths = []
    for stem in ("gemma", "llama3"):
        plain = tmp_path / f"{stem}-plain.gguf"
        rewrite_metadata(tmp_path / f"{stem}.gguf", plain, {"workbench.config": None})
        paths += write_mutants(plain.read_bytes(), tmp_path / stem, 250, 99, ".gguf")
    outcomes = check_files(paths, loader=ONE_PASS, timeout=5.0, mem_mb=512)
    assert_clean(outcomes)
    assert sum(o.status == "ok" for o in outcomes) > 10
