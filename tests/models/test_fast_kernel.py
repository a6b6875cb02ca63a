"""The decode kernel (kernels/decode_cpu.cpp) against its pure-torch reference."""

from __future__ import annotations

import pytest
import torch

from workbench.models import ModelConfig, Transformer, _decode_build
from workbench.models import fast as fast_module
from workbench.models.fast import (
    FastTransformer,
    dequant_bf16_reference,
    int8_linear_reference,
    quantize_rows,
)


def _kernel() -> None:
    if not _decode_build.ensure_loaded():
        pytest.skip(f"decode kernel unavailable: {_decode_build.kernel_state()['reason']}")


@pytest.mark.parametrize(
    ("m", "n", "k", "group"),
    [(1, 96, 192, 64), (3, 70, 128, 32), (9, 33, 64, 16), (5, 17, 40, 40), (50, 130, 576, 64)],
)
def test_int8_linear_matches_the_reference(m: int, n: int, k: int, group: int) -> None:
    _kernel()
    gen = torch.Generator().manual_seed(m * 1000 + n)
    x = torch.randn(m, k, generator=gen)
    q, scale = quantize_rows(torch.randn(n, k, generator=gen), group)
    got = torch.ops.workbench_decode.int8_linear(x, q, scale, group)
    want = int8_linear_reference(x, q, scale)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("n", "k", "group"), [(70, 128, 64), (33, 48, 16), (5, 40, 40)])
def test_dequant_bf16_matches_the_reference_bit_for_bit(n: int, k: int, group: int) -> None:
    _kernel()
    gen = torch.Generator().manual_seed(n + k)
    q, scale = quantize_rows(torch.randn(n, k, generator=gen), group)
    got = torch.ops.workbench_decode.int8_dequant_bf16(q, scale, group)
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, dequant_bf16_reference(q, scale))


@pytest.mark.parametrize(
    ("n", "k", "group", "with_gain"), [(70, 128, 64, True), (9, 40, 40, False)]
)
def test_quantize_matches_quantize_rows_bit_for_bit(
    n: int, k: int, group: int, with_gain: bool
) -> None:
    _kernel()
    gen = torch.Generator().manual_seed(n)
    w = torch.randn(n, k, generator=gen)
    w[1] = 0.0
    w[2, :group] = torch.arange(group) - group / 2  # exact halves: round half to even
    gain = torch.rand(k, generator=gen) + 0.5 if with_gain else None
    q = torch.full((n + 3, k), 5, dtype=torch.int8)  # written as a row slice of a bigger buffer
    scale = torch.zeros(n + 3, k // group)
    g = torch.empty(0) if gain is None else gain
    torch.ops.workbench_decode.int8_quantize_(w, g, q[2 : n + 2], scale[2 : n + 2], group)
    want_q, want_s = quantize_rows(w if gain is None else w * gain, group)
    assert torch.equal(q[2 : n + 2], want_q) and torch.equal(scale[2 : n + 2], want_s)
    assert bool((q[:2] == 5).all()) and bool((q[n + 2 :] == 5).all())


def test_int8_linear_refuses_bad_shapes() -> None:
    _kernel()
    x, q, scale = torch.randn(2, 64), torch.zeros(8, 64, dtype=torch.int8), torch.ones(8, 2)
    with pytest.raises(RuntimeError, match="group"):
        torch.ops.workbench_decode.int8_linear(x, q, scale, 48)
    with pytest.raises(RuntimeError, match="float32"):
        torch.ops.workbench_decode.int8_linear(x.double(), q, scale, 32)


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
