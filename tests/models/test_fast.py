"""The fast int8 decoding copy against the float32 reference it is built from."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.fast_cases import QWEN2, random_model
from workbench.models import KVCache, ModelConfig, Transformer
from workbench.models.fast import FastTransformer, dequantize, quantize_rows, unsupported


def _ids(seed: int, batch: int = 2, length: int = 40, vocab: int = 257) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


LLAMA3 = dataclasses.replace(
    ModelConfig.preset("tiny-llama"), rope_scaling="llama3", rope_factor=8.0, n_ctx=256
)
CONFIGS = {"tiny-llama": ModelConfig.preset("tiny-llama"), "qwen2-bias": QWEN2, "llama3": LLAMA3}


@pytest.mark.parametrize("group", [32, 16, 64])
def test_quantize_rows_round_trips_within_half_a_step_and_leaves_the_input(group: int) -> None:
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(37, 320, generator=gen)
    w[5:9] += 3.0  # rows far from zero: the asymmetric grid wins there
    w[3] = 0.0  # an all-zero row must not divide by zero
    before = w.clone()
    q, scale, offset = quantize_rows(w, group)
    assert q.dtype == torch.int8 and scale.shape == offset.shape == (37, 320 // group)
    assert torch.equal(w, before)
    step = scale.repeat_interleave(group, dim=1)  # (37, 320)
    err = (dequantize(q, scale, offset) - w).abs()
    assert bool((err <= step / 2 + 1e-6).all())
    assert bool((q[3] == 0).all()) and bool((offset[3] == 0).all())
    sym = offset == 0
    assert bool(sym[3].all()) and not bool(sym[5:9].any())
    with pytest.raises(ValueError, match="group"):
        quantize_rows(w, 48)


def test_weights_from_q4_1_and_q8_0_files_round_trip_to_float_rounding() -> None:
    # Q4_1: 16 levels from a min per block of 32 (d and min stored as float16); Q8_0: a
    # symmetric scale per block. The shipped SmolLM2 holds both; the copy must not add error.
    gen = torch.Generator().manual_seed(1)
    d = (torch.rand(64, 18, 1, generator=gen) * 0.01 + 1e-3).half().float()
    low = (torch.randn(64, 18, 1, generator=gen) * 0.05).half().float()
    levels = torch.randint(0, 16, (64, 18, 32), generator=gen).float()
    levels[..., 0], levels[..., 1] = 0, 15  # the quantizer that wrote the file spans 0..15
    q4 = (levels * d + low).view(64, 576)
    ints = torch.randint(-127, 128, (64, 18, 32), generator=gen).float()
    ints[..., 0] = 127
    q8 = (ints * d).view(64, 576)
    for w in (q4, q8):
        q, scale, offset = quantize_rows(w)
        err = (dequantize(q, scale, offset) - w).abs().max()
        assert float(err) <= 4 * torch.finfo(torch.float32).eps * float(w.abs().max())


@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_match_the_float32_model(name: str) -> None:
    model = random_model(CONFIGS[name], seed=1)
    fast = FastTransformer(model)
    ids = _ids(2)
    with torch.inference_mode():
        ref, got = model(ids), fast(ids)
    assert got.shape == ref.shape and got.dtype == torch.float32
    spread = float(ref.std())
    # int8 weights and bf16 activations: errors of a few percent of the logits' spread
    assert float((got - ref).abs().max()) < 0.3 * spread
    assert float((got - ref).abs().mean()) < 0.03 * spread
    # a different argmax only where the reference itself nearly ties
    pick = got.argmax(-1, keepdim=True)
    gap = ref.max(-1, keepdim=True).values - ref.gather(-1, pick)
    assert float(gap.max()) < 0.3 * spread


def test_cached_decoding_equals_a_full_forward() -> None:
    model = random_model(CONFIGS["tiny-llama"], seed=2)
    fast = FastTransformer(model)
    ids = _ids(3, batch=2, length=24)
    cache = KVCache(model.cfg, 2, 24, torch.device("cpu"), torch.float32)
    with torch.inference_mode():
        full = fast(ids)
        steps = [fast(ids[:, :10], cache)]
        steps += [fast(ids[:, 10:17], cache)]  # a chunk after a cached prefix (masked)
        steps += [fast(ids[:, t : t + 1], cache) for t in range(17, 24)]
    assert cache.pos == 24
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=0, atol=2e-2)


def test_greedy_tokens_agree_with_the_reference_on_a_probe_set() -> None:
    agree = total = 0
    for seed in range(4):
        model = random_model(CONFIGS["tiny-llama"], seed=seed)
        fast = FastTransformer(model)
        prompts = _ids(10 + seed, batch=4, length=8)
        with torch.inference_mode():
            ref = model.generate(prompts, 24)[:, 8:]
            got = fast.generate(prompts, 24)[:, 8:]
        agree += int((ref == got).sum())
        total += ref.numel()
    assert agree / total >= 0.95, f"{agree} of {total} greedy tokens agree"


def test_refresh_follows_new_weights() -> None:
    model = random_model(CONFIGS["tiny-llama"], seed=4)
    fast = FastTransformer(model)
    ids = _ids(5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    with torch.inference_mode():
        stale = fast(ids)
        fast.refresh(model)
        fresh = fast(ids)
        rebuilt = FastTransformer(model)(ids)
    torch.testing.assert_close(fresh, rebuilt, rtol=0, atol=0)
    assert not torch.allclose(stale, fresh, atol=1e-2)


def test_the_copy_is_under_a_third_of_the_float32_weights() -> None:
    # int8 (1/4 of fp32) plus a float32 scale and offset per 32 columns (1/16); goal <= 0.35
    model = random_model(ModelConfig.preset("tiny-llama"), seed=0)
    fast = FastTransformer(model)
    fp32 = sum(p.numel() * 4 for p in model.parameters())
    tables = fast._cos.nbytes + fast._sin.nbytes  # rotary tables, n_ctx long
    assert (fast.nbytes() - tables) / fp32 < 0.32


def test_refresh_requantizes_only_what_changed() -> None:
    model = random_model(CONFIGS["qwen2-bias"], seed=8)
    fast = FastTransformer(model)
    assert fast.refresh(model) == 0  # nothing moved
    with torch.no_grad():
        model.blocks[1].mlp.down.weight.add_(0.01)  # as an edit of one layer does
    assert fast.refresh(model) == 1
    ids = _ids(9)
    with torch.inference_mode():
        torch.testing.assert_close(fast(ids), FastTransformer(model)(ids), rtol=0, atol=0)
    with torch.no_grad():
        for p in model.parameters():  # as a fine-tune does (tied: the head is the embedding)
            p.mul_(1.01)
    assert fast.refresh(model) == 4 * model.cfg.n_layer + 2  # + embedding and untied head


def test_refresh_sees_a_fused_optimizer_step() -> None:
    # The fused optimizers write parameters from C++ without bumping torch's tensor versions:
    # a copy that trusted versions missed every update (found through the learner).
    from workbench.optim import FusedAdamW

    model = random_model(CONFIGS["tiny-llama"], seed=10)
    fast = FastTransformer(model)
    opt = FusedAdamW(model.parameters(), lr=1e-2)
    ids = _ids(11)
    model.train()
    model(ids).logsumexp(-1).mean().backward()
    opt.step()
    model.eval()
    assert fast.refresh(model) == 4 * model.cfg.n_layer + 1
    with torch.inference_mode():
        torch.testing.assert_close(fast(ids), FastTransformer(model)(ids), rtol=0, atol=0)


def test_beam_search_and_sampling_run_on_the_copy() -> None:
    model = random_model(CONFIGS["tiny-llama"], seed=6)
    fast = FastTransformer(model)
    ids = _ids(7, batch=1, length=6)
    with torch.inference_mode():
        beams = fast.generate(ids, 8, num_beams=3)
        ref = model.generate(ids, 8, num_beams=3)
        sampled = fast.generate(ids, 8, temperature=1.0, top_k=20, seed=0)
    assert beams.shape[1] <= 14 and torch.equal(beams, ref)
    assert sampled.shape == (1, 14)


@pytest.mark.parametrize("preset", ["tiny-gpt2"])
def test_unsupported_families_are_refused_with_the_reason(preset: str) -> None:
    cfg = ModelConfig.preset(preset)
    assert unsupported(cfg) is not None
    with pytest.raises(ValueError, match="GPT-2"):
        FastTransformer(Transformer(cfg, seed=0))
    gemma = ModelConfig(family="gemma2", vocab_size=257, n_ctx=64, n_embd=64, n_layer=2, n_head=4)
    assert "Gemma" in (unsupported(gemma) or "")
