"""``workbench demo``: watch the tiny model learn arithmetic facts in the terminal.

A stream of facts ("What is 17 + 25?" → " 17 + 25 = 42") goes through the online learner;
the demo prints loss and exact-match accuracy before and after, and generation latency with
learning off and on.
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from dataclasses import dataclass

from tqdm import tqdm

from workbench.learner import LearningConfig, OnlineLearner, TrainingExample
from workbench.models import ModelConfig, Transformer
from workbench.tokenizers import ByteTokenizer

__all__ = ["DemoResult", "arithmetic_facts", "evaluate", "run_demo"]


def arithmetic_facts(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` distinct addition facts as (question, answer) pairs.

    >>> arithmetic_facts(1, seed=3)
    [('What is 16 + 38?', ' 16 + 38 = 54')]
    """
    rnd = random.Random(seed)
    seen: set[tuple[int, int]] = set()
    out: list[tuple[str, str]] = []
    while len(out) < n:
        a, b = rnd.randint(1, 49), rnd.randint(1, 49)
        if (a, b) in seen:
            continue
        seen.add((a, b))
        out.append((f"What is {a} + {b}?", f" {a} + {b} = {a + b}"))
    return out


def evaluate(learner: OnlineLearner, facts: list[tuple[str, str]]) -> tuple[float, float]:
    """Mean loss on the answers and greedy exact-match accuracy."""
    loss = statistics.fmean(learner.score(q, a)["loss"] for q, a in facts)
    hits = sum(learner.generate(q, max_new_tokens=len(a) + 2) == a for q, a in facts)
    return loss, hits / len(facts)


def _latency_ms(learner: OnlineLearner, prompt: str, n: int) -> list[float]:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        learner.generate(prompt, max_new_tokens=16)
        times.append((time.perf_counter() - start) * 1000)
    return times


@dataclass
class DemoResult:
    """What one demo run measured (losses are mean cross-entropy on the answers)."""

    loss_before: float
    loss_after: float
    accuracy_before: float  # greedy exact match, 0..1
    accuracy_after: float
    latency_idle_ms: float  # median generation time for 16 tokens, learning off
    latency_learning_ms: float  # the same while the learner trains in the background
    updates: int

    @property
    def learned(self) -> bool:
        """The loss on the taught facts went down (the ``workbench demo`` exit status)."""
        return self.loss_after < self.loss_before


def run_demo(
    *,
    examples: int = 1000,
    n_facts: int = 8,
    seed: int = 0,
    preset: str = "tiny-llama",
    session_dir: str | None = None,
    quiet: bool = False,
) -> DemoResult:
    """Teach a fresh model ``n_facts`` addition facts online and measure before and after.

    Parameters
    ----------
    examples:
        How many examples to stream through the learner (facts drawn at random, repeated).
    n_facts:
        How many distinct facts to teach (see :func:`arithmetic_facts`).
    seed:
        Seeds the facts, the model's initial weights, the example order and the learner.
    preset:
        The ``ModelConfig`` preset to build from scratch (``"tiny-gpt2"`` or ``"tiny-llama"``).
    session_dir:
        Keep the session's store and a checkpoint every 100 updates here; ``None``: a
        temporary folder and no checkpoints.
    quiet:
        No progress bar or report on stderr.

    Returns
    -------
    DemoResult
        Loss and exact match before and after, latencies, and the number of updates;
        ``result.learned`` is what ``workbench demo`` turns into its exit status.
    """

    def say(text: str) -> None:
        if not quiet:
            print(text, file=sys.stderr)

    facts = arithmetic_facts(n_facts, seed)
    model = Transformer(ModelConfig.preset(preset), seed=seed)
    config = LearningConfig(
        learning_rate=3e-3,
        update_frequency=4,
        batch_size=16,
        replay_fraction=0.5,
        checkpoint_frequency=None if session_dir is None else 100,
        session_dir=session_dir,
        seed=seed,
        enabled=False,
    )
    with OnlineLearner(model, ByteTokenizer(), config) as learner:
        say(
            f"workbench demo: {preset} ({model.num_parameters():,} parameters) from scratch, "
            f"{n_facts} addition facts, {examples} examples"
        )
        loss0, acc0 = evaluate(learner, facts)
        idle = _latency_ms(learner, facts[0][0], 20)
        say(f"before: loss {loss0:.3f}, exact match {acc0:.0%}")

        learner.enable()
        busy: list[float] = []
        rnd = random.Random(seed)
        for i in tqdm(range(examples), desc="teaching", unit="ex", disable=quiet):
            q, a = rnd.choice(facts)
            learner.add_example(TrainingExample(q, a))
            if i % 10 == 0:
                busy.extend(_latency_ms(learner, q, 1))
        learner.wait_idle(timeout=600)
        loss1, acc1 = evaluate(learner, facts)
        stats = learner.get_stats()
        result = DemoResult(
            loss0,
            loss1,
            acc0,
            acc1,
            statistics.median(idle),
            statistics.median(busy),
            stats["total_updates"],
        )
        say(f"after {stats['total_updates']} updates: loss {loss1:.3f}, exact match {acc1:.0%}")
        for q, a in facts[:4]:
            got = learner.generate(q, max_new_tokens=len(a) + 2)
            say(
                f"  {'✓' if got == a else '✗'} {q!r} -> {got!r}"
                + ("" if got == a else f" (want {a!r})")
            )
        say(
            f"generation latency p50 (16 tokens): idle {result.latency_idle_ms:.1f} ms, "
            f"while learning {result.latency_learning_ms:.1f} ms"
        )
    return result
