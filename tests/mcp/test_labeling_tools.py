"""label_next / label_submit / label_stats through the SDK's own client (in-memory transport)."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp.client._memory import InMemoryTransport

from tests.labeling.helpers import make_learner
from tests.mcp.client import SyncClient
from workbench.labeling import LabelingSession
from workbench.mcp.labeling_tools import LABELING_TOOL_NAMES
from workbench.mcp.tools import TOOL_NAMES, build_server

LABELS = ["positive", "negative", "neutral"]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[SyncClient, LabelingSession]]:
    learner = make_learner(tmp_path)
    texts = [f"review {i}: {random.Random(i).choice(['great', 'bad', 'fine'])}" for i in range(6)]
    session = LabelingSession(learner, texts, LABELS, order="sequential")
    client = SyncClient(InMemoryTransport(build_server(learner, None, session)))
    try:
        yield client, session
    finally:
        client.close()
        session.close()
        learner.close()


def result(answer: Any) -> dict[str, Any]:
    assert not answer.is_error, answer.content
    return dict(answer.structured_content)


def error(answer: Any) -> str:
    assert answer.is_error
    return str(answer.content[0].text)


def test_tools_are_listed_with_strict_schemas(served: tuple[SyncClient, LabelingSession]) -> None:
    client, _ = served
    tools = {t.name: t for t in client.list_tools()}
    assert set(LABELING_TOOL_NAMES) | set(TOOL_NAMES) == set(tools)
    submit = tools["label_submit"].input_schema
    assert submit["required"] == ["item_id", "label"]
    assert submit["properties"]["label"]["maxLength"] == 200
    assert submit.get("additionalProperties") is False


def test_an_agent_labels_the_session(served: tuple[SyncClient, LabelingSession]) -> None:
    client, session = served
    first = result(client.call("label_next"))
    assert first["item_id"] == session.items[0].id and first["labels"] == LABELS
    assert sum(first["scores"].values()) == pytest.approx(1.0)
    assert first["suggestion"] == max(first["scores"], key=first["scores"].get)
    out = result(client.call("label_submit", {"item_id": first["item_id"], "label": "neutral"}))
    assert out["label"] == "neutral" and out["remaining"] == 5
    assert session.answers()[-1].agent == "agent"
    second = result(client.call("label_next"))
    assert second["item_id"] == session.items[1].id
    result(
        client.call(
            "label_submit",
            {"item_id": second["item_id"], "label": "accept", "weight": 2.0, "agent": "bot-1"},
        )
    )
    st = result(client.call("label_stats"))
    assert st["answered"] == 2 and st["remaining"] == 4
    assert st["agreement"] == pytest.approx(json.loads(json.dumps(session.stats()["agreement"])))
    ex = session.learner.recent_examples(5)
    assert [e.weight for e in ex] == [1.0, 2.0]


def test_bad_arguments_are_refused_with_the_fix(served: tuple[SyncClient, LabelingSession]) -> None:
    client, session = served
    item = session.items[0].id
    assert "unknown label" in error(
        client.call("label_submit", {"item_id": item, "label": "great"})
    )
    assert "unknown item id" in error(
        client.call("label_submit", {"item_id": "zz", "label": "skip"})
    )
    error(client.call("label_submit", {"item_id": item, "label": "skip", "weight": "2"}))
    error(client.call("label_submit", {"item_id": item, "label": "skip", "weight": -1.0}))
    error(client.call("label_submit", {"item_id": item, "label": "skip", "extra": 1}))
    error(client.call("label_submit", {"item_id": item, "label": "skip", "agent": "a b"}))
    assert session.answers() == []
