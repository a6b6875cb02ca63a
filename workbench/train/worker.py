"""One rank of an offline fine-tune: the loop torchrun starts on every process.

The boundary: everything between ``init_process_group`` and ``destroy_process_group`` — build
the model, wrap it (DDP, or FSDP2's ``fully_shard`` per block then the root), step the fused
optimizer, save and resume DCP checkpoints, and on rank 0 export SafeTensors and a manifest.
Run without torchrun (no ``RANK`` in the environment) it is the single-process reference the
tests compare against, with no process group at all. It shares models, losses and optim with
the live learner and never imports the learner.

Correctness rules that are easy to get wrong:
- The weighted loss is ``Σ wᵢ·ℓᵢ / W`` with ``W`` the all-reduced weight sum of the *global*
  batch, times the world size because DDP and FSDP2 average gradients over ranks; a per-rank
  weighted mean would be wrong whenever ranks hold different weight sums.
- Data order is planned by global position (``samples_seen``), never per rank, so checkpoints
  resume on any world size that divides nothing in particular (``global_batch >= ranks``).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch
import torch.distributed as dist
from torch import nn

from workbench import losses
from workbench.formats import WeightLoadError, load_model, save_weights
from workbench.formats.atomic import atomic_writer
from workbench.models import ModelConfig, Transformer
from workbench.optim import FusedAdamW, FusedSGD
from workbench.tokenizers import ByteTokenizer, Tokenizer
from workbench.train import data as D
from workbench.train.config import TrainConfig, TrainError, parse_flags

__all__ = ["RunResult", "main", "run"]

MODEL_FILE = "model.safetensors"
MANIFEST_FILE = "manifest.json"
METRICS_FILE = "metrics.jsonl"
_STATE_FILE = "train_state.json"
_LATEST = "latest"


@dataclass
class RunResult:
    """What one rank saw; ``output`` is the SafeTensors file (rank 0 only)."""

    rank: int
    world_size: int
    strategy: str
    start_step: int
    losses: list[float] = field(default_factory=list)
    grad_norms: list[float | None] = field(default_factory=list)
    output: Path | None = None


# ---------------------------------------------------------------------------------- setup
def _build_model(cfg: TrainConfig) -> tuple[Transformer, Tokenizer]:
    if cfg.model.startswith("preset:"):
        try:
            mcfg = ModelConfig.preset(cfg.model.removeprefix("preset:"))
        except ValueError as e:
            raise TrainError(str(e)) from None
        if mcfg.vocab_size != ByteTokenizer().vocab_size:
            raise TrainError(
                f"{cfg.model} needs a tokenizer file: give a weights file as model instead"
            )
        return Transformer(mcfg, seed=cfg.seed), ByteTokenizer()
    try:
        model, tok = load_model(cfg.model, dtype=torch.float32, progress=False)
    except WeightLoadError as e:
        raise TrainError(f"cannot load the model {cfg.model}: {e}") from None
    return model, tok


def _build_on_meta(cfg: TrainConfig, rank: int) -> tuple[Transformer, Tokenizer, dict[str, Any]]:
    """FSDP2 with a weights file: only rank 0 reads it (host memory: one copy per machine's
    rank 0, not one per rank); every rank builds the model on the meta device, to be sharded,
    materialised with ``to_empty`` and filled by :func:`_fill_from_rank0`."""
    full: dict[str, Any] = {}
    payload: list[Any] = [None, None, None]
    if rank == 0:
        try:
            loaded, tok = _build_model(cfg)
            full = {k: v.detach() for k, v in loaded.state_dict().items()}
            payload = [loaded.cfg.to_dict(), tok.to_json(), None]
        except TrainError as e:
            payload = [None, None, str(e)]
    dist.broadcast_object_list(payload, src=0)
    if payload[2] is not None:
        raise TrainError(payload[2])
    from workbench.tokenizers import tokenizer_from_json

    with torch.device("meta"):
        model = Transformer(ModelConfig.from_dict(payload[0]), init=False)
    return model, tokenizer_from_json(payload[1]), full


def _fill_from_rank0(model: Transformer, full: dict[str, Any], device: torch.device) -> None:
    """Give the sharded meta model storage on ``device`` and rank 0's weights, shard by shard."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    # Non-persistent buffers (RoPE frequencies) are real CPU tensors that no file carries:
    # to_empty would leave them uninitialised, so they are put back.
    buffers = {n: b.clone() for n, b in model.named_buffers() if b.device.type != "meta"}
    model.to_empty(device=device)
    with torch.no_grad():
        for name, value in buffers.items():
            model.get_buffer(name).copy_(value)
    opts = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(model, full, options=opts)


def _strategy(cfg: TrainConfig, model: nn.Module, device: torch.device, ws: int) -> str:
    if ws == 1 and not dist.is_initialized():
        return "single"
    if cfg.strategy != "auto":
        return cfg.strategy
    # Full fine-tune with AdamW: fp32 params, grads and two moments, about 16 bytes a parameter.
    need = 16 * sum(p.numel() for p in model.parameters())
    if device.type == "cuda" and need > 0.8 * torch.cuda.get_device_properties(device).total_memory:
        return "fsdp2"
    return "ddp"


def _wrap(model: Transformer, strategy: str, device: torch.device, ws: int) -> nn.Module:
    if strategy == "single":
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    # An explicit CPU mesh on CPU: the default mesh would pick CUDA where it exists.
    mesh = init_device_mesh(device.type, (ws,))
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _optimizer(cfg: TrainConfig, model: nn.Module) -> FusedAdamW | FusedSGD:
    # As the live learner: matrices decay, gains and biases do not.
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    if cfg.optimizer == "adamw":
        return FusedAdamW(
            groups, lr=cfg.lr, max_grad_norm=cfg.max_grad_norm, implementation=cfg.implementation
        )
    return FusedSGD(
        groups,
        lr=cfg.lr,
        momentum=cfg.momentum,
        max_grad_norm=cfg.max_grad_norm,
        implementation=cfg.implementation,
    )


def _lr_at(cfg: TrainConfig, step: int) -> float:
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    return cfg.lr


# ---------------------------------------------------------------------------------- metrics
class _Sink:
    """Rank 0's metric lines: one JSON object per line on stdout and in ``metrics.jsonl``."""

    def __init__(self, out: Path, active: bool, stream: TextIO | None) -> None:
        self.active = active
        self.stream = stream
        self.file = open(out / METRICS_FILE, "a", encoding="utf-8") if active else None  # noqa: SIM115 -- closed by close()

    def __call__(self, event: str, **fields: Any) -> None:
        if not self.active:
            return
        line = json.dumps({"event": event, **fields, "time": time.time()})
        assert self.file is not None
        self.file.write(line + "\n")
        self.file.flush()
        if self.stream is not None:
            self.stream.write(line + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


# ---------------------------------------------------------------------------------- checkpoints
def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


@contextlib.contextmanager
def _single_process_quiet() -> Iterator[None]:
    """DCP warns that it assumes a single process when there is no process group: we mean it."""
    with warnings.catch_warnings():
        if not dist.is_initialized():
            warnings.filterwarnings("ignore", message=".*assuming the intent is to")
        yield


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    with atomic_writer(path) as f:
        f.write((json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def _save_checkpoint(
    out: Path,
    wrapped: nn.Module,
    opt: torch.optim.Optimizer,
    state: dict[str, Any],
    rank: int,
    keep: int,
) -> Path:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    folder = out / "checkpoints" / f"step-{state['step']:07d}"
    msd, osd = get_state_dict(wrapped, opt)
    with _single_process_quiet():
        dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(folder))
    _barrier()
    if rank == 0:
        _write_json(folder / _STATE_FILE, state)
        # The pointer moves only once every rank's shard and the state file are on disk.
        with atomic_writer(out / "checkpoints" / _LATEST) as f:
            f.write(folder.name.encode())
        _prune(out / "checkpoints", keep)
    _barrier()
    return folder


def _prune(root: Path, keep: int) -> None:
    """Remove all but the newest ``keep`` checkpoints (only after ``latest`` has moved on)."""
    import shutil

    done = sorted(p for p in root.glob("step-*") if (p / _STATE_FILE).is_file())
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _latest_checkpoint(out: Path) -> tuple[Path, dict[str, Any]] | None:
    pointer = out / "checkpoints" / _LATEST
    if not pointer.is_file():
        return None
    folder = out / "checkpoints" / pointer.read_text().strip()
    try:
        state = json.loads((folder / _STATE_FILE).read_text())
    except (OSError, ValueError) as e:
        raise TrainError(
            f"the checkpoint {folder} is unreadable ({e}): remove {pointer} to start over"
        ) from None
    return folder, state


def _check_resumable(state: dict[str, Any], expect: dict[str, Any], folder: Path) -> None:
    for key, value in expect.items():
        if state.get(key) != value:
            raise TrainError(
                f"the checkpoint {folder} was made with {key}={state.get(key)!r}, this run has "
                f"{key}={value!r}: resume with the same {key}, or start over "
                "(--no-resume, or another out folder)"
            )


def _load_checkpoint(folder: Path, wrapped: nn.Module, opt: torch.optim.Optimizer) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    msd, osd = get_state_dict(wrapped, opt)  # the shapes and shardings of this world size
    # dcp.load fills the dicts in place (DTensor shards resharded to this world size).
    with _single_process_quiet():
        dcp.load({"model": msd, "optim": osd}, checkpoint_id=str(folder))
    set_state_dict(wrapped, opt, model_state_dict=msd, optim_state_dict=osd)


# ---------------------------------------------------------------------------------- export
def _export(
    cfg: TrainConfig,
    out: Path,
    wrapped: nn.Module,
    model: Transformer,
    tok: Tokenizer,
    rank: int,
    manifest: dict[str, Any],
) -> Path | None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if dist.is_initialized():
        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        full = get_model_state_dict(wrapped, options=opts)  # every rank joins; rank 0 receives
    else:
        full = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if rank != 0:
        return None
    plain = Transformer(model.cfg, init=False)
    plain.load_state_dict(full, strict=True)
    path = save_weights(plain, out / MODEL_FILE, "safetensors", cfg.export_dtype, tokenizer=tok)
    import hashlib

    manifest["model_file"] = path.name
    manifest["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    _write_json(out / MANIFEST_FILE, manifest)
    return path


# ---------------------------------------------------------------------------------- the loop
def run(cfg: TrainConfig, stream: TextIO | None = sys.stdout) -> RunResult:
    """Train this rank; under torchrun the process group comes from the environment.

    Returns what this rank saw (losses, norms); rank 0 also writes the run folder's
    ``model.safetensors``, ``manifest.json`` and ``metrics.jsonl``.
    """
    distributed = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    if distributed:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available():
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        else:
            device = torch.device("cpu")
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        rank, ws = dist.get_rank(), dist.get_world_size()
    else:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        rank, ws = 0, 1
    try:
        result = _run(cfg, device, rank, ws, stream)
        if distributed and dist.is_initialized():
            # Rank 0 writes the export while the others are done: they wait here, so the ranks
            # destroy the group together (gloo aborted a rank whose peer left while it was in
            # destroy_process_group: the restart test failed about once in eight runs).
            dist.barrier()
        return result
    finally:
        if distributed and dist.is_initialized():
            dist.destroy_process_group()


def _run(
    cfg: TrainConfig, device: torch.device, rank: int, ws: int, stream: TextIO | None
) -> RunResult:
    out = Path(cfg.out)
    if cfg.global_batch < ws:
        raise TrainError(
            f"global_batch {cfg.global_batch} is smaller than the world size {ws}: every rank "
            f"needs an example per step; use global_batch >= {ws} or fewer processes"
        )
    examples, data_meta = D.read_examples(cfg.data)
    on_meta = (
        cfg.strategy == "fsdp2" and dist.is_initialized() and not cfg.model.startswith("preset:")
    )
    if on_meta:
        model, tok, full = _build_on_meta(cfg, rank)
    else:
        model, tok = _build_model(cfg)
    encoded = [D.encode(tok, e, cfg.max_len) for e in examples]
    pad = tok.eos_id if tok.eos_id is not None else 0
    strategy = _strategy(cfg, model, device, ws)
    if strategy != "fsdp2":
        model.to(device)
    # Under FSDP2 the model stays on the CPU (or the meta device): fully_shard moves each
    # block's parameters to the mesh's device as it shards them, so no device holds it whole.
    wrapped = _wrap(model, strategy, device, ws)
    if on_meta:
        _fill_from_rank0(model, full, device)
        del full
    opt = _optimizer(cfg, model)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    _barrier()
    identity = {"global_batch": cfg.global_batch, "seed": cfg.seed, "examples": len(examples)}
    start = 0
    found = _latest_checkpoint(out) if cfg.resume else None
    if found is not None:
        folder, state = found
        _check_resumable(state, identity, folder)
        if state["step"] > cfg.steps:
            raise TrainError(
                f"the checkpoint {folder} is at step {state['step']}, past steps={cfg.steps}: "
                "ask for more steps, or start over in another out folder"
            )
        _load_checkpoint(folder, wrapped, opt)
        start = int(state["step"])
    sink = _Sink(out, rank == 0, stream)
    result = RunResult(rank, ws, strategy, start)
    sink(
        "start",
        step=start,
        world_size=ws,
        strategy=strategy,
        examples=len(examples),
        resumed=found is not None,
    )
    try:
        for step in range(start, cfg.steps):
            loss, norm = _step(cfg, wrapped, opt, encoded, pad, step, rank, ws, device)
            result.losses.append(loss)
            result.grad_norms.append(norm)
            done = step + 1
            sink(
                "step",
                step=done,
                loss=loss,
                grad_norm=norm,
                lr=_lr_at(cfg, step),
                samples_seen=done * cfg.global_batch,
            )
            every = cfg.checkpoint_every
            if done == cfg.steps or (every and done % every == 0):
                state = {**identity, "step": done, "world_size": ws, "strategy": strategy}
                folder = _save_checkpoint(out, wrapped, opt, state, rank, cfg.keep_checkpoints)
                sink("checkpoint", step=done, path=str(folder))
        manifest = {
            "config": cfg.to_dict(),
            "data": data_meta,
            # The learner adopting these weights replays its examples after this sequence number.
            "cutoff": int(data_meta["cutoff"]) if "cutoff" in data_meta else None,
            "examples": len(examples),
            "steps": cfg.steps,
            "samples_seen": cfg.steps * cfg.global_batch,
            "world_size": ws,
            "strategy": strategy,
            "final_loss": result.losses[-1] if result.losses else None,
        }
        result.output = _export(cfg, out, wrapped, model, tok, rank, manifest)
        if result.output is not None:
            sink("done", output=str(result.output), manifest=str(out / MANIFEST_FILE))
    finally:
        sink.close()
    return result


def _step(
    cfg: TrainConfig,
    wrapped: nn.Module,
    opt: FusedAdamW | FusedSGD,
    encoded: Sequence[D.Encoded],
    pad: int,
    step: int,
    rank: int,
    ws: int,
    device: torch.device,
) -> tuple[float, float | None]:
    batch = D.step_indices(len(encoded), step, cfg.global_batch, cfg.seed)
    mine = D.local_slice(batch, rank, ws)
    # Padded to the longest example of the global batch, not of this rank's part: the same
    # shapes on any world size, so the forward rounds as one process's does.
    width = max(len(encoded[i].ids) for i in batch)
    ids, labels, weights = D.collate([encoded[i] for i in mine], pad, width)
    ids, labels, weights = ids.to(device), labels.to(device), weights.to(device)
    # Global weight sum, all-reduced: each rank's share of Σ wᵢ·ℓᵢ is divided by it.
    total_w = weights.sum().to(torch.float64)
    if dist.is_initialized():
        dist.all_reduce(total_w)
    denom = total_w.clamp_min(torch.finfo(torch.float32).tiny).to(torch.float32)
    per = losses.cross_entropy(wrapped(ids), labels, reduction="none")  # (b,)
    local_sum = (per * weights).sum()
    (local_sum / denom * ws).backward()  # DDP/FSDP2 average over ranks: × ws restores the sum
    for group in opt.param_groups:
        group["lr"] = _lr_at(cfg, step)
    opt.step()
    opt.zero_grad(set_to_none=True)
    reported = local_sum.detach().to(torch.float64)
    if dist.is_initialized():
        dist.all_reduce(reported)
    return float(reported / total_w.clamp_min(1e-300)), opt.last_grad_norm


def main(argv: Sequence[str] | None = None, run_fn: Callable[..., RunResult] = run) -> int:
    """``python -m workbench.train --config run.toml [flags]``: what torchrun starts."""
    try:
        cfg = parse_flags(sys.argv[1:] if argv is None else argv)
        run_fn(cfg)
    except TrainError as e:
        print(f"workbench train: {e}", file=sys.stderr, flush=True)
        return 2
    return 0
