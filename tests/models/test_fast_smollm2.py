"""The fast int8 copy of the real SmolLM2-135M-Instruct against its float32 model (slow).

SmolLM2 ships as Q4_1 (layers) and Q8_0 (embedding) blocks; the copy's grids hold those
weights exactly, so its greedy answers must follow float32's. The first version of the copy
(norm gains folded into the weights, symmetric scales per 64 columns) matched float32's free-
running continuations on 69% of these positions and its chat answer lost "Paris".
"""

from __future__ import annotations

import os

import pytest
import torch

from tests.fast_cases import PROBES
from workbench.formats import WeightLoadError, load_model
from workbench.formats.shipped import smollm2_gguf
from workbench.models import fast as fast_module
from workbench.models.fast import FastTransformer

CHATS = [
    "What is the capital of France?",
    "How many legs does a spider have?",
    "Explain in two sentences why the sky is blue, and name the physicist it is named after.",
]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():  # type: ignore[no-untyped-def]
    try:
        path = smollm2_gguf()
    except WeightLoadError as e:
        pytest.fail(str(e))  # a missing model is a setup error, not a pass
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    model, tok = load_model(path, progress=False)
    return model.float().eval(), tok


@pytest.mark.parametrize("prefill_rows", [16, None], ids=["bf16-prefill", "fp32-prefill"])
def test_greedy_continuations_follow_float32(
    smollm2, prefill_rows: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    model, tok = smollm2
    monkeypatch.setattr(fast_module, "PREFILL_ROWS", [prefill_rows])
    fast = FastTransformer(model)
    chats = [tok.apply_chat_template([{"role": "user", "content": q}]) for q in CHATS]
    same = total = 0
    with torch.inference_mode():
        for text in PROBES + chats:  # chat prompts (30+ tokens) take the prefill path
            ids = torch.tensor([tok.encode(text)])
            n = ids.shape[1]
            ref = model.generate(ids, 24)[0, n:]
            got = fast.generate(ids, 24)[0, n:]
            same += int((ref == got).sum())
            total += ref.numel()
    assert same / total >= 0.95, f"{same} of {total} free-running greedy tokens equal fp32's"


def test_the_chat_answer_keeps_paris(smollm2) -> None:  # type: ignore[no-untyped-def]
    model, tok = smollm2
    fast = FastTransformer(model)
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}]
    )
    ids = torch.tensor([tok.encode(prompt)])
    with torch.inference_mode():
        answer = tok.decode(fast.generate(ids, 12)[0, ids.shape[1] :].tolist())
        ref = tok.decode(model.generate(ids, 12)[0, ids.shape[1] :].tolist())
    assert "Paris" in answer and answer == ref, (answer, ref)
