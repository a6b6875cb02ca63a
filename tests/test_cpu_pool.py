"""The CPU block pool (workbench._cpu_pool, csrc/cpu_pool.cpp): a thread inside ``pooled()``
reuses its freed big blocks; other threads and small allocations are torch's own; results are
bit for bit those of plain allocation."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from typing import Any

import pytest
import torch

from workbench import _cpu_pool

pytestmark = pytest.mark.skipif(
    not _cpu_pool.available(), reason="the fused kernels (and the pool with them) did not build"
)

MB = 1 << 20


@pytest.fixture(autouse=True)
def fresh_pool() -> Iterator[None]:
    _cpu_pool.set_cap(1 << 30)
    _cpu_pool.flush()
    yield
    _cpu_pool.set_cap(1 << 30)
    _cpu_pool.flush()


def _in_thread(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on a new thread (the pool is per thread) and return its result."""
    out: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as e:  # re-raised on the test's thread
            errors.append(e)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if errors:
        raise errors[0]
    return out[0]


def _stats() -> _cpu_pool.PoolStats:
    s = _cpu_pool.stats()
    assert s is not None
    return s


def test_a_pooled_thread_gets_its_freed_block_back() -> None:
    def run() -> tuple[int, int, int]:
        with _cpu_pool.pooled() as on:
            assert on
            before = _stats()
            a = torch.empty(3 * MB // 4, dtype=torch.float32)  # 3 MB
            first = a.data_ptr()
            del a
            cached = _stats()
            b = torch.rand(3 * MB // 4)
            return first, b.data_ptr(), cached.cached_bytes - before.cached_bytes

    first, second, cached = _in_thread(run)
    assert first == second
    assert cached >= 3 * MB
    assert _stats().hits >= 1


def test_other_threads_and_small_blocks_bypass_the_pool() -> None:
    before = _stats()
    a = torch.rand(4 * MB // 4)  # this thread never entered the pool
    del a

    def small() -> None:
        with _cpu_pool.pooled():
            x = torch.rand(1000)  # 4 kB: malloc's own bins
            del x

    _in_thread(small)
    after = _stats()
    assert (after.hits, after.misses, after.blocks) == (before.hits, before.misses, before.blocks)


def test_a_block_freed_on_another_thread_returns_to_the_pool() -> None:
    holder: list[torch.Tensor] = []

    def make() -> None:
        with _cpu_pool.pooled():
            holder.append(torch.rand(2 * MB // 4))

    _in_thread(make)
    ptr = holder[0].data_ptr()
    holder.clear()  # freed here, on the test's thread
    assert _stats().cached_blocks >= 1

    def again() -> int:
        with _cpu_pool.pooled():
            return torch.empty(2 * MB // 4).data_ptr()

    assert _in_thread(again) == ptr


def test_the_cap_bounds_what_is_kept_and_flush_frees_it() -> None:
    def run() -> None:
        with _cpu_pool.pooled():
            xs = [torch.rand(MB) for _ in range(4)]  # 4 MB each
            del xs

    _cpu_pool.set_cap(9 * MB)  # room for two of the four
    _in_thread(run)
    s = _stats()
    assert s.cached_blocks == 2
    assert s.cached_bytes <= 9 * MB
    assert _cpu_pool.flush() == s.cached_bytes
    assert _stats().cached_bytes == 0
    _cpu_pool.set_cap(0)
    _in_thread(run)
    assert _stats().cached_bytes == 0


def test_a_block_much_bigger_than_asked_is_not_handed_out() -> None:
    def run() -> tuple[int, int]:
        with _cpu_pool.pooled():
            big = torch.empty(16 * MB // 4)
            ptr = big.data_ptr()
            del big
            small = torch.empty(2 * MB // 4)  # 8x smaller: a fresh block, not the cached one
            return ptr, small.data_ptr()

    big, small = _in_thread(run)
    assert big != small


def test_training_in_the_pool_gives_the_same_bits() -> None:
    def train(pool: bool) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Linear(256, 1024), torch.nn.GELU(), torch.nn.Linear(1024, 256)
        )
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        x = torch.randn(512, 256)
        with _cpu_pool.pooled() if pool else nullcontext():
            for _ in range(4):
                opt.zero_grad(set_to_none=True)
                loss = (model(x) - x).pow(2).mean()
                loss.backward()
                opt.step()
        return [p.detach().clone() for p in model.parameters()]

    plain, pooled = _in_thread(lambda: train(False)), _in_thread(lambda: train(True))
    assert _stats().hits > 0  # the pooled run did reuse blocks
    for a, b in zip(plain, pooled, strict=True):
        assert torch.equal(a, b)


def test_the_cap_is_validated() -> None:
    for bad in (-1, 1.5, True, "1GB"):
        with pytest.raises(ValueError, match="whole number of bytes"):
            _cpu_pool.set_cap(bad)  # type: ignore[arg-type]
