"""SafeTensors into a model: ours (``load_model``) against ``load_file`` + ``load_state_dict``.

Goal (issue): time ≤ 1.1× the reference, peak RSS ≤ 1.3× the weights' bytes. A GPT-2-small-sized
model (124M parameters, float32, ~500 MB) with random weights is written once; each measurement
runs in a fresh interpreter so ``ru_maxrss`` is that load's own peak, alternating ours and the
reference. The reference loads into a model that is already built (its construction is not
timed); ours is timed end to end (build on the meta device, validate, map, check finiteness,
assign). "load RSS" is the peak minus the RSS after imports, i.e. what the load itself costs.

    .venv/bin/python bench/safetensors_load.py [--runs 5] [--preset gpt2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def worker(side: str, path: str, preset: str) -> None:
    import resource

    import torch

    from workbench.formats import build_model, load_model_state
    from workbench.models import ModelConfig, Transformer

    torch.set_num_threads(os.cpu_count() or 1)
    base = _rss_kb()
    if side == "ours":
        t0 = time.perf_counter()
        model = build_model(load_model_state(path))  # load_model minus building the tokenizer
        seconds = time.perf_counter() - t0
    else:
        from safetensors.torch import load_file

        model = Transformer(ModelConfig.preset(preset), seed=None)  # the model to load into
        t0 = time.perf_counter()
        model.load_state_dict(load_file(path), strict=True)
        seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert model.tok_emb.weight.abs().sum() > 0
    print(json.dumps({"seconds": seconds, "peak_kb": peak, "base_kb": base}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--preset", default="gpt2")
    ap.add_argument("--worker", nargs=2, metavar=("SIDE", "PATH"))
    args = ap.parse_args()
    if args.worker:
        worker(args.worker[0], args.worker[1], args.preset)
        return

    import torch

    from workbench.formats import save_weights
    from workbench.models import ModelConfig, Transformer

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        model = Transformer(ModelConfig.preset(args.preset), seed=0)
        save_weights(model, path, "safetensors")
        weight_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        n_params = model.num_parameters()
        del model
        path.read_bytes()  # warm the page cache so neither side pays for the disk
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        results: dict[str, list[dict[str, float]]] = {"ours": [], "reference": []}
        for _ in range(args.runs):
            for side in ("ours", "reference"):
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--preset",
                        args.preset,
                        "--worker",
                        side,
                        str(path),
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                    env=env,
                )
                results[side].append(json.loads(out.stdout.strip().splitlines()[-1]))

    mb = 1024 * 1024
    print(
        f"SafeTensors load into a model: preset {args.preset}, {n_params / 1e6:.1f}M params, "
        f"{weight_bytes / mb:.0f} MiB float32, torch {torch.__version__}, {os.cpu_count()} CPUs, "
        f"median of {args.runs} fresh processes each"
    )
    print(
        f"{'side':<34}{'time s':>9}{'peak RSS MiB':>14}{'load RSS MiB':>14}{'load RSS / weights':>20}"
    )
    rows = {}
    for side, label in (
        ("ours", "ours: load_model_state+build"),
        ("reference", "reference: load_file+load_state_dict"),
    ):
        r = results[side]
        sec = statistics.median(x["seconds"] for x in r)
        peak = statistics.median(x["peak_kb"] for x in r) * 1024
        load = statistics.median((x["peak_kb"] - x["base_kb"]) for x in r) * 1024
        rows[side] = (sec, peak, load)
        print(
            f"{label:<34}{sec:>9.3f}{peak / mb:>14.0f}{load / mb:>14.0f}{load / weight_bytes:>20.2f}"
        )
    ratio = rows["ours"][0] / rows["reference"][0]
    print(
        f"time ours / reference: {ratio:.2f} (goal <= 1.10); "
        f"ours' load RSS / weights: {rows['ours'][2] / weight_bytes:.2f} (goal <= 1.30)"
    )


if __name__ == "__main__":
    main()
