"""The MCP tools: each agent call maps to one public learner call, typed strictly.

The boundary: this module turns the learner's public API into MCP tools with the design's
names, parameters and answers (``{success, message, stats}`` as structured output, the same
JSON as text) and refuses bad input before the learner sees it. It knows nothing about
transports (stdio, HTTP): :func:`build_server` returns an ``MCPServer`` that either can run.

Order: the tools that change or read the learner's state (``ORDERED_TOOLS``) run on the
learner's lane (:mod:`workbench.mcp.ordering`), one at a time in the order the server received
them; inference and the counters (``CONCURRENT_TOOLS``) run beside it, so they answer while an
update runs. Files: paths are decided by the guard (:mod:`workbench.mcp.paths`) and the learner
is handed descriptor paths beneath the root it holds open, never the agent's text.

Strictness lives in the argument models (:mod:`workbench.mcp._schemas`): every parameter is
bounded there, in the JSON schema the agent reads, and checked in pydantic strict mode. What
a schema cannot say (exactly one of ``prompt`` and ``messages``; a conversation needs a chat
template) is checked here, before the learner is called, with a message naming the fix.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.tools import Tool

from workbench.formats import (
    WeightFormat,
    WeightLoadError,
    WeightSaveError,
    is_weights_file,
    saved_files,
)
from workbench.formats.opener import lexists
from workbench.learner import Learner, LearnerError, LearnerFailed, TrainingExample
from workbench.mcp._schemas import (
    CheckpointInfo,
    CheckpointsAnswer,
    ExampleAnswer,
    FilePath,
    GenerateAnswer,
    LearningRate,
    LearningStats,
    Message,
    Messages,
    Method,
    NewTokens,
    Temperature,
    Text,
    ToolAnswer,
    UpdateAnswer,
    Weight,
    WeightsAnswer,
    conversation,
)
from workbench.mcp.ordering import Lane, lane_for, method_tools
from workbench.mcp.paths import PathRefused, Root

if TYPE_CHECKING:
    from workbench.labeling import LabelingSession

__all__ = [
    "CONCURRENT_TOOLS",
    "ORDERED_TOOLS",
    "TOOL_NAMES",
    "CheckpointInfo",
    "CheckpointsAnswer",
    "ExampleAnswer",
    "GenerateAnswer",
    "LearnerTools",
    "LearningStats",
    "Message",
    "ToolAnswer",
    "UpdateAnswer",
    "WeightsAnswer",
    "build_server",
]

SERVER_NAME = "markovian-workbench"


# ---------------------------------------------------------------------- the tools
# Errors the learner, the formats and the guard raise on purpose, with a message for the caller.
# Anything else is a bug: the SDK logs it to stderr and answers a generic tool error.
_EXPECTED = (
    LearnerError,
    LearnerFailed,
    WeightLoadError,
    WeightSaveError,
    PathRefused,
    ValueError,
    OSError,
    TimeoutError,
)


@contextmanager
def _as_tool_error(root: Root | None = None) -> Iterator[None]:
    try:
        yield
    except ToolError:
        raise
    except _EXPECTED as e:
        message = str(e) or type(e).__name__
        raise ToolError(root.show_text(message) if root is not None else message) from e


def _exactly_one(name: str, text: str | None, messages: object) -> None:
    """Refuse a call with both the text argument ``name`` and ``messages``, or neither."""
    if (text is None) == (messages is None):
        given = "both" if text is not None else "neither"
        raise ToolError(
            f"give exactly one of {name} (raw text to continue) and messages (a conversation "
            f"for a chat model), not {given}"
        )


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; a diverged loss reads as null
    return value


class LearnerTools:
    """The tool implementations, bound to one learner and one root folder.

    The methods are plain synchronous calls (tests and other skins may call them directly);
    :meth:`tools` wraps the ordered ones so that they run on the learner's lane.

    Parameters
    ----------
    learner
        The learner the tools drive; shared with whoever else holds it (a notebook panel).
    root
        The folder file paths must stay inside, held open while the tools live; None turns the
        file tools off (they answer an error saying so), e.g. for a notebook that shares its
        learner without sharing files.
    """

    def __init__(self, learner: Learner, root: str | Path | None) -> None:
        self.learner = learner
        self.lane: Lane = lane_for(learner)
        self.root: Root | None = None
        if root is not None:
            if not os.path.isdir(root):
                raise ValueError(f"root {root} is not a folder")
            self.root = Root(root)

    # ------------------------------------------------------------------ helpers
    def _stats(self) -> LearningStats:
        stats = {k: _finite_or_none(v) for k, v in self.learner.get_stats().items()}
        return LearningStats.model_validate(stats)

    def _root(self) -> Root:
        if self.root is None:
            raise PathRefused(
                "file tools are off: this server was started without a root folder "
                "(workbench.mcp.serve_http(learner, root=...) or workbench mcp --root DIR)"
            )
        return self.root

    def _show(self, path: str | Path) -> str:
        return self.root.show(path) if self.root is not None else str(path)

    def _errors(self) -> contextlib.AbstractContextManager[None]:
        return _as_tool_error(self.root)

    def _need_chat_template(self, instead: str) -> None:
        # The learner refuses too, but in its own words; this names the tool's alternative.
        # (Weights loaded between this check and the call are caught by the learner's check.)
        if self.learner.chat_template() is None:
            raise ToolError(
                "this model has no chat template, so it cannot take messages: send the "
                f"conversation as plain text in {instead} instead, or load weights that carry "
                "a chat template"
            )

    # ------------------------------------------------------------------ tools
    def load_weights(
        self, file_path: FilePath, format: WeightFormat | None = None
    ) -> WeightsAnswer:
        """Load model weights from a file inside the root folder.

        The format is detected from the file's bytes when omitted; a given format must match
        them. A different architecture replaces the model; a custom checkpoint also restores
        the optimizer and learner state.
        """
        with self._errors():
            root = self._root()
            rel = root.for_read(file_path, format)
            info = self.learner.load_weights(root.path(rel), format)
            fmt = str(info.get("format", format))
            new = ", new architecture" if info.get("architecture_changed") else ""
            params = info.get("parameters")
            size = f" ({params:,} parameters{new})" if isinstance(params, int) else ""
            shown = rel or "."
            return WeightsAnswer(
                success=True,
                message=f"Loaded {fmt} weights from {shown}{size}",
                stats=self._stats(),
                path=shown,
                format=fmt,
            )

    def save_weights(self, file_path: FilePath, format: WeightFormat = "custom") -> WeightsAnswer:
        """Save the model's weights to a file inside the root folder.

        ``custom`` (default) is a full checkpoint with optimizer and learner state; the others
        hold the weights with the model's config and tokenizer (taught edits merged into the
        weights, approximately). An existing file is replaced
        only when it is itself a weights file.
        """
        with self._errors():
            root = self._root()
            rel = root.for_write(file_path, protected=[self.learner.session_dir])
            path = root.path(rel)
            for target in saved_files(Path(rel), format):
                _check_replaceable(root, target.as_posix(), rel, file_path, format)
            saved = self.learner.save_weights(path, format)
            return WeightsAnswer(
                success=True,
                message=f"Saved {format} weights to {self._show(saved)}",
                stats=self._stats(),
                path=self._show(saved),
                format=format,
            )

    def enable_learning(self) -> ToolAnswer:
        """Turn on continuous online learning: new examples train in the background."""
        with self._errors():
            self.learner.enable()
            return ToolAnswer(success=True, message="Online learning enabled", stats=self._stats())

    def disable_learning(self) -> ToolAnswer:
        """Turn off online learning; examples are still stored and train once it is on again."""
        with self._errors():
            self.learner.disable()
            return ToolAnswer(
                success=True,
                message="Online learning disabled (examples are still stored)",
                stats=self._stats(),
            )

    def add_training_example(
        self,
        input: Text | None = None,
        messages: Messages | None = None,
        target: Text | None = None,
        weight: Weight = 1.0,
        method: Method | None = None,
    ) -> ExampleAnswer:
        """Add a training example: the model learns to continue ``input`` with ``target``.

        Give exactly one of ``input`` (raw text) and ``messages`` (a conversation of
        ``{role, content}`` turns, for a model with a chat template). With ``input``, omit
        ``target`` to learn the input text itself. With ``messages``, ``target`` is required:
        the assistant's next reply, which the model learns to give. ``weight`` makes an example
        count more (or less) than others; ``method`` chooses how it is taught. The example is
        stored durably before this answers.
        """
        with self._errors():
            _exactly_one("input", input, messages)
            if messages is None:
                assert input is not None
                example = TrainingExample(input, target, weight, method=method)
            else:
                if target is None:
                    raise ToolError(
                        "messages needs a target: the assistant's reply to learn (to learn "
                        "a text by itself, send it as input)"
                    )
                turns = conversation(messages)
                self._need_chat_template("input (with target)")
                example = TrainingExample.from_chat(turns, target, weight=weight, method=method)
            result = self.learner.add_example(example)
            return ExampleAnswer(
                success=True,
                message=f"Example {result.seq} {result.message}",
                stats=self._stats(),
                id=result.id,
                will_train=result.will_train,
            )

    def get_learning_stats(self) -> ToolAnswer:
        """Report the learner's statistics: examples, updates, buffer, loss, learning rate."""
        with self._errors():
            return ToolAnswer(
                success=True, message="Learning statistics retrieved", stats=self._stats()
            )

    def set_learning_rate(self, learning_rate: LearningRate) -> ToolAnswer:
        """Set the peak learning rate; it applies from the next update."""
        with self._errors():
            self.learner.set_learning_rate(learning_rate)
            return ToolAnswer(
                success=True,
                message=f"Learning rate set to {learning_rate:g} (applies from the next update)",
                stats=self._stats(),
            )

    def force_update(self) -> UpdateAnswer:
        """Run one weight update now on the buffered examples (works with learning off too)."""
        with self._errors():
            loss = self.learner.force_update()
            stats = self._stats()
            return UpdateAnswer(
                success=True,
                message=f"Update {stats.total_updates} done, loss {loss:.4f}",
                stats=stats,
                loss=_finite_or_none(loss),
            )

    def generate(
        self,
        prompt: Text | None = None,
        messages: Messages | None = None,
        max_new_tokens: NewTokens = 64,
        temperature: Temperature = 0.0,
    ) -> GenerateAnswer:
        """Generate with the current weights and return the new text.

        Give exactly one of ``prompt`` (raw completion: the text is continued as written) and
        ``messages`` (chat: the conversation of ``{role, content}`` turns is rendered with the
        model's chat template and the assistant's next reply returned, stopping at the end of
        its turn). A model without a chat template takes ``prompt`` only.
        """
        with self._errors():
            _exactly_one("prompt", prompt, messages)
            if messages is None:
                assert prompt is not None
                text = self.learner.generate(prompt, max_new_tokens, temperature)
            else:
                turns = conversation(messages)
                self._need_chat_template("prompt (raw completion)")
                text = self.learner.chat(
                    turns, max_new_tokens=max_new_tokens, temperature=temperature
                )
            return GenerateAnswer(
                success=True,
                message=f"Generated {len(text)} characters",
                stats=self._stats(),
                text=text,
            )

    def list_checkpoints(self) -> CheckpointsAnswer:
        """List the session's checkpoints, newest first (load one with load_weights)."""
        with self._errors():
            found = [
                CheckpointInfo(
                    path=self._show(c["path"]),
                    updates=int(c["updates"]),
                    bytes=int(c["bytes"]),
                    modified=float(c["modified"]),
                )
                for c in self.learner.list_checkpoints()
            ]
            return CheckpointsAnswer(
                success=True,
                message=f"{len(found)} checkpoint(s) in the session folder",
                stats=self._stats(),
                checkpoints=found,
            )

    def tools(self) -> list[Tool]:
        """The ten tools, in the design's order, each with a strict argument model.

        The ordered ones run on the learner's lane; the others on the SDK's worker threads.
        """
        return method_tools(self, _TOOLS, self.lane, ORDERED_TOOLS)


# The tools in the design's order: what the server offers and what TOOL_NAMES lists.
_TOOLS: tuple[Callable[..., ToolAnswer], ...] = (
    LearnerTools.load_weights,
    LearnerTools.save_weights,
    LearnerTools.enable_learning,
    LearnerTools.disable_learning,
    LearnerTools.add_training_example,
    LearnerTools.get_learning_stats,
    LearnerTools.set_learning_rate,
    LearnerTools.force_update,
    LearnerTools.generate,
    LearnerTools.list_checkpoints,
)
TOOL_NAMES: tuple[str, ...] = tuple(fn.__name__ for fn in _TOOLS)
# Inference and counters: answered at once, beside whatever the lane is running. generate
# reads only the published weights, with a prompt or with messages (the learner's conversation
# cache takes one request at a time and lets the others run without it). A new tool that only
# reads belongs here; everything else is ordered.
CONCURRENT_TOOLS: frozenset[str] = frozenset({"generate", "get_learning_stats"})
ORDERED_TOOLS: frozenset[str] = frozenset(TOOL_NAMES) - CONCURRENT_TOOLS


def _check_replaceable(
    root: Root, target: str, rel: str, user_path: str, format: WeightFormat
) -> None:
    """Refuse to overwrite a file that is not weights (a notebook, a README).

    ``target`` is one of the files saving ``rel`` writes (relative to the root): ``rel`` itself
    or a file beside it (raw binary's manifest), which must be weights too, not someone else's
    JSON. Its folder is held open for the check, so a folder swapped meanwhile cannot make a
    weights file look like something else; a link out on the way is refused, by name. The check
    is a courtesy, not a lock: a file swapped in after it is replaced, atomically, inside the
    root.
    """
    parent, _, name = target.rpartition("/")
    try:
        folder = root.folder.subfolder(parent)
    except FileNotFoundError:
        return  # the save makes the folder: nothing there to replace
    with folder:
        there = folder.path(name)
        if not lexists(there) or is_weights_file(there):
            return
    if target == rel:
        raise PathRefused(
            f"file_path {user_path!r} exists and is not a weights file; choose another name"
        )
    raise PathRefused(
        f"saving {user_path!r} as {format} would replace {name}, which is not a weights "
        "file; choose another name"
    )


def build_server(
    learner: Learner, root: str | Path | None, labeling: LabelingSession | None = None
) -> MCPServer[Any]:
    """An ``MCPServer`` exposing ``learner`` through the ten tools; run it on any transport.
    With ``labeling`` (a session on the same learner), also ``label_next``, ``label_submit``
    and ``label_stats`` (:mod:`workbench.mcp.labeling_tools`).

    Parameters
    ----------
    learner
        The learner to drive; the server never closes it.
    root
        The folder file paths must stay inside; None turns the file tools off.
    """
    tools = LearnerTools(learner, root)
    made = tools.tools()
    if labeling is not None:
        from workbench.mcp.labeling_tools import LabelingTools

        made += LabelingTools(labeling, tools.lane).tools()
    return MCPServer(
        SERVER_NAME,
        instructions=(
            "Teach a small language model while using it: add training examples (input with "
            "an optional target, or chat messages with the assistant's reply as target; a "
            "weight), watch get_learning_stats, generate text with the current weights (a "
            "prompt to continue, or chat messages for a model with a chat template), save and "
            "load weights inside the server's root folder."
        ),
        version=_version(),
        tools=made,
        log_level="WARNING",
    )


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("markovian-workbench")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "0"
