"""Shared helpers of the formats: the float16 overflow check of ``convert_dtype``."""

from __future__ import annotations

import pytest
import torch

from workbench.formats._common import F16_MAX, convert_dtype

# Around the edge: 65504 is float16's largest; 65505..65519 round down to it, 65520 to Inf.
EDGES = [65504.0, 65505.0, 65519.0, 65520.0, 1e9, float("inf"), float("nan")]


def _refused_naively(t: torch.Tensor) -> bool:
    """The rule, element by element in float64: a finite value beyond ±65504 is refused."""
    values = t.double().flatten().tolist()
    return any(abs(v) > F16_MAX for v in values if v == v and abs(v) != float("inf"))


@pytest.mark.parametrize("src", [torch.float32, torch.bfloat16, torch.float64])
def test_float16_refuses_exactly_what_overflows(src: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(11)
    refused = 0
    for trial in range(200):
        t = torch.randn(int(torch.randint(1, 300, (1,), generator=gen)), generator=gen)
        t = (t * 10.0 ** float(torch.randint(-3, 4, (1,), generator=gen))).to(src)
        for _ in range(int(torch.randint(0, 3, (1,), generator=gen))):
            edge = EDGES[int(torch.randint(0, len(EDGES), (1,), generator=gen))]
            sign = -1.0 if torch.rand(1, generator=gen) < 0.5 else 1.0
            t[int(torch.randint(0, t.numel(), (1,), generator=gen))] = sign * edge
        if trial % 2:
            t = t.reshape(-1, 1).expand(-1, 2).t()  # non-contiguous input
        if _refused_naively(t):
            refused += 1
            with pytest.raises(ValueError, match="beyond float16's"):
                convert_dtype(t, torch.float16, "w")
        else:
            out = convert_dtype(t, torch.float16, "w")
            assert out.dtype == torch.float16
            torch.testing.assert_close(out, t.to(torch.float16), rtol=0, atol=0, equal_nan=True)
    assert 20 < refused < 180  # both branches were taken often


def test_float16_edge_values() -> None:
    ok = torch.tensor([F16_MAX, -F16_MAX, float("inf"), float("-inf"), float("nan"), 0.0])
    assert convert_dtype(ok, torch.float16).isnan().sum() == 1
    for bad in (65504.5, -65519.0, 65520.0, -1e30):
        with pytest.raises(ValueError, match="beyond float16's"):
            convert_dtype(torch.tensor([1.0, bad]), torch.float16)
    assert convert_dtype(torch.tensor([]), torch.float16).dtype == torch.float16


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_large_tensors_are_cast_in_steps_exactly(dtype: torch.dtype) -> None:
    """Tensors over one step (32768 elements) take the stepped path: same values, same refusals."""
    gen = torch.Generator().manual_seed(5)
    for trial in range(12):
        n = int(torch.randint(32769, 150_000, (1,), generator=gen))
        t = torch.randn(n, generator=gen)
        if trial % 3 == 1:  # one edge value somewhere, often past the first step
            edge = EDGES[int(torch.randint(0, len(EDGES), (1,), generator=gen))]
            t[int(torch.randint(0, n, (1,), generator=gen))] = -edge if trial % 2 else edge
        if trial % 3 == 2:
            t = t[: n // 2 * 2].reshape(2, -1).t()  # non-contiguous, as a transposed weight
        refused = dtype == torch.float16 and _refused_naively(t)
        if refused:
            with pytest.raises(ValueError, match="beyond float16's"):
                convert_dtype(t, dtype, "w")
            continue
        out = convert_dtype(t, dtype, "w")
        assert out.dtype == dtype and out.shape == t.shape
        assert torch.equal(out.view(torch.int16), t.to(dtype).contiguous().view(torch.int16))


def test_large_tensor_edges_in_a_late_step() -> None:
    t = torch.randn(100_000, generator=torch.Generator().manual_seed(2))
    for value, refused in (
        (70000.0, True),
        (65519.0, True),
        (float("nan"), False),
        (65504.0, False),
    ):
        u = t.clone()
        u[-1] = value
        if refused:
            with pytest.raises(ValueError, match="beyond float16's"):
                convert_dtype(u, torch.float16)
        else:
            out = convert_dtype(u, torch.float16)
            torch.testing.assert_close(out, u.to(torch.float16), rtol=0, atol=0, equal_nan=True)
