"""The tools speak chat: ``generate`` and ``add_training_example`` take ``messages``.

Through the SDK's own client over HTTP (``serve_http`` in this process), on a real learner of
its own per test, so what the tools did can be read back from the learner: the reply is the
learner's own chat reply, a chat example is stored with its conversation, and a refused call
stores nothing. Conversations and the bad parts of bad ones are drawn from seeded generators.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.learner.helpers import make_learner
from tests.mcp.client import SyncClient
from workbench.chat import render_chat_template
from workbench.learner import OnlineLearner
from workbench.learner.config import MAX_MESSAGES, MAX_TEXT_CHARS
from workbench.mcp import serve_http

TEMPLATE = (
    "{% for m in messages %}<{{ m.role }}>{{ m.content }}<|endoftext|>{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)
ALPHABET = "abcdefghijklmnopqrstuvwxyz 0123456789+=?.,é€"


@dataclass
class Door:
    learner: OnlineLearner
    client: SyncClient


def _door(tmp_path: Path, template: str | None) -> Iterator[Door]:
    # Learning off: no background update changes the weights between two generations compared.
    with make_learner(tmp_path / "session", enabled=False) as learner:
        learner.tokenizer.chat_template = template  # the published tokenizer is the worker's too
        with serve_http(learner, root=tmp_path) as handle:
            client = SyncClient.http(handle.url, handle.token)
            try:
                yield Door(learner, client)
            finally:
                client.close()


@pytest.fixture
def chat(tmp_path: Path) -> Iterator[Door]:
    yield from _door(tmp_path, TEMPLATE)


@pytest.fixture
def plain(tmp_path: Path) -> Iterator[Door]:
    yield from _door(tmp_path, None)


def _text(rng: random.Random, low: int = 1, high: int = 40) -> str:
    return "".join(rng.choices(ALPHABET, k=rng.randint(low, high)))


def _conversation(rng: random.Random) -> list[dict[str, str]]:
    """A system turn or not, then user/assistant pairs, ending with the user's turn."""
    turns = [{"role": "system", "content": _text(rng)}] if rng.random() < 0.5 else []
    for _ in range(rng.randint(0, 3)):
        turns += [
            {"role": "user", "content": _text(rng)},
            {"role": "assistant", "content": _text(rng)},
        ]
    return [*turns, {"role": "user", "content": _text(rng)}]


# ---------------------------------------------------------------------- a model with a template
def test_generate_with_messages_is_the_learners_chat_reply(chat: Door) -> None:
    rng = random.Random(11)
    for _ in range(4):
        turns, n = _conversation(rng), rng.randint(1, 12)
        reply = chat.client.ok("generate", {"messages": turns, "max_new_tokens": n})["text"]
        assert reply == chat.learner.chat(turns, max_new_tokens=n)
        # the template was applied: the reply continues the rendered conversation
        rendered = render_chat_template(TEMPLATE, turns)
        raw = chat.client.ok("generate", {"prompt": rendered, "max_new_tokens": n})["text"]
        assert reply == raw.split("<|endoftext|>")[0]


def test_an_example_is_stored_with_the_method_asked_for(chat: Door) -> None:
    turns = _conversation(random.Random(14))
    sent = [({"input": "2 + 2 =", "target": " 4"}, None)]
    for method in ("edit", "finetune"):
        sent += [
            ({"input": f"{method}:", "target": " x", "method": method}, method),
            ({"messages": turns, "target": method, "method": method}, method),
        ]
    ids = [chat.client.ok("add_training_example", args)["id"] for args, _ in sent]
    stored = {r.id: r.method for r in chat.learner.recent_examples(10)}
    assert [stored[i] for i in ids] == [method for _, method in sent]
    message = chat.client.error("add_training_example", {"input": "a", "method": "lora"})
    assert "method" in message and len(chat.learner.recent_examples(10)) == len(sent)


def test_a_chat_example_is_stored_with_its_conversation(chat: Door) -> None:
    rng = random.Random(12)
    sent = []
    for _ in range(5):
        turns, target, weight = _conversation(rng), _text(rng), round(rng.uniform(0.1, 100), 3)
        answer = chat.client.ok(
            "add_training_example", {"messages": turns, "target": target, "weight": weight}
        )
        sent.append((answer["id"], turns, target, weight))
    stored = chat.learner.recent_examples(len(sent) + 1)
    assert len(stored) == len(sent)
    for record, (id, turns, target, weight) in zip(stored, sent, strict=True):
        assert record.id == id and record.target == target and record.weight == weight
        assert record.messages == tuple(turns)
        assert record.input == turns[-1]["content"]  # what lists and tables show
    chat.client.ok("force_update")  # the worker trains on them through the template
    assert {r.status for r in chat.learner.recent_examples(len(sent))} == {"trained"}


# ---------------------------------------------------------------------- a model without one
def test_without_a_template_messages_are_refused_with_the_alternative(plain: Door) -> None:
    turns = _conversation(random.Random(13))
    message = plain.client.error("generate", {"messages": turns})
    assert "no chat template" in message and "prompt (raw completion)" in message
    message = plain.client.error("add_training_example", {"messages": turns, "target": "x"})
    assert "no chat template" in message and "input (with target)" in message
    assert plain.learner.recent_examples(10) == []
    # raw completion and plain examples still work
    assert isinstance(plain.client.ok("generate", {"prompt": "hi"})["text"], str)
    plain.client.ok("add_training_example", {"input": "hi", "target": " there"})
    assert len(plain.learner.recent_examples(10)) == 1


# ---------------------------------------------------------------------- bad conversations
def _bad_calls(rng: random.Random) -> list[tuple[str, dict[str, Any], list[str]]]:
    """(tool, arguments, words the error must contain): one bad part in a valid conversation."""

    def spoiled(change: dict[str, Any]) -> list[dict[str, Any]]:
        turns: list[dict[str, Any]] = _conversation(rng)
        i = rng.randrange(len(turns))
        turns[i] = {**turns[i], **change}
        return turns

    role = rng.choice(["User", "bot", "tool", "", "function", "developer"])
    key = rng.choice(["name", "tool_calls", "id", "Role"])
    long = "x" * rng.randint(MAX_TEXT_CHARS + 1, MAX_TEXT_CHARS + 500)
    half = MAX_TEXT_CHARS // 2 + rng.randint(1, 500)
    too_many = [{"role": "user", "content": "a"}] * rng.randint(MAX_MESSAGES + 1, 300)
    calls: list[tuple[str, dict[str, Any], list[str]]] = []
    for tool, extra in (("generate", {}), ("add_training_example", {"target": _text(rng)})):
        calls += [
            (tool, {"messages": spoiled({"role": role}), **extra}, ["role", "'user'"]),
            (tool, {"messages": [], **extra}, ["messages", "at least 1"]),
            (tool, {"messages": spoiled({key: "x"}), **extra}, [key, "extra"]),
            (tool, {"messages": spoiled({"content": long}), **extra}, ["content", "100000"]),
            (tool, {"messages": spoiled({"content": rng.randint(0, 9)}), **extra}, ["content"]),
            (tool, {"messages": [{"content": "a"}], **extra}, ["role", "required"]),
            (tool, {"messages": too_many, **extra}, ["messages", str(MAX_MESSAGES)]),
            (
                tool,
                {"messages": [{"role": "user", "content": "y" * half}] * 2, **extra},
                ["in all", f"{MAX_TEXT_CHARS:,}"],
            ),
            (tool, {"messages": {"role": "user", "content": "a"}, **extra}, ["messages", "list"]),
        ]
    turns = _conversation(rng)
    calls += [
        ("generate", {"prompt": _text(rng), "messages": turns}, ["exactly one", "both"]),
        ("generate", {"max_new_tokens": 3}, ["exactly one", "neither"]),
        ("add_training_example", {"messages": turns}, ["needs a target", "input"]),
        (
            "add_training_example",
            {"input": _text(rng), "messages": turns, "target": "a"},
            ["exactly one", "both"],
        ),
        ("add_training_example", {"target": "a"}, ["exactly one", "neither"]),
        (
            "add_training_example",
            {"messages": [*turns, {"role": "assistant", "content": "a"}], "target": "b"},
            ["assistant turn", "end with the user's turn"],
        ),
        (
            "add_training_example",
            {"messages": spoiled({"content": "a\x00b"}), "target": "b"},
            ["NUL"],
        ),
        (
            "add_training_example",
            {"messages": turns, "target": _text(rng), "weight": 0},
            ["weight"],
        ),
    ]
    return calls


def test_bad_conversations_are_tool_errors_that_store_nothing(chat: Door) -> None:
    rng = random.Random(14)
    failures = []
    for tool, args, words in _bad_calls(rng):
        message = chat.client.error(tool, args)
        missing = [w for w in words if w.lower() not in message.lower()]
        if missing:
            failures.append(f"{tool}: {missing} not in {message[:400]!r}")
        assert len(message) < 2000, "the error echoes the whole input"
    assert not failures, "\n".join(failures)
    assert chat.learner.recent_examples(10) == []
    assert chat.learner.get_stats()["total_examples"] == 0
