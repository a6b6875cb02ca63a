"""The offline fine-tune's configuration: one dataclass, read from TOML and/or command-line flags.

The boundary: parsing and validation only; every bad value raises :class:`TrainError` with a
message that says what to change. Nothing here touches torch.distributed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

__all__ = ["Strategy", "TrainConfig", "TrainError", "add_config_flags", "config_from_args"]

Strategy = Literal["auto", "ddp", "fsdp2"]
OptimizerName = Literal["adamw", "sgd"]


class TrainError(ValueError):
    """The offline fine-tune cannot start or go on; the message says how to fix it."""


@dataclass(frozen=True)
class TrainConfig:
    """What to train, on what, for how long, and where the results go."""

    model: str  # a weights file (any format load_model reads) or "preset:<name>" (random init)
    data: str  # a snapshot of a session's store (snapshot_store) or a JSONL of examples
    out: str  # the run folder: checkpoints/, metrics.jsonl, model.safetensors, manifest.json
    steps: int = 100  # optimizer steps in total (a resumed run continues up to this)
    global_batch: int = 8  # examples per optimizer step, over all ranks together
    max_len: int = 256  # tokens per example (the input is cut from the left)
    lr: float = 1e-4
    warmup_steps: int = 0  # linear warm-up from 0 to lr
    optimizer: OptimizerName = "adamw"
    weight_decay: float = 0.0  # on matrices only, as the live learner does
    momentum: float = 0.9  # sgd only
    max_grad_norm: float | None = 1.0  # global norm over all ranks; None: no clipping
    implementation: Literal["fused", "reference"] = "fused"
    strategy: Strategy = "auto"  # auto: DDP unless the model and AdamW state exceed the device
    seed: int = 0  # data order (and the weights of a preset model)
    checkpoint_every: int = 50  # steps between DCP checkpoints (0: only at the end)
    keep_checkpoints: int = 2  # the newest ones kept in <out>/checkpoints; older ones are removed
    resume: bool = True  # continue from the run folder's last checkpoint if there is one
    export_dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    extra: dict[str, Any] = field(default_factory=dict)  # kept in the manifest, not interpreted

    def __post_init__(self) -> None:
        for name in ("steps", "global_batch", "max_len", "keep_checkpoints"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise TrainError(f"{name} must be a positive integer, not {value!r}")
        for name in ("warmup_steps", "checkpoint_every", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise TrainError(f"{name} must be an integer >= 0, not {value!r}")
        for name in ("lr", "weight_decay", "momentum"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise TrainError(f"{name} must be a finite number >= 0, not {value!r}")
        mgn = self.max_grad_norm
        if mgn is not None and (not isinstance(mgn, int | float) or not mgn > 0):
            raise TrainError(f"max_grad_norm must be > 0 (or left out for none), not {mgn!r}")
        choices = {
            "strategy": get_args(Strategy),
            "optimizer": get_args(OptimizerName),
            "implementation": ("fused", "reference"),
            "export_dtype": ("float32", "float16", "bfloat16"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise TrainError(
                    f"{name} must be one of {', '.join(allowed)}, not {getattr(self, name)!r}"
                )
        for name in ("model", "data", "out"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise TrainError(f"{name} is required: give it in the TOML file or as --{name}")

    # ----------------------------------------------------------------- round trips
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "the configuration") -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise TrainError(
                f"unknown key(s) {', '.join(map(repr, unknown))} in {source}; "
                f"known keys: {', '.join(sorted(known))}"
            )
        try:
            return cls(**values)
        except TypeError as e:  # a required key is missing
            raise TrainError(f"{source}: {e}; give model, data and out") from None

    @classmethod
    def from_toml(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        """Read ``path`` (keys at the top level or under ``[train]``), then apply overrides."""
        path = Path(path)
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise TrainError(f"no configuration file at {path}: check the path") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise TrainError(f"{path} is not valid TOML ({e}): fix the line it names") from None
        except OSError as e:
            raise TrainError(f"cannot read {path}: {e.strerror}") from None
        values = dict(raw.get("train", raw)) if isinstance(raw.get("train"), dict) else dict(raw)
        base = path.parent
        for key in ("model", "data", "out"):  # relative paths are relative to the file
            v = values.get(key)
            if (
                isinstance(v, str)
                and v
                and not v.startswith("preset:")
                and not Path(v).is_absolute()
            ):
                values[key] = str(base / v)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(values, source=str(path))


_FLAG_TYPES: dict[str, Any] = {
    "model": str,
    "data": str,
    "out": str,
    "steps": int,
    "global_batch": int,
    "max_len": int,
    "lr": float,
    "warmup_steps": int,
    "optimizer": str,
    "weight_decay": float,
    "momentum": float,
    "max_grad_norm": float,
    "implementation": str,
    "strategy": str,
    "seed": int,
    "checkpoint_every": int,
    "keep_checkpoints": int,
    "export_dtype": str,
}


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """``--config FILE`` plus one flag per field (``--global-batch``); flags win over the file."""
    parser.add_argument("--config", help="TOML file with the run's settings")
    parser.add_argument("--config-json", help="the run folder's run.json (written by launch)")
    for name, typ in _FLAG_TYPES.items():
        parser.add_argument("--" + name.replace("_", "-"), dest=name, type=typ, default=None)
    parser.add_argument(
        "--no-resume",
        dest="resume",
        action="store_false",
        default=None,
        help="start over even if the run folder holds a checkpoint",
    )


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    overrides = {name: getattr(args, name, None) for name in [*_FLAG_TYPES, "resume"]}
    if getattr(args, "config_json", None):
        path = Path(args.config_json)
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise TrainError(f"cannot read the run configuration {path}: {e}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return TrainConfig.from_dict(values, source=str(path))
    if getattr(args, "config", None):
        return TrainConfig.from_toml(args.config, **overrides)
    return TrainConfig.from_dict(
        {k: v for k, v in overrides.items() if v is not None}, source="the flags"
    )


def parse_flags(argv: Sequence[str]) -> TrainConfig:
    parser = argparse.ArgumentParser(prog="workbench.train")
    add_config_flags(parser)
    return config_from_args(parser.parse_args(list(argv)))
