"""Weight files: SafeTensors, GGUF, raw binary and our checkpoint ("custom"), one error type.

``load_weights`` returns tensors as a file names them; ``load_model_state`` renames them to our
parameter names with the config and tokenizer the file describes; ``load_model`` builds the
``Transformer`` strictly. The format is always detected from the bytes. Nothing is unpickled.
``is_weights_file``, ``companion_files`` and ``saved_files`` say which files are weights, which
ones a load opens beside the one it is given, and which ones a save writes.
"""

from __future__ import annotations

from workbench.formats._common import (
    WEIGHT_FORMATS,
    LoadedWeights,
    ModelState,
    WeightFormat,
    WeightLoadError,
    WeightSaveError,
)
from workbench.formats.checkpoint import Checkpoint, RNGState
from workbench.formats.detection import companion_files, detect_format, is_weights_file
from workbench.formats.loading import (
    build_model,
    load_checkpoint,
    load_model,
    load_model_state,
    load_weights,
)
from workbench.formats.saving import save_checkpoint, save_weights, saved_files

__all__ = [
    "WEIGHT_FORMATS",
    "Checkpoint",
    "LoadedWeights",
    "ModelState",
    "RNGState",
    "WeightFormat",
    "WeightLoadError",
    "WeightSaveError",
    "build_model",
    "companion_files",
    "detect_format",
    "is_weights_file",
    "load_checkpoint",
    "load_model",
    "load_model_state",
    "load_weights",
    "save_checkpoint",
    "save_weights",
    "saved_files",
]
