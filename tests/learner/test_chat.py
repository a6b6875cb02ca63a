"""Chat through the learner: templates, the conversation's KV cache, chat-form examples."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.learner.helpers import make_learner
from workbench.formats import load_model
from workbench.formats.shipped import smollm2_gguf
from workbench.learner import LearnerError, LearningConfig, OnlineLearner, TrainingExample
from workbench.learner._inference import PromptCache
from workbench.losses import IGNORE

TEMPLATE = (
    "{% for m in messages %}<{{ m.role }}>{{ m.content }}<|endoftext|>{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def _chat_learner(tmp_path: Path, **config: object):
    learner = make_learner(tmp_path, **config)
    learner.tokenizer.chat_template = TEMPLATE  # the published tokenizer is the worker's too
    return learner


def _turns(n: int) -> list[dict[str, str]]:
    msgs: list[dict[str, str]] = [{"role": "system", "content": "You add numbers."}]
    for i in range(n):
        msgs.append({"role": "user", "content": f"What is {i} + {i + 7}?"})
        if i < n - 1:
            msgs.append({"role": "assistant", "content": f"{2 * i + 7}"})
    return msgs


def test_chat_renders_the_template_and_equals_raw_completion_of_it(tmp_path: Path) -> None:
    with _chat_learner(tmp_path) as learner:
        msgs = _turns(2)
        rendered = learner.tokenizer.apply_chat_template(msgs, add_generation_prompt=True)
        assert rendered.endswith("<assistant>") and "What is 1 + 8?" in rendered
        reply = learner.chat(msgs, max_new_tokens=12)
        # the same tokens as completing the rendered text, cut at the end-of-turn token
        raw = learner.generate(rendered, max_new_tokens=12)
        assert reply == raw.split("<|endoftext|>")[0]


def test_the_conversation_cache_gives_the_same_tokens_as_a_fresh_prefill(tmp_path: Path) -> None:
    with _chat_learner(tmp_path) as learner:
        replies = []
        for n in range(1, 6):  # each turn extends the last one: the cache is reused
            replies.append(learner.chat(_turns(n), max_new_tokens=10))
        assert learner._chat_cache.reused > 20, "turn 5 did not reuse the conversation"
        fresh = []
        for n in range(1, 6):  # forget the conversation: every turn prefills from scratch
            learner._chat_cache = PromptCache()
            fresh.append(learner.chat(_turns(n), max_new_tokens=10))
            assert learner._chat_cache.reused == 0
        assert replies == fresh


def test_a_changed_history_is_not_served_from_the_cache(tmp_path: Path) -> None:
    with _chat_learner(tmp_path) as learner:
        first = _turns(3)
        learner.chat(first, max_new_tokens=8)
        edited = [dict(m) for m in first]
        edited[1]["content"] = "What is 100 + 1?"  # an earlier turn changes
        with_cache = learner.chat(edited, max_new_tokens=8)
        tok = learner.tokenizer
        old, new = (tok.encode(tok.apply_chat_template(m)) for m in (first, edited))
        common = next(i for i, (a, b) in enumerate(zip(old, new, strict=False)) if a != b)
        assert learner._chat_cache.reused == common  # cut back to where the turns part
        learner._chat_cache = PromptCache()
        assert with_cache == learner.chat(edited, max_new_tokens=8)


def test_chat_streams_and_can_stop(tmp_path: Path) -> None:
    with _chat_learner(tmp_path) as learner:
        pieces: list[str] = []
        text = learner.chat(_turns(1), max_new_tokens=16, stream=pieces.append)
        assert "".join(pieces) == text
        seen: list[str] = []
        learner.chat(_turns(1), max_new_tokens=16, stream=lambda p: seen.append(p) or True)
        assert len(seen) == 1


def test_bad_conversations_are_clear_errors(tmp_path: Path) -> None:
    with _chat_learner(tmp_path) as learner:
        with pytest.raises(LearnerError, match="empty"):
            learner.chat([])
        with pytest.raises(LearnerError, match="role 'wizard'"):
            learner.chat([{"role": "wizard", "content": "hi"}])
        with pytest.raises(LearnerError, match="content must be a string"):
            learner.chat([{"role": "user", "content": 3}])  # type: ignore[dict-item]
        with pytest.raises(LearnerError, match="temperature=0"):
            learner.chat(_turns(1), num_beams=2, temperature=0.5)
        learner.tokenizer.chat_template = "{{ raise_exception('no system messages') }}"
        with pytest.raises(LearnerError, match="no system messages"):
            learner.chat(_turns(1))
        learner.tokenizer.chat_template = None
        with pytest.raises(LearnerError, match="no chat template; use raw completion"):
            learner.chat(_turns(1))


def test_training_example_checks_its_conversation() -> None:
    ok = TrainingExample(messages=[{"role": "user", "content": "Hi"}], target="Hello")
    assert ok.input == "Hi" and ok.messages == ({"role": "user", "content": "Hi"},)
    assert TrainingExample.from_chat(_turns(2), "9", weight=2.0, id="x").id == "x"
    cases = [
        (dict(messages=[], target="a"), "1 to 256"),
        (dict(messages=[{"role": "bot", "content": "a"}], target="a"), "role 'bot'"),
        (dict(messages=[{"role": "user", "content": "a"}]), "needs a target"),
        (dict(input="x", messages=[{"role": "user", "content": "a"}], target="a"), "not both"),
        (
            dict(messages=[*_turns(1), {"role": "assistant", "content": "8"}], target="a"),
            "ends with an assistant turn",
        ),
        (dict(messages=[{"role": "system", "content": "a"}], target="a"), "user turn"),
        (dict(messages=[{"role": "user", "content": "a\x00"}], target="a"), "NUL"),
    ]
    for kwargs, message in cases:
        with pytest.raises(LearnerError, match=message):
            TrainingExample(**kwargs)  # type: ignore[arg-type]


def test_chat_examples_train_on_the_reply_only_and_survive_a_restart(tmp_path: Path) -> None:
    msgs = _turns(2)
    with _chat_learner(tmp_path, update_frequency=100, checkpoint_frequency=1) as learner:
        ex = TrainingExample.from_chat(msgs, "9", weight=3.0)
        assert learner.add_example(ex).will_train
        learner.wait_idle()
        enc = learner._worker._pending[-1]
        tok = learner.tokenizer
        trained = [tok.decode([t]) for t in enc.labels if t != IGNORE]
        assert trained == ["9", "<|endoftext|>"]
        assert tok.decode(list(enc.ids[: enc.input_len])) == tok.apply_chat_template(msgs)
        before = learner.score(tok.apply_chat_template(msgs), "9")["loss"]
        for _ in range(3):
            learner.force_update()
        assert learner.score(tok.apply_chat_template(msgs), "9")["loss"] < before
        stored = learner.recent_examples(1)[0]
        assert stored.messages == ex.messages and stored.target == "9" and stored.weight == 3.0
    # a new learner on the same session rebuilds its buffers from the store
    with _chat_learner(tmp_path, update_frequency=100) as again:
        assert again.recent_examples(1)[0].messages == ex.messages


def test_a_chat_example_without_a_template_is_refused_before_it_is_stored(tmp_path: Path) -> None:
    with make_learner(tmp_path) as learner:
        with pytest.raises(LearnerError, match="no chat template"):
            learner.add_example(TrainingExample.from_chat(_turns(1), "7"))
        assert learner.get_stats()["total_examples"] == 0


def test_beam_search_through_the_learner_matches_the_model(tmp_path: Path) -> None:
    with make_learner(tmp_path) as learner:
        text = learner.generate("12 + 3 =", max_new_tokens=6, num_beams=3)
        model, tok = learner.model, learner.tokenizer
        ids = torch.tensor([tok.encode("12 + 3 =")])
        out = model.generate(ids, 6, num_beams=3, eos_token_id=tok.eos_id)[0, ids.shape[1] :]
        expect = [int(t) for t in out]
        if tok.eos_id in expect:
            expect = expect[: expect.index(tok.eos_id)]
        assert text == tok.decode(expect)


@pytest.fixture(scope="module")
def smollm2_learner(tmp_path_factory: pytest.TempPathFactory):
    model, tok = load_model(smollm2_gguf())
    cfg = LearningConfig(session_dir=tmp_path_factory.mktemp("smol"), checkpoint_frequency=None)
    with OnlineLearner(model, tok, cfg) as learner:
        yield learner


@pytest.mark.slow
def test_smollm2_answers_paris_and_later_turns_compute_only_their_new_tokens(
    smollm2_learner: OnlineLearner,
) -> None:
    learner = smollm2_learner
    assert learner.chat_template() is not None, "the GGUF's chat template was not loaded"
    q = [{"role": "user", "content": "What is the capital of France?"}]
    assert learner.generate("What is the capital of France?", max_new_tokens=8).strip() == ""
    answer = learner.chat(q, max_new_tokens=16)
    assert "Paris" in answer, answer
    history: list[dict[str, str]] = []
    for i in range(5):
        history.append({"role": "user", "content": f"Name a country in Europe, number {i + 1}."})
        reply = learner.chat(history, max_new_tokens=12)
        history.append({"role": "assistant", "content": reply})
    prompt = learner.tokenizer.encode(learner.tokenizer.apply_chat_template(history[:-1]))
    cache = learner._chat_cache
    # turn 5 computed only the tokens after what turn 4 left in the cache
    assert len(prompt) > 120 and len(prompt) - cache.reused < 40, (len(prompt), cache.reused)
