"""The norm pass (``grad_sumsq``) and the bench's read probe, against float64 torch.

The pass is unrolled over 32 lanes with software prefetch and a clamp-free loop when no value
clipping is asked for; lengths straddling the lanes, chunks and dtypes check every tail.
"""

from __future__ import annotations

import math

import pytest
import torch

from workbench.optim import _functional as F

pytestmark = pytest.mark.skipif(
    not F._fused_ok(torch.device("cpu")), reason="the fused CPU kernels did not build"
)

LENGTHS = [1, 31, 32, 33, 517, (1 << 15) + 45, 3 * (1 << 15) - 7]


def random_grads(dtype: torch.dtype, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, generator=gen) * 3).to(dtype) for n in LENGTHS]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("clip_value", [math.inf, 0.7])
def test_sum_of_squares_matches_float64(dtype: torch.dtype, clip_value: float) -> None:
    grads = random_grads(dtype, seed=11)
    got = torch.ops.workbench_optim.grad_sumsq(grads, clip_value)
    bound = float(torch.tensor(clip_value, dtype=torch.float32))  # the kernel clamps in float32
    flat = torch.cat([g.double() for g in grads]).clamp(-bound, bound)
    assert got.dtype == torch.float64
    assert float(got) == pytest.approx(float((flat * flat).sum()), rel=1e-12)


def test_a_nan_gradient_makes_the_sum_nan_with_and_without_clamp() -> None:
    grads = random_grads(torch.float32, seed=12)
    grads[5][1000] = float("nan")
    for clip_value in (math.inf, 0.5):
        assert math.isnan(float(torch.ops.workbench_optim.grad_sumsq(grads, clip_value)))


def test_read_probe_reads_every_element() -> None:
    grads = random_grads(torch.float32, seed=13)
    got = torch.ops.workbench_optim.read_probe(grads)
    want = float(torch.cat(grads).double().sum())
    assert got == pytest.approx(want, rel=1e-4, abs=1e-2)
