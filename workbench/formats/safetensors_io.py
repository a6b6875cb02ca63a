"""SafeTensors: a bounded header check, memory-mapped loading, our own streaming writer.

The boundary: this module reads and writes SafeTensors files and byte strings (single files,
Hugging Face shard folders) and knows the Hugging Face ``config.json`` / ``tokenizer.json``
conventions. Renaming Hugging Face parameters is :mod:`workbench.formats.hf_names`' job; which
format a path holds is :mod:`workbench.formats.api`'s.

Every header is validated here before the ``safetensors`` library (or ``torch.frombuffer``)
sees the data: header length within limits and within the file, JSON that parses, known dtypes,
at most ``MAX_DIMS`` dimensions, byte ranges that match ``numel * itemsize``, sorted and
contiguous inside the data section. Whatever still goes wrong becomes ``WeightLoadError``.
"""

from __future__ import annotations

import json
import math
import struct
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

import torch
from safetensors import safe_open
from tokenizers import Tokenizer as HFTokenizerCore
from torch import Tensor

from workbench.formats._common import (
    MAX_DIMS,
    MAX_HEADER_BYTES,
    MAX_TENSORS,
    LoadedWeights,
    WeightLoadError,
    WeightSaveError,
    atomic_writer,
    check_finite,
)
from workbench.models.config import ModelConfig
from workbench.tokenizers import BPETokenizer, Tokenizer

SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_DTYPE_NAMES = {v: k for k, v in SAFETENSORS_DTYPES.items()}
MAX_JSON_FILE_BYTES = 64 * 1024 * 1024  # config.json, tokenizer.json, shard index
MAX_SHARDS = 10_000
# Below this many bytes a load is too quick for a progress bar (and a bar's monitor thread
# would be wasted); ``progress=True`` forces one.
PROGRESS_MIN_BYTES = 64 * 1024 * 1024

META_CONFIG = "markovian.config"
META_TOKENIZER = "markovian.tokenizer"
META_NAMES = "markovian.names"  # "workbench" (ours) or "hf" (Hugging Face layout)


class Writable(Protocol):
    def write(self, data: bytes | memoryview, /) -> int: ...


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a SafeTensors header; ``begin``/``end`` are relative to the data section."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class SafetensorsHeader:
    entries: list[TensorEntry]  # sorted by byte offset
    metadata: dict[str, str]
    data_start: int  # offset of the data section from the start of the blob


def check_finite_fast(tensors: Mapping[str, Tensor], allow_nonfinite: bool) -> None:
    """``check_finite`` at the cost of one sum per tensor.

    A finite sum proves every element finite (NaN and ±Inf propagate through addition), so the
    exact elementwise check runs only when the sum is not finite, which also catches a sum that
    overflowed on large but finite values.
    """
    if allow_nonfinite:
        return
    for name, t in tensors.items():
        if not t.is_floating_point() or not t.numel():
            continue
        acc = torch.float64 if t.dtype == torch.float64 else torch.float32
        if not math.isfinite(float(t.sum(dtype=acc))):
            check_finite({name: t}, False)


class _Progress:
    """A tqdm bar shown only for big loads, and only once a load has run for a second."""

    def __init__(self, total: int, desc: str, progress: bool | None) -> None:
        self.bar: Any = None
        if progress or (progress is None and total >= PROGRESS_MIN_BYTES):
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total, desc=desc, unit="B", unit_scale=True, delay=0 if progress else 1.0
            )

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@contextmanager
def progress_bar(total: int, desc: str, progress: bool | None) -> Iterator[_Progress]:
    bar = _Progress(total, desc, progress)
    try:
        yield bar
    finally:
        bar.close()


def _pairs_no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise WeightLoadError(f"duplicate key {key!r} in JSON")
        out[key] = value
    return out


def parse_json(raw: bytes, where: str) -> Any:
    """Parse bounded JSON bytes; every failure (bad UTF-8, syntax, nesting) → WeightLoadError."""
    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=_pairs_no_duplicates)
    except WeightLoadError as e:
        raise WeightLoadError(f"{where}: {e}") from None
    except UnicodeDecodeError as e:
        raise WeightLoadError(
            f"{where} is not valid UTF-8 ({e.reason} at byte {e.start})"
        ) from None
    except RecursionError:
        raise WeightLoadError(f"{where}: JSON nested too deeply") from None
    except ValueError as e:
        raise WeightLoadError(f"{where} is not valid JSON: {e}") from None


def read_json_file(path: Path, what: str, limit: int = MAX_JSON_FILE_BYTES) -> Any:
    """Read a small JSON file beside the weights, refusing anything over ``limit`` bytes."""
    try:
        with open(path, "rb") as f:
            raw = f.read(limit + 1)
    except OSError as e:
        raise WeightLoadError(f"cannot read {what} {path}: {e}") from None
    if len(raw) > limit:
        raise WeightLoadError(f"{what} {path} is larger than the {limit}-byte limit")
    return parse_json(raw, f"{what} {path.name}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _entry(name: str, info: Any, where: str) -> TensorEntry:
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise WeightLoadError(
            f"{where}: tensor {name!r} must be an object with exactly dtype, shape and "
            f"data_offsets, got {str(info)[:100]}"
        )
    dtype = SAFETENSORS_DTYPES.get(info["dtype"]) if isinstance(info["dtype"], str) else None
    if dtype is None:
        raise WeightLoadError(
            f"{where}: tensor {name!r} has unsupported dtype {str(info['dtype'])[:40]!r}; "
            f"supported: {', '.join(SAFETENSORS_DTYPES)}"
        )
    shape = info["shape"]
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise WeightLoadError(
            f"{where}: tensor {name!r} shape must be a list of non-negative integers"
        )
    if len(shape) > MAX_DIMS:
        raise WeightLoadError(
            f"{where}: tensor {name!r} has {len(shape)} dimensions (at most {MAX_DIMS})"
        )
    offsets = info["data_offsets"]
    if (
        not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets))
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise WeightLoadError(
            f"{where}: tensor {name!r} data_offsets must be [begin, end] with 0 <= begin <= end"
        )
    nbytes = math.prod(shape) * dtype.itemsize
    if offsets[1] - offsets[0] != nbytes:
        raise WeightLoadError(
            f"{where}: tensor {name!r} of shape {shape} and dtype {info['dtype']} needs "
            f"{nbytes} bytes but data_offsets span {offsets[1] - offsets[0]}"
        )
    return TensorEntry(name, dtype, tuple(shape), offsets[0], offsets[1])


def read_header(f: IO[bytes], size: int, where: str) -> SafetensorsHeader:
    """Validate the SafeTensors header of the ``size``-byte blob that starts at ``f``'s position.

    Examples
    --------
    >>> import io, torch
    >>> blob = safetensors_bytes({"w": torch.zeros(2, 3)}, {"k": "v"})
    >>> h = read_header(io.BytesIO(blob), len(blob), "example")
    >>> [(e.name, e.shape, e.end) for e in h.entries], h.metadata
    ([('w', (2, 3), 24)], {'k': 'v'})
    """
    if size < 8:
        raise WeightLoadError(f"{where} is too short for a SafeTensors header ({size} bytes)")
    (n,) = struct.unpack("<Q", f.read(8))
    if n < 2 or n > MAX_HEADER_BYTES:
        raise WeightLoadError(
            f"{where}: SafeTensors header length {n} is outside [2, {MAX_HEADER_BYTES}]"
        )
    if 8 + n > size:
        raise WeightLoadError(
            f"{where}: SafeTensors header length {n} runs past the end of the data "
            f"({size} bytes): the file is truncated or not SafeTensors"
        )
    raw = f.read(n)
    if len(raw) != n:
        raise WeightLoadError(f"{where}: file is truncated inside the SafeTensors header")
    if raw[:1] != b"{":
        raise WeightLoadError(f"{where}: SafeTensors header does not start with '{{'")
    header = parse_json(raw, f"{where}: SafeTensors header")
    if not isinstance(header, dict):
        raise WeightLoadError(f"{where}: SafeTensors header must be a JSON object")
    if len(header) > MAX_TENSORS + 1:
        raise WeightLoadError(f"{where}: {len(header)} tensors exceed the limit of {MAX_TENSORS}")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise WeightLoadError(f"{where}: __metadata__ must map strings to strings")
    entries = sorted(
        (_entry(name, info, where) for name, info in header.items()),
        key=lambda e: (e.begin, e.end),
    )
    data_size = size - 8 - n
    pos = 0
    prev = "the start of the data"
    for e in entries:
        if e.end > data_size:
            raise WeightLoadError(
                f"{where}: tensor {e.name!r} byte range [{e.begin}, {e.end}) runs past the end "
                f"of the data section ({data_size} bytes): the file is truncated"
            )
        if e.begin < pos:
            raise WeightLoadError(f"{where}: tensors {prev!r} and {e.name!r} overlap")
        if e.begin > pos:
            raise WeightLoadError(
                f"{where}: {e.begin - pos} unused bytes between {prev!r} and {e.name!r}"
            )
        pos, prev = e.end, e.name
    if pos != data_size:
        raise WeightLoadError(
            f"{where}: {data_size - pos} bytes after the last tensor are not described by the header"
        )
    return SafetensorsHeader(entries, metadata, 8 + n)


def tensors_from_buffer(
    buf: bytearray | memoryview, header: SafetensorsHeader
) -> dict[str, Tensor]:
    """Tensors that view ``buf`` (no copy) at the ranges a validated header gives."""
    out: dict[str, Tensor] = {}
    for e in header.entries:
        count = math.prod(e.shape)
        if count == 0:
            out[e.name] = torch.empty(e.shape, dtype=e.dtype)
            continue
        t = torch.frombuffer(buf, dtype=e.dtype, count=count, offset=header.data_start + e.begin)
        out[e.name] = t.reshape(e.shape)
    return out


def _header_of_file(path: Path) -> tuple[SafetensorsHeader, int]:
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            f.seek(0)
            return read_header(f, size, str(path)), size
    except OSError as e:
        raise WeightLoadError(f"cannot read {path}: {e}") from None


def _load_file(
    path: Path, bar: _Progress | None = None
) -> tuple[dict[str, Tensor], dict[str, str]]:
    header, _ = _header_of_file(path)
    tensors: dict[str, Tensor] = {}
    try:
        # Memory-mapped: a tensor's pages are read when first touched, not here.
        with safe_open(str(path), framework="pt") as f:
            for e in header.entries:
                tensors[e.name] = f.get_tensor(e.name)
                if bar is not None:
                    bar.update(e.end - e.begin)
    except WeightLoadError:
        raise
    except Exception as e:  # the library's SafetensorError and OS errors alike
        raise WeightLoadError(f"{path}: SafeTensors library refused the file: {e}") from None
    return tensors, header.metadata


def read_safetensors(
    path: str | Path, *, allow_nonfinite: bool = False, progress: bool | None = None
) -> LoadedWeights:
    """Load a SafeTensors file, or a Hugging Face folder (single file or sharded with an index).

    Tensors keep the file's names; ``metadata`` holds the header's ``__metadata__`` (for shards,
    the union, plus ``"shards"``).
    """
    path = Path(path)
    if path.is_dir():
        index = path / "model.safetensors.index.json"
        if index.is_file():
            return _read_sharded(index, allow_nonfinite=allow_nonfinite, progress=progress)
        single = path / "model.safetensors"
        if not single.is_file():
            raise WeightLoadError(
                f"{path} is a folder without model.safetensors or model.safetensors.index.json"
            )
        path = single
    elif path.name.endswith(".index.json"):
        return _read_sharded(path, allow_nonfinite=allow_nonfinite, progress=progress)
    total = path.stat().st_size
    with progress_bar(total, f"loading {path.name}", progress) as bar:
        tensors, metadata = _load_file(path, bar)
        check_finite_fast(tensors, allow_nonfinite)
    return LoadedWeights(tensors, dict(metadata), "safetensors", path)


def _read_sharded(
    index_path: Path, *, allow_nonfinite: bool, progress: bool | None
) -> LoadedWeights:
    index = read_json_file(index_path, "shard index")
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise WeightLoadError(f"{index_path}: 'weight_map' must map tensor names to shard files")
    shards: dict[str, set[str]] = {}
    for name, shard in weight_map.items():
        shards.setdefault(shard, set()).add(name)
    if len(shards) > MAX_SHARDS:
        raise WeightLoadError(f"{index_path}: {len(shards)} shards exceed the limit {MAX_SHARDS}")
    folder = index_path.parent
    tensors: dict[str, Tensor] = {}
    metadata: dict[str, str] = {}
    total = 0
    for shard in shards:
        # Shard names are plain file names in the same folder: never a path out of it.
        if Path(shard).name != shard or shard in ("", ".", ".."):
            raise WeightLoadError(f"{index_path}: shard {shard!r} is not a plain file name")
        if not (folder / shard).is_file():
            raise WeightLoadError(f"{index_path}: shard file {shard} is missing")
        total += (folder / shard).stat().st_size
    with progress_bar(total, f"loading {folder.name}", progress) as bar:
        for shard, names in sorted(shards.items()):
            part, meta = _load_file(folder / shard, bar)
            if set(part) != names:
                extra = sorted(set(part) - names)[:5]
                missing = sorted(names - set(part))[:5]
                raise WeightLoadError(
                    f"{shard} does not hold what the index says: missing {missing}, "
                    f"not in the index {extra}"
                )
            tensors.update(part)
            metadata.update(meta)
        check_finite_fast(tensors, allow_nonfinite)
    index_meta = index.get("metadata")
    if isinstance(index_meta, dict):
        metadata.update({k: str(v) for k, v in index_meta.items()})
    metadata["shards"] = json.dumps(sorted(shards))
    return LoadedWeights(tensors, metadata, "safetensors", index_path)


# ---------------------------------------------------------------------------- writing


def _header_bytes(tensors: Mapping[str, Tensor], metadata: Mapping[str, str] | None) -> bytes:
    header: dict[str, Any] = {}
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise WeightSaveError("SafeTensors metadata must map strings to strings")
        header["__metadata__"] = dict(metadata)
    pos = 0
    for name, t in tensors.items():
        if t.dtype not in _DTYPE_NAMES:
            raise WeightSaveError(f"tensor {name!r} has dtype {t.dtype}, which SafeTensors lacks")
        nbytes = t.numel() * t.element_size()
        header[name] = {
            "dtype": _DTYPE_NAMES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [pos, pos + nbytes],
        }
        pos += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # pad so the data section starts 8-byte aligned
    return struct.pack("<Q", len(raw)) + raw


def _raw(t: Tensor) -> memoryview:
    # Bytes of a tensor in little-endian order, as SafeTensors (and our raw binary) require.
    if sys.byteorder != "little":
        raise WeightSaveError("writing weights on a big-endian machine is not supported")
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().data


def write_safetensors_to(
    f: Writable, tensors: Mapping[str, Tensor], metadata: Mapping[str, str] | None = None
) -> int:
    """Stream a SafeTensors blob into ``f`` one tensor at a time; return its length."""
    head = _header_bytes(tensors, metadata)
    f.write(head)
    n = len(head)
    for t in tensors.values():
        if t.numel():
            n += f.write(_raw(t))
    return n


def safetensors_bytes(
    tensors: Mapping[str, Tensor], metadata: Mapping[str, str] | None = None
) -> bytes:
    import io

    buf = io.BytesIO()
    write_safetensors_to(buf, tensors, metadata)
    return buf.getvalue()


def write_safetensors(
    path: str | Path, tensors: Mapping[str, Tensor], metadata: Mapping[str, str] | None = None
) -> None:
    """Write a SafeTensors file atomically (temp file, fsync, rename, fsync the folder)."""
    with atomic_writer(path) as f:
        write_safetensors_to(f, tensors, metadata)


# ---------------------------------------------------------------------------- Hugging Face


class UnsupportedModelError(WeightLoadError):
    """The file describes a model whose math ours would not reproduce."""


def _refuse(what: str) -> UnsupportedModelError:
    return UnsupportedModelError(f"config.json: {what}; loading it would compute something else")


def config_from_hf(hf: Mapping[str, Any]) -> ModelConfig:
    """A ``ModelConfig`` from a Hugging Face ``config.json`` (gpt2, llama, mistral).

    Fields that would change the math (rope scaling, other activations, MLP biases...) are
    refused by name rather than ignored.

    Examples
    --------
    >>> config_from_hf({"model_type": "gpt2", "vocab_size": 257, "n_positions": 64,
    ...                 "n_embd": 32, "n_layer": 2, "n_head": 4}).n_ctx
    64
    """
    kind = hf.get("model_type")
    try:
        if kind == "gpt2":
            if hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
                raise _refuse(f"activation_function {hf['activation_function']!r} is not gelu_new")
            for flag in (
                "scale_attn_by_inverse_layer_idx",
                "reorder_and_upcast_attn",
                "add_cross_attention",
            ):
                if hf.get(flag):
                    raise _refuse(f"{flag} is set")
            if hf.get("scale_attn_weights", True) is not True:
                raise _refuse("scale_attn_weights is off")
            return ModelConfig(
                family="gpt2",
                vocab_size=hf["vocab_size"],
                n_ctx=hf.get("n_positions", 1024),
                n_embd=hf["n_embd"],
                n_layer=hf["n_layer"],
                n_head=hf["n_head"],
                intermediate_size=hf.get("n_inner"),
                norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
                tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
            )
        if kind in ("llama", "mistral"):
            if hf.get("hidden_act", "silu") != "silu":
                raise _refuse(f"hidden_act {hf['hidden_act']!r} is not silu")
            if hf.get("rope_scaling"):
                raise _refuse("rope_scaling is set")
            rope = hf.get("rope_parameters") or {}
            if rope.get("rope_type", "default") != "default":
                raise _refuse(f"rope_type {rope['rope_type']!r} is not default")
            if hf.get("mlp_bias"):
                raise _refuse("mlp_bias is set")
            heads, width = hf["num_attention_heads"], hf["hidden_size"]
            if hf.get("head_dim") not in (None, width // heads):
                raise _refuse(f"head_dim {hf['head_dim']} is not hidden_size / num_attention_heads")
            n_ctx = hf.get("max_position_embeddings", 2048)
            window = hf.get("sliding_window")
            if window is not None and window < n_ctx:
                raise _refuse(f"sliding_window {window} is shorter than the context {n_ctx}")
            return ModelConfig(
                family="llama",
                vocab_size=hf["vocab_size"],
                n_ctx=n_ctx,
                n_embd=width,
                n_layer=hf["num_hidden_layers"],
                n_head=heads,
                n_kv_head=hf.get("num_key_value_heads"),
                intermediate_size=hf["intermediate_size"],
                norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
                rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
                tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
                bias=bool(hf.get("attention_bias", False)),
            )
    except KeyError as e:
        raise WeightLoadError(f"config.json lacks {e.args[0]!r}") from None
    except (TypeError, ValueError, AttributeError) as e:
        if isinstance(e, WeightLoadError):
            raise
        raise WeightLoadError(f"config.json describes an invalid model: {e}") from None
    raise UnsupportedModelError(
        f"config.json: model_type {str(kind)[:40]!r} is not supported (gpt2, llama, mistral)"
    )


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    """The Hugging Face ``config.json`` for ``cfg`` (inverse of :func:`config_from_hf`)."""
    if cfg.family == "gpt2":
        if not cfg.use_bias:
            raise WeightSaveError("a gpt2 model without biases has no Hugging Face layout")
        return {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "vocab_size": cfg.vocab_size,
            "n_positions": cfg.n_ctx,
            "n_embd": cfg.n_embd,
            "n_layer": cfg.n_layer,
            "n_head": cfg.n_head,
            "n_inner": cfg.intermediate_size,
            "layer_norm_epsilon": cfg.norm_eps,
            "activation_function": "gelu_new",
            "tie_word_embeddings": cfg.tie_embeddings,
        }
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.n_embd,
        "intermediate_size": cfg.mlp_width,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.kv_heads,
        "max_position_embeddings": cfg.n_ctx,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "hidden_act": "silu",
        "attention_bias": cfg.use_bias,
        "mlp_bias": False,
        "tie_word_embeddings": cfg.tie_embeddings,
    }


def hf_tokenizer(folder: Path, hf_config: Mapping[str, Any] | None) -> Tokenizer | None:
    """A ``BPETokenizer`` from ``tokenizer.json`` in ``folder``, or None when there is none."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        return None
    read_json_file(path, "tokenizer")  # bounded and parsed before the library sees it
    try:
        core = HFTokenizerCore.from_file(str(path))
    except Exception as e:  # tokenizers raises plain Exception
        raise WeightLoadError(f"{path}: not a tokenizers file: {e}") from None
    extra = folder / "tokenizer_config.json"
    tcfg = read_json_file(extra, "tokenizer config") if extra.is_file() else {}
    tcfg = tcfg if isinstance(tcfg, dict) else {}
    ids: dict[str, int | None] = {}
    for role in ("bos", "eos"):
        value = (hf_config or {}).get(f"{role}_token_id")
        if isinstance(value, list):
            value = value[0] if value else None
        if not isinstance(value, int):
            token = tcfg.get(f"{role}_token")
            token = token.get("content") if isinstance(token, dict) else token
            value = core.token_to_id(token) if isinstance(token, str) else None
        ids[role] = value
    return BPETokenizer(
        core,
        bos_id=ids["bos"],
        eos_id=ids["eos"],
        add_bos=bool(tcfg.get("add_bos_token", False)),
        name=folder.name or "hf",
    )
