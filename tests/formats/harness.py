"""Run untrusted weight files through a loader in a worker subprocess with limits.

Each file must either load or raise ``WeightLoadError`` within a time limit and under a memory
limit. A long-lived worker keeps the cost per file at milliseconds (a fresh interpreter per file
would spend a second importing torch); a file that hangs or crashes the worker gets the worker
killed and restarted, and is reported as such.
"""

from __future__ import annotations

import json
import os
import random
import re
import select
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

CLEAN = ("ok", "WeightLoadError")

_WORKER = r"""
import importlib, json, resource, sys, traceback
spec, mem_mb = sys.argv[1], int(sys.argv[2])
mod_name, func_name = spec.split(":")
loader = getattr(importlib.import_module(mod_name), func_name)
from workbench.formats._common import WeightLoadError
import torch
torch.set_num_threads(1)
# Cap the address space at what the imports already use plus the budget: an allocation past it
# fails inside the loader instead of taking the machine's memory.
with open("/proc/self/status") as f:
    vm = next(int(line.split()[1]) for line in f if line.startswith("VmSize:")) * 1024
limit = vm + mem_mb * 1024 * 1024
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
out = sys.stdout
out.write("ready\n"); out.flush()
for line in sys.stdin:
    path = json.loads(line)
    try:
        result = loader(path)
        del result
        status, message = "ok", ""
    except WeightLoadError as e:
        status, message = "WeightLoadError", str(e)
    except MemoryError as e:
        status, message = "memory", f"MemoryError: {e}"
    except BaseException as e:
        text = f"{type(e).__name__}: {e}"
        status = "memory" if "can't allocate memory" in text or "out of memory" in text else "error"
        message = text + "\n" + traceback.format_exc(limit=4)
    out.write(json.dumps({"status": status, "message": message[:2000]}) + "\n"); out.flush()
"""


@dataclass
class Outcome:
    path: Path
    status: str  # ok | WeightLoadError | error | timeout | memory | crash
    message: str
    seconds: float


class _Worker:
    def __init__(self, loader: str, mem_mb: int) -> None:
        root = Path(__file__).resolve().parents[2]
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(root))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER, loader, str(mem_mb)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
            cwd=root,
        )
        line = self._readline(120.0)
        if line != "ready":
            self.kill()
            raise RuntimeError(f"harness worker for {loader} failed to start: {line!r}")

    def _readline(self, timeout: float) -> str | None:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            return None
        line = self.proc.stdout.readline()
        return line.strip() if line else ""

    def run(self, path: Path, timeout: float) -> tuple[str, str]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(str(path)) + "\n")
        self.proc.stdin.flush()
        line = self._readline(timeout)
        if line is None:
            return "timeout", f"no answer within {timeout} s"
        if line == "":
            return "crash", f"worker died (exit code {self.proc.poll()})"
        data = json.loads(line)
        return data["status"], data["message"]

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()


def check_files(
    paths: Sequence[Path],
    *,
    loader: str = "workbench.formats:load_weights",
    timeout: float = 5.0,
    mem_mb: int = 512,
) -> list[Outcome]:
    """Load each path in a worker subprocess; report how each load ended."""
    outcomes: list[Outcome] = []
    worker = _Worker(loader, mem_mb)
    try:
        for path in paths:
            start = time.perf_counter()
            status, message = worker.run(Path(path), timeout)
            outcomes.append(Outcome(Path(path), status, message, time.perf_counter() - start))
            if status in ("timeout", "crash"):
                worker.kill()
                worker = _Worker(loader, mem_mb)
    finally:
        worker.kill()
    return outcomes


def assert_clean(outcomes: Sequence[Outcome]) -> None:
    """Fail listing every load that was neither a success nor a ``WeightLoadError``."""
    bad = [o for o in outcomes if o.status not in CLEAN]
    if bad:
        lines = [
            f"{o.path.name}: {o.status} after {o.seconds:.2f}s: {o.message[:300]}" for o in bad[:20]
        ]
        raise AssertionError(
            f"{len(bad)} of {len(outcomes)} loads were not clean:\n" + "\n".join(lines)
        )


def assert_refused(outcomes: Sequence[Outcome], patterns: Sequence[str]) -> None:
    """Fail listing every load that did not raise a ``WeightLoadError`` matching its pattern."""
    wrong = [
        f"{o.path.stem}: {o.status}: {o.message[:300]}"
        for o, pattern in zip(outcomes, patterns, strict=True)
        if o.status != "WeightLoadError" or not re.search(pattern, o.message)
    ]
    assert not wrong, "\n".join(wrong)


_HUGE = (2**64 - 1, 2**63 - 1, 2**63, 2**32, 2**32 - 1, 2**31, 2**40 + 7, 10**15)


def mutate(data: bytes, n: int, seed: int) -> list[bytes]:
    """``n`` corrupted copies of ``data``: bit flips, byte sets, truncation, chunk insertion,
    duplication and deletion, and huge little-endian integers written over the bytes."""
    rnd = random.Random(seed)
    out: list[bytes] = []
    for _ in range(n):
        buf = bytearray(data)
        for _ in range(rnd.randint(1, 3)):
            op = rnd.randrange(8)
            size = len(buf)
            if size == 0:
                buf = bytearray(rnd.randbytes(rnd.randint(1, 64)))
                continue
            pos = rnd.randrange(size)
            if op == 0:
                for _ in range(rnd.randint(1, 8)):
                    i = rnd.randrange(size)
                    buf[i] ^= 1 << rnd.randrange(8)
            elif op == 1:
                buf[pos] = rnd.choice((0x00, 0xFF, 0x7F, 0x80, rnd.randrange(256)))
            elif op == 2:
                del buf[rnd.randrange(size) :]
            elif op == 3:
                buf[pos:pos] = rnd.randbytes(rnd.randint(1, 64))
            elif op == 4:
                end = min(size, pos + rnd.randint(1, 256))
                buf[pos:pos] = buf[pos:end]
            elif op == 5:
                del buf[pos : pos + rnd.randint(1, 64)]
            else:
                width = 8 if op == 6 else 4
                at = pos - pos % width if rnd.random() < 0.7 else pos
                value = rnd.choice(_HUGE) % (1 << (8 * width))
                buf[at : at + width] = value.to_bytes(width, "little")
        out.append(bytes(buf))
    return out


def write_mutants(base: bytes, folder: Path, n: int, seed: int, suffix: str = ".bin") -> list[Path]:
    """Write ``mutate(base, n, seed)`` into ``folder`` and return the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, blob in enumerate(mutate(base, n, seed)):
        p = folder / f"mutant-{i:05d}{suffix}"
        p.write_bytes(blob)
        paths.append(p)
    return paths
