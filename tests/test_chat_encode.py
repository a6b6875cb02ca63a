"""Chat errors (conversations, templates, a missing template) and conversations encoded for
training: ids, labels and the loss mask with real templates and toy ones."""

from __future__ import annotations

from typing import Any

import pytest

from tests.chat_cases import CONVERSATIONS, MODELS, TEMPLATES, toy_tokenizer
from workbench.batching import Encoded, collate
from workbench.chat import ChatError, encode_chat, encode_prompt, stop_token_ids
from workbench.losses import IGNORE
from workbench.tokenizers import ByteTokenizer, Tokenizer, tokenizer_from_json

# ---------------------------------------------------------------------------- errors


def _tok(template: str | None) -> ByteTokenizer:
    return ByteTokenizer(chat_template=template)


SIMPLE = "{% for m in messages %}{{ m.role }}:{{ m.content }}{{ eos_token }}{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        ([], "empty"),
        ("hello", "list of"),
        ([{"role": "robot", "content": "x"}], "role 'robot'"),
        ([{"content": "x"}], "role None"),
        ([{"role": "user", "content": 3}], "content must be a string"),
        ([{"role": "user", "content": None}], "content must be a string"),
        ([{"role": "user"}], "content must be a string"),
        (["user: hi"], "not a"),
        ([{"role": "user", "content": "x", "when": object()}], "cannot reach a chat template"),
    ],
)
def test_bad_conversations_raise_chat_error(messages: Any, match: str) -> None:
    with pytest.raises(ChatError, match=match):
        _tok(SIMPLE).apply_chat_template(messages)


def test_every_role_is_accepted() -> None:
    messages = [{"role": r, "content": r[0]} for r in ("system", "user", "assistant", "tool")]
    assert _tok(SIMPLE).apply_chat_template(messages, add_generation_prompt=False) == (
        "system:s<|endoftext|>user:u<|endoftext|>assistant:a<|endoftext|>tool:t<|endoftext|>"
    )


def test_no_template_is_an_error_not_a_default() -> None:
    for tok in (ByteTokenizer(), toy_tokenizer("qwen2.5-7b-instruct")):
        tok.chat_template = None
        with pytest.raises(
            ChatError,
            match=r"no chat template; use raw completion, or set tokenizer\.chat_template",
        ):
            tok.apply_chat_template([{"role": "user", "content": "hi"}])


@pytest.mark.parametrize(
    ("template", "match"),
    [
        (
            "{{ raise_exception('Only user roles here') }}",
            "refused this conversation: Only user roles here",
        ),
        ("{% for m in messages %}", "does not parse"),
        ("{{ ''.__class__.__mro__ }}", "failed: SecurityError"),
        ("{{ messages.append(1) }}", "failed: SecurityError"),
        ("{% set ns = namespace(_secret=1) %}", "failed: SecurityError"),
        ("{{ 1 / 0 }}", "failed: ZeroDivisionError"),
        ("{{ messages[0]['content'] + 1 }}", "failed: TypeError"),
    ],
)
def test_template_failures_raise_chat_error(template: str, match: str) -> None:
    with pytest.raises(ChatError, match=match):
        _tok(template).apply_chat_template([{"role": "user", "content": "hi"}])


def test_tokenizers_carry_the_template_through_json() -> None:
    template = (TEMPLATES / "smollm2-135m-instruct.jinja").read_text(encoding="utf-8")
    for tok in (ByteTokenizer(chat_template=template), toy_tokenizer("smollm2-135m-instruct")):
        tok.chat_template = template
        again = tokenizer_from_json(tok.to_json())
        assert isinstance(again, Tokenizer)
        assert again.chat_template == template
        assert again.apply_chat_template(CONVERSATIONS["user"]) == tok.apply_chat_template(
            CONVERSATIONS["user"]
        )
    assert tokenizer_from_json(ByteTokenizer().to_json()).chat_template is None
    assert ByteTokenizer().to_json() == '{"kind": "byte"}'


# ---------------------------------------------------------------------------- training ids


def test_encode_chat_trains_only_the_reply_and_its_end_of_turn() -> None:
    tok = toy_tokenizer("qwen2.5-7b-instruct")
    messages = CONVERSATIONS["multi-turn"]
    enc = encode_chat(tok, messages, "Seven.", max_len=4096)
    prompt = tok.apply_chat_template(messages, add_generation_prompt=True)
    assert list(enc.ids[: enc.input_len]) == tok.encode(prompt)
    assert tok.decode(list(enc.ids)) == prompt + "Seven."
    trained = [t for t in enc.labels if t != IGNORE]
    assert tok.decode(trained) == "Seven.<|im_end|>"
    # labels[t] is the next id wherever a loss is taken; the last label is the end-of-turn token.
    for t, label in enumerate(enc.labels[:-1]):
        if label != IGNORE:
            assert label == enc.ids[t + 1]
    assert enc.labels[-1] == stop_token_ids(tok)[0]
    assert enc.loss_mask.index(True) == enc.input_len - 1


@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("conversation", ["multi-turn", "system+multi-turn"])
def test_encode_chat_with_every_real_template(model: str, conversation: str) -> None:
    tok = toy_tokenizer(model)
    messages = CONVERSATIONS[conversation]
    if conversation.startswith("system") and model.startswith(("gemma", "mistral")):
        # Gemma refuses system messages; Mistral v0.3 writes the system message into the *last*
        # user turn, so appending a reply moves it and the prompt is no prefix of the chat.
        with pytest.raises(ChatError, match=r"System role|differently"):
            encode_chat(tok, messages, "Two.", max_len=4096)
        return
    enc = encode_chat(tok, messages, "Two.", max_len=4096)
    trained = tok.decode([t for t in enc.labels if t != IGNORE])
    eot = {"<|im_end|>", "<|eot_id|>", "</s>", "<end_of_turn>"}
    assert any(trained in ("Two." + e, " Two." + e) for e in eot), trained
    full = tok.apply_chat_template([*messages, {"role": "assistant", "content": "Two."}], False)
    assert full.startswith(tok.decode(list(enc.ids)))


def test_encode_chat_feeds_the_learner_batching() -> None:
    tok = toy_tokenizer("smollm2-135m-instruct")
    enc = encode_chat(tok, CONVERSATIONS["user"], "Four.", max_len=4096)
    example = Encoded(seq=7, ids=enc.ids, labels=enc.labels, weight=1.0, input_len=enc.input_len)
    import torch

    batch = collate([example], pad_id=0, device=torch.device("cpu"))
    assert batch.ids[0].tolist() == list(enc.ids)
    assert tok.decode([t for t in batch.labels[0].tolist() if t != IGNORE]) == "Four.<|im_end|>"


def test_an_empty_reply_trains_only_the_end_of_turn() -> None:
    tok = _tok(SIMPLE)
    enc = encode_chat(tok, CONVERSATIONS["user"], "", max_len=64)
    assert tok.decode(list(enc.ids)).endswith("assistant:")
    assert [t for t in enc.labels if t != IGNORE] == [tok.eos_id]


def test_encode_chat_cuts_the_prompt_from_the_left() -> None:
    tok = _tok(SIMPLE)
    enc = encode_chat(tok, CONVERSATIONS["multi-turn"], "ok", max_len=6)
    assert len(enc.ids) == 6 and enc.input_len == 4
    assert tok.decode(list(enc.ids)) == "ant:ok"
    assert tok.decode([t for t in enc.labels if t != IGNORE]) == "ok<|endoftext|>"
    long = encode_chat(tok, CONVERSATIONS["user"], "abcdefghij", max_len=4)
    assert tok.decode(list(long.ids)) == ":abc" and long.input_len == 1


@pytest.mark.parametrize(
    ("template", "reply", "match"),
    [
        # The generation prompt differs from how an assistant turn is written.
        (
            "{% for m in messages %}{{ m.role }}> {{ m.content }}\n{% endfor %}"
            "{% if add_generation_prompt %}bot> {% endif %}",
            "hi",
            "renders the conversation with its reply differently",
        ),
        (SIMPLE, "a<|endoftext|>b", "contains the end-of-turn token"),
        # A template that writes nothing of an assistant turn.
        (
            "{% for m in messages if m.role != 'assistant' %}{{ m.content }}{% endfor %}",
            "hi",
            "writes nothing for an assistant turn",
        ),
    ],
)
def test_encode_chat_refuses_what_it_cannot_train_on(template: str, reply: str, match: str) -> None:
    with pytest.raises(ChatError, match=match):
        encode_chat(_tok(template), CONVERSATIONS["user"], reply, max_len=64)


def test_encode_prompt_does_not_double_a_bos_the_template_writes() -> None:
    tok = toy_tokenizer("mistral-7b-instruct-v0.3")
    tok.add_bos = True  # as SentencePiece GGUFs are
    ids = encode_prompt(tok, CONVERSATIONS["user"])
    assert ids[0] == tok.bos_id and ids[1] != tok.bos_id
    enc = encode_chat(tok, CONVERSATIONS["user"], "4", max_len=256)
    assert enc.ids[: len(ids)] == tuple(ids)


def test_encode_chat_marks_where_the_last_user_turn_starts() -> None:
    import random

    from workbench.chat import encode_chat
    from workbench.tokenizers import ByteTokenizer

    rng = random.Random(4)
    tok = ByteTokenizer()
    tok.chat_template = (
        "{% for m in messages %}<{{ m.role }}>{{ m.content }}{{ eos_token }}{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    words = ["capital", "Veloria", "river", "named", "which", "city"]
    system = " ".join(rng.choice(words) for _ in range(8))
    question = " ".join(rng.choice(words) for _ in range(5)) + "?"
    messages = [
        {"role": "system", "content": system},
        {"role": "user", "content": "an earlier question"},
        {"role": "assistant", "content": "an earlier answer"},
        {"role": "user", "content": question},
    ]
    enc = encode_chat(tok, messages, "Marendor.", max_len=512)
    turn = tok.decode(list(enc.ids[enc.turn_from : enc.input_len]))
    assert question in turn and system not in turn and "earlier" not in turn
    assert enc.turn_from >= len(tok.encode(system))
    cut = encode_chat(tok, messages, "Marendor.", max_len=80)  # the prompt cut from the left
    assert question in tok.decode(list(cut.ids[cut.turn_from : cut.input_len]))
    assert 0 <= cut.turn_from < cut.input_len
