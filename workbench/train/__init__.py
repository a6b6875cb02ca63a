"""Offline fine-tunes on torch.distributed: DDP or FSDP2, DCP checkpoints, launched by torchrun.

The live learner stays single-process; a run here trains on an immutable snapshot of a session's
example log (or a JSONL file) and hands back SafeTensors plus a manifest. It shares models,
losses and optim with the learner and never imports the learner.
"""

from __future__ import annotations

from workbench.train.config import TrainConfig, TrainError
from workbench.train.data import Snapshot, read_examples, snapshot_store
from workbench.train.launch import TrainJob, launch, torchrun_command
from workbench.train.worker import RunResult, run

__all__ = [
    "RunResult",
    "Snapshot",
    "TrainConfig",
    "TrainError",
    "TrainJob",
    "launch",
    "read_examples",
    "run",
    "snapshot_store",
    "torchrun_command",
]
