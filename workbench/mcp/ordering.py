"""One lane per learner: the tool calls that change or read its state run one at a time, in order.

The boundary: this module decides *when* a tool's work runs, never what it does. The SDK runs
every request as a task of its own and a plain (sync) tool on a thread pool, where two calls sent
back to back can swap: ``add_training_example`` then ``force_update`` could update without the
example. An ordered tool instead hands its work to the learner's :class:`Lane` as soon as its
task starts, and one worker thread runs the lane first in, first out. Tasks start in the order
the server received the messages (the SDK's read loop spawns them in that order) and nothing
awaits between a task's start and the hand-over, so the lane's order is the arrival order: per
session, and across all sessions and servers that share the learner.

Arrival order is the whole promise. Over stdio it is the order the client wrote the messages
(one stream). Over streamable HTTP every request is a POST of its own, on a connection of its
own, so requests sent together may arrive in another order; a client that needs ``B`` after
``A`` awaits ``A``'s answer before it sends ``B``. The server cannot restore the sent order
from the JSON-RPC ids: MCP asks only that an id be a string or integer not used before in the
session, not that ids grow, and a server waiting for a missing id would stall every later call.

Inference and the counters (``generate``, with a prompt or with chat messages, and
``get_learning_stats``) stay off the lane, so they answer while an update runs.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
import types
import weakref
from collections.abc import Callable, Collection, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from mcp.server.mcpserver.tools import Tool

from workbench.mcp._schemas import strict_tool

__all__ = ["Lane", "lane_for", "method_tools", "on_lane"]

T = TypeVar("T")


class Lane:
    """A first-in, first-out queue of jobs run by one worker thread.

    Examples
    --------
    >>> lane = Lane("example")
    >>> seen = []
    >>> futures = [lane.submit(lambda i=i: seen.append(i)) for i in range(5)]
    >>> _ = [f.result() for f in futures]
    >>> seen, lane.submitted
    ([0, 1, 2, 3, 4], 5)
    """

    def __init__(self, name: str) -> None:
        # One worker: its queue is the order. The thread ends when the lane is collected.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._lock = threading.Lock()  # servers on other threads may share the lane
        self._submitted = 0

    @property
    def submitted(self) -> int:
        """How many jobs the lane has been handed so far (cancelled ones included): the count
        of ordered calls that have arrived, which a caller can wait on to know its call has
        its place in the order before it sends the next."""
        return self._submitted

    def submit(self, job: Callable[[], T]) -> Future[T]:
        """Queue ``job`` behind everything submitted before; its future holds the outcome."""
        with self._lock:
            future = self._executor.submit(job)
            self._submitted += 1
        return future

    async def run(self, job: Callable[[], T]) -> T:
        """Queue ``job`` now (before this coroutine first awaits) and wait for its outcome.

        A caller cancelled while the job still waits removes it from the lane; once it runs it
        finishes (a learner call cannot be interrupted halfway).
        """
        future = self.submit(job)
        return await asyncio.wrap_future(future)


_LANES: weakref.WeakKeyDictionary[Any, Lane] = weakref.WeakKeyDictionary()
_LANES_LOCK = threading.Lock()


def lane_for(learner: object) -> Lane:
    """The lane of ``learner``: one per learner, shared by every server and session using it.

    A learner that cannot be weakly referenced gets a lane of its own each call (then only the
    calls through one server are ordered with each other).
    """
    with _LANES_LOCK:
        try:
            lane = _LANES.get(learner)
            if lane is None:
                lane = _LANES[learner] = Lane("workbench-mcp-lane")
        except TypeError:  # not weakly referenceable
            lane = Lane("workbench-mcp-lane")
        return lane


def on_lane(tool: Tool, lane: Lane) -> Tool:
    """``tool`` as a coroutine that queues its (synchronous) work on ``lane`` when it starts.

    The SDK awaits a coroutine tool in the request's own task, and nothing awaits between that
    task's start and ``lane.run`` queueing the job: the lane sees calls in arrival order.
    """
    work = tool.fn

    async def run(**arguments: Any) -> Any:
        return await lane.run(functools.partial(work, **arguments))

    return tool.model_copy(update={"fn": run, "is_async": True})


def method_tools(
    owner: object, fns: Iterable[Callable[..., Any]], lane: Lane, ordered: Collection[str]
) -> list[Tool]:
    """Each of ``fns`` bound to ``owner`` as a strict tool (its docstring the description), in
    the given order; those named in ``ordered`` run on ``lane``, the others on the SDK's threads.
    """
    made = []
    for fn in fns:
        tool = strict_tool(
            Tool.from_function(
                types.MethodType(fn, owner),
                description=inspect.getdoc(fn),
                structured_output=True,
            )
        )
        made.append(on_lane(tool, lane) if tool.name in ordered else tool)
    return made
