"""Beam search and greedy decoding against transformers' ``generate`` on the same random weights."""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch

from tests.models.families import gpt2_pair, llama_pair
from workbench.formats.hf_names import from_hf
from workbench.models import KVCache, ModelConfig, Transformer, beam_search

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

PROMPT_LEN, NEW = 6, 12
Models = tuple[Any, Transformer, torch.Tensor, list[int]]  # hf, ours, prompt ids, stop ids


def _randomize(module: torch.nn.Module, seed: int) -> None:
    # Gains near 1 and small biases keep the next-token distributions spread out, so beams
    # compete and hypotheses end at different lengths.
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.ndim >= 2:
                p.copy_(noise * 0.2)
            elif name.endswith("bias"):
                p.copy_(noise * 0.1)
            else:
                p.copy_(1.0 + noise * 0.1)


def _pair(family: str) -> tuple[Any, Transformer]:
    """A small transformers model with random weights and ours holding the same weights."""
    cfg, hf = gpt2_pair() if family == "gpt2" else llama_pair(n_ctx=64, kv=2, tied=False)
    hf.eval()
    _randomize(hf, seed=3)
    ours = Transformer(cfg, seed=None).eval()
    state, unknown = from_hf(hf.state_dict(), cfg)
    assert unknown == []
    ours.load_state_dict(state, strict=True)
    return hf, ours


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def models(request: pytest.FixtureRequest) -> Models:
    hf, ours = _pair(request.param)
    gen = torch.Generator().manual_seed(11)
    ids = torch.randint(1, ours.cfg.vocab_size, (3, PROMPT_LEN), generator=gen)
    # Stop ids that beam search actually meets: tokens its beams emit 3, 6 and 9 steps in.
    free = ours.generate(ids, NEW, num_beams=4)
    eos = [int(free[0, PROMPT_LEN + 2]), int(free[1, PROMPT_LEN + 5]), int(free[2, PROMPT_LEN + 8])]
    return hf, ours, ids, eos


def _hf_generate(hf: Any, ids: torch.Tensor, eos: list[int] | None, **kw: Any) -> torch.Tensor:
    with torch.no_grad():
        return hf.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=NEW,
            eos_token_id=eos,
            pad_token_id=eos[0] if eos else 0,
            **kw,
        )


@pytest.mark.parametrize("num_beams", [3, 4])
@pytest.mark.parametrize("length_penalty", [1.0, 0.5, 2.0])
@pytest.mark.parametrize("early_stopping", [False, True, "never"])
def test_beam_search_ids_match_transformers(
    models: Models,
    num_beams: int,
    length_penalty: float,
    early_stopping: Any,
) -> None:
    hf, ours, ids, eos = models
    stop = [eos[0], eos[2]] if num_beams == 3 else eos
    kwargs: dict[str, Any] = dict(
        num_beams=num_beams, length_penalty=length_penalty, early_stopping=early_stopping
    )
    ref = _hf_generate(hf, ids, stop, **kwargs)
    got = ours.generate(ids, NEW, eos_token_id=stop, **kwargs)
    assert got.tolist() == ref.tolist()


def test_stop_ids_end_hypotheses_at_different_lengths(models: Models) -> None:
    """The parity cases above are not vacuous: stops and length_penalty change the answers."""
    _, ours, ids, eos = models
    outs = {
        lp: ours.generate(ids, NEW, eos_token_id=eos, num_beams=4, length_penalty=lp)
        for lp in (0.5, 2.0)
    }
    short = outs[0.5]
    ended = [any(t in eos for t in row[PROMPT_LEN:]) for row in short.tolist()]
    assert any(ended) and short.shape[1] <= PROMPT_LEN + NEW
    assert not torch.equal(outs[0.5], outs[2.0][:, : outs[0.5].shape[1]])


@pytest.mark.parametrize("num_beams", [1, 3])
def test_without_stop_ids_the_ids_match_transformers(models: Models, num_beams: int) -> None:
    hf, ours, ids, _ = models
    with torch.no_grad():
        ref = hf.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            num_beams=num_beams,
            max_new_tokens=NEW,
            pad_token_id=0,
            eos_token_id=None,
        )
    got = ours.generate(ids, NEW, num_beams=num_beams)
    assert got.tolist() == ref.tolist()


def test_greedy_ids_match_transformers(models: Models) -> None:
    hf, ours, ids, eos = models
    for stop in (eos[:1], eos):
        ref = _hf_generate(hf, ids, stop, num_beams=1)
        got = ours.generate(ids, NEW, eos_token_id=stop)
        assert got.tolist() == ref.tolist()


def test_beam_search_with_and_without_the_cache_agree(models: Models) -> None:
    _, ours, ids, eos = models
    for lp in (0.5, 2.0):
        cached = beam_search(ours, ids, NEW, 4, eos_token_ids=eos, length_penalty=lp)
        full = beam_search(ours, ids, NEW, 4, eos_token_ids=eos, length_penalty=lp, use_cache=False)
        assert torch.equal(cached, full)


def test_one_beam_is_greedy_and_more_beams_score_no_worse() -> None:
    model = Transformer(ModelConfig.preset("tiny-llama"), seed=5).eval()
    ids = torch.randint(0, 257, (2, 5), generator=torch.Generator().manual_seed(2))
    greedy = model.generate(ids, 8)
    assert torch.equal(beam_search(model, ids, 8, 1), greedy)

    def logprob(seq: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            lp = model(seq).float().log_softmax(-1)[:, 4:-1]
        return lp.gather(-1, seq[:, 5:, None]).sum(dim=(1, 2))

    # Without stop ids every hypothesis has the same length: beams maximize the summed log-prob.
    beams = beam_search(model, ids, 8, 4)
    assert (logprob(beams) >= logprob(greedy) - 1e-5).all()


def test_cache_reorder_copies_rows_and_can_grow() -> None:
    cfg = ModelConfig.preset("tiny-gpt2", n_layer=1)
    cache = KVCache(cfg, 2, 8, torch.device("cpu"), torch.float32)
    for i, buf in enumerate(cache.k + cache.v):
        buf.copy_(torch.arange(2, dtype=torch.float32).view(2, 1, 1, 1) + 10 * i)
    cache.pos = 3
    cache.reorder(torch.tensor([1, 1, 0]))
    assert cache.k[0].shape[0] == 3
    assert cache.k[0][:, 0, :3, 0].tolist() == [[1.0] * 3, [1.0] * 3, [0.0] * 3]
    cache.reorder(torch.tensor([2, 0, 1]))
    assert cache.v[0][:, 0, 0, 0].tolist() == [10.0, 11.0, 11.0]


def test_bad_beam_arguments_are_refused() -> None:
    model = Transformer(ModelConfig.preset("tiny-gpt2", n_ctx=32))
    ids = torch.ones(1, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="temperature=0"):
        model.generate(ids, 4, temperature=0.7, num_beams=2)
    with pytest.raises(ValueError, match="callback"):
        model.generate(ids, 4, num_beams=2, callback=lambda t: None)
    with pytest.raises(ValueError, match="num_beams"):
        model.generate(ids, 4, num_beams=0)
    with pytest.raises(ValueError, match="early_stopping"):
        model.generate(ids, 4, num_beams=2, early_stopping="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty sequence"):
        model.generate(ids, 4, eos_token_id=[])
    assert model.generate(ids, 0, num_beams=3).tolist() == ids.tolist()
