"""Chat templates: conversations rendered the way the ecosystem renders them, and made trainable.

A chat template is a Jinja program shipped with a model (GGUF ``tokenizer.chat_template``, or
``chat_template`` in a Hugging Face ``tokenizer_config.json``). It is untrusted code, so it runs
in jinja2's immutable sandbox with what transformers gives it and nothing more: ``trim_blocks``
and ``lstrip_blocks``, the ``loopcontrols`` extension, the ``{% generation %}`` tag (rendered as
its body), ``raise_exception``, ``strftime_now``, a ``tojson`` that does not escape HTML, and
the variables ``messages``, ``add_generation_prompt``, ``tools=None``, ``documents=None``,
``bos_token`` and ``eos_token``. The same template and messages give the same string as
``transformers``' ``apply_chat_template(..., tokenize=False)``.

This module knows messages, templates and the ``Tokenizer`` protocol; it knows nothing of models
or the learner. A conversation becomes ``(ids, labels, input_len)`` here (``encode_chat``), the
shape ``workbench.batching.Encoded`` already carries, so the learner trains on chats
without learning what a chat is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Protocol

from workbench._template_sandbox import TemplateRaised, environment
from workbench.losses import IGNORE

if TYPE_CHECKING:
    import jinja2


class Tokenizer(Protocol):
    """What this module needs of a tokenizer: ``workbench.tokenizers.Tokenizer`` has it.

    Declared here rather than imported so that chat stays below tokenizers (which call into
    it for ``apply_chat_template``) in the layer table.
    """

    chat_template: str | None

    @property
    def bos_id(self) -> int | None: ...

    @property
    def eos_id(self) -> int | None: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


__all__ = [
    "END_OF_TURN_TOKENS",
    "ROLES",
    "ChatEncoding",
    "ChatError",
    "apply_chat_template",
    "check_messages",
    "encode_chat",
    "encode_prompt",
    "render_chat_template",
    "stop_token_ids",
]

ROLES = ("system", "user", "assistant", "tool")

# Tokens that end a turn in the chat formats we know of. One counts for a template only when
# the template writes it and the tokenizer has it as a single token (see ``stop_token_ids``).
END_OF_TURN_TOKENS = (
    "<|im_end|>",  # ChatML: SmolLM, Qwen
    "<|eot_id|>",  # Llama 3
    "<|eom_id|>",  # Llama 3.1 tool calls
    "<end_of_turn>",  # Gemma
    "<|end|>",  # Phi-3
    "</s>",  # Llama 2, Mistral
    "<|endoftext|>",
    "<|end_of_text|>",
    "<|END_OF_TURN_TOKEN|>",  # Command-R
    "<|return|>",  # gpt-oss
    "<|call|>",
)

_NO_TEMPLATE = (
    "this tokenizer has no chat template; use raw completion, or set tokenizer.chat_template"
)


class ChatError(ValueError):
    """A conversation cannot be rendered or encoded; the message says what is wrong and the fix."""


@lru_cache(maxsize=32)
def _compile(template: str) -> jinja2.Template:
    import jinja2

    try:
        return environment().from_string(template)
    except jinja2.TemplateSyntaxError as e:
        raise ChatError(f"the chat template does not parse (line {e.lineno}): {e.message}") from e


def _plain(value: Any, where: str) -> Any:
    """A deep copy of ``value`` made of JSON types only, so a template sees no live objects."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v, where) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v, where) for v in value]
    raise ChatError(f"{where}: {type(value).__name__} values cannot reach a chat template")


def check_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Validate a conversation (roles from ``ROLES``, string contents); a plain copy of it."""
    if isinstance(messages, str | bytes) or not isinstance(messages, Sequence):
        raise ChatError(
            f"a conversation is a list of {{'role', 'content'}} dicts, got {type(messages).__name__}"
        )
    if not messages:
        raise ChatError("the conversation is empty; give at least one message")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise ChatError(
                f"message {i} is a {type(m).__name__}, not a {{'role', 'content'}} dict"
            )
        role = m.get("role")
        if role not in ROLES:
            raise ChatError(f"message {i} has role {role!r}; expected one of {', '.join(ROLES)}")
        content = m.get("content")
        if not isinstance(content, str):
            raise ChatError(
                f"message {i} ({role}) has {type(content).__name__} content; content must be a string"
            )
        # Keys set to None are dropped, as transformers does: templates test presence, not value.
        out.append({k: _plain(v, f"message {i} key {k!r}") for k, v in m.items() if v is not None})
    return out


def render_chat_template(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = True,
    bos_token: str | None = None,
    eos_token: str | None = None,
    **variables: Any,
) -> str:
    """Render ``messages`` with the chat ``template``, exactly as transformers does.

    ``variables`` reach the template as extra globals (``date_string``, ``enable_thinking``...).

    Examples
    --------
    >>> t = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
    >>> t += "{% if add_generation_prompt %}<assistant>{% endif %}"
    >>> render_chat_template(t, [{"role": "user", "content": "hi"}])
    '<user>hi<assistant>'
    >>> render_chat_template(t, [{"role": "robot", "content": "hi"}])
    Traceback (most recent call last):
    ...
    workbench.chat.ChatError: message 0 has role 'robot'; expected one of system, user, assistant, tool
    """
    import jinja2

    if not isinstance(template, str):
        raise ChatError(f"a chat template is a string, got {type(template).__name__}")
    chat = check_messages(messages)
    compiled = _compile(template)
    context: dict[str, Any] = {}
    if bos_token is not None:
        context["bos_token"] = bos_token
    if eos_token is not None:
        context["eos_token"] = eos_token
    # Extra variables override the special tokens, as transformers' keyword arguments do.
    context.update({k: _plain(v, f"variable {k!r}") for k, v in variables.items()})
    context.update(
        messages=chat, tools=None, documents=None, add_generation_prompt=add_generation_prompt
    )
    try:
        return compiled.render(**context)
    except TemplateRaised as e:
        raise ChatError(f"the chat template refused this conversation: {e}") from e
    except (
        jinja2.TemplateError,
        TypeError,
        ValueError,
        ArithmeticError,
        LookupError,
        AttributeError,
        RecursionError,
    ) as e:
        # Whatever else a template's expressions throw is the template's failure, not ours.
        raise ChatError(f"the chat template failed: {type(e).__name__}: {e}") from e


# ---------------------------------------------------------------------------- with a tokenizer


def _token_text(tokenizer: Tokenizer, token_id: int | None) -> str | None:
    return None if token_id is None else tokenizer.decode([token_id])


def _single_token(tokenizer: Tokenizer, text: str) -> int | None:
    """The id of ``text`` when the tokenizer reads it as one token (a BOS it adds aside)."""
    ids = tokenizer.encode(text)
    bos = tokenizer.bos_id
    if len(ids) == 2 and ids[0] == bos and ids[1] != bos:
        ids = ids[1:]
    if len(ids) != 1 or tokenizer.decode(ids) != text:
        return None
    return ids[0]


def apply_chat_template(
    tokenizer: Tokenizer, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True
) -> str:
    """Render ``messages`` with ``tokenizer.chat_template`` and its BOS/EOS token strings.

    Raises ``ChatError`` when the tokenizer has no template: there is no silent default format.
    ``tokenizer.apply_chat_template(...)`` calls this.

    Examples
    --------
    >>> from workbench.tokenizers import ByteTokenizer
    >>> tok = ByteTokenizer()
    >>> apply_chat_template(tok, [{"role": "user", "content": "hi"}])
    Traceback (most recent call last):
    ...
    workbench.chat.ChatError: this tokenizer has no chat template; use raw completion, or set tokenizer.chat_template
    >>> tok.chat_template = "{% for m in messages %}{{ m.content }}{{ eos_token }}{% endfor %}"
    >>> apply_chat_template(tok, [{"role": "user", "content": "hi"}])
    'hi<|endoftext|>'
    """
    template = getattr(tokenizer, "chat_template", None)
    if template is None:
        raise ChatError(_NO_TEMPLATE)
    return render_chat_template(
        template,
        messages,
        add_generation_prompt=add_generation_prompt,
        bos_token=_token_text(tokenizer, tokenizer.bos_id),
        eos_token=_token_text(tokenizer, tokenizer.eos_id),
    )


def stop_token_ids(tokenizer: Tokenizer) -> tuple[int, ...]:
    """The ids generation stops at: EOS, then the end-of-turn tokens the chat template writes.

    An end-of-turn token (``END_OF_TURN_TOKENS``) counts when it appears in the template's text
    and the tokenizer reads it as one token. Without a template this is just ``(eos_id,)``.

    Examples
    --------
    >>> from workbench.tokenizers import bpe_from_vocab
    >>> tok = bpe_from_vocab(["a", "<s>", "<|im_end|>"], [], [1, 3, 3], bos_id=1, eos_id=1)
    >>> stop_token_ids(tok)
    (1,)
    >>> tok.chat_template = "{% for m in messages %}{{ m.content }}<|im_end|>{% endfor %}"
    >>> stop_token_ids(tok)
    (1, 2)
    """
    stops: list[int] = [] if tokenizer.eos_id is None else [tokenizer.eos_id]
    template = getattr(tokenizer, "chat_template", None) or ""
    for text in END_OF_TURN_TOKENS:
        if text in template:
            tid = _single_token(tokenizer, text)
            if tid is not None and tid not in stops:
                stops.append(tid)
    return tuple(stops)


def _encode_rendered(tokenizer: Tokenizer, text: str) -> list[int]:
    # A tokenizer that adds BOS on its own (SentencePiece GGUFs do) would double the BOS that
    # most templates write themselves; the template's wins.
    ids = tokenizer.encode(text)
    bos = tokenizer.bos_id
    bos_text = _token_text(tokenizer, bos)
    if bos is not None and bos_text and text.startswith(bos_text) and ids[:2] == [bos, bos]:
        ids = ids[1:]
    return ids


def encode_prompt(tokenizer: Tokenizer, messages: Sequence[Mapping[str, Any]]) -> list[int]:
    """Token ids of ``messages`` rendered with the generation prompt: what a model continues.

    Examples
    --------
    >>> from workbench.tokenizers import ByteTokenizer
    >>> tok = ByteTokenizer()
    >>> tok.chat_template = "{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}:"
    >>> encode_prompt(tok, [{"role": "user", "content": "hi"}])
    [256, 104, 105, 58]
    """
    return _encode_rendered(tokenizer, apply_chat_template(tokenizer, messages, True))


@dataclass(frozen=True)
class ChatEncoding:
    """A conversation plus reply as training data, in ``batching.Encoded``'s layout.

    ``ids`` is the rendered prompt (up to and including the generation prompt) followed by the
    reply's tokens; ``labels[t]`` is the token ``ids[t]`` should predict, or ``IGNORE``. Only the
    reply and the end-of-turn token after it carry labels; like ``encode_example``'s EOS, the
    end-of-turn token is the label of the last id, not an id itself.
    """

    ids: tuple[int, ...]
    labels: tuple[int, ...]
    input_len: int  # tokens of the prompt (context) part; the reply starts at ids[input_len]
    # where the last user turn's text starts (or a token before it): what the turn asks, as
    # opposed to the template's own text and the system prompt
    turn_from: int = 0

    @property
    def loss_mask(self) -> tuple[bool, ...]:
        """True at the positions that carry a loss (their label is a reply token)."""
        return tuple(label != IGNORE for label in self.labels)


def encode_chat(
    tokenizer: Tokenizer, messages: Sequence[Mapping[str, Any]], reply: str, max_len: int
) -> ChatEncoding:
    """Encode ``messages`` followed by the assistant ``reply`` for training on the reply alone.

    The prompt is the conversation rendered with the generation prompt; the full text is the
    conversation with ``{"role": "assistant", "content": reply}`` appended, rendered without
    one. The prompt must be a prefix of the full text, as text and as tokens, so the model is
    trained on exactly the context it will be asked to continue; otherwise ``ChatError`` says
    which (a template that renders past turns differently from the one being generated, or a
    reply whose first characters merge with the prompt's last token: strip its leading
    whitespace). The reply's tokens run up to the first stop token (``stop_token_ids``), which is
    trained too; anything the template writes after it is dropped. Longer than ``max_len``: the
    prompt is cut from the left and a reply that alone is too long keeps its beginning, as
    ``encode_example`` does.

    Examples
    --------
    >>> from workbench.tokenizers import ByteTokenizer
    >>> tok = ByteTokenizer()
    >>> tok.chat_template = (
    ...     "{% for m in messages %}{{ m.role[0] }}:{{ m.content }}{{ eos_token }}{% endfor %}"
    ...     "{% if add_generation_prompt %}a:{% endif %}"
    ... )
    >>> enc = encode_chat(tok, [{"role": "user", "content": "hi"}], "yo", max_len=64)
    >>> tok.decode(enc.ids), enc.input_len
    ('u:hi<|endoftext|>a:yo', 7)
    >>> [tok.decode([t]) for t, m in zip(enc.labels, enc.loss_mask) if m]
    ['y', 'o', '<|endoftext|>']
    """
    if not isinstance(reply, str):
        raise ChatError(f"the reply must be a string, got {type(reply).__name__}")
    if max_len < 1:
        raise ChatError(f"max_len must be at least 1, got {max_len}")
    stops = stop_token_ids(tokenizer)
    for tid in stops:
        text = tokenizer.decode([tid])
        if text and text in reply:
            raise ChatError(f"the reply contains the end-of-turn token {text!r}; remove it")
    prompt = apply_chat_template(tokenizer, messages, add_generation_prompt=True)
    full = apply_chat_template(
        tokenizer, [*messages, {"role": "assistant", "content": reply}], add_generation_prompt=False
    )
    if not full.startswith(prompt):
        at = next((i for i, (a, b) in enumerate(zip(prompt, full, strict=False)) if a != b), None)
        at = min(len(prompt), len(full)) if at is None else at
        raise ChatError(
            "the chat template renders the conversation with its reply differently from the "
            f"prompt it generates from (they part at character {at}: prompt has "
            f"{prompt[at : at + 30]!r}, conversation has {full[at : at + 30]!r}); this template "
            "cannot train on replies"
        )
    context = _encode_rendered(tokenizer, prompt)
    full_ids = _encode_rendered(tokenizer, full)
    if full_ids[: len(context)] != context:
        raise ChatError(
            "the reply's first characters merge with the end of the prompt into other tokens, so "
            "the model would be trained on a context it never sees; strip leading whitespace "
            "from the reply"
        )
    rest = full_ids[len(context) :]
    end = next((i for i, t in enumerate(rest) if t in stops), None)
    # The end-of-turn token is a label, not an input: nothing is predicted after it.
    tgt, tail = (rest, rest) if end is None else (rest[:end], rest[: end + 1])
    if not tail:
        raise ChatError(
            "the chat template writes nothing for an assistant turn; it cannot train on replies"
        )
    turn_from = _turn_start(tokenizer, messages, prompt)
    room = max(1, max_len - len(tgt))
    if len(context) > room:
        turn_from = max(0, turn_from - (len(context) - room))
        context = context[-room:]
    ids = (context + tgt)[:max_len]
    labels = ([IGNORE] * (len(context) - 1) + tail)[: len(ids)]
    if not context:  # a template that renders an empty prompt: the first token is unpredictable
        labels = tail[1 : len(ids) + 1]
    labels += [IGNORE] * (len(ids) - len(labels))
    return ChatEncoding(tuple(ids), tuple(labels), len(context), min(turn_from, len(context)))


def _turn_start(tokenizer: Tokenizer, messages: Sequence[Mapping[str, Any]], prompt: str) -> int:
    """Token index at which the last user message's text starts in the rendered ``prompt``
    (one token early, since the text before it may tokenize differently alone); 0 when the
    template does not render the text verbatim."""
    users = [m for m in messages if m.get("role") == "user" and isinstance(m.get("content"), str)]
    if not users or not users[-1]["content"]:
        return 0
    at = prompt.rfind(users[-1]["content"])
    if at <= 0:
        return 0
    return max(0, len(_encode_rendered(tokenizer, prompt[:at])) - 1)
