"""The HTTP door: streamable HTTP with a bearer token, a body-size limit, on a background thread.

The boundary: this module wraps the SDK's streamable-HTTP app in a bearer-token check and runs
it with uvicorn on a thread of its own, so a notebook keeps its kernel while an agent calls the
same learner (``serve_http(learner, ...)`` is that door). The tools themselves are in
:mod:`workbench.mcp.tools`.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
import secrets
import socket
import threading
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import uvicorn
    from starlette.types import ASGIApp, Receive, Scope, Send

    from workbench.learner import Learner

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "MCP_PATH",
    "TOKEN_ENV",
    "BearerAuth",
    "HttpServer",
    "build_http_app",
    "serve_http",
]

# Two 100,000-character fields written as \uXXXX escapes take 1.2 MB; anything much bigger is
# no valid tool call, so it is refused (413) before it is parsed.
DEFAULT_MAX_BODY_BYTES = 2 * 1024 * 1024
MCP_PATH = "/mcp"
TOKEN_ENV = "WORKBENCH_MCP_TOKEN"  # a fixed token for client configurations (else a fresh one)
MIN_TOKEN_CHARS = 16


class BearerAuth:
    """ASGI middleware: every HTTP request must carry ``Authorization: Bearer <token>``.

    The comparison takes constant time. Lifespan events pass through untouched.
    """

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            given = b""
            for name, value in scope.get("headers", []):
                if name.lower() == b"authorization":
                    given = value
                    break
            if not hmac.compare_digest(given, self._expected):
                await _refuse(send, scope["type"])
                return
        await self.app(scope, receive, send)


async def _refuse(send: Send, kind: str) -> None:
    if kind == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    body = json.dumps(
        {"error": "unauthorized", "message": "send the header Authorization: Bearer <token>"}
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"www-authenticate", b'Bearer realm="workbench-mcp"'),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def build_http_app(
    learner: Learner,
    *,
    token: str,
    root: str | Path | None = None,
    host: str = "127.0.0.1",
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> ASGIApp:
    """The ASGI app: the learner's MCP server on ``/mcp`` behind the bearer token.

    On a loopback ``host`` the SDK also checks the Host and Origin headers (DNS rebinding).
    """
    from workbench.mcp.tools import build_server

    if not isinstance(token, str) or len(token) < MIN_TOKEN_CHARS:
        raise ValueError(
            f"the bearer token must be a string of at least {MIN_TOKEN_CHARS} characters"
        )
    if (
        isinstance(max_body_bytes, bool)
        or not isinstance(max_body_bytes, int)
        or max_body_bytes <= 0
    ):
        raise ValueError(f"max_body_bytes must be a positive integer, got {max_body_bytes!r}")
    server = build_server(learner, root)
    app = server.streamable_http_app(
        streamable_http_path=MCP_PATH, max_request_body_size=max_body_bytes, host=host
    )
    return BearerAuth(app, token)


@dataclass
class HttpServer(AbstractContextManager["HttpServer"]):
    """A running HTTP MCP server: where it listens, its token, and how to stop it."""

    url: str  # e.g. http://127.0.0.1:53117/mcp
    token: str  # send as ``Authorization: Bearer <token>``
    host: str
    port: int
    _server: uvicorn.Server = field(repr=False)
    _thread: threading.Thread = field(repr=False)

    @property
    def headers(self) -> dict[str, str]:
        """The headers a client sends (for an MCP client's configuration)."""
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving (the learner keeps running: it belongs to whoever created it)."""
        self._server.should_exit = True
        self._thread.join(timeout)

    def join(self, timeout: float | None = None) -> None:
        """Block until the server stops."""
        self._thread.join(timeout)

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:  # the token stays out of logs and notebook outputs
        state = "running" if self.running else "stopped"
        return f"HttpServer(url={self.url!r}, {state})"


def serve_http(
    learner: Learner,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    root: str | Path | None = None,
    token: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    start_timeout: float = 30.0,
) -> HttpServer:
    """Serve ``learner`` over streamable HTTP on a background thread; return at once.

    Parameters
    ----------
    learner
        The learner to share; an agent's examples reach the same learner a notebook watches.
    host, port
        Where to listen; ``port=0`` picks a free port (see ``.url``). Keep the loopback
        default unless the network is trusted: the token is the only lock.
    root
        The folder the file tools may read and write inside; None (default) turns
        ``load_weights`` and ``save_weights`` off.
    token
        The bearer token; default: ``$WORKBENCH_MCP_TOKEN`` if set, else a fresh random one.
    max_body_bytes
        Larger request bodies are refused with 413 before they are parsed.

    Returns
    -------
    HttpServer
        ``.url``, ``.token``, ``.headers``, ``.stop()``.
    """
    import uvicorn

    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an integer in [0, 65535], got {port!r}")
    token = token or os.environ.get(TOKEN_ENV) or secrets.token_urlsafe(32)
    app = build_http_app(learner, token=token, root=root, host=host, max_body_bytes=max_body_bytes)
    sock = _bind(host, port)
    bound_port = int(sock.getsockname()[1])
    config = uvicorn.Config(
        app,
        log_config=None,  # leave the host process's logging (a notebook's) as it is
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=3,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="workbench-mcp-http", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError(f"the MCP HTTP server did not start on {host}:{bound_port}")
        time.sleep(0.01)
    url_host = f"[{host}]" if ":" in host else host
    return HttpServer(
        url=f"http://{url_host}:{bound_port}{MCP_PATH}",
        token=token,
        host=host,
        port=bound_port,
        _server=server,
        _thread=thread,
    )


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``: only this machine can connect."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
