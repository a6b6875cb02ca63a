"""Reads come first: an update waits for generation and scoring in progress (within
``reader_priority``), reads take every core while it waits and one while it computes, and an
idle worker keeps no OpenMP team that would slow the readers' parallel regions."""

from __future__ import annotations

import math
import threading
import time

import pytest
import torch

from tests.learner.helpers import make_learner
from tests.learner.test_fast_step import _trainer
from workbench.learner import LearnerError, LearningConfig, TrainingExample, _inference, publish
from workbench.learner import _worker as worker_module
from workbench.models import ModelConfig, Transformer
from workbench.tokenizers import ByteTokenizer


@pytest.fixture(autouse=True)
def _restore_threads() -> object:
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _publisher() -> publish.Publisher:
    model = Transformer(ModelConfig.preset("tiny-llama"), seed=3)
    return publish.Publisher(model, ByteTokenizer(), 0)


def test_a_paced_read_takes_one_thread_while_the_worker_computes_and_all_while_it_waits() -> None:
    pub = _publisher()
    torch.set_num_threads(3)
    with pub.reading(threads=3):
        for busy, want in [(True, 1), (False, 3), (True, 1), (True, 1), (False, 3)]:
            pub.busy = busy
            pub.pace()
            assert torch.get_num_threads() == want
    pub.busy = True
    torch.set_num_threads(3)
    with pub.reading():  # a glance (not paced) keeps its count
        pub.pace()
        assert torch.get_num_threads() == 3
    pub.pace()  # outside any read: nothing
    assert torch.get_num_threads() == 3


def test_a_read_follows_the_worker_block_by_block() -> None:
    """Inside one forward pass: the worker stops computing after the first block, and the
    read runs the next blocks on every thread it had."""
    pub = _publisher()
    torch.set_num_threads(2)
    pub.busy = True
    seen: list[int] = []
    with _inference.reading(pub) as snap:
        assert torch.get_num_threads() == 1  # began beside a computing worker
        blocks = snap.model.blocks
        assert len(blocks) >= 2
        hooks = [
            b.register_forward_hook(lambda *_: seen.append(torch.get_num_threads())) for b in blocks
        ]
        flip = blocks[0].register_forward_hook(lambda *_: setattr(pub, "busy", False))
        try:
            snap.model(torch.randint(0, 256, (1, 12)))
        finally:
            for h in [*hooks, flip]:
                h.remove()
    assert seen[0] == 1 and set(seen[1:]) == {2}
    assert torch.get_num_threads() == 2


def test_the_worker_waits_out_reads_and_the_gaps_between_them() -> None:
    """Two reads with a short gap between them: one wait covers both (a worker that resumed in
    the gap would run into the second read), and the publisher is not busy meanwhile."""
    pub = _publisher()
    pub.recent_s = 5.0  # the gap counts as reading (CI machines can be slow to switch)
    started, release = threading.Event(), threading.Event()
    busy_inside: list[bool] = []

    def reader() -> None:
        with pub.reading():
            started.set()
            release.wait(10)
            time.sleep(2 * publish.HEAVY_READ_S)  # an inference, not a glance
        time.sleep(0.05)  # the gap
        with pub.reading():
            time.sleep(0.1)
            busy_inside.append(pub.busy)

    thread = threading.Thread(target=reader)
    thread.start()
    assert started.wait(10)
    pub.busy = True
    threading.Timer(0.1, release.set).start()
    pub.recent_s = 0.5
    waited = pub.yield_to_readers(30.0)
    thread.join(10)
    assert busy_inside == [False]  # the second read saw a worker that waits
    assert waited >= 0.25  # the first read, the gap and the second read
    assert pub.busy  # its own state again
    assert not pub.readers_recent(window=0.0)


def test_the_wait_is_bounded_and_nobody_reading_costs_none() -> None:
    pub = _publisher()
    assert pub.yield_to_readers(10.0) == 0.0  # nobody reads
    entered, leave = threading.Event(), threading.Event()

    def reader() -> None:
        with pub.reading():
            entered.set()
            leave.wait(30)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        assert entered.wait(10)
        assert 0 < pub.yield_to_readers(0.0) < 1.0  # no budget: it only says "readers"
        start = time.perf_counter()
        waited = pub.yield_to_readers(0.2)
        assert 0.2 <= waited < 5.0 and time.perf_counter() - start < 5.0
    finally:
        leave.set()
        thread.join(10)


@pytest.mark.parametrize("priority", [0.0, 4.0])
def test_reader_priority_sets_the_steps_budget(priority: float) -> None:
    trainer, examples = _trainer(reader_priority=priority)
    asked: list[float] = []

    def yield_point(max_wait: float) -> float:
        asked.append(max_wait)
        return 1e-6  # a reader is about; it took no time

    trainer.yield_point = yield_point
    trainer.step(examples)
    assert len(asked) >= 2 * len(trainer.model.blocks)  # every block, forward and backward
    if priority == 0:
        assert set(asked) == {0.0}  # never waits: only learns that someone reads
    else:
        assert max(asked) >= trainer.yield_budget  # (the first is the step's look: 0)
        assert all(math.isfinite(a) and a >= 0 for a in asked)


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf, "4"])
def test_a_bad_reader_priority_is_refused(bad: object) -> None:
    with pytest.raises(LearnerError, match="reader_priority"):
        LearningConfig(reader_priority=bad)  # type: ignore[arg-type]


def test_an_idle_worker_keeps_no_thread_team(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker's OpenMP team, kept after an update, took the readers' teams off their
    spinning wait: SmolLM2 then decoded at 1.7x its latency until the next update."""
    with make_learner(None, learning_rate=1e-3, update_frequency=2) as learner:
        worker = learner._worker
        released: list[tuple[int, int]] = []  # (thread, updates done by then)
        real = worker_module.release_thread_team

        def record() -> bool:
            released.append((threading.get_ident(), worker.trainer.updates))
            return real()

        monkeypatch.setattr(worker_module, "release_thread_team", record)
        for q in ("1 + 1 =", "2 + 2 ="):
            learner.add_example(TrainingExample(q, " ok"))
        learner.force_update()
        deadline = time.monotonic() + 30
        while not any(n >= 1 for _, n in released) and time.monotonic() < deadline:
            time.sleep(0.01)
    assert any(n >= 1 for _, n in released)  # once the update was done
    assert {t for t, _ in released} == {worker._thread.ident}  # by the worker itself
