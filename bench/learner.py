"""Learner performance, each figure side by side with its reference in one run.

1. throughput: the learner absorbing N·update_frequency examples vs a bare torch loop doing the
   same N updates (same model, batches, optimizer) — goal ≥ 0.9×;
2. generation latency (tiny model, 16 new tokens) while the worker trains flat out vs idle —
   goal p50 ≤ 1.3×, p99 ≤ 2×;
3. durable intake: add_example calls per second, each committed to SQLite — goal ≥ 1,000/s.

Run: ``python bench/learner.py [--updates 60] [--preset tiny-llama]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time

import torch

from workbench.batching import encode_example
from workbench.demo import arithmetic_facts
from workbench.learner import LearningConfig, OnlineLearner, TrainingExample
from workbench.learner._training import Trainer
from workbench.models import ModelConfig, Transformer
from workbench.tokenizers import ByteTokenizer


def _config(tmp: str, **kw: object) -> LearningConfig:
    base: dict[str, object] = dict(
        learning_rate=1e-3,
        update_frequency=8,
        batch_size=16,
        replay_fraction=0.0,
        checkpoint_frequency=None,
        session_dir=tmp,
    )
    base.update(kw)
    return LearningConfig(**base)  # type: ignore[arg-type]


def throughput(preset: str, updates: int) -> tuple[float, float]:
    """Seconds for ``updates`` updates: (learner, bare loop)."""
    facts = arithmetic_facts(64, seed=1)
    tok = ByteTokenizer()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = _config(tmp)
        n = updates * cfg.update_frequency
        examples = [TrainingExample(*facts[i % len(facts)]) for i in range(n)]
        # Bare loop: the same Trainer math without queue, store, snapshots or threads.
        # It runs with the worker's thread count (all cores but one) for a fair comparison.
        encoded = [
            encode_example(tok, i, e.input, e.target, 1.0, cfg.max_seq_len)
            for i, e in enumerate(examples)
        ]
        out: dict[str, float] = {}

        def bare() -> None:
            torch.set_num_threads(max(1, torch.get_num_threads() - 1))
            trainer = Trainer(
                Transformer(ModelConfig.preset(preset), seed=0), tok, cfg, torch.device("cpu")
            )
            start = time.perf_counter()
            for u in range(updates):
                trainer.step(encoded[u * cfg.update_frequency : (u + 1) * cfg.update_frequency])
            out["bare"] = time.perf_counter() - start

        t = threading.Thread(target=bare)
        t.start()
        t.join()
        learner = OnlineLearner(Transformer(ModelConfig.preset(preset), seed=0), tok, cfg)
        start = time.perf_counter()
        for e in examples:
            learner.add_example(e)
        learner.wait_idle(timeout=600)
        ours = time.perf_counter() - start
        assert learner.get_stats()["total_updates"] == updates
        learner.close(checkpoint=False)
    return ours, out["bare"]


def latency(preset: str, calls: int) -> tuple[list[float], list[float]]:
    """Generation latencies in ms: (idle, while training flat out)."""
    facts = arithmetic_facts(64, seed=2)
    with tempfile.TemporaryDirectory() as tmp:
        learner = OnlineLearner(
            Transformer(ModelConfig.preset(preset), seed=0), ByteTokenizer(), _config(tmp)
        )
        prompt = facts[0][0]

        def measure() -> list[float]:
            out = []
            for _ in range(calls):
                s = time.perf_counter()
                learner.generate(prompt, max_new_tokens=16)
                out.append((time.perf_counter() - s) * 1000)
            return out

        measure()  # warm up
        idle = measure()
        stop = threading.Event()

        def feed() -> None:
            i = 0
            while not stop.is_set():
                if learner.get_stats()["pending_examples"] < 64:
                    learner.add_example(TrainingExample(*facts[i % len(facts)]))
                    i += 1
                else:
                    time.sleep(0.002)

        feeder = threading.Thread(target=feed)
        feeder.start()
        time.sleep(0.5)
        before = learner.get_stats()["total_updates"]
        busy = measure()
        trained = learner.get_stats()["total_updates"] - before
        stop.set()
        feeder.join()
        learner.close(checkpoint=False)
    print(f"  (worker ran {trained} updates during the {calls} busy calls)")
    return idle, busy


def intake(n: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        learner = OnlineLearner(
            Transformer(ModelConfig.preset("tiny-gpt2"), seed=0),
            ByteTokenizer(),
            _config(tmp, enabled=False),
        )
        examples = [TrainingExample(f"example number {i}", " fine") for i in range(n)]
        start = time.perf_counter()
        for e in examples:
            learner.add_example(e)
        rate = n / (time.perf_counter() - start)
        learner.close(checkpoint=False)
    return rate


def _pct(xs: list[float], q: float) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[int(q) - 1] if len(xs) > 1 else xs[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="tiny-llama")
    ap.add_argument("--updates", type=int, default=60)
    ap.add_argument("--calls", type=int, default=150)
    ap.add_argument("--intake", type=int, default=3000)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, preset {args.preset}")

    ours, bare = throughput(args.preset, args.updates)
    print(
        f"throughput: learner {args.updates / ours:.1f} updates/s, bare loop {args.updates / bare:.1f} "
        f"updates/s -> ratio {bare / ours:.2f} (goal >= 0.9)"
    )

    idle, busy = latency(args.preset, args.calls)
    p50i, p50b, p99i, p99b = _pct(idle, 50), _pct(busy, 50), _pct(idle, 99), _pct(busy, 99)
    print(
        f"latency p50: idle {p50i:.1f} ms, learning {p50b:.1f} ms -> {p50b / p50i:.2f}x (goal <= 1.3)"
    )
    print(
        f"latency p99: idle {p99i:.1f} ms, learning {p99b:.1f} ms -> {p99b / p99i:.2f}x (goal <= 2)"
    )

    rate = intake(args.intake)
    print(f"durable intake: {rate:,.0f} examples/s (goal >= 1,000)")


if __name__ == "__main__":
    main()
