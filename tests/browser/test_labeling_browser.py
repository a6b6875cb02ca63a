"""The Labeling tab in a real JupyterLab 4, driven through Debian's Chromium.

The tiny model labels eight short texts in sequential order inside ``Workbench(learner,
labeling=session)``. The keys 1–9, ``a``, ``x``, space and backspace answer only while the panel
has focus: before the panel is clicked, the same keys go to JupyterLab (``b`` inserts a cell,
``x`` cuts it) and no answer is stored; while it has focus, ``a`` and ``x`` neither insert nor
cut cells. The time from a key press to the answer shown in the panel's status line is measured
in the page (``performance.now()`` at the keydown, a ``MutationObserver`` on the panel), and the
kernel is asked at the end what the session stored. Screenshots go to ``test-artifacts/``.

SmolLM2-135M-Instruct (slow) measures the goal as the issue states it: in uncertainty order,
with the learner training after every answer, a key press is answered in the page in < 100 ms
and the next item's scores are on screen in < 1 s (medians; every figure is printed). The
simulated person reads each item for 2 s before pressing a key; the scores first shown are the
newest the session has for that item (the caption names their model version), replaced by the
current version's once rescored.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import pytest

from . import test_workbench_browser as helpers
from .conftest import Server

pytestmark = [pytest.mark.browser, pytest.mark.slow]

WORKSPACE = "labeling-browser-test"
TEXTS = [f"review {i}: the pills were {'good' if i % 2 else 'bad'}" for i in range(8)]
LABELS = ["positive", "negative", "neutral"]
# update_frequency=50: no update starts during the test (a first update may build the fused
# optimizer, a C++ compile; panel latency while SmolLM2 trains is bench/labeling.py's job).
SETUP = f"""\
from workbench.labeling import LabelingSession
from workbench.learner import LearningConfig as C, OnlineLearner
from workbench.models import ModelConfig, Transformer
from workbench.tokenizers import ByteTokenizer
from workbench.widgets import Workbench
model = Transformer(ModelConfig.preset("tiny-llama"), seed=0)
learner = OnlineLearner(model, ByteTokenizer(), C(checkpoint_frequency=None, update_frequency=50))
session = LabelingSession(learner, {TEXTS!r}, {LABELS!r}, order="sequential")
wb = Workbench(learner, labeling=session)
wb"""

REPORT = """\
import json
print("STATS " + json.dumps({
    "answers": [[a.item_id, a.answer, a.label, a.model_label] for a in session.answers()],
    "items": [i.id for i in session.items],
    "examples": learner.get_stats()["total_examples"],
}))"""

# Records, from the next keydown (window, capture phase: before any other handler), the time
# until the labeling panel's status line shows ``marker`` (the panel's answer to that key).
WATCH_ANSWER = """(marker) => {
    window.__wbLatency = undefined;
    const root = document.querySelector('.wb-labeling');
    let keyAt = null;
    window.addEventListener('keydown', () => { keyAt = performance.now(); },
                            {capture: true, once: true});
    const obs = new MutationObserver(() => {
        const status = root.querySelector('.wb-status');
        if (keyAt !== null && status && status.textContent.includes(marker)) {
            window.__wbLatency = performance.now() - keyAt;
            obs.disconnect();
        }
    });
    obs.observe(root, {subtree: true, childList: true, characterData: true});
}"""


# Short made-up drug reviews (no download): a few with each sentiment.
REVIEWS = [
    "These pills stopped my migraines within a week. I feel like myself again.",
    "Made me dizzy and sick every morning. I stopped after three days.",
    "It works, I guess. Some nausea at first but nothing terrible.",
    "Best thing my doctor ever prescribed. No side effects at all.",
    "Did nothing for my pain and gave me a rash.",
    "My sleep is a bit better, though I still wake up twice a night.",
    "Horrible. Weight gain, mood swings and the acne came back.",
    "Helped my anxiety a lot, and the dry mouth went away after a month.",
    "No change after six weeks. Not worse, not better.",
    "Cleared my skin completely in two months. Wonderful.",
    "The headaches were unbearable; I would not take it again.",
    "Mild improvement, mild side effects. An average drug.",
    "Life changing. I can walk my dog again without pain.",
    "It caused insomnia and I was anxious all day long.",
    "Took the edge off the pain but made me tired.",
    "I have tried everything and this finally worked for me.",
]
# update_frequency=1, batch_size=1: an update after every answer, so the worker is training
# while the panel answers keys and scores the next item (each publish makes scores stale).
SMOLLM2_SETUP = f"""\
from workbench.formats import load_model
from workbench.formats.shipped import smollm2_gguf
from workbench.labeling import LabelingSession
from workbench.learner import LearningConfig as C, OnlineLearner
from workbench.widgets import Workbench
model, tok = load_model(smollm2_gguf(), progress=False)  # no bar: stderr reads as an error
learner = OnlineLearner(model, tok, C(checkpoint_frequency=None, update_frequency=1,
                                      batch_size=1, max_seq_len=192, learning_rate=1e-5))
session = LabelingSession(learner, {REVIEWS!r}, {LABELS!r}, order="uncertainty", seed=0)
wb = Workbench(learner, labeling=session)
wb"""

SMOLLM2_REPORT = """\
import json
print("STATS " + json.dumps({
    "answers": len(session.answers()),
    "updates": learner.get_stats()["total_updates"],
    "state": learner.get_stats()["state"],
    "key_ms": wb.labeling.last_key_ms,
}))"""

# From the next keydown: ms until the panel's status shows ``marker`` (``answer``) and until a
# different item than ``old`` is on screen with its score bars (``next``).
WATCH_NEXT = """([marker, old, nLabels]) => {
    window.__wbTimes = {};
    const root = document.querySelector('.wb-labeling');
    let keyAt = null;
    window.addEventListener('keydown', () => { keyAt = performance.now(); },
                            {capture: true, once: true});
    const obs = new MutationObserver(() => {
        if (keyAt === null) return;
        const t = performance.now() - keyAt, times = window.__wbTimes;
        const status = root.querySelector('.wb-status');
        if (times.answer === undefined && status && status.textContent.includes(marker)) {
            times.answer = t;
        }
        const item = root.querySelector('.wb-label-item');
        const bars = root.querySelectorAll('.wb-label-bar').length;
        if (times.next === undefined && item && !item.textContent.includes(old)
            && bars === nLabels) {
            times.next = t;
        }
        if (times.answer !== undefined && times.next !== undefined) obs.disconnect();
    });
    obs.observe(root, {subtree: true, childList: true, characterData: true});
}"""


def write_notebook(path: Path, setup: str = SETUP, report: str = REPORT) -> None:
    helpers.write_notebook(path, setup, report)


def cells(page: Any) -> int:
    return int(helpers.notebook(page).locator(".jp-Cell").count())


def wait_for_cells(page: Any, n: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while cells(page) != n:
        assert time.monotonic() < deadline, f"{cells(page)} cells, expected {n}"
        time.sleep(0.05)


def panel_text(page: Any) -> str:
    return str(page.locator(".wb-labeling").first.inner_text())


def wait_for_item(page: Any, index: int, timeout: float = 30.0) -> None:
    """Wait until item ``index`` and its score bars are on screen (the panel takes keys)."""
    item = page.locator(".wb-labeling .wb-label-item", has_text=TEXTS[index])
    bars = page.locator(".wb-labeling .wb-label-bar")
    deadline = time.monotonic() + timeout
    while not (item.count() and bars.count() == len(LABELS)):
        assert time.monotonic() < deadline, f"item {index} never shown: {panel_text(page)!r}"
        time.sleep(0.02)


def focus_in_panel(page: Any) -> bool:
    return bool(
        page.evaluate(
            "() => document.querySelector('.wb-labeling').contains(document.activeElement)"
        )
    )


def press_and_time(page: Any, key: str, marker: str) -> float:
    """Press ``key`` and return the ms until the panel's status shows ``marker``."""
    page.evaluate(WATCH_ANSWER, marker)
    page.keyboard.press(key)
    page.wait_for_function("() => window.__wbLatency !== undefined", timeout=10_000)
    return float(page.evaluate("() => window.__wbLatency"))


def no_answer_after(page: Any, key: str, answered: int) -> None:
    """``key`` changes nothing in the panel: still ``answered`` answers after a round trip."""
    page.keyboard.press(key)
    page.wait_for_timeout(600)  # a kernel round trip here is ~10-50 ms
    assert f"{answered} / {len(TEXTS)}" in panel_text(page)


@pytest.mark.timeout(300)
def test_labeling_tab_keys_answer_only_with_focus_and_fast(
    jupyter: Server, page: Any, console: list[str], failure_artifacts: Path, artifacts: Path
) -> None:
    write_notebook(jupyter.root / "labeling.ipynb")
    url = jupyter.page_url(f"lab/workspaces/{WORKSPACE}/tree/labeling.ipynb")
    try:
        helpers.open_and_run(page, jupyter, "labeling.ipynb", url, console, failure_artifacts)
        page.locator(".wb-workbench .lm-TabBar-tab", has_text="Labeling").click()
        wait_for_item(page, 0)
        assert page.locator(".wb-labeling .wb-label-bar").count() == len(LABELS)
        assert not helpers.widget_errors(page)

        # Focus on a notebook cell (command mode): the keys are JupyterLab's, not the panel's.
        report_cell = helpers.notebook(page).locator(".jp-Cell").nth(1)
        report_cell.locator(".jp-InputPrompt").click()
        page.keyboard.press("Escape")
        assert not focus_in_panel(page)
        assert cells(page) == 2
        page.keyboard.press("b")  # JupyterLab: insert a cell below
        wait_for_cells(page, 3)
        for key in ("1", "Space", "Backspace"):
            no_answer_after(page, key, 0)
        no_answer_after(page, "a", 0)  # JupyterLab: insert a cell above the new one
        wait_for_cells(page, 4)
        page.keyboard.press("x")  # JupyterLab: cut the cells it made
        wait_for_cells(page, 3)
        no_answer_after(page, "x", 0)
        wait_for_cells(page, 2)
        assert "STATS" in report_cell.inner_text()
        assert "no answers yet" in panel_text(page)

        # Click the item: the panel has focus, and the same keys label.
        page.locator(".wb-labeling .wb-label-item").click()
        assert focus_in_panel(page)
        latencies = [press_and_time(page, "2", "#1 negative")]
        wait_for_item(page, 1)
        latencies.append(press_and_time(page, "a", "#2 "))
        wait_for_item(page, 2)
        latencies.append(press_and_time(page, "x", "#3 reject"))
        wait_for_item(page, 3)
        latencies.append(press_and_time(page, "Space", "#4 skip"))
        wait_for_item(page, 4)
        no_answer_after(page, "9", 4)  # three labels: 9 is no label
        page.evaluate(WATCH_ANSWER, "undid #4")
        page.keyboard.press("Backspace")
        page.wait_for_function("() => window.__wbLatency !== undefined", timeout=30_000)
        wait_for_item(page, 3)  # the undone answer's item comes back
        latencies.append(press_and_time(page, "1", "#5 positive"))
        wait_for_item(page, 4)
        assert cells(page) == 2, "a or x reached JupyterLab while the panel had focus"
        page.locator(".wb-labeling .wb-answers tbody tr").nth(3).wait_for()
        helpers.show_widget(page)
        page.screenshot(path=str(artifacts / "labeling-jupyterlab.png"))
        assert not helpers.widget_errors(page)

        # Focus leaves the panel: its keys stop answering.
        report_cell.locator(".jp-InputPrompt").click()
        assert not focus_in_panel(page)
        no_answer_after(page, "2", 4)

        print(f"key press -> answer shown (ms): {[round(t, 1) for t in latencies]}")
        # The goal: every key press answered in the page within 100 ms.
        assert max(latencies) < 100, latencies
        assert statistics.median(latencies) < 100

        report = helpers.kernel_report(page, '"answers"')
        items = report["items"]
        got = [(items.index(i), answer, label) for i, answer, label, _ in report["answers"]]
        accepted = report["answers"][1][3]  # "a" taught the model's own suggestion
        assert got == [
            (0, "accept", "negative"),
            (1, "accept", accepted),
            (2, "reject", None),
            (3, "accept", "positive"),
        ]
        assert report["examples"] == 3  # two labels and one accept; reject/skip teach nothing
    finally:
        helpers_shut_down(jupyter, "labeling.ipynb")


def helpers_shut_down(server: Server, path: str) -> None:
    """Stop the notebook's kernel (the Jupyter server outlives the test)."""
    for session in server.api("GET", "sessions"):
        if session["path"] == path:
            server.api("DELETE", f"sessions/{session['id']}")


READING_MS = 2000


def shown_item(page: Any) -> str:
    return str(page.locator(".wb-labeling .wb-label-item").first.inner_text()).strip()


@pytest.mark.timeout(400)
def test_smollm2_keys_answer_fast_while_the_learner_trains(
    jupyter: Server,
    page: Any,
    console: list[str],
    failure_artifacts: Path,
    artifacts: Path,
    smollm2_wait: None,
) -> None:
    # The setup cell loads SmolLM2 and scores the first item before the Workbench shows.
    write_notebook(jupyter.root / "labeling-smollm2.ipynb", SMOLLM2_SETUP, SMOLLM2_REPORT)
    url = jupyter.page_url(f"lab/workspaces/{WORKSPACE}-smollm2/tree/labeling-smollm2.ipynb")
    try:
        helpers.open_and_run(
            page, jupyter, "labeling-smollm2.ipynb", url, console, failure_artifacts
        )
        page.locator(".wb-workbench .lm-TabBar-tab", has_text="Labeling").click()
        bars = page.locator(".wb-labeling .wb-label-bar")
        deadline = time.monotonic() + 120
        while bars.count() != len(LABELS):
            assert time.monotonic() < deadline, "the first item's scores never showed"
            time.sleep(0.05)
        page.locator(".wb-labeling .wb-label-item").click()
        assert focus_in_panel(page)
        answer_ms, next_ms = [], []
        keys = ["1", "3", "a", "2", "1", "x", "3", "a", "1", "3"]
        for n, key in enumerate(keys, start=1):
            # A person reads the review before answering (the panel rescores the shown item
            # and scores the next candidates meanwhile); 2 s is quick for these reviews.
            page.wait_for_timeout(READING_MS)
            old = shown_item(page)[:40]
            page.evaluate(WATCH_NEXT, [f"#{n} ", old, len(LABELS)])
            page.keyboard.press(key)
            page.wait_for_function(
                "() => window.__wbTimes.answer !== undefined && window.__wbTimes.next !== undefined",
                timeout=60_000,
            )
            times = page.evaluate("() => window.__wbTimes")
            answer_ms.append(float(times["answer"]))
            next_ms.append(float(times["next"]))
        helpers.show_widget(page)
        page.screenshot(path=str(artifacts / "labeling-jupyterlab-smollm2.png"))
        report = helpers.kernel_report(page, '"answers": 10')
        print(f"SmolLM2, training: key -> answer shown (ms): {[round(t) for t in answer_ms]}")
        print(
            f"SmolLM2, training: key -> next item's scores shown (ms): {[round(t) for t in next_ms]}"
        )
        print(f"updates during the run: {report['updates']}")
        assert report["answers"] == len(keys)
        # An update after every answer: the worker trains throughout (each SmolLM2 update takes
        # seconds on two shared cores), and at least one was published during the keys.
        assert report["updates"] >= 1, "the learner did not train while the keys were pressed"
        assert statistics.median(answer_ms) < 100, answer_ms
        assert statistics.median(next_ms) < 1000, next_ms
        assert not helpers.widget_errors(page)
    finally:
        helpers_shut_down(jupyter, "labeling-smollm2.ipynb")
