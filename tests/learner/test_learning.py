"""The learner learns: loss falls, weights matter, disabled means no change, replay retains."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tests.learner.helpers import arithmetic_facts, make_learner, task_loss, weights_of
from workbench.learner import LearnerError, TrainingExample


def test_loss_halves_on_a_fixed_task_from_scratch(tmp_path: Path) -> None:
    facts = arithmetic_facts(8, seed=1)
    with make_learner(tmp_path, update_frequency=4, batch_size=16) as learner:
        before = task_loss(learner, facts)
        for i in range(240):  # bounded: 60 updates
            learner.add_example(TrainingExample(*facts[i % len(facts)]))
        assert learner.wait_idle(120)
        after = task_loss(learner, facts)
        stats = learner.get_stats()
    assert stats["total_updates"] == 60 and stats["state"] == "idle"
    assert after <= 0.5 * before, (before, after)


@pytest.mark.parametrize("loss_fn", ["mse", "contrastive"])
def test_other_losses_train(tmp_path: Path, loss_fn: str) -> None:
    facts = arithmetic_facts(8, seed=2)
    with make_learner(tmp_path, loss_fn=loss_fn, update_frequency=8, enabled=False) as learner:
        for q, a in facts:
            learner.add_example(TrainingExample(q, a))
        first = learner.force_update()
        losses = [learner.force_update() for _ in range(15)]
    assert losses[-1] < first and all(torch.isfinite(torch.tensor(losses)))


def test_heavier_example_moves_its_loss_more(tmp_path: Path) -> None:
    """The same two examples in one update, weights swapped: the weight-5 one gains more."""
    a = arithmetic_facts(1, seed=3)[0]
    b = ("Spell cloud:", " c l o u d")
    drops = {}
    for wa, wb in ((5.0, 1.0), (1.0, 5.0)):
        # Plain SGD without clipping: the step is proportional to the weighted gradient.
        with make_learner(
            tmp_path / f"{wa}-{wb}",
            optimizer="sgd",
            learning_rate=0.005,
            momentum=0.0,
            max_grad_norm=None,
            update_frequency=2,
            replay_fraction=0.0,
            enabled=False,
        ) as learner:
            before_a, before_b = learner.score(*a)["loss"], learner.score(*b)["loss"]
            learner.add_example(TrainingExample(*a, weight=wa))
            learner.add_example(TrainingExample(*b, weight=wb))
            learner.force_update()
            drops[wa, wb] = (
                before_a - learner.score(*a)["loss"],
                before_b - learner.score(*b)["loss"],
            )
    (a_heavy, b_light), (a_light, b_heavy) = drops[5.0, 1.0], drops[1.0, 5.0]
    assert a_heavy > 1.2 * a_light > 0, drops
    assert b_heavy > 1.2 * b_light > 0, drops


def test_disabled_learning_changes_no_weight(tmp_path: Path) -> None:
    with make_learner(tmp_path, update_frequency=2, enabled=False) as learner:
        before = weights_of(learner)
        results = [learner.add_example(TrainingExample(f"fact {i}", " ok")) for i in range(40)]
        learner.wait_idle()
        after = weights_of(learner)
        stats = learner.get_stats()
    assert all(not r.will_train and "not trained" in r.message for r in results)
    assert stats["total_updates"] == 0 and stats["total_examples"] == 40
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_enable_trains_on_what_was_stored_while_disabled(tmp_path: Path) -> None:
    with make_learner(tmp_path, update_frequency=5, enabled=False) as learner:
        for i in range(10):
            learner.add_example(TrainingExample(f"fact {i}", " ok"))
        learner.enable()
        assert learner.wait_idle()
        assert learner.get_stats()["total_updates"] == 2


def test_retry_with_same_id_is_not_a_duplicate(tmp_path: Path) -> None:
    with make_learner(tmp_path, enabled=False) as learner:
        ex = TrainingExample("same", " thing")
        first, again = learner.add_example(ex), learner.add_example(ex)
        assert not first.duplicate and again.duplicate and again.seq == first.seq
        assert learner.get_stats()["total_examples"] == 1
        assert learner.remove_example(ex.id) and not learner.remove_example(ex.id)
        assert learner.get_stats()["total_examples"] == 0


def test_force_update_without_examples_is_a_clear_error(tmp_path: Path) -> None:
    with make_learner(tmp_path) as learner, pytest.raises(LearnerError, match="no examples"):
        learner.force_update()


def test_worker_failure_is_reported_not_swallowed(tmp_path: Path) -> None:
    with make_learner(tmp_path, update_frequency=2) as learner:

        def boom(_learner, _record):
            raise RuntimeError("hook exploded")

        learner.on_update(boom)
        learner.add_example(TrainingExample("a", " b"))
        learner.add_example(TrainingExample("c", " d"))
        learner.wait_idle()
        stats = learner.get_stats()
        assert stats["state"] == "failed" and "hook exploded" in stats["last_error"]
        with pytest.raises(RuntimeError, match="hook exploded"):
            learner.force_update()
        learner._hooks.clear()
        updates = learner.get_stats()["total_updates"]
        assert math.isfinite(learner.force_update()) and learner.force_update() > 0
        stats = learner.get_stats()
        assert stats["state"] == "idle" and stats["total_updates"] == updates + 2


def test_stats_metrics_and_lr(tmp_path: Path) -> None:
    with make_learner(
        tmp_path,
        update_frequency=2,
        lr_schedule="warmup_cosine",
        warmup_updates=4,
        total_updates=20,
    ) as learner:
        learner.set_learning_rate(1e-2)
        with pytest.raises(LearnerError):
            learner.set_learning_rate(float("nan"))
        for i in range(8):
            learner.add_example(TrainingExample(f"q{i}", f" a{i}"))
        learner.wait_idle()
        records, cursor = learner.metrics_since(0)
        assert [r.n for r in records] == [1, 2, 3, 4] and cursor == 4
        assert [round(r.lr, 6) for r in records] == [0.0025, 0.005, 0.0075, 0.01]
        assert learner.metrics_since(cursor) == ([], 4)
        stats = learner.get_stats()
        for key in (
            "total_examples",
            "total_updates",
            "buffer_size",
            "average_loss",
            "learning_rate",
            "enabled",
            "examples_per_s",
            "updates_per_s",
            "last_update_ms",
            "state",
            "last_error",
        ):
            assert key in stats
        assert stats["learning_rate"] == 1e-2 and stats["total_updates"] == 4
        text = learner.generate("q1", max_new_tokens=5)
        assert isinstance(text, str)
        pieces: list[str] = []
        streamed = learner.generate("q1", max_new_tokens=5, stream=pieces.append)
        assert "".join(pieces) == streamed == text


@pytest.mark.slow
def test_replay_protects_the_first_task(tmp_path: Path) -> None:
    task_a = arithmetic_facts(8, seed=10)
    task_b = [
        (f"Spell {w}:", " " + " ".join(w))
        for w in ("cat", "house", "river", "light", "stone", "green", "cloud", "music")
    ]
    retention = {}
    for replay in (0.0, 0.5):
        with make_learner(
            tmp_path / str(replay), update_frequency=4, replay_fraction=replay, batch_size=16
        ) as learner:
            for i in range(320):
                learner.add_example(TrainingExample(*task_a[i % 8]))
            learner.wait_idle(300)
            learned_a = task_loss(learner, task_a)
            for i in range(320):
                learner.add_example(TrainingExample(*task_b[i % 8]))
            learner.wait_idle(300)
            retention[replay] = task_loss(learner, task_a)
            assert task_loss(learner, task_b) < 1.0
    assert learned_a < 1.0
    # Without replay task A is largely forgotten; with it, A's loss stays far lower.
    assert retention[0.0] - retention[0.5] > 0.5, retention


def test_configure_describe_and_recent_examples(tmp_path: Path) -> None:
    with make_learner(tmp_path, update_frequency=50, enabled=False) as learner:
        for i in range(3):
            learner.add_example(TrainingExample(f"q{i}", f" a{i}"))
        first = learner.recent_examples(10)[0]
        learner.remove_example(first.id)
        recent = learner.recent_examples(10)
        assert [r.input for r in recent] == ["q0", "q1", "q2"]
        assert [r.status for r in recent] == ["removed", "stored", "stored"]
        cfg = learner.configure(loss_fn="mse", update_frequency=2, optimizer="sgd")
        assert (cfg.loss_fn, cfg.update_frequency) == ("mse", 2)
        assert learner.get_stats()["optimizer"].endswith("SGD")
        with pytest.raises(LearnerError, match="update_frequency"):
            learner.configure(update_frequency=0)
        with pytest.raises(LearnerError, match="cannot change"):
            learner.configure(session_dir="elsewhere")
        with pytest.raises(LearnerError, match="unknown setting"):
            learner.configure(colour="blue")
        learner.enable()
        assert learner.wait_idle()
        assert learner.get_stats()["total_updates"] == 1  # two live examples, frequency 2
        assert [r.status for r in learner.recent_examples(10)] == ["removed", "trained", "trained"]
        info = learner.describe()
        assert info["family"] == "llama" and info["parameters"] > 1_000_000
        assert info["vocab_size"] == 257 and info["dtype"] == "float32"


def test_known_examples_carry_no_gradient(tmp_path: Path) -> None:
    facts = arithmetic_facts(2, seed=8)
    with make_learner(
        tmp_path, update_frequency=2, enabled=False, replay_fraction=0.0, skip_known_below=None
    ) as learner:
        for _ in range(30):  # drill both facts
            for q, a in facts:
                learner.add_example(TrainingExample(q, a))
            learner.force_update()
        losses = [learner.score(q, a)["loss"] for q, a in facts]
        # Call them known: every loss is under the threshold.
        learner.configure(skip_known_below=1.5 * max(losses))
        before = weights_of(learner)
        for q, a in facts:
            learner.add_example(TrainingExample(q, a))
        learner.force_update()  # both already known: no step
        after = weights_of(learner)
        assert all(torch.equal(before[k], after[k]) for k in before)
        learner.configure(skip_known_below=None)
        for q, a in facts:
            learner.add_example(TrainingExample(q, a))
        learner.force_update()
        assert not all(torch.equal(before[k], weights_of(learner)[k]) for k in before)
