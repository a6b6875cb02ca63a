"""The learner's fine-tuning step picks its threads: the free cores while nobody reads, the
worker's own count while a reader waits, the free cores again once it left, and never a
different result."""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

from tests.learner.helpers import make_learner
from workbench import _openmp
from workbench.batching import encode_example
from workbench.learner import LearningConfig, TrainingExample, _training, _undo, publish
from workbench.learner._training import Trainer
from workbench.models import ModelConfig, Transformer
from workbench.tokenizers import ByteTokenizer


@pytest.fixture(autouse=True)
def keep_threads() -> Iterator[None]:
    old = torch.get_num_threads()
    yield
    torch.set_num_threads(old)


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _fake_loadavg(
    monkeypatch: pytest.MonkeyPatch, running: int | None, mine: str | None = None
) -> None:
    """/proc/loadavg with ``running`` tasks; this process's threads in states ``mine`` (one
    letter each, "R" running), or an unreadable /proc/self/task when None."""

    def fake_open(path: str, *args: Any, **kwargs: Any) -> io.StringIO:
        if path.startswith("/proc/self/task/") and mine is not None:
            tid = int(path.split("/")[4])
            return io.StringIO(f"{tid} (python3 (x)) {mine[tid]} 1 2 3\n")
        assert path == "/proc/loadavg"
        if running is None:
            raise OSError("no /proc here")
        return io.StringIO(f"3.10 2.50 1.20 {running}/300 12345\n")

    def fake_listdir(path: str) -> list[str]:
        assert path == "/proc/self/task"
        if mine is None:
            raise OSError("no /proc/self/task here")
        return [str(i) for i in range(len(mine))]

    monkeypatch.setattr(_openmp, "open", fake_open, raising=False)
    monkeypatch.setattr(_openmp.os, "listdir", fake_listdir)


@pytest.mark.parametrize(
    ("running", "own", "free"),
    [(1, 1, "all"), (3, 2, "all-1"), (50, 1, 1), (None, 1, "all")],
)
def test_free_cores_count_what_others_run(
    monkeypatch: pytest.MonkeyPatch, running: int | None, own: int, free: int | str
) -> None:
    _fake_loadavg(monkeypatch, running)
    cores = _cores()
    want = {"all": cores, "all-1": max(1, cores - 1)}.get(str(free), free)
    assert _openmp.free_cores(own) == want


def test_free_cores_do_not_count_this_process_own_threads() -> None:
    """An idle OpenMP team member spinning after a region shows as running: it is ours, so it
    takes no core from the next region (2 of our 3 threads run, 1 other task)."""
    with pytest.MonkeyPatch.context() as mp:
        _fake_loadavg(mp, 3, mine="RSR")
        assert _openmp.free_cores(1) == max(1, _cores() - 1)
        _fake_loadavg(mp, 2, mine="RSR")  # only ours run
        assert _openmp.free_cores(1) == _cores()


def _trainer(**cfg: Any) -> tuple[Trainer, list[Any]]:
    tok = ByteTokenizer()
    model = Transformer(ModelConfig.preset("tiny-llama"), seed=1)
    trainer = Trainer(
        model, tok, LearningConfig(checkpoint_frequency=None, **cfg), torch.device("cpu")
    )
    gen = torch.Generator().manual_seed(4)
    texts = [
        "".join(chr(97 + int(c)) for c in torch.randint(0, 26, (n,), generator=gen))
        for n in (6, 11, 9)
    ]
    examples = [encode_example(tok, i, t, " ok", 1.0, 64) for i, t in enumerate(texts)]
    return trainer, examples


def _threads_seen(trainer: Trainer) -> list[int]:
    """Intra-op threads at the end of every block's forward (after the yield hook ran)."""
    seen: list[int] = []
    for block in trainer.model.blocks:
        block.register_forward_hook(lambda *_: seen.append(torch.get_num_threads()))
    return seen


def _reader(waits: float) -> Callable[[float], float]:
    return lambda max_wait: waits


def _step_with_two_free_cores(monkeypatch: pytest.MonkeyPatch, waits: float) -> list[int]:
    """One step from one thread with two cores free, each pause finding a reader that waited
    ``waits`` s: the threads each block saw."""
    monkeypatch.setattr(_training, "_free_cores", lambda own: 2)
    torch.set_num_threads(1)
    trainer, examples = _trainer()
    trainer.yield_point = _reader(waits)
    seen = _threads_seen(trainer)
    trainer.step(examples)
    return seen


def test_a_worker_step_takes_the_free_cores_and_gives_them_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen = _step_with_two_free_cores(monkeypatch, 0.0)  # the worker's hook, nobody reading
    assert seen and set(seen) == {2}
    assert torch.get_num_threads() == 1


def test_a_waiting_reader_gets_its_core_back_at_the_next_block(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen = _step_with_two_free_cores(monkeypatch, 1e-4)  # every pause finds a reader
    assert seen and set(seen) == {1}
    assert torch.get_num_threads() == 1


def test_the_free_cores_come_back_once_the_reader_left(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_training, "_free_cores", lambda own: 2)
    torch.set_num_threads(1)
    trainer, examples = _trainer()
    calls = iter(range(1 << 20))
    # a read at the start (the step's own look) and at the first block, then none
    trainer.yield_point = lambda max_wait: 1e-4 if next(calls) < 2 else 0.0
    seen = _threads_seen(trainer)
    trainer.step(examples)
    assert len(trainer.model.blocks) >= 2 and seen[0] == 1  # the reader's core, left at once
    assert seen[1:] and set(seen[1:]) == {2}  # taken back at the next block
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize("why", ["train_threads", "no worker"])
def test_the_count_is_left_alone_when_pinned_or_outside_a_worker(
    monkeypatch: pytest.MonkeyPatch, why: str
) -> None:
    monkeypatch.setattr(_training, "_free_cores", lambda own: 2)
    torch.set_num_threads(1)
    trainer, examples = _trainer(**({"train_threads": 1} if why == "train_threads" else {}))
    if why == "train_threads":
        trainer.yield_point = _reader(0.0)
    seen = _threads_seen(trainer)
    trainer.step(examples)
    assert set(seen) == {1}


def test_the_thread_count_does_not_change_the_update(monkeypatch: pytest.MonkeyPatch) -> None:
    results = []
    for free in (1, 2):
        monkeypatch.setattr(_training, "_free_cores", lambda own, free=free: free)
        torch.set_num_threads(1)
        trainer, examples = _trainer(learning_rate=1e-2)
        trainer.yield_point = _reader(0.0)
        losses = [trainer.step(examples)[0] for _ in range(3)]
        results.append((losses, [p.detach().clone() for p in trainer.model.parameters()]))
    (l1, w1), (l2, w2) = results
    assert l1 == pytest.approx(l2, rel=1e-5)
    for a, b in zip(w1, w2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_copies_take_the_free_cores_only_while_nobody_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The undo point's and the publish's copies (no reader waits for them) run on the free
    cores, and on the worker's own count while someone reads."""
    monkeypatch.setattr(publish, "free_cores", lambda own: own + 1)
    model = Transformer(ModelConfig.preset("tiny-llama"), seed=1)
    pub = publish.Publisher(model, ByteTokenizer(), 0)
    own = torch.get_num_threads()
    with pub.spare_cores():
        assert torch.get_num_threads() == own + 1
    assert torch.get_num_threads() == own
    with pub.reading(), pub.spare_cores():
        assert torch.get_num_threads() == own
    monkeypatch.setattr(publish, "free_cores", lambda own: 7)  # more than any worker has
    seen: list[int] = []
    copy = _undo.UndoPoint._copy
    monkeypatch.setattr(
        _undo.UndoPoint,
        "_copy",
        lambda self, *a: seen.append(torch.get_num_threads()) or copy(self, *a),
    )
    with make_learner(None, learning_rate=1e-3, update_frequency=2) as learner:
        for q in ("1 + 1 =", "2 + 2 ="):
            learner.add_example(TrainingExample(q, " ok"))
        learner.force_update()
    assert seen == [7]  # the worker's undo point, on the free cores


def test_a_publish_copies_the_weights_only_when_they_changed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A spare snapshot already holding the model's weights (an edit changed none) is not
    copied into again; after any write it is, and readers always see the model's weights."""
    model = Transformer(ModelConfig.preset("tiny-llama"), seed=1)
    pub = publish.Publisher(model, ByteTokenizer(), 0, spares=1)
    copies: list[int] = []
    spare_cores = publish.Publisher.spare_cores
    monkeypatch.setattr(
        publish.Publisher, "spare_cores", lambda self: copies.append(1) or spare_cores(self)
    )

    def current() -> dict[str, torch.Tensor]:
        with pub.reading() as snap:
            return {k: v.clone() for k, v in snap.model.state_dict().items()}

    def same() -> bool:
        now = current()
        return all(torch.equal(v, now[k]) for k, v in model.state_dict().items())

    for version in range(1, 4):  # the first publish makes the spare, then it is reused
        pub.publish(model, version, ByteTokenizer())
        assert same()
    assert copies == []  # nothing written since: no copy at all
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    pub.publish(model, 4, ByteTokenizer())
    assert same() and copies == [1]
    pub.publish(model, 5, ByteTokenizer())  # the other snapshot still holds the old weights
    assert same() and copies == [1, 1]
    pub.publish(model, 6, ByteTokenizer())
    assert same() and copies == [1, 1]


def test_a_read_that_just_ended_keeps_the_worker_on_its_own_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Back-to-back generations leave millisecond gaps: an inference that ended less than the
    window ago still counts as a reader; a glance at the tokenizer (add_example's) does not."""
    import time

    monkeypatch.setattr(publish, "free_cores", lambda own: own + 1)
    model = Transformer(ModelConfig.preset("tiny-llama"), seed=1)
    pub = publish.Publisher(model, ByteTokenizer(), 0)
    pub.recent_s = 60.0  # (a loaded machine may take longer than the real window)
    own = torch.get_num_threads()
    with pub.reading():
        pass  # a glance
    assert not pub.readers_recent()
    with pub.reading():
        time.sleep(2 * publish.HEAVY_READ_S)  # an inference
    assert pub.readers_recent()
    with pub.spare_cores():
        assert torch.get_num_threads() == own
    assert not pub.readers_recent(window=0.0)
