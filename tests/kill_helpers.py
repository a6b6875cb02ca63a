"""Crash tests' one move: start a child Python, let it reach the moment under test, SIGKILL it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parents[1]


def kill_child(
    script: str, args: Sequence[str], ready: Callable[[IO[str]], None], pause: float
) -> str:
    """Run ``python -c script *args`` from the repository root, let ``ready`` read its stdout
    until it is where the test wants it (``ready`` asserts), wait ``pause`` s, kill it with
    SIGKILL; return the rest of what it printed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", script, *args], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    assert proc.stdout is not None
    ready(proc.stdout)
    time.sleep(pause)
    os.kill(proc.pid, signal.SIGKILL)
    out, _ = proc.communicate()
    return out
