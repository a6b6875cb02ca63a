"""Our checkpoint ("custom" format): one file with weights, optimizer, learner and RNG state.

Layout (little-endian)::

    0   magic b"MWBCKPT\\0"
    8   u32 version, u32 flags (0)
    16  u64 manifest offset, u64 manifest length
    32  parts, back to back: SafeTensors blobs (weights, optimizer, rng, extra) and JSON
        (config, tokenizer, learner)
    ..  manifest JSON {format, version, created, parts: {name: {offset, length, sha256, kind}}},
        ending exactly at the end of the file

The manifest sits at the end so each part is hashed while it streams out; the fixed header
points at it. One file (not a folder) so the whole checkpoint is replaced by one atomic rename
and recognised by its magic. Nothing is pickled: optimizer state is tensors plus JSON, RNG
states are byte tensors and integer lists.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import random
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor

from workbench.formats import opener
from workbench.formats._common import (
    MAX_HEADER_BYTES,
    LoadedWeights,
    Progress,
    WeightLoadError,
    WeightSaveError,
    atomic_writer,
    check_finite_fast,
    parse_json,
    progress_bar,
)
from workbench.formats.safetensors_io import (
    read_header,
    tensors_from_buffer,
    write_safetensors_to,
)
from workbench.models.config import ModelConfig
from workbench.tokenizers import Tokenizer, TokenizerError, tokenizer_from_json

MAGIC = b"MWBCKPT\0"
VERSION = 1
FORMAT_TAG = "markovian-workbench/checkpoint"
_HEAD = struct.Struct("<8sIIQQ")  # magic, version, flags, manifest offset, manifest length
_CHUNK = 16 * 1024 * 1024  # parts are read and hashed in pieces this big
# name → kind; "weights" and "config" are required.
PARTS: dict[str, str] = {
    "weights": "safetensors",
    "config": "json",
    "tokenizer": "json",
    "optimizer": "safetensors",
    "learner": "json",
    "rng": "safetensors",
    "extra": "safetensors",
}


def is_checkpoint(head: bytes) -> bool:
    return head[:8] == MAGIC


# ---------------------------------------------------------------------------- RNG


@dataclass
class RNGState:
    """Random generator states: torch CPU (and CUDA), Python's ``random``, numpy's global."""

    torch_cpu: Tensor
    torch_cuda: list[Tensor] = field(default_factory=list)
    python: list[Any] | None = None  # random.getstate() as [version, [625 ints], gauss_next]
    numpy: dict[str, Any] | None = None  # np.random.get_state(legacy=False), key as a list

    @classmethod
    def capture(cls) -> RNGState:
        import numpy as np

        version, internal, gauss = random.getstate()
        np_state = np.random.get_state(legacy=False)
        assert isinstance(np_state, dict)
        np_json = {
            "bit_generator": np_state["bit_generator"],
            "key": [int(k) for k in np_state["state"]["key"]],
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        }
        cuda = list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else []
        return cls(torch.get_rng_state(), cuda, [version, list(internal), gauss], np_json)

    def restore(self) -> None:
        """Put every generator back where it was when the state was captured."""
        import numpy as np

        torch.set_rng_state(self.torch_cpu)
        if self.torch_cuda and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(self.torch_cuda)
        if self.python is not None:
            version, internal, gauss = self.python
            random.setstate((version, tuple(internal), gauss))
        if self.numpy is not None:
            n = self.numpy
            np.random.set_state(
                {
                    "bit_generator": n["bit_generator"],
                    "state": {"key": np.asarray(n["key"], dtype=np.uint32), "pos": n["pos"]},
                    "has_gauss": n["has_gauss"],
                    "gauss": n["gauss"],
                }
            )

    def to_parts(self) -> tuple[dict[str, Tensor], dict[str, str]]:
        tensors = {"torch_cpu": self.torch_cpu}
        tensors.update({f"torch_cuda.{i}": t.cpu() for i, t in enumerate(self.torch_cuda)})
        meta = {"python": json.dumps(self.python), "numpy": json.dumps(self.numpy)}
        return tensors, meta

    @classmethod
    def from_parts(cls, tensors: dict[str, Tensor], meta: dict[str, str], where: str) -> RNGState:
        cpu = tensors.get("torch_cpu")
        if cpu is None or cpu.dtype != torch.uint8 or cpu.ndim != 1:
            raise WeightLoadError(f"{where}: rng part lacks a uint8 'torch_cpu' state")
        cuda = [
            tensors[f"torch_cuda.{i}"]
            for i in range(len(tensors) - 1)
            if f"torch_cuda.{i}" in tensors
        ]
        python = parse_json(meta.get("python", "null").encode(), f"{where}: python rng")
        numpy = parse_json(meta.get("numpy", "null").encode(), f"{where}: numpy rng")
        if python is not None and not (
            isinstance(python, list)
            and len(python) == 3
            and isinstance(python[1], list)
            and len(python[1]) == 625
            and all(type(x) is int and 0 <= x < 2**32 for x in python[1])
        ):
            raise WeightLoadError(f"{where}: python rng state must be [version, 625 ints, gauss]")
        if numpy is not None and not (
            isinstance(numpy, dict)
            and set(numpy) == {"bit_generator", "key", "pos", "has_gauss", "gauss"}
            and isinstance(numpy["key"], list)
            and len(numpy["key"]) == 624
            and all(type(x) is int and 0 <= x < 2**32 for x in numpy["key"])
            and type(numpy["pos"]) is int
        ):
            raise WeightLoadError(f"{where}: numpy rng state is malformed")
        return cls(cpu.clone(), cuda, python, numpy)


# ---------------------------------------------------------------------------- optimizer


def _to_json(value: Any, where: str) -> Any:
    # Tuples are tagged so that e.g. AdamW's betas come back as the tuple they were.
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, tuple):
        return {"__tuple__": [_to_json(v, where) for v in value]}
    if isinstance(value, list):
        return [_to_json(v, where) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _to_json(v, where) for k, v in value.items()}
    raise WeightSaveError(f"{where}: cannot store {type(value).__name__} without pickle")


def _from_json(value: Any) -> Any:
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    if isinstance(value, dict):
        if set(value) == {"__tuple__"} and isinstance(value["__tuple__"], list):
            return tuple(_from_json(v) for v in value["__tuple__"])
        return {k: _from_json(v) for k, v in value.items()}
    return value


def optimizer_to_parts(sd: Mapping[str, Any]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """A torch optimizer ``state_dict`` as SafeTensors tensors plus JSON metadata."""
    tensors: dict[str, Tensor] = {}
    state: dict[str, dict[str, Any]] = {}
    for idx, entries in sd["state"].items():
        if not isinstance(idx, int):
            raise WeightSaveError(f"optimizer state key {idx!r} is not a parameter index")
        state[str(idx)] = {}
        for key, v in entries.items():
            if isinstance(v, Tensor):
                tensors[f"state.{idx}.{key}"] = v.detach().cpu()
                state[str(idx)][key] = {"__tensor__": f"state.{idx}.{key}"}
            else:
                state[str(idx)][key] = _to_json(v, f"optimizer state {idx}.{key}")
    groups = []
    for i, g in enumerate(sd["param_groups"]):
        out: dict[str, Any] = {}
        for key, v in g.items():
            if isinstance(v, Tensor):
                tensors[f"param_groups.{i}.{key}"] = v.detach().cpu()
                out[key] = {"__tensor__": f"param_groups.{i}.{key}"}
            else:
                out[key] = _to_json(v, f"param group {i} {key}")
        groups.append(out)
    return tensors, {"optimizer": json.dumps({"state": state, "param_groups": groups})}


def optimizer_from_parts(
    tensors: dict[str, Tensor], meta: dict[str, str], where: str
) -> dict[str, Any]:
    data = parse_json(meta.get("optimizer", "").encode(), f"{where}: optimizer metadata")
    if not (
        isinstance(data, dict)
        and isinstance(data.get("state"), dict)
        and isinstance(data.get("param_groups"), list)
    ):
        raise WeightLoadError(f"{where}: optimizer metadata must hold state and param_groups")

    def resolve(v: Any) -> Any:
        if isinstance(v, dict) and set(v) == {"__tensor__"}:
            t = tensors.get(v["__tensor__"]) if isinstance(v["__tensor__"], str) else None
            if t is None:
                raise WeightLoadError(
                    f"{where}: optimizer tensor {str(v['__tensor__'])[:80]!r} is missing"
                )
            return t
        return _from_json(v)

    state: dict[int, dict[str, Any]] = {}
    for idx, entries in data["state"].items():
        if not idx.isdigit() or not isinstance(entries, dict):
            raise WeightLoadError(f"{where}: optimizer state key {idx[:40]!r} is not an index")
        state[int(idx)] = {k: resolve(v) for k, v in entries.items()}
    groups = []
    for g in data["param_groups"]:
        if not isinstance(g, dict) or not isinstance(g.get("params"), list):
            raise WeightLoadError(f"{where}: every optimizer param group needs a params list")
        groups.append({k: resolve(v) for k, v in g.items()})
    return {"state": state, "param_groups": groups}


# ---------------------------------------------------------------------------- file


@dataclass
class Checkpoint:
    """Everything a checkpoint holds, decoded."""

    config: ModelConfig
    state_dict: dict[str, Tensor]
    tokenizer: Tokenizer | None
    optimizer_state: dict[str, Any] | None
    learner_state: dict[str, Any] | None
    rng: RNGState | None
    extra_tensors: dict[str, Tensor]
    manifest: dict[str, Any]
    path: Path


class _Hashing:
    def __init__(self, f: IO[bytes]) -> None:
        self.f, self.h, self.n = f, hashlib.sha256(), 0

    def write(self, data: bytes | memoryview) -> int:
        self.h.update(data)
        n = self.f.write(data)
        self.n += n
        return n


def write_checkpoint(
    path: str | Path,
    *,
    state_dict: Mapping[str, Tensor],
    config: ModelConfig,
    tokenizer: Tokenizer | None = None,
    optimizer_state: Mapping[str, Any] | None = None,
    learner_state: Mapping[str, Any] | None = None,
    rng: RNGState | None = None,
    extra_tensors: Mapping[str, Tensor] | None = None,
) -> Path:
    """Write a checkpoint atomically: a crash leaves the previous file or the new one."""
    parts: list[tuple[str, Any]] = [
        ("weights", ({k: v.detach() for k, v in state_dict.items()}, {})),
        ("config", config.to_dict()),
    ]
    if tokenizer is not None:
        parts.append(("tokenizer", json.loads(tokenizer.to_json())))
    if optimizer_state is not None:
        parts.append(("optimizer", optimizer_to_parts(optimizer_state)))
    if learner_state is not None:
        parts.append(("learner", _to_json(dict(learner_state), "learner_state")))
    if rng is not None:
        parts.append(("rng", rng.to_parts()))
    if extra_tensors:
        parts.append(("extra", (dict(extra_tensors), {})))
    listing: dict[str, dict[str, Any]] = {}
    target = Path(path)
    with atomic_writer(target) as f:
        f.write(b"\0" * _HEAD.size)
        pos = _HEAD.size
        for name, payload in parts:
            w = _Hashing(f)
            if PARTS[name] == "json":
                w.write(json.dumps(payload).encode())
            else:
                tensors, meta = payload
                write_safetensors_to(w, tensors, meta)
            listing[name] = {
                "offset": pos,
                "length": w.n,
                "sha256": w.h.hexdigest(),
                "kind": PARTS[name],
            }
            pos += w.n
        manifest = {
            "format": FORMAT_TAG,
            "version": VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "parts": listing,
        }
        raw = json.dumps(manifest, indent=1).encode()
        f.write(raw)
        f.seek(0)
        f.write(_HEAD.pack(MAGIC, VERSION, 0, pos, len(raw)))
    return target


def _read_manifest(f: IO[bytes], size: int, where: str) -> dict[str, Any]:
    head = f.read(_HEAD.size)
    if len(head) < _HEAD.size:
        raise WeightLoadError(f"{where}: too short for a checkpoint header ({size} bytes)")
    magic, version, flags, m_off, m_len = _HEAD.unpack(head)
    if magic != MAGIC:
        raise WeightLoadError(f"{where}: not a workbench checkpoint (wrong magic)")
    if version != VERSION or flags != 0:
        raise WeightLoadError(
            f"{where}: checkpoint version {version}/flags {flags}; this reader knows {VERSION}/0"
        )
    if m_len > MAX_HEADER_BYTES or m_off < _HEAD.size or m_off + m_len != size:
        raise WeightLoadError(
            f"{where}: manifest at [{m_off}, {m_off + m_len}) must end exactly at the end of the "
            f"file ({size} bytes): the checkpoint is truncated or corrupt"
        )
    f.seek(m_off)
    manifest = parse_json(f.read(m_len), f"{where}: manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_TAG:
        raise WeightLoadError(f"{where}: manifest is not a {FORMAT_TAG} object")
    parts = manifest.get("parts")
    if not isinstance(parts, dict) or not {"weights", "config"} <= set(parts):
        raise WeightLoadError(f"{where}: manifest must list parts including weights and config")
    spans = []
    for name, p in parts.items():
        if name not in PARTS:
            raise WeightLoadError(f"{where}: unknown part {name[:40]!r}")
        if not (
            isinstance(p, dict)
            and set(p) == {"offset", "length", "sha256", "kind"}
            and type(p["offset"]) is int
            and type(p["length"]) is int
            and p["kind"] == PARTS[name]
            and isinstance(p["sha256"], str)
        ):
            raise WeightLoadError(f"{where}: part {name!r} entry is malformed")
        if p["offset"] < _HEAD.size or p["length"] < 0 or p["offset"] + p["length"] > m_off:
            raise WeightLoadError(
                f"{where}: part {name!r} byte range [{p['offset']}, {p['offset'] + p['length']}) "
                f"lies outside the data section [{_HEAD.size}, {m_off})"
            )
        spans.append((p["offset"], p["offset"] + p["length"], name))
    spans.sort()
    for (_, end, a), (begin, _, b) in itertools.pairwise(spans):
        if begin < end:
            raise WeightLoadError(f"{where}: parts {a!r} and {b!r} overlap")
    return manifest


def _read_part(
    f: io.BufferedReader, p: dict[str, Any], name: str, where: str, verify: bool, bar: Progress
) -> Any:
    f.seek(p["offset"])
    buf = bytearray(p["length"])
    digest = hashlib.sha256()
    with memoryview(buf) as view:
        pos = 0
        while pos < len(buf):
            n = f.readinto(view[pos : pos + _CHUNK])
            if not n:
                raise WeightLoadError(f"{where}: file shrank while part {name!r} was read")
            if verify:
                digest.update(view[pos : pos + n])
            pos += n
            bar.update(n)
    if verify and digest.hexdigest() != p["sha256"]:
        raise WeightLoadError(f"{where}: part {name!r} fails its sha256 check: the file is corrupt")
    label = f"{where} part {name!r}"
    if p["kind"] == "json":
        return parse_json(bytes(buf), label)
    header = read_header(io.BytesIO(buf), len(buf), label)
    return tensors_from_buffer(buf, header), header.metadata


def read_checkpoint(
    path: str | Path,
    *,
    verify: bool = True,
    parts: tuple[str, ...] | None = None,
    allow_nonfinite: bool = False,
    progress: bool | None = None,
) -> Checkpoint:
    """Read and check a checkpoint; ``parts`` limits which parts are decoded.

    ``progress``: None shows a bar for big reads that last over a second, True always, False
    never.
    """
    path = Path(path)
    where = str(path)
    try:
        with opener.open_file(path) as f:
            size = f.seek(0, 2)
            f.seek(0)
            manifest = _read_manifest(f, size, where)
            wanted = [n for n in manifest["parts"] if parts is None or n in parts]
            total = sum(manifest["parts"][n]["length"] for n in wanted)
            with progress_bar(total, f"loading {path.name}", progress) as bar:
                got = {
                    n: _read_part(f, manifest["parts"][n], n, where, verify, bar) for n in wanted
                }
    except OSError as e:
        raise WeightLoadError(f"cannot read {path}: {e}") from None
    state_dict, _ = got["weights"]
    check_finite_fast(state_dict, allow_nonfinite)
    try:
        config = ModelConfig.from_dict(got["config"])
        tok = tokenizer_from_json(json.dumps(got["tokenizer"])) if "tokenizer" in got else None
    except (TypeError, ValueError, TokenizerError) as e:
        raise WeightLoadError(f"{where}: config or tokenizer part is invalid: {e}") from None
    learner = got.get("learner")
    if learner is not None and not isinstance(learner, dict):
        raise WeightLoadError(f"{where}: learner part must be a JSON object")
    return Checkpoint(
        config=config,
        state_dict=state_dict,
        tokenizer=tok,
        optimizer_state=optimizer_from_parts(got["optimizer"][0], got["optimizer"][1], where)
        if "optimizer" in got
        else None,
        learner_state=_from_json(learner) if learner is not None else None,
        rng=RNGState.from_parts(got["rng"][0], got["rng"][1], where) if "rng" in got else None,
        extra_tensors=got["extra"][0] if "extra" in got else {},
        manifest=manifest,
        path=path,
    )


def read_checkpoint_weights(
    path: str | Path, *, allow_nonfinite: bool = False, progress: bool | None = None
) -> LoadedWeights:
    """The weights of a checkpoint as ``LoadedWeights`` (config and tokenizer in metadata)."""
    ck = read_checkpoint(
        path,
        parts=("weights", "config", "tokenizer"),
        allow_nonfinite=allow_nonfinite,
        progress=progress,
    )
    meta: dict[str, Any] = {"manifest": ck.manifest, "config": ck.config.to_dict()}
    if ck.tokenizer is not None:
        meta["tokenizer"] = ck.tokenizer.to_json()
    return LoadedWeights(ck.state_dict, meta, "custom", ck.path)
