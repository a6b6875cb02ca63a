"""The decode kernel (csrc/decode_cpu.cpp, its int8 matrices in csrc/int8_cpu.cpp) against
its pure-torch reference."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.fast_cases import QWEN2, random_model
from workbench.models import KVCache, ModelConfig, Transformer, _decode_build
from workbench.models import fast as fast_module
from workbench.models.fast import (
    FastTransformer,
    dequantize,
    int8_linear_reference,
    quantize_rows,
)
from workbench.models.memory import EditMemory


def _kernel() -> None:
    if not _decode_build.ensure_loaded():
        pytest.skip(f"decode kernel unavailable: {_decode_build.kernel_state()['reason']}")


@pytest.mark.parametrize(
    ("m", "n", "k", "group", "bias"),
    [
        (1, 96, 192, 32, False),
        (3, 70, 128, 32, True),
        (9, 33, 64, 16, False),
        (5, 17, 40, 40, True),
        (2, 37, 1184, 32, True),  # 37 groups a row: two full vectors of offsets and a tail
    ],
)
def test_int8_linear_matches_the_reference(m: int, n: int, k: int, group: int, bias: bool) -> None:
    _kernel()
    gen = torch.Generator().manual_seed(m * 1000 + n)
    x = torch.randn(m, k, generator=gen)
    w = torch.randn(n, k, generator=gen) + torch.randn(n, 1, generator=gen)  # some offset rows
    q, scale, offset = quantize_rows(w, group)
    b = torch.randn(n, generator=gen) if bias else torch.empty(0)
    got = torch.ops.workbench_decode.int8_linear(x, q, scale, offset, b)
    want = int8_linear_reference(x, q, scale, offset, b if bias else None)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("n", "k", "group"), [(70, 128, 32), (33, 48, 16), (5, 40, 40)])
def test_dequant_bf16_matches_the_reference_bit_for_bit(n: int, k: int, group: int) -> None:
    _kernel()
    gen = torch.Generator().manual_seed(n + k)
    q, scale, offset = quantize_rows(torch.randn(n, k, generator=gen) + 0.5, group)
    got = torch.ops.workbench_decode.int8_dequant_bf16(q, scale, offset)
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, dequantize(q, scale, offset).bfloat16())


@pytest.mark.parametrize(
    ("n", "k", "group"), [(70, 128, 32), (9, 40, 40), (16, 64, 16), (4099, 45, 45)]
)
def test_quantize_matches_quantize_rows_bit_for_bit(n: int, k: int, group: int) -> None:
    _kernel()
    gen = torch.Generator().manual_seed(n)
    w = torch.randn(n, k, generator=gen)
    w[1] = 0.0
    w[2, :group] = torch.arange(group) - group / 2  # exact halves: round half to even
    w[3:6] += 2.0  # asymmetric groups
    q = torch.full((n + 3, k), 5, dtype=torch.int8)  # written as a row slice of a bigger buffer
    scale, offset = torch.zeros(n + 3, k // group), torch.zeros(n + 3, k // group)
    rows = slice(2, n + 2)
    print_ = torch.ops.workbench_decode.int8_quantize_(w, q[rows], scale[rows], offset[rows], group)
    # the fingerprint it computes on the way (threads split odd-sized groups mid-word) is the
    # standalone one, and it moves with any one weight
    assert print_ == torch.ops.workbench_decode.fingerprint(w)
    w2 = w.clone()
    w2[n // 2, k // 3] = torch.nextafter(w2[n // 2, k // 3], torch.tensor(9.0))
    assert torch.ops.workbench_decode.fingerprint(w2) != print_
    want_q, want_s, want_m = quantize_rows(w, group)
    assert torch.equal(q[rows], want_q) and torch.equal(scale[rows], want_s)
    assert torch.equal(offset[rows], want_m) and bool((want_m[3:6] != 0).all())
    assert bool((q[:2] == 5).all()) and bool((q[n + 2 :] == 5).all())


def test_int8_linear_refuses_bad_shapes() -> None:
    _kernel()
    x, q = torch.randn(2, 64), torch.zeros(8, 64, dtype=torch.int8)
    scale, offset, none = torch.ones(8, 2), torch.zeros(8, 2), torch.empty(0)
    with pytest.raises(RuntimeError, match="scales"):
        torch.ops.workbench_decode.int8_linear(x, q, torch.ones(8, 3), offset, none)
    with pytest.raises(RuntimeError, match="offsets"):
        torch.ops.workbench_decode.int8_linear(x, q, scale, torch.zeros(8, 1), none)
    with pytest.raises(RuntimeError, match="float32"):
        torch.ops.workbench_decode.int8_linear(x.double(), q, scale, offset, none)


def test_the_pure_torch_path_gives_the_kernels_logits(monkeypatch: pytest.MonkeyPatch) -> None:
    _kernel()
    model = Transformer(ModelConfig.preset("tiny-llama"), seed=0).eval()
    fast = FastTransformer(model)
    ids = torch.randint(0, 257, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        kernel = fast(ids)
        monkeypatch.setattr(fast_module, "_KERNEL", [False])
        reference = fast(ids)
    torch.testing.assert_close(kernel, reference, rtol=1e-4, atol=1e-4)


def test_forcing_the_reference_skips_the_build(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_decode_build.ENV_IMPL, "reference")
    before = _decode_build.kernel_state()
    try:
        _decode_build._reset_for_tests()
        assert _decode_build.ensure_loaded() is False
        assert "forces" in (_decode_build.kernel_state()["reason"] or "")
    finally:
        _decode_build._reset_for_tests(before["impl"])


def _qwen2_like() -> Transformer:
    """Grouped-query heads, q/k/v biases and norm gains away from 1 (so none can hide)."""
    return random_model(dataclasses.replace(QWEN2, n_ctx=64), seed=3, noise_seed=4)


def test_decode_step_applies_the_edit_memory_as_the_model_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Entries keyed on keys two decoded tokens really produce (so they apply), and one that
    no token reaches: the kernel's logits equal the torch path's (``EditMemory.apply``) and
    differ from the copy's without the memory exactly where an entry applies."""
    _kernel()
    model = Transformer(ModelConfig.preset("tiny-llama"), seed=1).eval()
    layer = 1
    ids = torch.randint(0, 257, (2, 10), generator=torch.Generator().manual_seed(8))
    keys: list[torch.Tensor] = []
    mlp = model.blocks[layer].mlp
    handle = mlp.down.register_forward_hook(lambda _m, inp, _o: keys.append(inp[0].detach()))
    with torch.inference_mode():
        model(ids)
    handle.remove()
    key = keys[0]  # (2, 10, W)
    gen = torch.Generator().manual_seed(9)
    memory = EditMemory.empty(layer, key.shape[-1], model.cfg.n_embd, threshold=0.9)
    for b, t in ((0, 7), (1, 9)):  # two decoded positions
        memory = memory.put(key[b, t], torch.randn(model.cfg.n_embd, generator=gen))
    memory = memory.put(torch.randn(key.shape[-1], generator=gen), torch.randn(model.cfg.n_embd))
    model.edit_memory = memory
    fast = FastTransformer(model)
    assert fast.memory is memory

    def decode(m: torch.nn.Module) -> torch.Tensor:
        cache = KVCache(model.cfg, 2, 12, torch.device("cpu"), torch.float32)
        steps = [m(ids[:, :6], cache)]
        steps += [m(ids[:, t : t + 1], cache) for t in range(6, 10)]
        return torch.cat(steps, dim=1)

    with torch.inference_mode():
        got = decode(fast)
        monkeypatch.setattr(fast_module, "_KERNEL", [False])
        want = decode(fast)  # the torch path, which applies it with EditMemory.apply
        fast.memory = None
        without = decode(fast)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    for b, t in ((0, 7), (1, 9)):  # the entries applied there
        assert (got[b, t] - without[b, t]).abs().max() > 0.1
    torch.testing.assert_close(got[:, :7], without[:, :7], rtol=1e-4, atol=1e-4)  # not before


@pytest.mark.parametrize("preset", ["tiny-llama", "qwen2"])
def test_decode_step_matches_the_torch_forward(
    preset: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _kernel()
    if preset == "qwen2":
        model = _qwen2_like()
    else:
        model = Transformer(ModelConfig.preset(preset), seed=1).eval()
    fast = FastTransformer(model)
    ids = torch.randint(0, 257, (3, 14), generator=torch.Generator().manual_seed(5))

    def run() -> torch.Tensor:
        cache = KVCache(model.cfg, 3, 20, torch.device("cpu"), torch.float32)
        steps = [fast(ids[:, :6], cache)]  # the prompt: the torch path either way
        steps += [fast(ids[:, t : t + 1], cache) for t in range(6, 14)]  # one token per call
        assert cache.pos == 14
        return torch.cat(steps, dim=1)

    with torch.inference_mode():
        kernel = run()
        monkeypatch.setattr(fast_module, "_KERNEL", [False])
        reference = run()
    torch.testing.assert_close(kernel, reference, rtol=1e-4, atol=1e-4)


def test_greedy_beam_and_sampled_decoding_match_the_torch_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _kernel()
    model = _qwen2_like()
    fast = FastTransformer(model)
    ids = torch.randint(0, 257, (2, 5), generator=torch.Generator().manual_seed(6))

    def run() -> list[torch.Tensor]:
        with torch.inference_mode():
            return [
                fast.generate(ids, 12),
                fast.generate(ids[:1], 10, num_beams=3),  # the cache is reordered between steps
                fast.generate(ids, 12, temperature=0.8, top_k=40, seed=1),
            ]

    calls = {"kernel": 0, "torch": 0}
    fits, hidden = fast._fits, fast.hidden

    def counted_fits(cache: KVCache) -> bool:  # asked only on the way to the kernel
        calls["kernel"] += 1
        return fits(cache)

    def counted_hidden(*args: object) -> torch.Tensor:
        calls["torch"] += 1
        return hidden(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(fast, "_fits", counted_fits)
    monkeypatch.setattr(fast, "hidden", counted_hidden)
    kernel = run()
    # every token after a prompt's first is one kernel call: the prompts alone ran in torch
    assert calls == {"kernel": 11 + 9 + 11, "torch": 3}
    monkeypatch.setattr(fast_module, "_KERNEL", [False])
    for got, want in zip(kernel, run(), strict=True):
        assert torch.equal(got, want)


def test_the_kernels_run_on_every_intra_op_thread() -> None:
    """Built with OpenMP: without it ``at::parallel_for`` runs serially (one core of two)."""
    _kernel()
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert torch.ops.workbench_decode.parallel_width() == 2
    finally:
        torch.set_num_threads(before)


def test_decode_step_refuses_bad_inputs() -> None:
    _kernel()
    model = Transformer(ModelConfig.preset("tiny-llama"), seed=0).eval()
    fast = FastTransformer(model)
    cache = KVCache(model.cfg, 1, 8, torch.device("cpu"), torch.float32)
    cfg = model.cfg
    no_memory = (torch.zeros(0, 0), torch.zeros(0, 0), -1, 1.0)
    args = (cache.k, cache.v, 0, fast._cos, fast._sin, cfg.n_head, cfg.kv_heads, 1e-5, 0.125)
    args = (*args, *no_memory)
    step = torch.ops.workbench_decode.decode_step
    with pytest.raises(RuntimeError, match="out of range"):
        step(torch.tensor([cfg.vocab_size]), fast._weights, *args)
    with pytest.raises(RuntimeError, match="weights for"):
        step(torch.tensor([1]), fast._weights[:-1], *args)
    bad = (cache.k, cache.v, 8, *args[3:])  # no room left in the cache
    wrong_memory = (*args[:-4], torch.zeros(2, 3), torch.zeros(2, cfg.n_embd), 0, 0.5)
    with pytest.raises(RuntimeError, match="edit memory"):
        step(torch.tensor([1]), fast._weights, *wrong_memory)
    with pytest.raises(RuntimeError, match="caches"):
        step(torch.tensor([1]), fast._weights, *bad)
