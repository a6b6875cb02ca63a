"""SafeTensors save: float16 against float32 (``save_weights``), beside ``safetensors``' own save.

Goal (issue 14): a float16 save takes at most 1.5× a float32 save of the same model. A float16
save converts every tensor (and refuses values beyond ±65504, which float16 would turn into
infinity); float32 writes the tensors as they are. The reference is the ``safetensors``
library's ``save_file`` of the same tensors already converted (no overflow check, no atomic
write): the floor for the bytes alone.

Before timing, each file is read back with the ``safetensors`` library and compared bit for bit
with the model's tensors cast to that dtype. Each run saves into a fresh file in the same
folder (page cache warm, no fsync of a previous run pending); the median of ``--runs`` runs in
one process, sides alternating.

    .venv/bin/python bench/save.py [--runs 5] [--preset smollm2-135m|gpt2|...]

``--preset`` names a ``ModelConfig`` preset with random weights; without it the shipped
SmolLM2-135M-Instruct (real weights, decoded from its Q4_1 GGUF to float32) is saved.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from workbench.formats import load_model, save_weights
from workbench.formats.shipped import smollm2_gguf
from workbench.models import ModelConfig, Transformer


def _check(path: Path, model: Transformer, dtype: torch.dtype) -> None:
    """The file, read by the ``safetensors`` library, holds the model's tensors in ``dtype``."""
    want = {k: v.detach().to(dtype) for k, v in model.state_dict().items()}
    with safe_open(str(path), framework="pt") as f:
        assert set(f.keys()) == set(want), "tensor names differ"
        for k in sorted(want):
            got = f.get_tensor(k)
            assert got.dtype == dtype and got.shape == want[k].shape, k
            assert torch.equal(got, want[k]), k


def _timed(save: Callable[[Path], object], folder: Path, tag: str, run: int) -> float:
    path = folder / f"{tag}-{run}.safetensors"
    t0 = time.perf_counter()
    save(path)
    seconds = time.perf_counter() - t0
    path.unlink()
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--preset", default=None)
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)

    if args.preset:
        model = Transformer(ModelConfig.preset(args.preset), seed=0)
        what = f"preset {args.preset} (random weights)"
    else:
        model = load_model(smollm2_gguf(), dtype="float32")[0]
        what = "SmolLM2-135M-Instruct (Q4_1 decoded to float32)"
    n_params = sum(t.numel() for t in model.state_dict().values())
    half = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}

    sides: dict[str, Callable[[Path], object]] = {
        "ours float32": lambda p: save_weights(model, p, "safetensors", "float32"),
        "ours float16": lambda p: save_weights(model, p, "safetensors", "float16"),
        "safetensors save_file, float16": lambda p: save_file(half, str(p)),
    }
    times: dict[str, list[float]] = {name: [] for name in sides}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        # Validate before timing: what each of ours writes is what the library reads back.
        for dtype, name in ((torch.float32, "ours float32"), (torch.float16, "ours float16")):
            path = folder / "check.safetensors"
            sides[name](path)
            _check(path, model, dtype)
            path.unlink()
        for run in range(args.runs):
            for i, (name, save) in enumerate(sides.items()):
                times[name].append(_timed(save, folder, str(i), run))

    med = {name: statistics.median(t) for name, t in times.items()}
    print(
        f"SafeTensors save: {what}, {n_params / 1e6:.1f}M params, torch {torch.__version__}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, "
        f"median of {args.runs} runs (files validated with the safetensors library first)"
    )
    print(f"{'side':<34}{'time s':>9}")
    for name, sec in med.items():
        print(f"{name:<34}{sec:>9.3f}")
    ratio = med["ours float16"] / med["ours float32"]
    print(f"ours float16 / ours float32: {ratio:.2f} (goal <= 1.50)")


if __name__ == "__main__":
    main()
