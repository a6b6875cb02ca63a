"""SmolLM2 exported by us as F16 and BF16 GGUF: it loads, keeps its metadata, and generates the
greedy tokens of the float32 model it was written from (issue #14)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import gguf
import pytest
import torch

from tests.formats.test_gguf_model import smollm2_path
from workbench.formats import ModelState, build_model, load_model, load_model_state, save_weights
from workbench.formats.loading import model_dtype
from workbench.models import Transformer
from workbench.tokenizers import Tokenizer

PROMPTS = ["The capital of France is", "def fibonacci(n):"]
# Greedy tokens compared one for one. Half weights round every matmul input differently, so a
# near tie between two tokens may flip somewhere; eight tokens of these prompts agree, measured.
N_TOKENS = 8


pytestmark = pytest.mark.slow  # three SmolLM2 loads, two 270 MB saves, 48 generated tokens


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    # Decoding one token at a time is a string of small matmuls: on two cores shared with other
    # work, torch's thread pool waits on a descheduled worker at every one (measured 30x slower).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def source() -> tuple[ModelState, Transformer, dict[str, list[int]]]:
    state = load_model_state(smollm2_path(), progress=False)
    model = build_model(state).eval()
    assert model.dtype == torch.float32  # Q4_1 decodes to float32
    return state, model, greedy(model, state.tokenizer)


def greedy(model: Transformer, tok: Tokenizer | None) -> dict[str, list[int]]:
    assert tok is not None
    out = {}
    for prompt in PROMPTS:
        ids = torch.tensor([tok.encode(prompt)])
        with torch.no_grad():
            out[prompt] = model.generate(ids, max_new_tokens=N_TOKENS)[0, ids.shape[1] :].tolist()
    return out


@pytest.mark.parametrize(
    ("dtype", "torch_dtype"), [("float16", torch.float16), ("bfloat16", torch.bfloat16)]
)
def test_half_exports_generate_like_float32(
    tmp_path: Path,
    source: tuple[ModelState, Transformer, dict[str, list[int]]],
    dtype: str,
    torch_dtype: torch.dtype,
) -> None:
    state, model, expected = source
    path = save_weights(
        model, tmp_path / f"smollm2-{dtype}.gguf", "gguf", dtype,
        tokenizer=state.tokenizer, metadata=state.metadata,
    )  # fmt: skip
    loaded, tok = load_model(path, progress=False)
    # One dtype for every float: the file's, where this CPU computes it natively.
    chosen, _ = model_dtype({"w": torch.zeros(1, dtype=torch_dtype)})
    assert {p.dtype for p in loaded.parameters()} == {chosen}
    assert greedy(loaded, tok) == expected
    loaded32, tok32 = load_model(path, dtype="float32", progress=False)
    assert {p.dtype for p in loaded32.parameters()} == {torch.float32}
    assert greedy(loaded32, tok32) == expected

    # What llama.cpp reads: the template, the special ids, the name, as the source had them.
    reader = gguf.GGUFReader(path)
    got = {
        k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.ggml.t")
    }
    md = state.metadata
    for key in (
        "general.name",
        "general.license",
        "tokenizer.chat_template",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.unknown_token_id",
        "tokenizer.ggml.padding_token_id",
        "tokenizer.ggml.pre",
        "tokenizer.ggml.add_space_prefix",
    ):
        assert got[key] == md[key], key
    assert got["general.file_type"] == {"float16": 1, "bfloat16": 32}[dtype]
    assert tok.chat_template == md["tokenizer.chat_template"]
