"""launch(): torchrun as a subprocess of this process, metrics streamed, cancel, result."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.train.train_helpers import config, write_examples
from workbench.formats import load_model
from workbench.store import ExampleStore
from workbench.train import TrainError, launch, torchrun_command
from workbench.train.launch import _alive, _tree


def test_torchrun_command_passes_multi_node_flags() -> None:
    cmd = torchrun_command(
        ["--config", "r.toml"],
        4,
        nnodes="2",
        node_rank=1,
        rdzv_endpoint="h:29400",
        max_restarts=2,
    )
    joined = " ".join(cmd)
    assert "--nnodes 2 --rdzv-backend c10d --rdzv-endpoint h:29400" in joined
    assert "--node-rank 1" in joined and "--standalone" not in joined
    assert joined.endswith("--nproc-per-node 4 --max-restarts 2 -m workbench.train --config r.toml")
    with pytest.raises(TrainError, match="rdzv-endpoint"):
        torchrun_command([], 2, nnodes="2")


@pytest.mark.slow
def test_launch_streams_metrics_and_hands_back_weights(tmp_path: Path) -> None:
    store = ExampleStore(tmp_path / "session" / "examples.sqlite")
    for i in range(6):
        store.add(f"e{i}", f"question {i}", f"answer {i}", 1.0 + i)
    seen: list[dict[str, Any]] = []
    job = launch(
        config(tmp_path / "session", tmp_path / "run", steps=3, global_batch=4),
        nproc=2,
        on_metric=seen.append,
    )
    store.add("late", "after the", "cutoff", 1.0)  # the live store goes on; the run does not see it
    path = job.wait(timeout=240)
    store.close()
    steps = [m for m in job.metrics if m["event"] == "step"]
    assert [m["step"] for m in steps] == [1, 2, 3] and seen == job.metrics
    lag = max(m["received"] - m["time"] for m in job.metrics)
    assert lag <= 1.0, lag
    assert job.metrics[0]["world_size"] == 2 and job.metrics[0]["examples"] == 6
    model, _ = load_model(path)
    assert model.cfg.n_layer == 4
    assert (tmp_path / "run" / "snapshot.sqlite").is_file()
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["cutoff"] == 6 and manifest["world_size"] == 2  # "late" is seq 7: replayed


@pytest.mark.slow
def test_a_failed_run_raises_with_its_message(tmp_path: Path) -> None:
    data = write_examples(tmp_path / "ex.jsonl", n=3)
    job = launch(config(data, tmp_path / "run", model="preset:nope"), nproc=1)
    with pytest.raises(TrainError, match=r"exit code [1-9](.|\n)*unknown preset 'nope'"):
        job.wait(timeout=120)


@pytest.mark.slow
def test_cancel_leaves_no_process(tmp_path: Path) -> None:
    data = write_examples(tmp_path / "ex.jsonl")
    first = threading.Event()
    job = launch(
        config(data, tmp_path / "run", steps=100_000, checkpoint_every=0),
        nproc=2,
        on_metric=lambda m: first.set() if m["event"] == "step" else None,
    )
    assert first.wait(180), "\n".join(job.log)
    tree = _tree(job.pid)
    assert len(tree) >= 3  # torchrun and two workers
    t0 = time.monotonic()
    assert job.cancel(timeout=10)
    assert time.monotonic() - t0 <= 10
    assert not any(_alive(p) for p in tree)
    with pytest.raises(TrainError, match="cancelled"):
        job.wait(5)


def test_cli_builds_the_torchrun_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from workbench.cli import main

    data = write_examples(tmp_path / "ex.jsonl", n=3)
    argv = ["train", "--nproc", "2", "--max-restarts", "1", "--model", "preset:tiny-llama"]
    argv += ["--data", str(data), "--out", str(tmp_path / "run"), "--dry-run"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "torch.distributed.run --standalone --nproc-per-node 2 --max-restarts 1" in out
    assert out.strip().endswith(f"-m workbench.train --config-json {tmp_path / 'run' / 'run.json'}")
    assert main(["train", "--model", "m", "--data", str(tmp_path / "no"), "--out", "o"]) == 2
    assert "no data at" in capsys.readouterr().err


@pytest.mark.slow
def test_restart_after_a_killed_rank_gives_the_same_curve(tmp_path: Path) -> None:
    import os
    import signal

    import numpy as np

    from tests.train.train_helpers import max_diff, state_of
    from workbench.train import run

    data = write_examples(tmp_path / "ex.jsonl")
    cfg = config(data, tmp_path / "run", steps=8, checkpoint_every=2, strategy="fsdp2")
    third = threading.Event()
    job = launch(
        cfg,
        nproc=2,
        max_restarts=1,
        on_metric=lambda m: third.set() if m.get("step") == 3 and m["event"] == "step" else None,
    )
    assert third.wait(180), "\n".join(job.log)
    workers = [p for p in _tree(job.pid) if p != job.pid]
    os.kill(workers[-1], signal.SIGKILL)
    path = job.wait(timeout=240)
    starts = [m for m in job.metrics if m["event"] == "start"]
    assert len(starts) == 2 and starts[1]["resumed"] and starts[1]["step"] in (2, 4)
    curve = {m["step"]: m["loss"] for m in job.metrics if m["event"] == "step"}  # last wins
    ref = run(config(data, tmp_path / "single", steps=8), stream=None)
    np.testing.assert_allclose([curve[s] for s in range(1, 9)], ref.losses, rtol=0, atol=1e-6)
    assert max_diff(state_of(path), state_of(tmp_path / "single" / "model.safetensors")) <= 2e-6
