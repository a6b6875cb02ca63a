"""One long example in an update, on SmolLM2-135M: update seconds with length-grouped passes.

An update of 10 short question/answer examples, then the same plus one 5,000-character example
(cut to ``max_seq_len`` tokens). With passes grouped by length the long example pads only its
own pass; the reference is plain chunking (every example padded to the longest), timed in the
same run on the same weights. Goal (issue 19): with the long example, ≤ 1.5× the time without.

Run: ``python bench/long_example.py [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence

import torch

from workbench.batching import Encoded, encode_example
from workbench.formats import load_model
from workbench.formats.shipped import smollm2_gguf
from workbench.learner import LearningConfig, _training
from workbench.learner._training import Trainer

SHORT = [(f"What is the capital of country number {i}?", f" City number {i}.") for i in range(10)]
LONG = ("Tell me about this text. " * 200, " It repeats itself.")  # 5,000 characters


def plain_chunks(examples: Sequence[Encoded], size: int, slack: int = 32) -> list[list[Encoded]]:
    """The reference: passes in order, each padded to its longest example."""
    return [list(examples[i : i + size]) for i in range(0, len(examples), size)]


def seconds_per_update(trainer: Trainer, batch: list[Encoded], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        trainer.step(batch)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    model, tok = load_model(smollm2_gguf(), progress=False)
    cfg = LearningConfig(
        update_method="finetune",  # the optimizer step's passes are what is measured
        checkpoint_frequency=None,
        learning_rate=1e-6,
        skip_known_below=None,
    )
    trainer = Trainer(model.float().train(), tok, cfg, torch.device("cpu"))
    enc = [encode_example(tok, i, q, a, 1.0, cfg.max_seq_len) for i, (q, a) in enumerate(SHORT)]
    long = encode_example(tok, 99, *LONG, 1.0, cfg.max_seq_len)
    print(
        f"10 short examples of {max(len(e.ids) for e in enc)} tokens at most; the long one "
        f"is cut to {len(long.ids)} tokens; {torch.get_num_threads()} threads"
    )
    trainer.step(enc)  # warm up
    rows = {}
    for name, split in (("grouped (ours)", _training._passes), ("plain chunks", plain_chunks)):
        _training._passes = split  # type: ignore[assignment]
        rows[name] = (
            seconds_per_update(trainer, enc, args.repeats),
            seconds_per_update(trainer, [*enc, long], args.repeats),
        )
    print(f"{'passes':18}{'10 short s':>12}{'+ 1 long s':>12}{'ratio':>8}")
    for name, (without, with_long) in rows.items():
        print(f"{name:18}{without:12.2f}{with_long:12.2f}{with_long / without:8.2f}x")
    print("goal: grouped ratio <= 1.5x")


if __name__ == "__main__":
    main()
