"""Every family loaded from a transformers ``save_pretrained`` folder computes transformers'
logits (within 1e-4) and greedy tokens, and saves back bit-exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.models.families import FAMILIES, assert_matches_hf, hf_model, random_ids
from workbench.formats import load_model, load_model_state, save_weights

pytest.importorskip("transformers")


def _logits_diff(hf: torch.nn.Module, folder: Path) -> float:
    ours, _ = load_model(folder, dtype="float32")
    ids = random_ids()
    with torch.no_grad():
        ref = hf(ids).logits
        got = ours(ids)
    return float((got - ref).abs().max())


@pytest.mark.parametrize("family", FAMILIES)
def test_matches_transformers(family: str, tmp_path: Path) -> None:
    hf = hf_model(family)
    hf.save_pretrained(tmp_path)
    ours, _ = load_model(tmp_path, dtype="float32")
    assert_matches_hf(hf, ours, random_ids())


@pytest.mark.parametrize("family", ["qwen3", "phi3", "gemma3"])
def test_sharded_folder(family: str, tmp_path: Path) -> None:
    hf = hf_model(family, seed=3)
    hf.save_pretrained(tmp_path, max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    assert _logits_diff(hf, tmp_path) <= 1e-4


@pytest.mark.parametrize("family", FAMILIES)
def test_safetensors_round_trip_is_exact(family: str, tmp_path: Path) -> None:
    hf = hf_model(family, seed=5)
    hf.save_pretrained(tmp_path / "hf")
    ours, tok = load_model(tmp_path / "hf", dtype="float32")
    want = ours.state_dict()
    for hf_names in (False, True):
        path = tmp_path / f"out{int(hf_names)}" / "model.safetensors"
        path.parent.mkdir()
        save_weights(ours, path, "safetensors", tokenizer=tok, hf_names=hf_names)
        state = load_model_state(path.parent if hf_names else path)
        assert state.config == ours.cfg
        assert set(state.state_dict) == set(want)
        for k, v in want.items():
            assert torch.equal(state.state_dict[k], v), (hf_names, k)


@pytest.mark.parametrize("family", FAMILIES)
def test_our_hf_save_loads_in_transformers(family: str, tmp_path: Path) -> None:
    import transformers

    hf = hf_model(family, seed=7)
    hf.save_pretrained(tmp_path / "hf")
    ours, _ = load_model(tmp_path / "hf", dtype="float32")
    save_weights(ours, tmp_path / "out" / "model.safetensors", "safetensors", hf_names=True)
    again = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "out", dtype=torch.float32, attn_implementation="eager"
    ).eval()
    ids = random_ids(seed=2)
    with torch.no_grad():
        assert (again(ids).logits - hf(ids).logits).abs().max().item() <= 1e-4


@pytest.mark.parametrize("family", ["mistral", "gemma2", "gemma3"])
def test_cached_chunks_match_one_pass(family: str, tmp_path: Path) -> None:
    """A prefix through the KV cache, then a chunk longer than one token: the chunk's queries
    see the cached keys through the same windows as a single pass does."""
    from workbench.models import KVCache

    hf_model(family, seed=9).save_pretrained(tmp_path)
    ours, _ = load_model(tmp_path, dtype="float32")
    ids = random_ids(seed=3, length=30)
    cache = KVCache(ours.cfg, 2, 30, ours.device, ours.dtype)
    with torch.no_grad():
        whole = ours(ids)
        parts = [ours(ids[:, a:b], cache) for a, b in ((0, 11), (11, 12), (12, 30))]
    assert (torch.cat(parts, dim=1) - whole).abs().max().item() <= 1e-5
