"""The HTTP door in-process: ``serve_http(learner)``, its token, its limits, raw JSON on the wire."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.learner.helpers import make_learner
from tests.mcp.client import SyncClient, initialize_request
from workbench.learner import OnlineLearner, TrainingExample
from workbench.mcp import HttpServer, serve_http


@pytest.fixture(scope="module")
def learner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OnlineLearner]:
    with make_learner(tmp_path_factory.mktemp("session")) as learner:
        yield learner


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("root")


@pytest.fixture(scope="module")
def handle(learner: OnlineLearner, root: Path) -> Iterator[HttpServer]:
    with serve_http(learner, port=0, root=root) as handle:
        yield handle


@pytest.fixture(scope="module")
def client(handle: HttpServer) -> Iterator[SyncClient]:
    client = SyncClient.http(handle.url, handle.token)
    yield client
    client.close()


def test_serves_on_loopback_with_a_fresh_token(handle: HttpServer) -> None:
    assert handle.url.startswith("http://127.0.0.1:") and handle.url.endswith("/mcp")
    assert len(handle.token) >= 32
    assert handle.token not in repr(handle)  # notebooks print reprs; tokens stay out


def test_one_learner_two_doors(learner: OnlineLearner, client: SyncClient) -> None:
    n = learner.get_stats()["total_examples"]
    client.ok("add_training_example", {"input": "from the agent", "target": " hello"})
    assert learner.get_stats()["total_examples"] == n + 1
    learner.add_example(TrainingExample("from the notebook", " hi"))
    assert client.stats()["total_examples"] == n + 2


def test_file_tools_stay_inside_the_given_root(client: SyncClient, root: Path) -> None:
    assert client.ok("save_weights", {"file_path": "w.safetensors", "format": "safetensors"})
    assert (root / "w.safetensors").is_file()
    assert "outside" in client.error("save_weights", {"file_path": "../w.mwb"})


def test_file_tools_are_off_without_a_root(learner: OnlineLearner) -> None:
    with serve_http(learner) as handle:
        client = SyncClient.http(handle.url, handle.token)
        try:
            assert "file tools are off" in client.error("load_weights", {"file_path": "x"})
            assert "file tools are off" in client.error("save_weights", {"file_path": "x"})
            client.ok("get_learning_stats")
        finally:
            client.close()
    assert not handle.running


@pytest.mark.parametrize("auth", [None, "Bearer wrong-token-0123456789", "Basic abc", "Bearer"])
def test_requests_without_the_token_are_refused(handle: HttpServer, auth: str | None) -> None:
    headers = {"Authorization": auth} if auth else {}
    r = httpx2.post(handle.url, json=initialize_request(), headers={**_ACCEPT, **headers})
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")


def test_oversized_bodies_are_refused(handle: HttpServer) -> None:
    body = json.dumps({**initialize_request(), "padding": "x" * (3 * 1024 * 1024)})
    r = httpx2.post(
        handle.url, content=body, headers={**_ACCEPT, **handle.headers, **_JSON}, timeout=30
    )
    assert r.status_code == 413


def test_foreign_host_headers_are_refused(handle: HttpServer) -> None:
    # A page on another site that resolves its name to 127.0.0.1 (DNS rebinding).
    headers = {**_ACCEPT, **handle.headers, "Host": "evil.example"}
    r = httpx2.post(handle.url, json=initialize_request(), headers=headers)
    assert r.status_code in (400, 421)


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_numbers_on_the_wire_are_tool_errors(
    handle: HttpServer, learner: OnlineLearner, number: str
) -> None:
    n = learner.get_stats()["total_examples"]
    with _RawSession(handle) as raw:
        args = '{"input": "a", "weight": ' + number + "}"
        answer = raw.call_raw("add_training_example", args)
        assert answer["result"]["isError"] is True, answer
        lr = raw.call_raw("set_learning_rate", '{"learning_rate": ' + number + "}")
        assert lr["result"]["isError"] is True, lr
        ok = raw.call_raw("get_learning_stats", "{}")
        assert ok["result"]["isError"] is False
    assert learner.get_stats()["total_examples"] == n


def test_stop_frees_the_port(learner: OnlineLearner) -> None:
    handle = serve_http(learner)
    handle.stop()
    assert not handle.running
    with pytest.raises(httpx2.TransportError):
        httpx2.post(handle.url, json=initialize_request(), headers=handle.headers, timeout=2)


def test_weak_tokens_are_refused(learner: OnlineLearner) -> None:
    with pytest.raises(ValueError, match="token"):
        serve_http(learner, token="short")


# ---------------------------------------------------------------------- raw protocol
_ACCEPT = {"Accept": "application/json, text/event-stream"}
_JSON = {"Content-Type": "application/json"}


class _RawSession:
    """Hand-written JSON-RPC over HTTP, to send what no SDK client would (a NaN literal)."""

    def __init__(self, handle: HttpServer) -> None:
        self.handle = handle
        self.http = httpx2.Client(headers={**_ACCEPT, **_JSON, **handle.headers}, timeout=30)
        self.next_id = 10

    def __enter__(self) -> _RawSession:
        r = self.http.post(self.handle.url, content=json.dumps(initialize_request()))
        assert r.status_code == 200, r.text
        self.http.headers["mcp-session-id"] = r.headers["mcp-session-id"]
        self.http.headers["mcp-protocol-version"] = "2025-06-18"
        note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        assert self.http.post(self.handle.url, content=json.dumps(note)).status_code == 202
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.delete(self.handle.url)
        self.http.close()

    def call_raw(self, tool: str, arguments_json: str) -> dict[str, Any]:
        self.next_id += 1
        envelope = {
            "jsonrpc": "2.0",
            "id": self.next_id,
            "method": "tools/call",
            "params": {"name": tool, "arguments": "ARGS"},
        }
        body = json.dumps(envelope).replace('"ARGS"', arguments_json)  # raw, NaN and all
        r = self.http.post(self.handle.url, content=body)
        assert r.status_code == 200, r.text
        return _last_message(r)


def _last_message(r: httpx2.Response) -> dict[str, Any]:
    if r.headers["content-type"].startswith("application/json"):
        return dict(r.json())
    data = [line[5:].strip() for line in r.text.splitlines() if line.startswith("data:")]
    return dict(json.loads([d for d in data if d][-1]))
