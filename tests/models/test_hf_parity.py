"""Our logits against Hugging Face's on the same random weights."""

from __future__ import annotations

import pytest
import torch

from tests.models.families import gpt2_pair, llama_pair
from workbench.formats.hf_names import from_hf, to_hf
from workbench.models import ModelConfig, Transformer

transformers = pytest.importorskip("transformers")


def _randomize(module: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2 + (1.0 if p.ndim == 1 else 0.0))


def _compare(hf_model: torch.nn.Module, cfg: ModelConfig, seed: int) -> None:
    hf_model.eval()
    _randomize(hf_model, seed)
    ours = Transformer(cfg, seed=None).eval()
    state, unknown = from_hf(hf_model.state_dict(), cfg)
    assert unknown == []
    missing, unexpected = ours.load_state_dict(state, strict=True)
    assert not missing and not unexpected
    ids = torch.randint(0, cfg.vocab_size, (2, 33), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ref = hf_model(ids).logits
        got = ours(ids)
    assert (got - ref).abs().max().item() <= 1e-4
    # And back: our names map onto exactly the HF keys that carry weights.
    back = to_hf(ours.state_dict(), cfg)
    hf_keys = {
        k.removeprefix("transformer.")
        for k in hf_model.state_dict()
        if not k.endswith((".attn.bias", ".masked_bias"))
    }
    if cfg.tie_embeddings:
        hf_keys.discard("lm_head.weight")
    assert set(back) == hf_keys


@pytest.mark.parametrize("tied", [True, False])
def test_gpt2_matches_transformers(tied: bool) -> None:
    cfg, hf = gpt2_pair(tied)
    if not tied:
        assert hf.lm_head.weight.data_ptr() != hf.transformer.wte.weight.data_ptr()
    _compare(hf, cfg, seed=1)


@pytest.mark.parametrize(("tied", "kv"), [(True, 2), (False, 1), (True, 6)])
def test_llama_matches_transformers(tied: bool, kv: int) -> None:
    cfg, hf = llama_pair(n_ctx=128, kv=kv, tied=tied)
    _compare(hf, cfg, seed=2)
