"""MCP tools for labeling beside a person: ``label_next``, ``label_submit``, ``label_stats``.

A skin over one ``LabelingSession`` (``workbench.labeling``): an agent takes the next item with
the model's calibrated suggestion, answers it, and reads the session's progress and agreement.
The person labels the same session in the panel; both answers land in the same SQLite table,
each with its ``agent``. Arguments are bounded in the schemas and checked in pydantic strict
mode like the learner's tools (``strict_tool``); what a schema cannot say (the label must be
one of the session's) is checked by the session, whose ``LabelingError`` says the fix.
``label_submit`` changes the learner, so it runs on the learner's lane with the other
ordered tools; the two readers answer at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Annotated, Any

from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.tools import Tool
from pydantic import BaseModel, Field

from workbench.labeling import LabelingError, LabelingSession
from workbench.learner import LearnerError
from workbench.mcp._schemas import Weight
from workbench.mcp.ordering import Lane, lane_for, method_tools

__all__ = [
    "LABELING_TOOL_NAMES",
    "LabelNextAnswer",
    "LabelStatsAnswer",
    "LabelSubmitAnswer",
    "LabelingTools",
]

ItemId = Annotated[
    str, Field(min_length=1, max_length=200, description="An item id from label_next.")
]
LabelValue = Annotated[
    str,
    Field(
        min_length=1,
        max_length=200,
        description="One of the session's labels, or accept (the suggestion is right), "
        "reject (it is wrong) or skip.",
    ),
]
Agent = Annotated[
    str,
    Field(
        min_length=1,
        max_length=100,
        pattern=r"^[A-Za-z0-9_.:-]+$",
        description="Who answers (letters, digits, _ . : -), stored with the answer.",
    ),
]


class LabelNextAnswer(BaseModel):
    success: bool
    message: str
    done: bool  # every item is answered; the item fields are None
    item_id: str | None = None
    text: str | None = None
    suggestion: str | None = None  # the model's most likely label
    scores: dict[str, float] | None = None  # label -> calibrated probability
    labels: list[str]
    remaining: int


class LabelSubmitAnswer(BaseModel):
    success: bool
    message: str
    n: int  # the answer's number in the session
    item_id: str
    answer: str  # accept | reject | skip
    label: str | None  # the label taught (None: nothing taught)
    model_label: str
    agreed: bool
    remaining: int


class LabelStatsAnswer(BaseModel):
    success: bool
    message: str
    answered: int
    remaining: int
    total: int
    skipped: int
    agreement: float | None  # suggestion == answer over the window
    window: int
    labels_per_minute: float
    by_label: dict[str, int]


@contextmanager
def _as_tool_error() -> Iterator[None]:
    try:
        yield
    except (LabelingError, LearnerError) as e:
        raise ToolError(str(e)) from e


def _fields(answer: type[BaseModel], values: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of the session's ``values`` that the tool's ``answer`` has a field for."""
    return {k: values[k] for k in answer.model_fields if k in values}


class LabelingTools:
    """The labeling tools bound to one session (plain calls; ``tools()`` makes MCP tools)."""

    def __init__(self, session: LabelingSession, lane: Lane | None = None) -> None:
        self.session = session
        self.lane = lane if lane is not None else lane_for(session.learner)

    def label_next(self) -> LabelNextAnswer:
        """The next item to label, chosen by the session's order, with the model's calibrated
        label scores and its suggestion. done=true when every item is answered."""
        with _as_tool_error():
            s = self.session
            x = s.next()
            remaining = s.stats()["remaining"]
            if x is None:
                return LabelNextAnswer(
                    success=True,
                    message="every item is answered",
                    done=True,
                    labels=list(s.labels),
                    remaining=0,
                )
            return LabelNextAnswer(
                success=True,
                message=f"item {x.item_id}: the model suggests {x.label}",
                done=False,
                item_id=x.item_id,
                text=x.text,
                suggestion=x.label,
                scores=x.scores,
                labels=list(s.labels),
                remaining=remaining,
            )

    def label_submit(
        self, item_id: ItemId, label: LabelValue, weight: Weight = 1.0, agent: Agent = "agent"
    ) -> LabelSubmitAnswer:
        """Answer an item: one of the session's labels, or accept / reject / skip the model's
        suggestion. Stored durably before this answers; a label becomes a training example of
        this weight. Answering an item again replaces the earlier answer."""
        with _as_tool_error():
            out = self.session.answer(item_id, label, weight=weight, agent=agent)
            return LabelSubmitAnswer(
                success=True,
                remaining=self.session.stats()["remaining"],
                **_fields(LabelSubmitAnswer, out),
            )

    def label_stats(self) -> LabelStatsAnswer:
        """The session's progress and the model's agreement with the answers so far."""
        with _as_tool_error():
            st = self.session.stats()
            return LabelStatsAnswer(
                success=True,
                message=f"{st['answered']} answered, {st['remaining']} to go",
                **_fields(LabelStatsAnswer, st),
            )

    def tools(self) -> list[Tool]:
        return method_tools(self, _TOOLS, self.lane, ordered={"label_submit"})


_TOOLS: tuple[Callable[..., BaseModel], ...] = (
    LabelingTools.label_next,
    LabelingTools.label_submit,
    LabelingTools.label_stats,
)
LABELING_TOOL_NAMES: tuple[str, ...] = tuple(fn.__name__ for fn in _TOOLS)
