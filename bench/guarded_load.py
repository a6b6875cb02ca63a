"""Guarded vs plain load: what reading through the MCP root's descriptor costs.

Goal (issue #18): a load through the path guard (``Root.for_read`` plus every file opened beneath
the root's descriptor, as ``load_weights`` over MCP does) is at most 5% slower than a plain load
of the same file. One file per format is written once (GPT-2-small-sized, ~500 MB in float32, by
default); then plain and guarded loads alternate, ``--repeat`` times each, in one process with a
warm page cache, so both sides see the same cache and the same noise. ``load_model_state`` is
timed (bytes read, header checked, every tensor's finiteness checked, names mapped). For
SafeTensors the library's own ``load_file`` plus the same finiteness check (what touches the
pages) is printed as the reference.

Whole loads vary by more than 5% from one to the next on a busy machine (wall time counts the
waits for a core), so each load's CPU time (all threads, user and system, page faults included)
is printed too: its median is the steadier end-to-end figure. And the guard's own work (the
checks and the walks beneath the descriptor: everything a guarded load does that a plain one
does not) is timed by itself, many times, and printed as a share of the plain load: the
overhead, free of the loads' noise. The goal is judged on the CPU ratio and that share.

    .venv/bin/python bench/guarded_load.py [--preset gpt2] [--repeat 9] [--formats safetensors,custom]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from gguf_load import timed as timed_both  # (wall, CPU) seconds of one call

EXTENSIONS = {"safetensors": "safetensors", "custom": "mwb", "binary": "bin", "gguf": "gguf"}
GOAL = 1.05


def timed(fn: Callable[[], Any]) -> float:
    return timed_both(fn)[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="gpt2")
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--formats", default="safetensors,custom")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: the default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from workbench.formats import detect_format, load_model_state, save_weights
    from workbench.formats._common import check_finite_fast
    from workbench.formats.opener import open_file
    from workbench.mcp.paths import Root
    from workbench.models import ModelConfig, Transformer

    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "root" / "models"
        model = Transformer(ModelConfig.preset(args.preset), seed=0)
        n_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        paths = {f: folder / f"model.{EXTENSIONS[f]}" for f in formats}
        for fmt, path in paths.items():
            save_weights(model, path, fmt)
        del model
        print(
            f"preset {args.preset}: {n_bytes / 2**20:.0f} MiB of weights; torch threads "
            f"{torch.get_num_threads()}; {args.repeat} loads per side, alternating"
        )
        print(
            f"{'format':<12} {'wall min: plain':>15} {'guarded':>8} {'ratio':>6} "
            f"{'CPU median: plain':>18} {'guarded':>8} {'ratio':>6} "
            f"{'guard work (ms)':>16} {'overhead':>9} {'reference (s)':>14}"
        )
        root = Root(Path(tmp) / "root")
        worst = 0.0
        worst_cpu = 0.0
        for fmt, path in paths.items():
            rel = f"models/{path.name}"

            def plain(path: Path = path) -> Any:
                return load_model_state(path, progress=False)

            def guarded(rel: str = rel, fmt: str = fmt) -> Any:
                checked = root.for_read(rel, fmt)  # type: ignore[arg-type]
                return load_model_state(root.path(checked), progress=False)

            def guard_work(rel: str = rel, fmt: str = fmt, path: Path = path) -> None:
                # What only the guarded side does: the guard's checks, and each of the load's
                # opens by a walk beneath the descriptor instead of by name (timed as the
                # difference of the two ways to detect the format: detection opens what a load
                # opens first).
                root.for_read(rel, fmt)  # type: ignore[arg-type]
                detect_format(root.path(rel))
                open_file(root.path(rel)).close()

            def plain_work(path: Path = path) -> None:
                detect_format(path)
                open_file(path).close()

            plain()  # warm the page cache and the allocator for both sides
            guarded()
            plains: list[tuple[float, float]] = []
            guards: list[tuple[float, float]] = []
            for i in range(args.repeat):
                order = (plain, guarded) if i % 2 == 0 else (guarded, plain)
                for fn in order:
                    (plains if fn is plain else guards).append(timed_both(fn))
            extra = statistics.median(timed(guard_work) for _ in range(200)) - statistics.median(
                timed(plain_work) for _ in range(200)
            )
            reference = ""
            if fmt == "safetensors":
                from safetensors.torch import load_file

                def library(path: Path = path) -> Any:
                    tensors = load_file(path)
                    check_finite_fast(tensors, False)
                    return tensors

                reference = f"{min(timed(library) for _ in range(args.repeat)):.3f}"
            p, g = min(w for w, _ in plains), min(w for w, _ in guards)
            pc = statistics.median(c for _, c in plains)
            gc = statistics.median(c for _, c in guards)
            share = max(extra, 0.0) / p
            worst, worst_cpu = max(worst, share), max(worst_cpu, gc / pc)
            print(
                f"{fmt:<12} {p:15.3f} {g:8.3f} {g / p:6.3f} {pc:18.3f} {gc:8.3f} {gc / pc:6.3f} "
                f"{extra * 1000:16.3f} {share:9.3%} {reference:>14}"
            )
        root.close()
    verdict = "met" if 1 + worst <= GOAL and worst_cpu <= GOAL else "NOT met"
    print(
        f"goal: guarded <= {GOAL:.2f} x plain. Guard work at most {worst:.3%} of a plain load; "
        f"CPU ratio at most {worst_cpu:.3f}: {verdict}"
    )


if __name__ == "__main__":
    main()
