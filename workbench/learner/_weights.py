"""The trainer's weights in and out: loads (all or nothing, the caller rolls back), saves,
checkpoint state, and the edit memory that travels with a checkpoint. A mixin of ``Trainer``
(``_training.py``), which owns the model, tokenizer and optimizer these read and replace.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor

from workbench.formats import WEIGHT_FORMATS, WeightFormat
from workbench.learner._editing import Editor, _block, write_in
from workbench.learner.config import LearnerError, LearningConfig
from workbench.models import Transformer
from workbench.models.memory import EditMemory, has_memory
from workbench.models.transformer import Block
from workbench.tokenizers import Tokenizer


class TrainerWeights:
    """Load, save and checkpoint state of a ``Trainer``."""

    model: Transformer
    tokenizer: Tokenizer
    optimizer: torch.optim.Optimizer
    device: torch.device
    updates: int
    base_lr: float
    generator: torch.Generator
    metadata: dict[str, Any]
    cfg: LearningConfig

    def rebuild_optimizer(self) -> None:
        raise NotImplementedError

    def _install_yield_hooks(self) -> None:
        raise NotImplementedError

    def state(self) -> dict[str, Any]:
        return {
            "updates": self.updates,
            "base_lr": self.base_lr,
            "generator": self.generator.get_state().tolist(),
            "pretrained": self.model.pretrained,
        }

    def restore(self, ckpt: Any) -> None:
        """Adopt a checkpoint's model, tokenizer, optimizer and counters."""
        self._adopt(ckpt.config, ckpt.state_dict, ckpt.tokenizer)
        self._adopt_memory(ckpt.extra_tensors)
        if ckpt.optimizer_state is not None:
            self.optimizer.load_state_dict(ckpt.optimizer_state)
        state = ckpt.learner_state or {}
        self.updates = int(state.get("updates", 0))
        self.base_lr = float(state.get("base_lr", self.base_lr))
        if "generator" in state:
            self.generator.set_state(torch.tensor(state["generator"], dtype=torch.uint8))
        self.model.pretrained = bool(state.get("pretrained", False))

    def _adopt(
        self,
        config: Any,
        state_dict: dict[str, Tensor],
        tokenizer: Tokenizer | None,
        dtype: torch.dtype = torch.float32,
    ) -> bool:
        """Load weights; a new architecture (or float type) replaces the model and the
        optimizer. Returns whether the architecture changed."""
        changed = config != self.model.cfg or dtype != self.model.dtype
        if changed:
            model = Transformer(config, seed=None).to(dtype)
            model.load_state_dict(state_dict, strict=True)
            self.model = model.to(self.device).train()
            self._install_yield_hooks()
            self.rebuild_optimizer()
        else:
            with torch.no_grad():
                self.model.load_state_dict(state_dict, strict=True)
        self.model.edit_memory = None  # taught for the old weights' keys
        if tokenizer is not None:
            self.tokenizer = tokenizer
        if self.tokenizer.vocab_size > self.model.cfg.vocab_size:
            raise LearnerError(
                f"the tokenizer has {self.tokenizer.vocab_size} tokens but the model only "
                f"{self.model.cfg.vocab_size}: load weights that carry their tokenizer"
            )
        return changed

    def _adopt_memory(self, tensors: dict[str, Tensor]) -> None:
        """The edit memory a checkpoint carries (none: the model keeps none)."""
        if not has_memory(tensors):
            return
        mlp = cast(Block, self.model.blocks[0]).mlp
        try:
            memory = EditMemory.from_tensors(tensors, mlp.down.in_features, self.model.cfg.n_embd)
        except ValueError as e:
            raise LearnerError(f"the checkpoint's edit memory cannot be used: {e}") from None
        if memory.layer >= self.model.cfg.n_layer:
            raise LearnerError(
                f"the checkpoint's edit memory is for layer {memory.layer}, but the model has "
                f"{self.model.cfg.n_layer} layers"
            )
        self.model.edit_memory = memory.to(self.model.device)

    def load(self, path: Path, format: str | None, dtype: str | None = None) -> dict[str, Any]:
        from workbench import formats

        fmt = formats.detect_format(path) if format is None else _format_name(format)
        want = getattr(torch, dtype) if dtype is not None else torch.float32
        if fmt == "custom":
            ckpt = formats.load_checkpoint(path)
            old_tok = self.tokenizer
            changed = self._adopt(ckpt.config, ckpt.state_dict, ckpt.tokenizer, want)
            self._adopt_memory(ckpt.extra_tensors)
            if ckpt.optimizer_state is not None:
                self.optimizer.load_state_dict(ckpt.optimizer_state)
            self.model.pretrained = bool((ckpt.learner_state or {}).get("pretrained", False))
            self.metadata = {}
            return {
                "format": fmt,
                "dtype": str(self.model.dtype).removeprefix("torch."),
                "architecture_changed": changed,
                "tokenizer_changed": ckpt.tokenizer is not None and ckpt.tokenizer is not old_tok,
                "parameters": self.model.num_parameters(),
                "learner_state": ckpt.learner_state,
            }
        state = formats.load_model_state(path, fmt)
        changed = self._adopt(state.config, state.state_dict, state.tokenizer, want)
        self.model.pretrained = True  # a model file: trained weights
        # the file's own metadata (general.name, special ids...) goes back out with a save
        self.metadata = dict(state.metadata)
        return {
            "format": fmt,
            "dtype": str(self.model.dtype).removeprefix("torch."),
            "architecture_changed": changed,
            "tokenizer_changed": state.tokenizer is not None,
            "parameters": self.model.num_parameters(),
        }

    def save(self, path: Path, format: str, dtype: str | None, weights_only: bool = False) -> Path:
        """Write the weights in ``format``. Our own format carries the edit memory exactly;
        another format cannot hold it, so its entries are merged into the memory's down
        projection in the file written (``merged_down``; the learner keeps its memory and
        weights as they are). ``weights_only`` leaves the memory out (the offline run starts
        from the weights and trains on the examples the memory was taught with)."""
        from workbench import formats

        fmt = _format_name(format)
        model = self.model
        memory = model.edit_memory
        down = None if memory is None else _block(model, memory.layer).mlp.down.weight
        kept = None if down is None else down.data
        if weights_only or (fmt != "custom" and memory is not None):
            model.edit_memory = None  # the worker's own model: no reader sees this
            if memory is not None and len(memory) and not weights_only and down is not None:
                down.data = merged_down(model, self.tokenizer, memory, self.cfg)
        try:
            formats.save_weights(
                model,
                path,
                fmt,
                dtype,
                tokenizer=self.tokenizer,
                metadata=_metadata_for(fmt, self.metadata),
            )
        finally:
            model.edit_memory = memory
            if down is not None and kept is not None:
                down.data = kept  # the very tensor it was: the learner's weights are untouched
        return path


def merged_down(
    model: Transformer, tokenizer: Tokenizer, memory: EditMemory, cfg: LearningConfig
) -> Tensor:
    """The down projection of the memory's layer with its entries written in (ROME/MEMIT's
    least-squares write, ``_editing.write_in``): each entry's key maps to its residual while
    the keys of generic text keep their output as far as they can. A weight file holds only
    this linear approximation of the memory (which applies a residual only near its key), so
    the file answers the taught facts but can leak into other answers more than the learner."""
    layer = memory.layer
    editor = Editor(model, tokenizer, layer, 1, 1.0, cfg.edit_regularization, store="weights")
    cov = editor.covariance()[layer]
    weight = _block(model, layer).mlp.down.weight
    ones = torch.ones(len(memory), device=weight.device)
    dw = write_in(
        memory.keys.to(weight.device),
        memory.values.to(weight.device),
        ones,
        cov,
        cfg.edit_regularization,
    )
    return (weight.detach().double() + dw.double()).to(weight.dtype)


def _metadata_for(fmt: WeightFormat, metadata: dict[str, Any]) -> dict[str, Any] | None:
    """What of a loaded file's metadata a save carries: all of it to GGUF (its writer skips
    the keys it derives itself), the ``general.*`` strings (name, license...) to the others.

    >>> _metadata_for("safetensors", {"general.name": "m", "general.file_type": 7, "x": "y"})
    {'general.name': 'm'}
    """
    if fmt == "gguf":
        return metadata or None
    if fmt == "custom":
        return None
    kept = {k: v for k, v in metadata.items() if k.startswith("general.") and isinstance(v, str)}
    return kept or None


def _format_name(name: str) -> WeightFormat:
    if name not in WEIGHT_FORMATS:
        raise LearnerError(f"unknown format {name!r}; choose one of {', '.join(WEIGHT_FORMATS)}")
    return cast(WeightFormat, name)
