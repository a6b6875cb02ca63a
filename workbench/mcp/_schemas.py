"""What the MCP tools take and answer: argument types, the conversation shape, answer models.

The boundary: schemas only. Each parameter type carries its bounds as pydantic constraints, so
the JSON schema an agent reads (``maxLength``, ``maximum``, ``enum``, ``maxItems``) is the same
check the server runs; :func:`strict_tool` then re-derives a tool's argument model in pydantic
strict mode with ``extra="forbid"`` (no booleans or numeric strings as numbers, no unknown
arguments) and without the SDK's habit of JSON-decoding string arguments, so a target such as
``'{"a": 1}'`` stays text. What the tools *do* lives in :mod:`workbench.mcp.tools`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from mcp.server.mcpserver.tools import Tool
from mcp.server.mcpserver.utilities.func_metadata import ArgModelBase, FuncMetadata
from pydantic import BaseModel, ConfigDict, Field

from workbench.chat import ROLES
from workbench.learner.config import MAX_MESSAGES, MAX_TEXT_CHARS, MAX_WEIGHT
from workbench.mcp.paths import MAX_PATH_CHARS

__all__ = [
    "MAX_NEW_TOKENS",
    "MAX_TEMPERATURE",
    "CheckpointInfo",
    "CheckpointsAnswer",
    "ExampleAnswer",
    "FilePath",
    "GenerateAnswer",
    "LearningRate",
    "LearningStats",
    "Message",
    "Messages",
    "Method",
    "NewTokens",
    "Role",
    "Temperature",
    "Text",
    "ToolAnswer",
    "UpdateAnswer",
    "Weight",
    "WeightsAnswer",
    "conversation",
    "strict_tool",
]

MAX_NEW_TOKENS = 4096
MAX_TEMPERATURE = 10.0

# ---------------------------------------------------------------------- parameter types
Text = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_TEXT_CHARS,
        description="Non-empty text, at most 100,000 characters.",
    ),
]
FilePath = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_PATH_CHARS,
        description="A path inside the server's root folder; relative paths are taken from it.",
    ),
]
Weight = Annotated[
    float,
    Field(
        gt=0,
        le=MAX_WEIGHT,
        allow_inf_nan=False,
        description="How much this example counts, in (0, 100].",
    ),
]
Method = Annotated[
    Literal["edit", "finetune"],
    Field(
        description=(
            "How the example is taught: 'edit' writes it into the edit memory (a fact keyed on "
            "a word; only that word's tokens change), 'finetune' takes a gradient step; "
            "omitted: the learner's update_method."
        )
    ),
]
LearningRate = Annotated[
    float, Field(gt=0, le=1, allow_inf_nan=False, description="Peak learning rate, in (0, 1].")
]
NewTokens = Annotated[int, Field(ge=0, le=MAX_NEW_TOKENS, description="Tokens to generate.")]
Temperature = Annotated[
    float,
    Field(ge=0, le=MAX_TEMPERATURE, allow_inf_nan=False, description="0 is greedy; up to 10."),
]

# ---------------------------------------------------------------------- conversations
# The core also knows a "tool" role, but a tool turn means something only beside the assistant's
# tool call, which a {role, content} message cannot carry; so agents get the three plain roles.
Role = Literal["system", "user", "assistant"]
assert set(get_args(Role)) <= set(ROLES), "the MCP roles must be roles the chat core accepts"


class Message(BaseModel):
    """One turn of a conversation: who speaks and what they say; no other keys."""

    model_config = ConfigDict(strict=True, extra="forbid")

    role: Role = Field(description="Who speaks: system, user or assistant.")
    content: str = Field(
        max_length=MAX_TEXT_CHARS,
        description="What they say; at most 100,000 characters (for all turns together too).",
    )


Messages = Annotated[
    list[Message],
    Field(
        min_length=1,
        max_length=MAX_MESSAGES,
        description=(
            f"A conversation: 1 to {MAX_MESSAGES} {{role, content}} turns, oldest first, "
            "normally ending with the user's turn. Rendered with the model's chat template."
        ),
    ),
]


def conversation(messages: list[Message]) -> list[dict[str, str]]:
    """``messages`` as the plain dicts the learner takes, refused when too long altogether.

    Each turn is bounded by the schema; the whole conversation by the same limit as one text,
    which JSON schema cannot say, so it is checked here.

    >>> conversation([Message(role="user", content="Hi")])
    [{'role': 'user', 'content': 'Hi'}]
    """
    total = sum(len(m.content) for m in messages)
    if total > MAX_TEXT_CHARS:
        raise ValueError(
            f"messages hold {total:,} characters in all; the limit is {MAX_TEXT_CHARS:,}: "
            "drop or shorten earlier turns"
        )
    return [{"role": m.role, "content": m.content} for m in messages]


# ---------------------------------------------------------------------- answers
class LearningStats(BaseModel):
    """The learner's counters: the design's six keys, then whatever else the learner reports."""

    model_config = ConfigDict(extra="allow")

    total_examples: int
    total_updates: int
    buffer_size: int
    average_loss: float | None
    learning_rate: float
    enabled: bool


class ToolAnswer(BaseModel):
    """What every tool answers (a failure is a tool error instead, with its message)."""

    success: bool
    message: str
    stats: LearningStats | None = None


class ExampleAnswer(ToolAnswer):
    id: str  # the stored example's id
    will_train: bool  # learning is on, so the background worker will train on it


class UpdateAnswer(ToolAnswer):
    loss: float | None  # None when the loss was not finite


class WeightsAnswer(ToolAnswer):
    path: str  # relative to the root when inside it
    format: str


class GenerateAnswer(ToolAnswer):
    text: str


class CheckpointInfo(BaseModel):
    path: str  # relative to the root when inside it, so load_weights accepts it as written
    updates: int
    bytes: int
    modified: float  # seconds since the epoch


class CheckpointsAnswer(ToolAnswer):
    checkpoints: list[CheckpointInfo]


# ---------------------------------------------------------------------- strict argument models
class _StrictFuncMetadata(FuncMetadata):
    """Arguments validated as sent: no JSON-decoding of strings into lists or objects."""

    def pre_parse_json(self, data: dict[str, Any]) -> dict[str, Any]:
        return dict(data)


def strict_tool(tool: Tool) -> Tool:
    """``tool`` with its argument model in pydantic strict mode and refusing unknown keys.

    Its JSON schema is written out in place (no ``$ref`` into ``$defs``): some clients that
    turn schemas into a model's tool definitions do not follow references.
    """
    meta = tool.fn_metadata
    strict_model: type[ArgModelBase] = type(
        meta.arg_model.__name__,
        (meta.arg_model,),
        {
            "model_config": ConfigDict(strict=True, extra="forbid"),
            "__module__": __name__,
            "__doc__": f"Arguments of {tool.name}.",
        },
    )
    strict_meta = _StrictFuncMetadata(
        arg_model=strict_model,
        output_schema=meta.output_schema,
        output_model=meta.output_model,
        wrap_output=meta.wrap_output,
    )
    schema = strict_model.model_json_schema(by_alias=True)
    return tool.model_copy(update={"fn_metadata": strict_meta, "parameters": _inline(schema)})


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with every ``{"$ref": "#/$defs/X"}`` replaced by ``X`` (no recursive types).

    >>> _inline({"$defs": {"A": {"type": "string"}}, "items": {"$ref": "#/$defs/A"}})
    {'items': {'type': 'string'}}
    """
    defs = schema.get("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/") and len(node) == 1:
                return walk(defs[ref.removeprefix("#/$defs/")])
            return {k: walk(v) for k, v in node.items() if k != "$defs"}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    out = walk(schema)
    assert isinstance(out, dict)
    return out
