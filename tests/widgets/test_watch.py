"""Watch panel: pin, unpin, accept; a taught fact's changed answer is marked and counted."""

from __future__ import annotations

import time
from pathlib import Path

from workbench.widgets import WatchPanel, Workbench

from tests.learner.helpers import make_learner
from workbench.learner import OnlineLearner
from workbench.watch import DEFAULT_PROMPTS, WatchList

FRANCE = "The capital of France is"


def teach_until_changed(learner: OnlineLearner, watch: WatchList, updates: int = 6) -> None:
    learner.add_example(FRANCE, " Rome, Rome, Rome.")
    for _ in range(updates):
        learner.force_update()
        watch.refresh_now()
        if watch.changed_count:
            return


def test_the_panel_offers_the_default_facts(learner: OnlineLearner) -> None:
    panel = WatchPanel(learner, auto_refresh=False, background=False)
    assert list(panel.pinned.options) == list(DEFAULT_PROMPTS)
    assert "being answered" in panel.summary.value and "wb-watch-pending" in panel.table.value
    assert "wb-spinner" in panel.table.value  # answering: the CSS spinner, no glyph
    panel.watch.refresh_now()
    panel.refresh()
    assert "no answer changed since pinning" in panel.summary.value
    assert panel.table.value.count("wb-watch-same") == len(DEFAULT_PROMPTS)
    panel.close()


def test_pin_unpin_and_typing_errors(learner: OnlineLearner) -> None:
    panel = WatchPanel(learner, WatchList(learner, (), background=False), auto_refresh=False)
    assert "no prompts pinned" in panel.summary.value and panel.unpin.disabled
    panel.pin.click()
    assert panel.status.kind == "error" and "type a prompt" in panel.status.text
    panel.prompt.value = FRANCE
    panel.pin.click()
    assert panel.status.kind == "ok" and panel.prompt.value == ""
    assert list(panel.pinned.options) == [FRANCE] and not panel.unpin.disabled
    panel.prompt.value = FRANCE
    panel.pin.click()
    assert "already pinned" in panel.status.text and panel.watch.prompts == [FRANCE]
    panel.pinned.value = FRANCE
    panel.unpin.click()
    assert panel.watch.prompts == [] and list(panel.pinned.options) == []
    panel.close()


def test_a_changed_answer_is_marked_and_counted_then_accepted(learner: OnlineLearner) -> None:
    watch = WatchList(learner, [FRANCE, "Water is made of"], max_new_tokens=6, background=False)
    panel = WatchPanel(learner, watch, auto_refresh=False)
    watch.refresh_now()
    teach_until_changed(learner, watch)
    panel.refresh()
    changed = watch.changed_count
    assert changed >= 1 and watch.results()[0].changed
    assert f"{changed} of 2 answers changed since pinning" in panel.summary.value
    assert panel.table.value.count("wb-watch-changed") == changed
    panel.accept.click()
    assert "wb-watch-changed" not in panel.table.value and watch.changed_count == 0
    panel.close()
    assert watch.pin("still open")  # a list the panel did not create stays the caller's


def test_the_workbench_shows_the_count_in_its_tab(learner: OnlineLearner) -> None:
    wb = Workbench(learner, auto_refresh=False)
    assert wb.tabs.get_title(3) == "Watch" and wb.watch in wb.panels
    for prompt in wb.watch.watch.prompts[1:]:
        wb.watch.watch.unpin(prompt)
    wb.watch.watch.refresh_now()
    teach_until_changed(learner, wb.watch.watch)
    wb.refresh()
    assert wb.tabs.get_title(3) == "Watch (1 changed)"
    assert "1 of 1 answer changed" in wb.watch.summary.value
    wb.close()


def test_the_workbench_re_answers_after_background_updates(tmp_path: Path) -> None:
    lrn = make_learner(tmp_path / "s", update_frequency=1)
    try:
        wb = Workbench(lrn, interval=0.2)
        watch = wb.watch.watch
        deadline = time.monotonic() + 60
        for _ in range(6):
            lrn.add_example(FRANCE, " Rome, Rome, Rome.")
            assert lrn.wait_idle(60)
            version = lrn.get_stats()["version"]
            while (
                any(r.version != version for r in watch.results()) and time.monotonic() < deadline
            ):
                time.sleep(0.05)
            if watch.changed_count:
                break
        time.sleep(0.5)  # a poller tick renders it
        assert watch.changed_count and "wb-watch-changed" in wb.watch.table.value
        assert "changed" in wb.tabs.get_title(3)
        wb.close()
    finally:
        lrn.close(checkpoint=False)
