"""Start an offline fine-tune from Python (a notebook) or the CLI: torchrun in a new process.

The boundary: command lines, environment, the snapshot taken before the start, and a handle
on the running job (metrics streamed from rank 0's JSON lines, cancel, result). The kernel is
never forked: torchrun is exec'd as a child in its own session, so a live learner's CUDA
context and threads play no part. Cancel ends the whole tree (torchrun starts each worker in a
session of its own, so the tree is walked, not just the process group).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from workbench.formats.atomic import atomic_writer
from workbench.train import data as D
from workbench.train.config import TrainConfig, TrainError

__all__ = ["TrainJob", "launch", "prepare", "torchrun_command", "train_env"]

# torch 2.13 + gloo: a restarted worker group fails to connect ("Gloo connectFullMesh failed")
# when the rendezvous TCPStore is shared with the trainers (pytorch#135712); see the notes in
# shared/reference/distributed-training.md §2.3.
RESTART_ENV = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
CONFIG_FILE = "run.json"
SNAPSHOT_FILE = "snapshot.sqlite"


def train_env(nproc: int, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for torchrun: restart fix, unbuffered output, threads split by rank."""
    env = dict(os.environ if base is None else base)
    env.update(RESTART_ENV)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, nproc))))
    return env


def torchrun_command(
    worker_args: Sequence[str],
    nproc: int,
    *,
    nnodes: str | None = None,
    node_rank: int | None = None,
    rdzv_endpoint: str | None = None,
    rdzv_id: str | None = None,
    rdzv_backend: str = "c10d",
    max_restarts: int = 0,
    extra: Sequence[str] = (),
    python: str = sys.executable,
) -> list[str]:
    """``python -m torch.distributed.run ... -m workbench.train <worker_args>``.

    One machine: ``--standalone``. Several: ``nnodes`` ("2" or "1:4") with ``rdzv_endpoint``
    (host:port of one node, the same on every node) and ``rdzv_id``.

    >>> torchrun_command(["--config", "run.toml"], 2)[3:7]
    ['--standalone', '--nproc-per-node', '2', '--max-restarts']
    """
    if nproc < 1:
        raise TrainError(f"nproc must be >= 1, not {nproc}")
    cmd = [python, "-m", "torch.distributed.run"]
    multi = nnodes not in (None, "1") or rdzv_endpoint is not None
    if multi:
        if rdzv_endpoint is None:
            raise TrainError(
                "several machines need a rendezvous: give --rdzv-endpoint host:port "
                "(one node's address, the same on every node)"
            )
        cmd += ["--nnodes", str(nnodes or "1"), "--rdzv-backend", rdzv_backend]
        cmd += ["--rdzv-endpoint", rdzv_endpoint, "--rdzv-id", rdzv_id or "workbench-train"]
        if node_rank is not None:
            cmd += ["--node-rank", str(node_rank)]
    else:
        cmd.append("--standalone")
    cmd += ["--nproc-per-node", str(nproc), "--max-restarts", str(max_restarts), *extra]
    return [*cmd, "-m", "workbench.train", *worker_args]


def _is_live_store(path: Path) -> bool:
    if path.is_dir():
        return True
    try:
        with open(path, "rb") as f:
            if f.read(16) != b"SQLite format 3\x00":
                return False
    except OSError:
        return False
    import sqlite3
    from urllib.parse import quote

    db = sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro", uri=True)
    try:
        names = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
    finally:
        db.close()
    return "snapshot" not in names


def prepare(cfg: TrainConfig, cutoff: int | None = None) -> tuple[TrainConfig, Path]:
    """Snapshot a live store into the run folder and write the run's config file there.

    Returns the config the workers get (``data`` pointing at the snapshot) and its file.
    """
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(cfg.data)
    if _is_live_store(data):
        snap = D.snapshot_store(data, out / SNAPSHOT_FILE, cutoff)
        cfg = TrainConfig.from_dict({**cfg.to_dict(), "data": str(snap.path)})
    elif not data.is_file():
        raise TrainError(f"no data at {data}: give a session folder, a snapshot or a JSONL file")
    path = out / CONFIG_FILE
    with atomic_writer(path) as f:
        f.write(cfg.to_json().encode())
    return cfg, path


def _tree(root: int) -> list[int]:
    """``root`` and its descendants (Linux /proc), children after parents."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().decode(errors="replace")
        return state[state.rindex(")") + 2] != "Z"
    except (OSError, ValueError):
        return False


class TrainJob:
    """A running fine-tune: its metrics as they come, cancel, and the result.

    ``metrics`` holds rank 0's JSON events (``start``, ``step``, ``checkpoint``, ``done``), each
    with ``received`` (when the reader saw it) added; ``on_metric`` is called for each from the
    reader thread (its exceptions are kept in ``callback_errors``, never raised there).
    """

    def __init__(
        self,
        proc: subprocess.Popen[str],
        cfg: TrainConfig,
        on_metric: Callable[[dict[str, Any]], None] | None,
    ) -> None:
        self.proc = proc
        self.config = cfg
        self.out = Path(cfg.out)
        self.metrics: list[dict[str, Any]] = []
        self.log: deque[str] = deque(maxlen=200)  # the last lines that were not metrics
        self.callback_errors: list[BaseException] = []
        self._on_metric = on_metric
        self._lock = threading.Lock()
        self._cancelled = False
        self._reader = threading.Thread(
            target=self._read, name="workbench-train-reader", daemon=True
        )
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def metrics_since(self, cursor: int = 0) -> tuple[list[dict[str, Any]], int]:
        """Events after ``cursor`` and the cursor to pass next time (for live plots)."""
        with self._lock:
            return list(self.metrics[cursor:]), len(self.metrics)

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            event = _metric(line)
            if event is None:
                self.log.append(line.rstrip("\n"))
                continue
            event["received"] = time.time()
            with self._lock:
                self.metrics.append(event)
            if self._on_metric is not None:
                try:
                    self._on_metric(event)
                except Exception as e:  # a plotting callback must not stop the reader
                    self.callback_errors.append(e)

    def wait(self, timeout: float | None = None) -> Path:
        """Wait for the end; return the SafeTensors file, or raise TrainError with the cause."""
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TrainError(f"the run is still going after {timeout} s") from None
        self._reader.join(5)
        if self._cancelled:
            raise TrainError("the run was cancelled")
        done = [m for m in self.metrics if m.get("event") == "done"]
        if rc != 0 or not done:
            # A worker's TrainError (already worded as a fix) first, then the last output.
            said = [
                line[line.index("workbench train:") :]
                for line in self.log
                if "workbench train:" in line
            ]
            cause = f": {said[-1].removeprefix('workbench train: ')}" if said else ""
            tail = "\n".join(list(self.log)[-15:])
            raise TrainError(f"the run failed (exit code {rc}){cause}\nits last output:\n{tail}")
        return Path(done[-1]["output"])

    result = wait

    def cancel(self, timeout: float = 10.0) -> bool:
        """End torchrun and every worker: SIGTERM, then SIGKILL what is left half-way through
        ``timeout``. Returns whether no process of the tree is left."""
        self._cancelled = True
        deadline = time.monotonic() + timeout
        seen: set[int] = set()
        for sig, until in ((signal.SIGTERM, deadline - timeout / 2), (signal.SIGKILL, deadline)):
            pids = [p for p in _tree(self.proc.pid) if _alive(p)] if self.running else []
            pids += [p for p in seen if _alive(p) and p not in pids]
            seen.update(pids)
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            while time.monotonic() < until:
                self.proc.poll()  # reaps torchrun itself
                if not any(_alive(p) for p in seen if p != self.proc.pid) and not self.running:
                    return True
                time.sleep(0.05)
        self.proc.poll()
        return not any(_alive(p) for p in seen if p != self.proc.pid) and not self.running


def _metric(line: str) -> dict[str, Any] | None:
    start = line.find("{")
    if start < 0:
        return None
    try:
        obj = json.loads(line[start:])
    except ValueError:
        return None
    return obj if isinstance(obj, dict) and "event" in obj else None


def launch(
    config: TrainConfig | str | Path,
    nproc: int = 1,
    *,
    max_restarts: int = 0,
    cutoff: int | None = None,
    on_metric: Callable[[dict[str, Any]], None] | None = None,
    torchrun_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    **overrides: Any,
) -> TrainJob:
    """Start a fine-tune as a subprocess (torchrun on this machine) and return its handle.

    ``config``: a :class:`TrainConfig` or a TOML file (``overrides`` replace its keys). A live
    session store as ``data`` is snapshotted first (up to ``cutoff``). Metrics stream into
    ``job.metrics`` and ``on_metric``; ``job.wait()`` returns the SafeTensors path;
    ``job.cancel()`` ends the tree.
    """
    if isinstance(config, TrainConfig):
        cfg = TrainConfig.from_dict({**config.to_dict(), **overrides}) if overrides else config
    else:
        cfg = TrainConfig.from_toml(config, **overrides)
    cfg, path = prepare(cfg, cutoff)
    cmd = torchrun_command(
        ["--config-json", str(path)], nproc, max_restarts=max_restarts, extra=torchrun_args
    )
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        bufsize=1,
        start_new_session=True,
        env=train_env(nproc, env),
    )
    return TrainJob(proc, cfg, on_metric)


def cli_main(argv: Sequence[str]) -> int:
    """``workbench train --nproc N [multi-node flags] --config run.toml [flags]``.

    Validates the configuration, snapshots a live store into the run folder, then replaces this
    process with torchrun (``--dry-run`` prints the command instead).
    """
    import argparse
    import shlex

    from workbench.train.config import add_config_flags, config_from_args

    parser = argparse.ArgumentParser(
        prog="workbench train",
        description="Fine-tune offline on torch.distributed: torchrun starts --nproc ranks per "
        "machine (DDP, or FSDP2 with --strategy fsdp2) on a snapshot of a session's examples "
        "or a JSONL file, and rank 0 writes <out>/model.safetensors and manifest.json.",
    )
    parser.add_argument("--nproc", type=int, default=1, help="ranks on this machine")
    parser.add_argument("--nnodes", default=None, help="machines, e.g. 2 or 1:4 (elastic)")
    parser.add_argument("--node-rank", type=int, default=None)
    parser.add_argument("--rdzv-endpoint", default=None, help="host:port, the same on every node")
    parser.add_argument("--rdzv-id", default=None)
    parser.add_argument("--rdzv-backend", default="c10d")
    parser.add_argument(
        "--max-restarts",
        type=int,
        default=0,
        help="restart all ranks after a failure, from the last checkpoint, up to this many times",
    )
    parser.add_argument(
        "--cutoff", type=int, default=None, help="last example sequence number of the snapshot"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the torchrun command")
    add_config_flags(parser)
    args = parser.parse_args(list(argv))
    try:
        cfg = config_from_args(args)
        if args.dry_run:
            path = Path(cfg.out) / CONFIG_FILE
        else:
            cfg, path = prepare(cfg, args.cutoff)
        cmd = torchrun_command(
            ["--config-json", str(path)],
            args.nproc,
            nnodes=args.nnodes,
            node_rank=args.node_rank,
            rdzv_endpoint=args.rdzv_endpoint,
            rdzv_id=args.rdzv_id,
            rdzv_backend=args.rdzv_backend,
            max_restarts=args.max_restarts,
        )
    except TrainError as e:
        print(f"workbench train: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(shlex.join(cmd))
        return 0
    sys.stdout.flush()
    os.execvpe(cmd[0], cmd, train_env(args.nproc))
