"""``workbench mcp``: build a learner and serve it over stdio (default) or streamable HTTP.

The boundary: command-line concerns only: which learner to build, which transport to run,
and keeping stdout clean. Over stdio, stdout carries the protocol and nothing else: while the
learner is built (torch import, kernel build, weight loading with its progress bars) file
descriptor 1 points at stderr, and while serving the SDK's stdio transport diverts it the same
way, so stray prints, C-level writes and child processes land on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from workbench.learner import OnlineLearner

__all__ = ["SESSION_DIRNAME", "build_learner", "main", "parse_host_port"]

SESSION_DIRNAME = ".workbench-session"  # inside --root unless --session says otherwise


def _say(message: str) -> None:
    print(f"workbench mcp: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Point file descriptor 1 (and ``sys.stdout``) at stderr for the duration."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def parse_host_port(text: str) -> tuple[str, int]:
    """``"127.0.0.1:8765"`` → ``("127.0.0.1", 8765)``; IPv6 as ``"[::1]:8765"``.

    >>> parse_host_port("[::1]:0")
    ('::1', 0)
    """
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"--http expects HOST:PORT (e.g. 127.0.0.1:8765), got {text!r}")
    return host.removeprefix("[").removesuffix("]"), int(port_text)


def build_learner(
    root: Path, weights: str | Path | None = None, session_dir: str | Path | None = None
) -> OnlineLearner:
    """The default learner: tiny Llama, byte tokenizer, session in ``root/.workbench-session``.

    ``weights`` (the person's choice, not an agent's, so not confined to ``root``) is loaded
    after; weights of another architecture replace the model. A session folder that already
    holds examples and checkpoints resumes where it stopped.
    """
    from workbench.learner import LearningConfig, OnlineLearner
    from workbench.models import ModelConfig, Transformer
    from workbench.tokenizers import ByteTokenizer

    config = LearningConfig(session_dir=Path(session_dir or root / SESSION_DIRNAME))
    learner = OnlineLearner(Transformer(ModelConfig.preset("tiny-llama")), ByteTokenizer(), config)
    if weights is not None:
        try:
            learner.load_weights(Path(weights))
        except BaseException:
            learner.close(checkpoint=False)
            raise
    return learner


def _on_sigterm(learner: OnlineLearner, stdio: bool) -> None:
    """On SIGTERM, close the learner (a final checkpoint) before the process ends.

    Over HTTP the main thread only waits, so raising SystemExit unwinds it through the
    finally blocks. Over stdio a thread stays blocked reading stdin, which would hold the
    interpreter open until the client closes the pipe, so the handler closes the learner
    itself and ends the process at once.
    """

    def unwind(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    def close_and_exit(signum: int, _frame: Any) -> None:
        try:
            learner.close()
        finally:
            os._exit(128 + signum)

    signal.signal(signal.SIGTERM, close_and_exit if stdio else unwind)


def main(args: argparse.Namespace) -> int:
    """Run the server until the client disconnects (stdio) or the process is stopped (HTTP).

    ``args`` has ``root``, ``weights``, ``http`` and optionally ``session`` (session folder).
    """
    root = Path(args.root).expanduser()
    if not root.is_dir():
        _say(f"--root {args.root} is not a folder; create it first")
        return 2
    try:
        http = parse_host_port(args.http) if args.http else None
    except ValueError as e:
        _say(str(e))
        return 2
    from workbench.formats import WeightLoadError
    from workbench.learner import LearnerError

    try:
        with stdout_to_stderr():
            learner = build_learner(root, args.weights, getattr(args, "session", None))
    except (LearnerError, WeightLoadError, OSError) as e:
        _say(f"cannot start: {e}")
        return 1
    _on_sigterm(learner, stdio=http is None)
    try:
        if http is None:
            _serve_stdio(learner, root)
        else:
            _serve_http(learner, root, *http)
    except KeyboardInterrupt:
        pass
    except OSError as e:  # e.g. the HTTP port is taken
        _say(f"cannot serve: {e}")
        return 1
    finally:
        learner.close()
    return 0


def _serve_stdio(learner: OnlineLearner, root: Path) -> None:
    from workbench.mcp.tools import build_server

    server = build_server(learner, root)
    _say(f"serving over stdio; files inside {root.resolve()}")
    server.run("stdio")


def _serve_http(learner: OnlineLearner, root: Path, host: str, port: int) -> None:
    from workbench.mcp.http import TOKEN_ENV, is_loopback, serve_http

    handle = serve_http(learner, host=host, port=port, root=root)
    _say(f"serving streamable HTTP at {handle.url}; files inside {root.resolve()}")
    if os.environ.get(TOKEN_ENV):
        _say(f"bearer token: from ${TOKEN_ENV}")
    else:
        _say(f"bearer token: {handle.token}  (set ${TOKEN_ENV} to choose one)")
    if not is_loopback(host):
        _say(f"warning: {host} is reachable from other machines; the token is the only lock")
    try:
        while handle.running:
            handle.join(0.5)
    finally:
        handle.stop()
