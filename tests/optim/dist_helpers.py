"""Two-process gloo harness for the distributed tests (also used by tests/train).

Workers are started with the ``spawn`` method (a fresh interpreter: the fused kernels use
OpenMP, which is not fork-safe) and pass results back as ``.npz`` files, never as torch tensors
through a queue (their shared-memory handles break once the child exits).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(fn: Callable[..., None], nprocs: int, *args: Any) -> None:
    """Run ``fn(rank, nprocs, port, *args)`` in ``nprocs`` fresh processes; raise on failure."""
    mp.start_processes(
        fn, args=(nprocs, free_port(), *args), nprocs=nprocs, start_method="spawn", join=True
    )


def init(rank: int, world_size: int, port: int) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
    )


def save(path: Path, **arrays: Any) -> None:
    np.savez(path, **{k: np.asarray(v) for k, v in arrays.items()})


def load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}
