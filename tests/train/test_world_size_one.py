"""World size 1 inside a process group: FSDP2 and DDP wrappers, fused kernels on local shards.

On a machine with a GPU this is the issue's GPU check (NCCL, the CUDA fused path through
``to_local()`` against the reference path, and FSDP2's cost against DDP); on CPU it runs the
same code with gloo.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np
import pytest

from tests.optim.dist_helpers import free_port
from tests.train.train_helpers import config, max_diff, state_of, write_examples
from workbench.train import run


@pytest.mark.slow
def test_fsdp2_fused_matches_reference_at_world_size_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = write_examples(tmp_path / "ex.jsonl")
    results = {}
    # The first run of a process pays for warm-up (kernel load, dispatch caches): DDP twice, the
    # second one timed.
    runs = (("ddp", "warm-up"), ("fsdp2", "fused"), ("fsdp2", "reference"), ("ddp", "fused"))
    for strategy, impl in runs:
        monkeypatch.setenv("RANK", "0")
        monkeypatch.setenv("LOCAL_RANK", "0")
        monkeypatch.setenv("WORLD_SIZE", "1")
        monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
        monkeypatch.setenv("MASTER_PORT", str(free_port()))
        out = tmp_path / f"{strategy}-{impl}"
        kind = "fused" if impl == "warm-up" else impl
        cfg = config(data, out, strategy=strategy, implementation=kind, steps=6, checkpoint_every=0)
        res = run(cfg, stream=None)
        assert res.strategy == strategy and res.world_size == 1
        results[(strategy, impl)] = (res, state_of(out / "model.safetensors"), out)
    fused, ref = results[("fsdp2", "fused")], results[("fsdp2", "reference")]
    np.testing.assert_allclose(fused[0].losses, ref[0].losses, rtol=0, atol=1e-5)
    assert max_diff(fused[1], ref[1]) <= 1e-5

    def step_time(out: Path) -> float:
        import json

        lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        times = [m["time"] for m in lines if m["event"] == "step"][1:]
        return statistics.median(np.diff(times).tolist())

    cost = step_time(fused[2]) / step_time(results[("ddp", "fused")][2])
    print(f"FSDP2 / DDP step time at world size 1: {cost:.2f}")
