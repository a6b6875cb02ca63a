"""The decode kernel (kernels/decode_cpu.cpp) against its pure-torch reference."""

from __future__ import annotations

import pytest
import torch

from workbench.models import ModelConfig, Transformer, _decode_build
from workbench.models import fast as fast_module
from workbench.models.fast import FastTransformer, int8_linear_reference, quantize_rows


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
