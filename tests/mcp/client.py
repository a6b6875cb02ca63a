"""A blocking wrapper around the SDK's own client, so tests (and hypothesis) stay synchronous.

The SDK client is async; an anyio blocking portal runs it on a thread of its own, and each
async context manager is entered and left on that portal, in one task, as anyio requires.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import anyio
import httpx2
from anyio.from_thread import start_blocking_portal
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CallToolResult, TextContent, Tool

REPO = Path(__file__).resolve().parents[2]
TOKEN = "test-token-0123456789abcdef"  # fixed so the subprocess and the client agree


def initialize_request() -> dict[str, Any]:
    """The raw JSON-RPC ``initialize`` request a client sends first (for the raw-protocol tests)."""
    return {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "raw", "version": "0"},
        },
    }


class SyncClient:
    """One MCP client session over some transport; ``call`` blocks until the answer."""

    def __init__(self, transport: AbstractAsyncContextManager[Any], *extra: Any) -> None:
        self._stack = contextlib.ExitStack()
        try:
            self._portal = self._stack.enter_context(start_blocking_portal())
            for cm in extra:  # e.g. the HTTP client the transport uses
                self._stack.enter_context(self._portal.wrap_async_context_manager(cm))
            streams = self._stack.enter_context(self._portal.wrap_async_context_manager(transport))
            self.session: ClientSession = self._stack.enter_context(
                self._portal.wrap_async_context_manager(
                    ClientSession(streams[0], streams[1], read_timeout_seconds=120)
                )
            )
            self._portal.call(self.session.initialize)
        except BaseException:
            self._stack.close()
            raise

    @classmethod
    def stdio(cls, root: Path, *args: str) -> SyncClient:
        params = StdioServerParameters(
            command=sys.executable,
            args=["-m", "workbench.cli", "mcp", "--root", str(root), *args],
            cwd=str(REPO),
            env={"PYTHONUNBUFFERED": "1"},
        )
        return cls(stdio_client(params))

    @classmethod
    def http(cls, url: str, token: str = TOKEN) -> SyncClient:
        client = httpx2.AsyncClient(
            headers={"Authorization": f"Bearer {token}"},
            # pool=None: many calls sent at once wait their turn for a connection, however long.
            timeout=httpx2.Timeout(30, read=300, pool=None),
        )
        return cls(streamable_http_client(url, http_client=client), client)

    def close(self) -> None:
        self._stack.close()

    # ------------------------------------------------------------------ calls
    def list_tools(self) -> list[Tool]:
        return list(self._portal.call(self.session.list_tools).tools)

    def call(self, name: str, arguments: dict[str, Any] | None = None) -> CallToolResult:
        async def go() -> CallToolResult:
            return await self.session.call_tool(name, arguments or {})

        return self._portal.call(go)

    def call_many(
        self, calls: Sequence[tuple[str, dict[str, Any]]], timeout: float = 600
    ) -> list[CallToolResult]:
        """Send every call at once, in the given order, without awaiting one before the next.

        Each call is a task of its own, started in order (the way an agent fires calls off
        together); the answers come back in the calls' order, whenever each arrives. The last
        of many ordered calls waits for all before it, hence the long ``timeout`` (seconds).
        """

        async def go() -> list[CallToolResult]:
            answers: list[CallToolResult | None] = [None] * len(calls)

            async def one(i: int, name: str, arguments: dict[str, Any]) -> None:
                answers[i] = await self.session.call_tool(
                    name, arguments, read_timeout_seconds=timeout
                )

            async with anyio.create_task_group() as tg:
                for i, (name, arguments) in enumerate(calls):
                    tg.start_soon(one, i, name, arguments)
            assert all(a is not None for a in answers)
            return [a for a in answers if a is not None]

        return self._portal.call(go)

    def call_in_arrival_order(
        self,
        calls: Sequence[tuple[str, dict[str, Any]]],
        arrived: Callable[[], int],
        then: Callable[[], None] = lambda: None,
        timeout: float = 600,
    ) -> list[CallToolResult]:
        """Send the calls in order, each once the server has the one before; answers in order.

        Over HTTP each call is a POST of its own, so calls sent at once (``call_many``) may
        reach the server in another order, and the server promises only the order they arrive
        in (``workbench.mcp.ordering``). Here call ``k + 1`` is sent once call ``k`` has
        arrived: ``arrived()`` (how many calls the server has taken so far, e.g. a lane's
        ``submitted``) has grown, or ``k`` was answered (a call that never takes a place in
        that count: a concurrent tool, an invalid call). No answer is awaited before the next
        call is sent, so the calls are in flight together, in a known arrival order.
        ``then()`` runs once all are sent (e.g. to let a held call finish).
        """

        async def go() -> list[CallToolResult]:
            answers: list[CallToolResult | None] = [None] * len(calls)

            async def one(i: int, name: str, arguments: dict[str, Any], done: anyio.Event) -> None:
                try:
                    answers[i] = await self.session.call_tool(
                        name, arguments, read_timeout_seconds=timeout
                    )
                finally:
                    done.set()

            async with anyio.create_task_group() as tg:
                for i, (name, arguments) in enumerate(calls):
                    before, done = arrived(), anyio.Event()
                    tg.start_soon(one, i, name, arguments, done)
                    with anyio.move_on_after(60) as waited:
                        while arrived() == before and not done.is_set():
                            await anyio.sleep(0.001)
                    assert not waited.cancelled_caught, (
                        f"call {i} ({name}) never arrived (more calls waiting than connections?)"
                    )
                then()
            assert all(a is not None for a in answers)
            return [a for a in answers if a is not None]

        return self._portal.call(go)

    def ok(self, name: str, arguments: dict[str, Any] | None = None) -> dict[str, Any]:
        """Call, require success, check text == structured JSON; return the structured answer."""
        result = self.call(name, arguments)
        assert not result.is_error, f"{name} failed: {text_of(result)}"
        data = result.structured_content
        assert isinstance(data, dict) and data["success"] is True
        assert json.loads(text_of(result)) == data, "the text is not the structured JSON"
        return data

    def error(self, name: str, arguments: dict[str, Any] | None = None) -> str:
        """Call, require a tool error; return its message."""
        result = self.call(name, arguments)
        assert result.is_error, f"{name}({arguments!r}) succeeded: {text_of(result)[:300]}"
        return text_of(result)

    def stats(self) -> dict[str, Any]:
        stats = self.ok("get_learning_stats")["stats"]
        assert isinstance(stats, dict)
        return stats

    def wait_for(self, key: str, at_least: int, timeout: float = 60.0) -> dict[str, Any]:
        """Poll the stats until ``stats[key] >= at_least`` (background training)."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.stats()
            if stats[key] >= at_least or time.monotonic() > deadline:
                return stats
            time.sleep(0.05)


def text_of(result: CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, TextContent))


class HttpProcess:
    """``workbench mcp --http 127.0.0.1:0`` in a subprocess; ``.url`` once it listens."""

    def __init__(self, root: Path, *args: str, log: Path) -> None:
        self.log = log
        # A file, not a pipe: nobody drains a pipe, and a full one would block the server.
        self._log_file = open(log, "w")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, "WORKBENCH_MCP_TOKEN": TOKEN, "PYTHONUNBUFFERED": "1"}
        cmd = [sys.executable, "-m", "workbench.cli", "mcp", "--root", str(root)]
        self.proc = subprocess.Popen(
            [*cmd, "--http", "127.0.0.1:0", *args],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._log_file,
        )
        self.url = self._wait_for_url(timeout=120)

    def _wait_for_url(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        marker = "serving streamable HTTP at "
        while time.monotonic() < deadline:
            text = self.log.read_text()
            for line in text.splitlines():
                if marker in line:
                    return line.split(marker, 1)[1].split(";", 1)[0]
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the HTTP server did not start:\n{self.log.read_text()}")

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()
        return self.proc.returncode


def write_tiny_weights(path: Path, chat_template: str | None = None) -> Path:
    """A tiny-llama with its byte tokenizer, as SafeTensors (written in the test, no download).

    ``chat_template`` travels with the tokenizer, so a learner that loads the file can chat.
    """
    from workbench.formats import save_weights
    from workbench.models import ModelConfig, Transformer
    from workbench.tokenizers import ByteTokenizer

    model = Transformer(ModelConfig.preset("tiny-llama"), seed=1)
    tokenizer = ByteTokenizer(chat_template=chat_template)
    return save_weights(model, path, "safetensors", tokenizer=tokenizer)


def stdout_lines(data: bytes) -> Sequence[dict[str, Any]]:
    """Every stdout line of a stdio server must be one JSON-RPC message."""
    messages = []
    for line in data.decode().splitlines():
        msg = json.loads(line)
        assert msg.get("jsonrpc") == "2.0", line
        messages.append(msg)
    return messages
