"""The edit memory (workbench.models.memory): keyed residuals beside one MLP layer."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from workbench.models import ModelConfig, Transformer
from workbench.models.memory import EditMemory, has_memory

WIDTH, D = 48, 16


def _filled(gen: torch.Generator, n: int, threshold: float = 0.5) -> EditMemory:
    mem = EditMemory.empty(1, WIDTH, D, threshold)
    for _ in range(n):
        mem = mem.put(torch.randn(WIDTH, generator=gen), torch.randn(D, generator=gen))
    return mem


def test_apply_adds_the_nearest_entry_only_within_the_threshold() -> None:
    gen = torch.Generator().manual_seed(11)
    mem = _filled(gen, 5)
    assert len(mem) == 5  # random directions in 48 dimensions: no two within cosine 0.5
    keys = torch.randn(3, 40, WIDTH, generator=gen)
    # put some tokens near entries (cosine ~0.9) so both branches are exercised
    keys[0, :5] = (
        mem.keys
        + 0.3 * torch.randn(5, WIDTH, generator=gen) * mem.keys.norm(dim=-1)[:, None] / WIDTH**0.5
    )
    out = torch.randn(3, 40, D, generator=gen)
    got = mem.apply(keys, out)
    want = out.clone()
    hits = 0
    for b in range(3):
        for t in range(40):
            sims = [float(F.cosine_similarity(keys[b, t], d, dim=0)) for d in mem.directions]
            best = max(range(len(sims)), key=sims.__getitem__)
            if sims[best] >= mem.threshold:
                want[b, t] += mem.values[best]
                hits += 1
    assert hits >= 5
    torch.testing.assert_close(got, want)
    # tokens no entry matches come out bit for bit
    unmatched = torch.ones(3, 40, dtype=torch.bool)
    unmatched[0, :5] = False
    assert torch.equal(got[unmatched], out[unmatched])


def test_put_adds_to_a_matching_entry_and_leaves_the_old_memory_alone() -> None:
    gen = torch.Generator().manual_seed(12)
    mem = _filled(gen, 3)
    snapshot = [t.clone() for t in (mem.directions, mem.keys, mem.values)]
    near = mem.keys[1] + 0.05 * torch.randn(WIDTH, generator=gen) * mem.keys[1].norm()
    extra = torch.randn(D, generator=gen)
    again = mem.put(near, extra)
    assert len(again) == 3 and mem.match(near) == 1
    torch.testing.assert_close(again.values[1], snapshot[2][1] + extra)
    torch.testing.assert_close(again.keys[1], near)
    far = mem.put(torch.randn(WIDTH, generator=gen), extra)
    assert len(far) == 4
    # immutable: the memory put was called on is unchanged
    for a, b in zip((mem.directions, mem.keys, mem.values), snapshot, strict=True):
        assert torch.equal(a, b)


def test_plan_lays_out_entries_as_puts_would_and_with_values_fills_them() -> None:
    """An edit finds its residuals against the layout its keys will make (``plan``), then
    fills them in: the same memory as putting each key with its residual in turn."""
    gen = torch.Generator().manual_seed(14)
    mem = _filled(gen, 3)
    near = mem.keys[2] + 0.05 * torch.randn(WIDTH, generator=gen) * mem.keys[2].norm()
    keys = torch.stack([torch.randn(WIDTH, generator=gen), near, torch.randn(WIDTH, generator=gen)])
    residuals = torch.randn(3, D, generator=gen)
    planned, slots = mem.plan(keys)
    assert slots == [3, 2, 4] and len(planned) == 5
    assert torch.equal(planned.values[:3], mem.values)  # zero residuals so far
    values = planned.values.clone()
    values[slots] += residuals
    filled = planned.with_values(values)
    put = mem
    for k, r in zip(keys, residuals, strict=True):
        put = put.put(k, r)
    for a, b in zip(
        (filled.directions, filled.keys, filled.values),
        (put.directions, put.keys, put.values),
        strict=True,
    ):
        torch.testing.assert_close(a, b)
    hit, nearest = filled.nearest(torch.stack([near, -near]))
    assert hit.tolist() == [True, False] and int(nearest[0]) == 2
    with pytest.raises(ValueError, match="finite, of shape"):
        planned.with_values(values[:2])
    with pytest.raises(ValueError, match="finite"):
        planned.with_values(torch.full_like(values, float("nan")))


def test_bad_entries_are_refused() -> None:
    mem = EditMemory.empty(0, WIDTH, D)
    with pytest.raises(ValueError, match="zero"):
        mem.put(torch.zeros(WIDTH), torch.ones(D))
    with pytest.raises(ValueError, match="finite"):
        mem.put(torch.ones(WIDTH), torch.full((D,), float("nan")))
    with pytest.raises(ValueError, match="threshold"):
        EditMemory.empty(0, WIDTH, D, threshold=1.5)


def test_tensors_round_trip_and_are_validated() -> None:
    gen = torch.Generator().manual_seed(13)
    mem = _filled(gen, 4, threshold=0.6)
    saved = mem.tensors()
    assert has_memory(saved) and not has_memory({"rng.cpu": torch.zeros(1)})
    back = EditMemory.from_tensors(saved, WIDTH, D)
    assert (back.layer, back.threshold, len(back)) == (1, pytest.approx(0.6), 4)
    for a, b in zip(
        (back.directions, back.keys, back.values),
        (mem.directions, mem.keys, mem.values),
        strict=True,
    ):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="shapes"):
        EditMemory.from_tensors(saved, WIDTH + 1, D)
    bad = dict(saved)
    bad["edit_memory.values"] = saved["edit_memory.values"].clone()
    bad["edit_memory.values"][0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        EditMemory.from_tensors(bad, WIDTH, D)
    del bad["edit_memory.keys"]
    with pytest.raises(ValueError, match=r"lacks edit_memory\.keys"):
        EditMemory.from_tensors(bad, WIDTH, D)


def test_the_model_applies_its_memory_at_one_layer_and_copies_carry_it() -> None:
    gen = torch.Generator().manual_seed(14)
    cfg = ModelConfig.preset("tiny-llama")
    model = Transformer(cfg, seed=3).eval()
    ids = torch.randint(0, cfg.vocab_size, (2, 24), generator=gen)
    with torch.no_grad():
        base = model(ids)
        x, rope = model.embed(ids)
        x = model.run_blocks(x, rope, 0, 1)
        block = model.blocks[1]
        keys = block.mlp.keys(block.mlp_norm(block.attend(x, rope, None, 1)))
    width = block.mlp.down.in_features
    mem = EditMemory.empty(1, width, cfg.n_embd).put(
        keys[0, 7], torch.randn(cfg.n_embd, generator=gen)
    )
    model.edit_memory = mem
    assert model.edit_memory is mem
    assert [b.mlp.memory is mem for b in model.blocks] == [i == 1 for i in range(cfg.n_layer)]
    with torch.no_grad():
        taught = model(ids)
    hit = F.normalize(keys, dim=-1) @ mem.directions[0] >= mem.threshold  # (2, 24)
    assert bool(hit[0, 7])
    # a causal model: positions before the first hit are computed exactly as before
    first = int(hit.flatten().nonzero()[0]) if bool(hit.any()) else 0
    assert torch.equal(taught[0, :7], base[0, :7]) and first <= 7
    assert not torch.allclose(taught[0, 7], base[0, 7])
    if not bool(hit[1].any()):
        assert torch.equal(taught[1], base[1])
    assert len(model.state_dict()) == len(Transformer(cfg, seed=3).state_dict())  # not a weight
    clone = copy.deepcopy(model)
    assert clone.edit_memory is not None and torch.equal(clone(ids), taught)
    model.edit_memory = None
    assert all(b.mlp.memory is None for b in model.blocks)
    with pytest.raises(ValueError, match="not a layer"):
        model.edit_memory = EditMemory.empty(cfg.n_layer, width, cfg.n_embd)
