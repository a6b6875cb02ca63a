"""Malformed checkpoints: every one raises WeightLoadError naming the problem."""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.formats.harness import assert_clean, check_files, write_mutants
from workbench.formats import Checkpoint, WeightLoadError, load_checkpoint, save_checkpoint
from workbench.formats.checkpoint import MAGIC
from workbench.formats.safetensors_io import safetensors_bytes
from workbench.models import ModelConfig, Transformer
from workbench.tokenizers import ByteTokenizer

MICRO = ModelConfig(family="gpt2", vocab_size=257, n_ctx=16, n_embd=8, n_layer=1, n_head=2)
HEAD = struct.Struct("<8sIIQQ")


def load_unverified(path: str) -> Checkpoint:
    """Fuzz loader: skip the sha256 so mutants reach the decoders behind it."""
    return load_checkpoint(path, verify=False)


def _valid(tmp: Path) -> bytes:
    model = Transformer(MICRO, seed=0)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.tensor([[1, 2]])).sum().backward()
    opt.step()
    return save_checkpoint(
        tmp / "base.ckpt", model, ByteTokenizer(), optimizer=opt, learner_state={"n": 1}
    ).read_bytes()


def split(blob: bytes) -> tuple[dict[str, bytes], dict[str, Any]]:
    _, _, _, off, n = HEAD.unpack(blob[: HEAD.size])
    manifest = json.loads(blob[off : off + n])
    parts = {k: blob[p["offset"] : p["offset"] + p["length"]] for k, p in manifest["parts"].items()}
    return parts, manifest


def build(
    parts: dict[str, bytes],
    edit: Callable[[dict[str, Any]], Any] | None = None,
    *,
    manifest_raw: bytes | None = None,
    head: Callable[[tuple], tuple] | None = None,
) -> bytes:
    body, listing, pos = b"", {}, HEAD.size
    kinds = {"config": "json", "tokenizer": "json", "learner": "json"}
    for name, data in parts.items():
        listing[name] = {
            "offset": pos,
            "length": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "kind": kinds.get(name, "safetensors"),
        }
        body += data
        pos += len(data)
    manifest: Any = {
        "format": "markovian-workbench/checkpoint",
        "version": 1,
        "created": "",
        "parts": listing,
    }
    if edit is not None:
        manifest = edit(manifest) or manifest
    raw = manifest_raw if manifest_raw is not None else json.dumps(manifest).encode()
    fields = (MAGIC, 1, 0, pos, len(raw))
    if head is not None:
        fields = head(fields)
    return HEAD.pack(*fields) + body + raw


def _with(parts: dict[str, bytes], **changes: bytes) -> dict[str, bytes]:
    return {**parts, **changes}


def _part(name: str, **changes: Any) -> Callable[[dict[str, Any]], None]:
    return lambda m: m["parts"][name].update(changes)


def cases(tmp: Path) -> list[tuple[str, bytes, str]]:
    blob = _valid(tmp)
    p, _ = split(blob)
    opt_meta = json.loads(
        json.loads(p["optimizer"][8 : 8 + struct.unpack("<Q", p["optimizer"][:8])[0]])[
            "__metadata__"
        ]["optimizer"]
    )
    w = {"x": torch.ones(2)}
    c = [
        ("empty", b"", "unrecognised"),
        ("magic_only", MAGIC, "too short"),
        ("header_truncated", blob[:20], "too short"),
        ("bad_version", build(p, head=lambda f: (f[0], 2, *f[2:])), "version 2"),
        ("bad_flags", build(p, head=lambda f: (*f[:2], 1, *f[3:])), "flags 1"),
        ("manifest_offset_zero", build(p, head=lambda f: (*f[:3], 0, f[4])), "must end exactly"),
        (
            "manifest_offset_huge",
            build(p, head=lambda f: (*f[:3], 2**64 - 1, f[4])),
            "must end exactly",
        ),
        ("manifest_len_huge", build(p, head=lambda f: (*f[:4], 2**63)), "must end exactly"),
        ("manifest_len_short", build(p, head=lambda f: (*f[:4], f[4] - 1)), "must end exactly"),
        ("truncated_end", blob[:-1], "must end exactly"),
        ("appended", blob + b"\0", "must end exactly"),
        ("manifest_not_json", build(p, manifest_raw=b"{oops"), "not valid JSON"),
        ("manifest_bad_utf8", build(p, manifest_raw=b'{"\xfe": 1}'), "UTF-8"),
        (
            "manifest_deep",
            build(p, manifest_raw=b"[" * 100_000 + b"]" * 100_000),
            "nested too deeply",
        ),
        ("manifest_list", build(p, manifest_raw=b"[]"), "is not a"),
        ("manifest_format", build(p, lambda m: {**m, "format": "x"}), "is not a"),
        ("no_parts", build(p, lambda m: {**m, "parts": []}), "including weights and config"),
        (
            "no_weights",
            build({k: v for k, v in p.items() if k != "weights"}),
            "including weights and config",
        ),
        (
            "no_config",
            build({k: v for k, v in p.items() if k != "config"}),
            "including weights and config",
        ),
        ("unknown_part", build(_with(p, secret=b"{}")), "unknown part"),
        ("part_extra_key", build(p, _part("weights", extra=1)), "malformed"),
        ("part_wrong_kind", build(p, _part("config", kind="safetensors")), "malformed"),
        ("part_offset_str", build(p, _part("weights", offset="32")), "malformed"),
        ("part_offset_float", build(p, _part("weights", offset=32.0)), "malformed"),
        ("part_sha_int", build(p, _part("weights", sha256=1)), "malformed"),
        ("part_in_header", build(p, _part("weights", offset=0)), "outside the data section"),
        (
            "part_past_manifest",
            build(p, _part("weights", length=2**40)),
            "outside the data section",
        ),
        ("part_negative_length", build(p, _part("weights", length=-5)), "outside the data section"),
        (
            "parts_overlap",
            build(
                p, lambda m: m["parts"]["config"].update(offset=m["parts"]["weights"]["offset"] + 1)
            ),
            "overlap",
        ),
        ("sha_mismatch", build(p, _part("config", sha256="0" * 64)), "fails its sha256"),
        (
            "weights_not_safetensors",
            build(_with(p, weights=b"hello world, not a header")),
            "SafeTensors header",
        ),
        (
            "weights_len_past_end",
            build(_with(p, weights=struct.pack("<Q", 999) + b"{}")),
            "runs past the end",
        ),
        (
            "weights_bad_dtype",
            build(_with(p, weights=safetensors_bytes(w).replace(b'"F32"', b'"X32"'))),
            "unsupported dtype",
        ),
        (
            "weights_overlap",
            build(
                _with(
                    p,
                    weights=safetensors_bytes({"a": torch.ones(1), "b": torch.ones(1)}).replace(
                        b"[4,8]", b"[0,4]"
                    ),
                )
            ),
            "overlap",
        ),
        (
            "weights_nan",
            build(_with(p, weights=safetensors_bytes({**w, "y": torch.tensor([float("nan")])}))),
            "NaN or Inf",
        ),
        (
            "weights_nine_dims",
            build(_with(p, weights=safetensors_bytes({"a": torch.ones([1] * 9)}))),
            "9 dimensions",
        ),
        ("config_not_json", build(_with(p, config=b"{")), "not valid JSON"),
        # JSON, but no config or tokenizer we can build: one message for all of them.
        *(
            (name, build(_with(p, **{part: raw})), "config or tokenizer part is invalid")
            for name, part, raw in (
                ("config_list", "config", b"[1]"),
                ("config_unknown_field", "config", b'{"wat": 1}'),
                ("config_bad_value", "config", b'{"n_embd": -1}'),
                ("tokenizer_unknown_kind", "tokenizer", b'{"kind": "morse"}'),
                ("tokenizer_bpe_garbage", "tokenizer", b'{"kind": "bpe", "tokenizer": 5}'),
            )
        ),
        ("learner_list", build(_with(p, learner=b"[1, 2]")), "learner part must be"),
        (
            "learner_deep",
            build(_with(p, learner=b"[" * 100_000 + b"]" * 100_000)),
            "nested too deeply",
        ),
        (
            "optimizer_no_meta",
            build(_with(p, optimizer=safetensors_bytes(w))),
            "optimizer metadata",
        ),
        (
            "optimizer_meta_list",
            build(_with(p, optimizer=safetensors_bytes(w, {"optimizer": "[]"}))),
            "must hold state and param_groups",
        ),
        (
            "optimizer_missing_tensor",
            build(_with(p, optimizer=safetensors_bytes(w, {"optimizer": json.dumps(opt_meta)}))),
            "is missing",
        ),
        (
            "optimizer_bad_index",
            build(
                _with(
                    p,
                    optimizer=safetensors_bytes(
                        w, {"optimizer": json.dumps({"state": {"x": {}}, "param_groups": []})}
                    ),
                )
            ),
            "not an index",
        ),
        (
            "optimizer_group_no_params",
            build(
                _with(
                    p,
                    optimizer=safetensors_bytes(
                        w, {"optimizer": json.dumps({"state": {}, "param_groups": [{}]})}
                    ),
                )
            ),
            "params list",
        ),
        ("rng_missing_cpu", build(_with(p, rng=safetensors_bytes(w))), "torch_cpu"),
        (
            "rng_cpu_float",
            build(_with(p, rng=safetensors_bytes({"torch_cpu": torch.ones(3)}))),
            "torch_cpu",
        ),
        (
            "rng_python_short",
            build(
                _with(
                    p,
                    rng=safetensors_bytes(
                        {"torch_cpu": torch.zeros(8, dtype=torch.uint8)},
                        {"python": "[3, [1], null]"},
                    ),
                )
            ),
            "python rng",
        ),
        (
            "rng_numpy_bad",
            build(
                _with(
                    p,
                    rng=safetensors_bytes(
                        {"torch_cpu": torch.zeros(8, dtype=torch.uint8)}, {"numpy": '{"key": 1}'}
                    ),
                )
            ),
            "numpy rng",
        ),
        ("pickle_instead", b"\x80\x04\x95" + b"\0" * 40, "pickle"),
    ]
    return c


def _write(tmp: Path) -> list[tuple[Path, str]]:
    out = []
    for name, data, expected in cases(tmp):
        path = tmp / f"{name}.ckpt"
        path.write_bytes(data)
        out.append((path, expected))
    return out


def test_corpus(tmp_path: Path) -> None:
    files = _write(tmp_path)
    assert len(files) >= 50
    for path, expected in files:
        with pytest.raises(WeightLoadError, match=expected):
            load_checkpoint(path)
    outcomes = check_files([p for p, _ in files], loader="workbench.formats:load_checkpoint")
    assert_clean(outcomes)
    for (path, expected), o in zip(files, outcomes, strict=True):
        assert o.status == "WeightLoadError" and expected in o.message, (path.name, o.message)


@pytest.mark.slow
@pytest.mark.parametrize("loader", ["load_unverified", "load_weights"])
def test_mutation_fuzz(tmp_path: Path, loader: str) -> None:
    spec = (
        f"tests.formats.test_checkpoint_corpus:{loader}"
        if loader == "load_unverified"
        else "workbench.formats:load_weights"
    )
    paths = write_mutants(
        _valid(tmp_path),
        tmp_path / "m",
        1000 if loader == "load_unverified" else 300,
        seed=5,
        suffix=".ckpt",
    )
    assert_clean(check_files(paths, loader=spec))
