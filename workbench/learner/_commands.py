"""The commands the learner's facade sends its worker: one small frozen dataclass each.

Every change to training state travels as one of these on the worker's queue, so the worker
applies them in the order callers sent them and nothing else writes that state.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from workbench.learner.config import LearningConfig
from workbench.store import ExampleRecord

__all__ = [
    "AddExample",
    "AdoptOffline",
    "Checkpoint",
    "Command",
    "Configure",
    "ForceUpdate",
    "IsIdle",
    "LoadWeights",
    "RemoveExample",
    "ResetToBase",
    "SaveWeights",
    "SetEnabled",
    "SetLearningRate",
    "Stop",
    "UndoUpdate",
]


@dataclass(frozen=True)
class AddExample:
    record: ExampleRecord  # already committed to the store


@dataclass(frozen=True)
class RemoveExample:
    example_id: str  # already marked removed in the store; drop it from the buffers


@dataclass(frozen=True)
class SetEnabled:
    enabled: bool  # True also clears a failed state


@dataclass(frozen=True)
class Configure:
    config: LearningConfig  # validated by the caller


@dataclass(frozen=True)
class SetLearningRate:
    learning_rate: float  # validated by the caller


@dataclass(frozen=True)
class ForceUpdate:
    pass


@dataclass(frozen=True)
class LoadWeights:
    path: Path
    format: str | None
    dtype: str | None = None  # of the training copy; None: float32


@dataclass(frozen=True)
class AdoptOffline:
    path: Path  # an offline run's SafeTensors export, checked against its manifest
    cutoff: int  # the run's last example: the examples after it are replayed
    start_seq: int  # the newest example the run's start weights had learned


@dataclass(frozen=True)
class SaveWeights:
    path: Path
    format: str
    dtype: str | None
    weights_only: bool = False  # leave the edit memory out (no weight file holds it)


@dataclass(frozen=True)
class Checkpoint:
    pass


@dataclass(frozen=True)
class UndoUpdate:
    """Restore the weights and optimizer state from before the newest update."""


@dataclass(frozen=True)
class ResetToBase:
    """Return to the weights as loaded, with a fresh optimizer."""


@dataclass(frozen=True)
class IsIdle:
    """A query: true when nothing is queued behind it and no update is due."""


@dataclass(frozen=True)
class Stop:
    checkpoint: bool  # write a final checkpoint when there are unsaved updates


Command = (
    AddExample
    | RemoveExample
    | SetEnabled
    | Configure
    | SetLearningRate
    | ForceUpdate
    | LoadWeights
    | AdoptOffline
    | SaveWeights
    | Checkpoint
    | UndoUpdate
    | ResetToBase
    | IsIdle
    | Stop
)
