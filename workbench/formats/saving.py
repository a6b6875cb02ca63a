"""Saving: a model's weights in any format, and our full checkpoints, written atomically.

The boundary: this module converts a model's tensors to the dtype asked for and hands them,
with the config and tokenizer, to the format's writer; :func:`saved_files` says which files a
save writes (from each writer's own list). It writes no format itself, and every file is
written through :mod:`workbench.formats.atomic` (all or nothing).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from workbench.formats import binary, checkpoint, hf
from workbench.formats import safetensors_io as st
from workbench.formats._common import (
    WEIGHT_FORMATS,
    WeightFormat,
    WeightSaveError,
    convert_dtype,
    resolve_dtype,
)
from workbench.formats.atomic import TargetIsAFolder, check_target
from workbench.formats.checkpoint import RNGState
from workbench.formats.hf_names import to_hf
from workbench.models import Transformer
from workbench.tokenizers import Tokenizer

__all__ = ["save_checkpoint", "save_weights", "saved_files"]

# The file name a "... is a folder" error suggests, by format.
_EXAMPLE_NAMES: dict[WeightFormat, str] = {
    "safetensors": "model.safetensors",
    "gguf": "model.gguf",
    "binary": "model.bin",
    "custom": "checkpoint.mwb",
}


@contextmanager
def _not_a_folder(path: Path, format: WeightFormat) -> Iterator[None]:
    """Refuse a folder at ``path`` with a ``WeightSaveError`` that names a file to give instead.

    Checked before anything is written; a folder a writer meets anyway (made meanwhile, or at a
    companion file's name) raises the same error type.
    """
    try:
        check_target(path)
        yield
    except TargetIsAFolder as e:
        if e.path == os.fspath(path):
            example = path / _EXAMPLE_NAMES[format]
            raise WeightSaveError(
                f"{path} is a folder: give a file name such as {example}"
            ) from None
        raise WeightSaveError(f"cannot save {path}: {e.strerror}") from None


def _state_for_save(model: Transformer, dtype: torch.dtype | None) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for k, v in model.state_dict().items():
        try:
            out[k] = convert_dtype(v.detach().cpu(), dtype, k)
        except ValueError as e:
            raise WeightSaveError(str(e)) from None
    return out


def save_weights(
    model: Transformer,
    path: str | Path,
    format: WeightFormat,
    dtype: str | torch.dtype | None = None,
    *,
    tokenizer: Tokenizer | None = None,
    metadata: Mapping[str, Any] | None = None,
    hf_names: bool = False,
) -> Path:
    """Write ``model``'s weights (with config and tokenizer) atomically; return the path.

    ``dtype`` converts float weights (float16 refuses values beyond ±65504). SafeTensors with
    ``hf_names=True`` writes the Hugging Face layout plus ``config.json`` (and, for a BPE
    tokenizer, ``tokenizer.json`` and ``tokenizer_config.json`` with its chat template) in the
    same folder. ``metadata``: strings for SafeTensors and raw binary; for GGUF any GGUF value,
    and a loaded file's whole ``ModelState.metadata`` may be passed to carry its
    ``general.name``, special token ids and other keys over (see ``gguf.write_gguf``).
    """
    path = Path(path)
    if format not in WEIGHT_FORMATS:
        raise WeightSaveError(
            f"unknown format {format!r}; choose one of {', '.join(WEIGHT_FORMATS)}"
        )
    with _not_a_folder(path, format):
        return _save_weights(model, path, format, dtype, tokenizer, metadata, hf_names)


def _save_weights(
    model: Transformer,
    path: Path,
    format: WeightFormat,
    dtype: str | torch.dtype | None,
    tokenizer: Tokenizer | None,
    metadata: Mapping[str, Any] | None,
    hf_names: bool,
) -> Path:
    memory = model.edit_memory
    if memory is not None and len(memory) and format != "custom":
        raise WeightSaveError(
            f"the model's edit memory holds {len(memory)} taught "
            f"word{'s' if len(memory) != 1 else ''} (layer {memory.layer}), which a {format} "
            "file cannot hold: save format='custom' to keep "
            "them exactly (a checkpoint carries the memory), or teach with "
            "edit_store='weights' to write edits into the weights themselves"
        )
    if format == "gguf":
        from workbench.formats.gguf import write_gguf

        name = (
            dtype
            if isinstance(dtype, str)
            else {
                None: "float32",
                torch.float32: "float32",
                torch.float16: "float16",
                torch.bfloat16: "bfloat16",
            }[dtype]
        )
        write_gguf(path, model.state_dict(), model.cfg, tokenizer, dtype=name, metadata=metadata)
        return path
    try:
        target = resolve_dtype(dtype)
    except ValueError as e:
        raise WeightSaveError(str(e)) from None
    state = _state_for_save(model, target)
    if format == "binary":
        binary.write_binary(path, state, model.cfg, tokenizer, target or torch.float32, metadata)
    elif format == "custom":
        checkpoint.write_checkpoint(
            path,
            state_dict=state,
            config=model.cfg,
            tokenizer=tokenizer,
            extra_tensors=_memory_tensors(model),
        )
    else:
        meta: dict[str, Any] = {"format": "pt", **(metadata or {})}
        meta[st.META_CONFIG] = json.dumps(model.cfg.to_dict())
        meta[st.META_NAMES] = "hf" if hf_names else "workbench"
        if tokenizer is not None:
            meta[st.META_TOKENIZER] = tokenizer.to_json()
        if hf_names:
            state = to_hf(state, model.cfg)
            hf.write_description(path.parent, model.cfg, tokenizer)
        st.write_safetensors(path, state, meta)
    return path


def saved_files(path: str | Path, format: WeightFormat, *, hf_names: bool = False) -> list[Path]:
    """Every file ``save_weights(model, path, format, hf_names=...)`` may write, ``path`` first.

    Examples
    --------
    >>> [p.name for p in saved_files("out/model.bin", "binary")]
    ['model.bin', 'model.bin.json']
    >>> [p.name for p in saved_files("out/model.safetensors", "safetensors")]
    ['model.safetensors']
    """
    path = Path(path)
    if format == "binary":
        return [path, binary.manifest_path(path)]
    if format == "safetensors" and hf_names:
        return [path, *(path.parent / name for name in hf.WRITTEN_FILES)]
    return [path]


def save_checkpoint(
    path: str | Path,
    model: Transformer,
    tokenizer: Tokenizer | None,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    learner_state: Mapping[str, Any] | None = None,
    extra_tensors: Mapping[str, Tensor] | None = None,
    rng: bool = True,
) -> Path:
    """Write a full checkpoint atomically (weights, optimizer, learner state, RNG, tokenizer)."""
    with _not_a_folder(Path(path), "custom"):
        return checkpoint.write_checkpoint(
            path,
            state_dict=_state_for_save(model, None),
            config=model.cfg,
            tokenizer=tokenizer,
            optimizer_state=optimizer.state_dict() if optimizer is not None else None,
            learner_state=learner_state,
            rng=RNGState.capture() if rng else None,
            extra_tensors={**(extra_tensors or {}), **(_memory_tensors(model) or {})} or None,
        )


def _memory_tensors(model: Transformer) -> dict[str, Tensor] | None:
    """The model's edit memory as a checkpoint's extra tensors (None: it has none)."""
    memory = model.edit_memory
    return memory.tensors() if memory is not None and len(memory) else None
