"""Learning panel: the controls change the learner; slow calls never block the click."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from workbench.widgets import LearningPanel

from workbench.learner import LearnerError, OnlineLearner, TrainingExample


def test_controls_reach_the_learner(learner: OnlineLearner) -> None:
    panel = LearningPanel(learner, auto_refresh=False)
    assert panel.learning_rate.value == pytest.approx(3e-3)
    assert (panel.learning_rate.min, panel.learning_rate.max) == (-6, -1)

    panel.enabled.value = False
    panel.learning_rate.value = 1e-5
    panel.loss_fn.value = "mse"
    panel.update_frequency.value = 5
    assert panel.wait(30)
    assert learner.enabled is False
    stats = learner.get_stats()
    assert stats["learning_rate"] == pytest.approx(1e-5, rel=1e-6)
    assert learner.config.loss_fn == "mse" and learner.config.update_frequency == 5
    assert panel.enabled.description == "Learning off"

    panel.enabled.value = True
    assert panel.wait(30) and learner.enabled is True
    panel.close()


def test_force_update_runs_in_the_background_and_shows_the_loss(learner: OnlineLearner) -> None:
    panel = LearningPanel(learner, auto_refresh=False)
    learner.add_example(TrainingExample("2 + 2 = 4"))
    panel.force.click()
    assert panel.wait(30)
    assert learner.get_stats()["total_updates"] == 1
    assert panel.last_loss is not None and f"{panel.last_loss:.4g}" in panel.status.text
    assert not panel.force.disabled
    assert "updates" in panel.stats.value
    panel.close()


def test_clicks_return_at_once_while_the_learner_is_busy(
    learner: OnlineLearner, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()

    def slow_force() -> float:
        release.wait(10)  # a long training step
        return 1.5

    monkeypatch.setattr(learner, "force_update", slow_force)
    panel = LearningPanel(learner, auto_refresh=False)
    start = time.perf_counter()
    panel.force.click()
    panel.learning_rate.value = 1e-4
    panel.refresh()
    assert time.perf_counter() - start < 0.5
    assert panel.force.disabled and panel.status.kind == "busy"
    release.set()
    assert panel.wait(30)
    assert panel.last_loss == 1.5 and not panel.force.disabled
    assert learner.get_stats()["learning_rate"] == pytest.approx(1e-4, rel=1e-6)
    panel.close()


def test_a_refused_change_is_shown_and_the_control_put_back(
    learner: OnlineLearner, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(**_: object) -> None:
        raise LearnerError("loss_fn 'contrastive' needs examples with targets")

    monkeypatch.setattr(learner, "configure", refuse)
    panel = LearningPanel(learner, auto_refresh=False)
    panel.loss_fn.value = "contrastive"
    assert panel.wait(30)
    assert panel.status.kind == "error" and "needs examples with targets" in panel.status.text
    assert panel.loss_fn.value == "cross_entropy"
    panel.close()


def test_a_force_update_with_nothing_to_learn_is_an_error_in_the_panel(
    learner: OnlineLearner,
) -> None:
    panel = LearningPanel(learner, auto_refresh=False)
    panel.force.click()
    assert panel.wait(30)
    assert panel.status.kind == "error" and "add an example first" in panel.status.text
    assert panel.last_traceback is not None
    panel.close()


def test_undo_last_update_puts_the_weights_back(learner: OnlineLearner) -> None:
    panel = LearningPanel(learner, auto_refresh=False)
    before = {k: v.clone() for k, v in learner.model.state_dict().items()}
    learner.add_example(TrainingExample("2 + 2 =", " 4"))
    panel.force.click()
    assert panel.wait(30) and learner.get_stats()["total_updates"] == 1
    panel.undo.click()
    assert panel.wait(30)
    assert "undid update 1" in panel.status.text and "1 example undone" in panel.status.text
    after = learner.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert learner.recent_examples(1)[0].status == "undone"
    panel.undo.click()  # nothing left to undo: said in the panel, not raised
    assert panel.wait(30)
    assert panel.status.kind == "error" and "nothing to undo" in panel.status.text
    panel.close()
