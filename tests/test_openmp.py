"""workbench._openmp frees the calling thread's OpenMP team, and only that thread's."""

from __future__ import annotations

import os
import sys
import threading
import time

import pytest
import torch

from workbench._openmp import release_thread_team

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or (os.cpu_count() or 1) < 2,
    reason="counts threads in /proc and needs a team of 2",
)


def _tasks() -> int:
    return len(os.listdir("/proc/self/task"))


def _settled(expected: int, timeout: float = 5.0) -> int:
    """The thread count once it reaches ``expected`` (a freed worker exits a moment later)."""
    end = time.monotonic() + timeout
    while _tasks() != expected and time.monotonic() < end:
        time.sleep(0.01)
    return _tasks()


def test_a_thread_frees_its_team_and_a_new_region_builds_it_again() -> None:
    seen: list[object] = []

    def work() -> None:
        try:
            torch.set_num_threads(2)
            alone = _tasks()
            x = torch.randn(1 << 20)
            float((x * torch.rand(1 << 20)).sum())  # a parallel region: a team of 2
            with_team = _tasks()
            seen.append(with_team - alone)  # the team's one worker thread
            seen.append(release_thread_team())
            seen.append(_settled(alone) - alone)
            float((x * 2).sum())  # the next region starts a team again
            seen.append(_tasks() - alone)
        except BaseException as e:  # reported on the test's thread
            seen.append(e)

    t = threading.Thread(target=work)
    t.start()
    t.join(60)
    assert seen == [1, True, 0, 1]


def test_without_a_team_it_does_nothing_harmful() -> None:
    def work() -> None:
        torch.set_num_threads(1)
        result.append(release_thread_team())
        result.append(float(torch.ones(8).sum()))

    result: list[object] = []
    t = threading.Thread(target=work)
    t.start()
    t.join(60)
    assert result == [True, 8.0]
