"""The MCP server: the learner's tools for AI agents, over stdio or streamable HTTP.

``workbench mcp --root DIR`` serves a new learner over stdio; ``serve_http(learner, ...)``
shares a running one over HTTP with a bearer token (the learner never imports this package:
the door takes the learner). The tools live in :mod:`workbench.mcp.tools` (what they take and
answer in :mod:`workbench.mcp._schemas`), the path guard in :mod:`workbench.mcp.paths`, the
order in which state-changing calls reach the learner in :mod:`workbench.mcp.ordering`.

Names are imported on first use: ``workbench mcp`` imports this package before it points
stdout away from the protocol, and torch must not load (and possibly print) before that.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from workbench.mcp.http import HttpServer, build_http_app, serve_http
    from workbench.mcp.ordering import Lane, lane_for
    from workbench.mcp.paths import (
        PathRefused,
        Root,
        resolve_for_read,
        resolve_for_write,
        resolve_inside,
    )
    from workbench.mcp.tools import (
        CONCURRENT_TOOLS,
        ORDERED_TOOLS,
        TOOL_NAMES,
        LearnerTools,
        ToolAnswer,
        build_server,
    )

__all__ = [
    "CONCURRENT_TOOLS",
    "ORDERED_TOOLS",
    "TOOL_NAMES",
    "HttpServer",
    "Lane",
    "LearnerTools",
    "PathRefused",
    "Root",
    "ToolAnswer",
    "build_http_app",
    "build_server",
    "lane_for",
    "resolve_for_read",
    "resolve_for_write",
    "resolve_inside",
    "serve_http",
]

_HOME = {
    "HttpServer": "http",
    "build_http_app": "http",
    "serve_http": "http",
    "Lane": "ordering",
    "lane_for": "ordering",
    "PathRefused": "paths",
    "Root": "paths",
    "resolve_for_read": "paths",
    "resolve_for_write": "paths",
    "resolve_inside": "paths",
    "CONCURRENT_TOOLS": "tools",
    "ORDERED_TOOLS": "tools",
    "TOOL_NAMES": "tools",
    "LearnerTools": "tools",
    "ToolAnswer": "tools",
    "build_server": "tools",
}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'workbench.mcp' has no attribute {name!r}")
    return getattr(importlib.import_module(f"workbench.mcp.{_HOME[name]}"), name)
