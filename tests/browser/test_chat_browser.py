"""The Chat tab in a real JupyterLab 4, driven through Debian's Chromium.

The tiny model with a ChatML-like template: type a question, see the reply bubble, press Good
on it (twice: one example), and ask the kernel what its learner stored. SmolLM2-135M-Instruct
(slow): asked the capital of France in the panel, it answers Paris. Screenshots go to
``test-artifacts/`` for a person to look at. Notebooks are opened and run with
``test_workbench_browser``'s helpers (the kernel settles first; one retry on the widget race).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from . import test_workbench_browser as helpers
from .conftest import Server

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# Each test opens its notebook in a workspace of its own: JupyterLab restores the tabs of the
# default workspace, where another test's notebook would then sit beside this one.
WORKSPACE = "chat-browser-test"

QUESTION = "What is 2 + 2?"
# ChatML-like; a turn ends with the byte tokenizer's one special token, so replies stop there.
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\\n{{ m.content }}<|endoftext|>\\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\\n{% endif %}"
)
# The seeded tiny model and sampling settings that give a non-empty reply to QUESTION (as in
# tests/widgets/test_chat.py): Good on an empty reply is refused.
TINY_SETUP = f"""\
from workbench.learner import LearningConfig as C, OnlineLearner
from workbench.models import ModelConfig, Transformer
from workbench.tokenizers import ByteTokenizer
from workbench.widgets import Workbench
model = Transformer(ModelConfig.preset("tiny-llama"), seed=0)
tok = ByteTokenizer(chat_template="{TEMPLATE}")
learner = OnlineLearner(model, tok, C(checkpoint_frequency=None, update_frequency=50))
wb = Workbench(learner)
wb.chat.max_new_tokens.value, wb.chat.temperature.value, wb.chat.seed.value = 12, 1.0, 3
wb"""

# Until load_model carries the GGUF's chat template, take it from the file's metadata.
SMOLLM2_SETUP = """\
import gguf
from workbench.formats import load_model
from workbench.formats.shipped import smollm2_gguf
from workbench.learner import LearningConfig as C, OnlineLearner
from workbench.widgets import Workbench
path = smollm2_gguf()
model, tok = load_model(path, progress=False)  # no bar on stderr: the test reads stderr as errors
if tok.chat_template is None:
    tok.chat_template = gguf.GGUFReader(path).fields["tokenizer.chat_template"].contents()
learner = OnlineLearner(model, tok, C(checkpoint_frequency=None))
wb = Workbench(learner)
wb.chat.max_new_tokens.value = 24
wb"""

REPORT = """\
import json
s = learner.get_stats()
print("STATS " + json.dumps({
    "total_examples": s["total_examples"],
    "answer": wb.chat.answer,
    "examples": [
        {"messages": r.messages, "target": r.target, "weight": r.weight}
        for r in learner.recent_examples(10)
    ],
}))"""


def write_notebook(path: Path, setup: str) -> None:
    helpers.write_notebook(path, setup, REPORT)


def shut_down(server: Server, path: str) -> None:
    """Stop the notebook's kernel (the Jupyter server outlives the test)."""
    for session in server.api("GET", "sessions"):
        if session["path"] == path:
            server.api("DELETE", f"sessions/{session['id']}")


def ask(page: Any, text: str, timeout: float = 30.0) -> Any:
    """Type ``text`` in the Chat tab, press Send, and return the reply's bubble once done."""
    page.locator(".wb-workbench .lm-TabBar-tab", has_text="Chat").click()
    chat = page.locator(".wb-chat")
    chat.locator("textarea[placeholder^='Message']").fill(text)
    chat.get_by_role("button", name="Send").click()
    chat.locator(".wb-status-ok", has_text="characters in").wait_for(timeout=timeout * 1000)
    chat.locator(".wb-bubble-user", has_text=text).wait_for()
    return chat.locator(".wb-turn-assistant").first  # the thread lists the newest turn first


def test_chat_tab_answers_and_good_teaches_once(
    jupyter: Server, page: Any, console: list[str], failure_artifacts: Path, artifacts: Path
) -> None:
    write_notebook(jupyter.root / "chat.ipynb", TINY_SETUP)
    url = jupyter.page_url(f"lab/workspaces/{WORKSPACE}-tiny/tree/chat.ipynb")
    try:
        helpers.open_and_run(page, jupyter, "chat.ipynb", url, console, failure_artifacts)
        reply = ask(page, QUESTION)
        chat = page.locator(".wb-chat")
        chat.get_by_text("chat template: ChatML (from the model)").wait_for()
        assert reply.locator(".wb-bubble-assistant").inner_text()
        reply.get_by_role("button", name="Good").click()
        chat.locator(".wb-status-ok", has_text="kept the answer").wait_for()
        reply.get_by_text("taught #1").wait_for()
        reply.get_by_role("button", name="Good").click()  # the same answer: no second example
        chat.locator(".wb-status-info", has_text="already taught").wait_for()
        helpers.show_widget(page)
        page.screenshot(path=str(artifacts / "chat-jupyterlab.png"))
        assert not helpers.widget_errors(page)

        report = helpers.kernel_report(page, '"total_examples": 1')
        assert report["total_examples"] == 1
        (example,) = report["examples"]
        assert example["messages"] == [{"role": "user", "content": QUESTION}]
        assert example["target"] == report["answer"] and example["weight"] == 1.0
    finally:
        shut_down(jupyter, "chat.ipynb")


@pytest.mark.timeout(300)
def test_smollm2_answers_paris_in_the_chat_tab(
    jupyter: Server,
    page: Any,
    console: list[str],
    failure_artifacts: Path,
    artifacts: Path,
    smollm2_wait: None,
) -> None:
    # The setup cell loads SmolLM2 before the Workbench shows: give it 3 minutes, not 1.
    write_notebook(jupyter.root / "smollm2.ipynb", SMOLLM2_SETUP)
    url = jupyter.page_url(f"lab/workspaces/{WORKSPACE}-smollm2/tree/smollm2.ipynb")
    try:
        helpers.open_and_run(page, jupyter, "smollm2.ipynb", url, console, failure_artifacts)
        reply = ask(page, "What is the capital of France?", timeout=60)
        text = reply.locator(".wb-bubble-assistant").inner_text()
        page.locator(".wb-chat").get_by_text("chat template: ChatML (from the model)").wait_for()
        helpers.show_widget(page)
        page.screenshot(path=str(artifacts / "chat-smollm2-jupyterlab.png"))
        assert "Paris" in text, text
        assert not helpers.widget_errors(page)
        report = helpers.kernel_report(page, '"total_examples": 0')
        assert "Paris" in report["answer"] and report["examples"] == []
    finally:
        shut_down(jupyter, "smollm2.ipynb")  # its kernel holds SmolLM2: free it for later tests


# Records, every frame while the newest answer streams, whether the thread overflows and
# whether the end of the newest answer (the bottom of its turn) is inside the thread's box.
PACED_GENERATE = """\
import time
_generate = learner.generate
def paced_generate(prompt, stream=None, **settings):
    def paced(piece):
        time.sleep(0.03)
        return stream(piece)
    return _generate(prompt, stream=paced if stream else None, **settings)
learner.generate = paced_generate
"""

FOLLOW_RECORDER = """() => {
    window.wbFollow = [];
    window.wbFollowStop = false;
    const tick = () => {
        const thread = document.querySelector('.wb-chat-thread');
        const turn = thread && thread.querySelector('.wb-turn-assistant');  // newest first
        if (turn) {
            const box = thread.getBoundingClientRect(), end = turn.getBoundingClientRect();
            window.wbFollow.push({
                overflowing: thread.scrollHeight > thread.clientHeight + 1,
                endVisible: end.bottom <= box.bottom + 2 && end.bottom >= box.top,
                chars: turn.querySelector('.wb-bubble-assistant').textContent.length,
            });
        }
        if (!window.wbFollowStop) requestAnimationFrame(tick);
    };
    requestAnimationFrame(tick);
}"""


def test_the_thread_follows_a_streaming_answer(
    jupyter: Server, page: Any, console: list[str], failure_artifacts: Path, artifacts: Path
) -> None:
    # A raw completion's bubble shows its prompt: 36 short lines make one answer taller than
    # the thread's box (340 px), so only a thread that follows keeps the new text in view.
    # The tiny model answers 60 tokens in a few frames on a fast machine, so the notebook paces
    # the pieces (30 ms each): every machine then streams over many pushes, as a real model does.
    setup = TINY_SETUP.replace(
        "wb.chat.max_new_tokens.value, wb.chat.temperature.value, wb.chat.seed.value = 12, 1.0, 3",
        "wb.chat.max_new_tokens.value, wb.chat.temperature.value, wb.chat.seed.value = 60, 1.0, 3",
    ).replace("wb = Workbench(learner)", PACED_GENERATE + "wb = Workbench(learner)")
    write_notebook(jupyter.root / "follow.ipynb", setup)
    url = jupyter.page_url(f"lab/workspaces/{WORKSPACE}-follow/tree/follow.ipynb")
    try:
        helpers.open_and_run(page, jupyter, "follow.ipynb", url, console, failure_artifacts)
        page.locator(".wb-workbench .lm-TabBar-tab", has_text="Chat").click()
        chat = page.locator(".wb-chat")
        chat.get_by_role("button", name="raw completion").click()
        page.evaluate(FOLLOW_RECORDER)
        chat.locator("textarea[placeholder^='Prompt']").fill("line\n" * 36)
        chat.get_by_role("button", name="Generate").click()
        chat.locator(".wb-turn-assistant").wait_for()
        # the finished answer's status, not "not busy": right after the click the status line
        # still shows the mode's note (not busy, not ok), and a run failed on that moment
        chat.locator(".wb-status-ok", has_text="characters in").wait_for(timeout=60_000)
        page.evaluate("() => { window.wbFollowStop = true; }")
        assert chat.locator(".wb-status-ok").count() == 1, chat.locator(".wb-status").inner_text()
        frames = page.evaluate("() => window.wbFollow")
        helpers.show_widget(page)
        page.screenshot(path=str(artifacts / "chat-follows-streaming.png"))
        # While the answer grew (past the thread's height), its end stayed in view.
        streaming = [f for f in frames if f["overflowing"]]
        grew = {f["chars"] for f in streaming}
        assert len(grew) >= 3, f"the answer did not stream past the thread's height: {frames[-3:]}"
        hidden = [f for f in streaming if not f["endVisible"]]
        assert not hidden, f"{len(hidden)} of {len(streaming)} frames hid the answer's end"
    finally:
        shut_down(jupyter, "follow.ipynb")
