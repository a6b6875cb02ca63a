"""What the tests that write GGUF files the way llama.cpp's converter does share: its q/k row
permutation, the model-shape keys every llama-like file carries, and the final write.

The writers themselves (one from our config, one from a transformers model) stay in their test
files; these helpers take gguf-py's ``GGUFWriter`` as it is, so this module needs no gguf import.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def convert_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute (half-split rows → interleaved pairs),
    written out independently."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def add_model_shape(
    w: Any, n_ctx: int, n_embd: int, n_layer: int, n_ff: int, n_head: int, n_kv_head: int
) -> None:
    """The context, width, depth, MLP width and head counts, as the converter writes them."""
    w.add_context_length(n_ctx)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv_head)


def write_out(w: Any) -> None:
    """Header, key-value data and tensors to the file, then close it."""
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
