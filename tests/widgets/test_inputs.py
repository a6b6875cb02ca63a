"""Honest inputs: an out-of-range value is refused with a message and the control put back."""

from __future__ import annotations

import pytest
from workbench.widgets import ChatPanel, ExamplesPanel, LearningPanel

from workbench.learner import OnlineLearner


@pytest.mark.parametrize("panel_type", [ExamplesPanel, ChatPanel])
def test_a_weight_of_zero_is_refused_not_clamped(
    learner: OnlineLearner, panel_type: type[ExamplesPanel] | type[ChatPanel]
) -> None:
    panel = panel_type(learner)
    assert not panel.weight.readout  # the slider's own readout would clamp silently
    panel.weight_box.value = 3.0  # typed in range: the slider follows
    assert panel.weight.value == 3.0
    panel.weight_box.value = 0.0
    assert panel.status.kind == "error"
    assert panel.status.text == "weight must be between 0.1 and 10, got 0; kept 3"
    assert (panel.weight.value, panel.weight_box.value) == (3.0, 3.0)
    panel.weight.value = 2.5  # the slider moves the box
    assert panel.weight_box.value == 2.5
    panel.close()


def test_update_every_zero_is_refused_and_put_back(learner: OnlineLearner) -> None:
    panel = LearningPanel(learner, auto_refresh=False)
    before = learner.config.update_frequency
    panel.update_frequency.value = 0
    assert panel.wait(30)
    assert panel.status.kind == "error" and "update every must be between 1 and 10000" in (
        panel.status.text
    )
    assert panel.update_frequency.value == before == learner.config.update_frequency
    panel.update_frequency.value = 20_000
    assert panel.status.kind == "error" and panel.update_frequency.value == before
    panel.update_frequency.value = 7  # in range: applied, and said so
    assert panel.wait(30)
    assert learner.config.update_frequency == 7 and panel.status.kind == "ok"
    panel.close()


def test_a_learning_rate_of_five_is_refused(learner: OnlineLearner) -> None:
    panel = LearningPanel(learner, auto_refresh=False)
    lr = learner.get_stats()["learning_rate"]
    panel.learning_rate_box.value = 5.0
    assert panel.wait(30)
    assert panel.status.kind == "error"
    assert "learning rate must be between 1e-06 and 0.1, got 5" in panel.status.text
    assert learner.get_stats()["learning_rate"] == lr
    assert panel.learning_rate_box.value == pytest.approx(lr, rel=1e-2)
    panel.learning_rate_box.value = 1e-4
    assert panel.wait(30)
    assert learner.get_stats()["learning_rate"] == pytest.approx(1e-4)
    assert panel.learning_rate.value == pytest.approx(1e-4) and panel.status.kind == "ok"
    panel.close()
