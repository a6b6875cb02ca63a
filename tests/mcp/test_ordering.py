"""Ordered calls reach the learner in the order the server received them; inference never waits.

An agent may fire ``add_training_example`` and ``force_update`` without awaiting the first: the
update must include the example. The server promises the order calls *arrive* in (see
``workbench.mcp.ordering``): over stdio that is the order they were sent (one stream), so the
calls go out all at once; over HTTP each call is a POST of its own and the network may swap two
sent together, so each call is sent once the one before has arrived (taken its place on the
lane), none awaiting an answer. Checked with the SDK's own client, over stdio (a ``workbench
mcp`` subprocess) and HTTP (``serve_http`` in this process), on a real learner; and with a
recording stand-in for the learner, every ordered tool queued behind a held ``force_update``,
plus one ``force_update`` held open while ``get_learning_stats`` and ``generate`` (with a prompt
and with chat messages) still answer.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from mcp_types import CallToolResult

from tests.learner.helpers import make_learner
from tests.mcp.client import SyncClient, text_of
from workbench.learner import AddResult, TrainingExample
from workbench.mcp import ORDERED_TOOLS, Lane, lane_for, serve_http
from workbench.mcp.tools import CONCURRENT_TOOLS, TOOL_NAMES

PAIRS = 200


# ---------------------------------------------------------------------- the lane itself
def test_the_lane_runs_jobs_first_in_first_out() -> None:
    lane = Lane("test")
    seen: list[int] = []
    futures = [
        lane.submit(lambda i=i: (time.sleep(0.001 * (i % 3)), seen.append(i))) for i in range(50)
    ]
    for f in futures:
        f.result(timeout=30)
    assert seen == list(range(50))


def test_a_cancelled_waiting_job_never_runs() -> None:
    lane = Lane("test")
    gate = threading.Event()
    ran: list[str] = []
    first = lane.submit(lambda: (gate.wait(30), ran.append("first")))
    second = lane.submit(lambda: ran.append("second"))
    assert second.cancel()
    gate.set()
    first.result(timeout=30)
    lane.submit(lambda: None).result(timeout=30)
    assert ran == ["first"]


def test_every_tool_is_either_ordered_or_concurrent() -> None:
    assert set(TOOL_NAMES) == ORDERED_TOOLS | CONCURRENT_TOOLS
    assert not ORDERED_TOOLS & CONCURRENT_TOOLS
    assert {"generate", "get_learning_stats"} == CONCURRENT_TOOLS


# ---------------------------------------------------------------------- a real learner
Send = Callable[[Sequence[tuple[str, dict[str, Any]]]], list[CallToolResult]]


def _pairs_stay_in_order(client: SyncClient, send: Send) -> None:
    """PAIRS × (add, force_update) in flight together: each update has exactly the examples
    that arrived before it."""
    client.ok("disable_learning")  # no background update takes an example meanwhile
    base = client.stats()["total_examples"]
    calls: list[tuple[str, dict[str, Any]]] = []
    for i in range(PAIRS):
        calls.append(("add_training_example", {"input": f"order {i}:", "target": f" {i}"}))
        calls.append(("force_update", {}))
    answers = send(calls)
    reordered = []
    for i in range(PAIRS):
        added, updated = answers[2 * i], answers[2 * i + 1]
        assert not added.is_error, text_of(added)
        if updated.is_error:  # e.g. "no examples to train on": it ran before its example
            reordered.append(i)
            continue
        a, u = added.structured_content, updated.structured_content
        assert a is not None and u is not None
        # The example i is in (pending 0: the update took it), example i + 1 is not yet.
        if (
            a["stats"]["total_examples"] != base + i + 1
            or u["stats"]["total_examples"] != base + i + 1
            or u["stats"]["pending_examples"] != 0
        ):
            reordered.append(i)
    assert reordered == [], f"{len(reordered)} of {PAIRS} pairs were reordered: {reordered[:10]}"
    stats = client.stats()
    assert stats["total_examples"] == base + PAIRS and stats["pending_examples"] == 0


def test_pairs_sent_together_stay_in_order_over_stdio(tmp_path: Path) -> None:
    client = SyncClient.stdio(tmp_path)
    try:
        _pairs_stay_in_order(client, client.call_many)  # one stream: arrival = sent order
    finally:
        client.close()


def test_pairs_sent_together_stay_in_order_over_http(tmp_path: Path) -> None:
    with (
        make_learner(tmp_path / "session") as learner,
        serve_http(learner, root=tmp_path) as handle,
    ):
        client = SyncClient.http(handle.url, handle.token)
        lane = lane_for(learner)
        try:
            before = learner.get_stats()["total_updates"]
            _pairs_stay_in_order(
                client, lambda calls: client.call_in_arrival_order(calls, lambda: lane.submitted)
            )
        finally:
            client.close()
        # Every example was trained on, by the update sent right after it.
        assert learner.get_stats()["total_updates"] == before + PAIRS
        assert all(r.status == "trained" for r in learner.recent_examples(PAIRS))


# ---------------------------------------------------------------------- a recording stand-in
class RecordingLearner:
    """Just enough of the ``Learner`` protocol for the tools; it records calls in the order made.

    ``force_update`` waits on ``hold`` (set by default), so a test can keep one running.
    """

    def __init__(self, session_dir: Path) -> None:
        self.session_dir = session_dir
        self.calls: list[str] = []
        self.hold = threading.Event()
        self.hold.set()
        self.updating = threading.Event()
        self._lr = 1e-3
        self._enabled = True
        self._examples = 0
        self._lock = threading.Lock()

    def _record(self, what: str) -> None:
        with self._lock:
            self.calls.append(what)

    @property
    def enabled(self) -> bool:
        return self._enabled

    def get_stats(self) -> dict[str, Any]:
        return {
            "total_examples": self._examples,
            "total_updates": 0,
            "buffer_size": 0,
            "average_loss": None,
            "learning_rate": self._lr,
            "enabled": self._enabled,
        }

    def enable(self) -> None:
        self._record("enable")
        self._enabled = True

    def disable(self) -> None:
        self._record("disable")
        self._enabled = False

    def set_learning_rate(self, learning_rate: float) -> None:
        self._record(f"lr {learning_rate:g}")
        self._lr = learning_rate

    def add_example(
        self, example: TrainingExample | str, target: str | None = None, weight: float = 1.0
    ) -> AddResult:
        assert isinstance(example, TrainingExample)
        self._record(f"add {example.input}")
        self._examples += 1
        return AddResult(example.id, self._examples, False, self._enabled, "stored")

    def force_update(self) -> float:
        self._record("update")
        self.updating.set()
        assert self.hold.wait(60)
        return 0.5

    def load_weights(self, path: str | Path, format: str | None = None) -> dict[str, Any]:
        self._record(f"load {Path(path).name}")
        return {"format": "custom"}

    def save_weights(
        self, path: str | Path, format: str = "custom", dtype: str | None = None
    ) -> Path:
        self._record(f"save {Path(path).name}")
        return Path(path)

    def list_checkpoints(self) -> list[dict[str, Any]]:
        self._record("list")
        return []

    def generate(
        self, prompt: str, max_new_tokens: int = 64, temperature: float = 0.0, **_: Any
    ) -> str:
        return "!"

    def chat_template(self) -> str | None:
        return "{{ messages }}"

    def chat(self, messages: Any, max_new_tokens: int = 64, **_: Any) -> str:
        return f"!{len(messages)}"


@pytest.fixture
def recorded(tmp_path: Path) -> Iterator[tuple[RecordingLearner, SyncClient]]:
    root = tmp_path / "root"
    root.mkdir()
    fake = RecordingLearner(tmp_path / "session")
    with serve_http(fake, root=root) as handle:  # type: ignore[arg-type]
        client = SyncClient.http(handle.url, handle.token)
        try:
            yield fake, client
        finally:
            fake.hold.set()
            client.close()


def _every_tool(rounds: int) -> tuple[list[tuple[str, dict[str, Any]]], list[str]]:
    """Every tool, interleaved ``rounds`` times: the calls and what the learner should record."""
    calls: list[tuple[str, dict[str, Any]]] = []
    expected: list[str] = []
    for i in range(rounds):
        toggle = "disable" if i % 2 else "enable"
        steps: list[tuple[str, dict[str, Any], str]] = [
            ("add_training_example", {"input": f"x{i}"}, f"add x{i}"),
            ("set_learning_rate", {"learning_rate": (i + 1) / 1000}, f"lr {(i + 1) / 1000:g}"),
            ("get_learning_stats", {}, ""),  # concurrent: not on the lane, calls nothing recorded
            ("force_update", {}, "update"),
            ("save_weights", {"file_path": f"w{i}.mwb"}, f"save w{i}.mwb"),
            ("load_weights", {"file_path": f"w{i}.mwb"}, f"load w{i}.mwb"),
            (f"{toggle}_learning", {}, toggle),
            ("list_checkpoints", {}, "list"),
        ]
        for name, args, record in steps:
            calls.append((name, args))
            if record:
                expected.append(record)
    return calls, expected


def _no_errors(calls: list[tuple[str, dict[str, Any]]], answers: list[CallToolResult]) -> None:
    errors = [f"{calls[i][0]}: {text_of(a)}" for i, a in enumerate(answers) if a.is_error]
    assert not errors, errors[:3]


def test_every_ordered_tool_is_applied_in_the_order_it_arrived(
    recorded: tuple[RecordingLearner, SyncClient],
) -> None:
    """All calls wait together behind a held update, each sent once the one before arrived."""
    fake, client = recorded
    lane = lane_for(fake)  # the lane the server put the fake's calls on
    # 12 rounds: 85 calls wait at once, each holding one of the client's 100 connections.
    calls, expected = _every_tool(12)
    fake.hold.clear()
    calls.insert(0, ("force_update", {}))
    expected.insert(0, "update")
    while_held: list[str] = []

    def release() -> None:
        while_held.extend(fake.calls)
        fake.hold.set()

    answers = client.call_in_arrival_order(calls, lambda: lane.submitted, then=release)
    _no_errors(calls, answers)
    assert while_held == ["update"], "a call ran beside the held update instead of behind it"
    assert fake.calls == expected


def test_calls_sent_at_once_over_http_are_each_applied_once(
    recorded: tuple[RecordingLearner, SyncClient],
) -> None:
    """Sent at once, HTTP calls may arrive in any order (one POST each): none is lost or doubled."""
    fake, client = recorded
    calls, expected = _every_tool(20)
    answers = client.call_many(calls)
    _no_errors(calls, answers)
    assert Counter(fake.calls) == Counter(expected)


class HeldUpdate:
    """A force_update sent on a thread of its own; ``answers`` holds each call's result by tool."""

    def __init__(self, client: SyncClient) -> None:
        self.client = client
        self.answers: dict[str, CallToolResult] = {}
        self.update = threading.Thread(target=self.call, args=("force_update", {}))

    def call(self, name: str, arguments: dict[str, Any]) -> None:
        self.answers[name] = self.client.call(name, arguments)


@contextmanager
def held_update(fake: RecordingLearner, client: SyncClient) -> Iterator[HeldUpdate]:
    """Run the block while the fake learner holds a force_update; release it and wait after."""
    held = HeldUpdate(client)
    fake.hold.clear()
    held.update.start()
    try:
        assert fake.updating.wait(30), "force_update never reached the learner"
        yield held
    finally:
        fake.hold.set()
        held.update.join(60)


def test_inference_and_stats_answer_while_an_update_runs(
    recorded: tuple[RecordingLearner, SyncClient],
) -> None:
    fake, client = recorded
    with held_update(fake, client) as held:
        start = time.monotonic()
        assert client.ok("get_learning_stats")["success"]
        assert client.ok("generate", {"prompt": "hi", "max_new_tokens": 1})["text"] == "!"
        turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}] * 2
        assert client.ok("generate", {"messages": turns, "max_new_tokens": 1})["text"] == "!4"
        assert time.monotonic() - start < 20
        assert held.update.is_alive(), "the update finished early: nothing was shown"
    assert not held.answers["force_update"].is_error


def test_a_chat_example_waits_on_the_lane_while_a_chat_reply_does_not(
    recorded: tuple[RecordingLearner, SyncClient],
) -> None:
    fake, client = recorded
    example = {"messages": [{"role": "user", "content": "c1"}], "target": "r"}
    with held_update(fake, client) as held:
        add = threading.Thread(target=held.call, args=("add_training_example", example))
        add.start()
        turns = [{"role": "user", "content": "hi"}]
        assert client.ok("generate", {"messages": turns, "max_new_tokens": 1})["text"] == "!1"
        add.join(1.0)
        assert add.is_alive() and fake.calls == ["update"], "the example jumped the lane"
    add.join(60)
    answers = held.answers
    assert fake.calls == ["update", "add c1"]  # a chat example's input is its last user turn
    assert not answers["force_update"].is_error and not answers["add_training_example"].is_error
