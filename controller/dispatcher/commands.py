"""The command channel: commands to one node's live session, and their results back, by command id.

A caller opens a CommandCall on a node (`CommandChannel.open`), which queues the command on the node's session
and reads the results the agent sends for its command id, as an async iterator that ends after the result
with `done` set. A command may have several parts with the same id (an ImageLoad's pieces): `CommandCall.send`
queues the next one, waiting for room in the session's command outbox.

Everything is bounded, so no caller or agent can make the controller hold much:

* The commands waiting for a session's writer (CommandOutbox): at most OUTBOX_COMMAND_BYTES; a sender waits
  for room (within the call's idle timeout) rather than buffering more.
* Calls open on one node: at most CALLS_PER_NODE; one more is refused at once (CommandFailed).
* Results waiting for a caller: at most RESULTS_PER_CALL per call. The session's reader never waits for a
  caller (its heartbeats would starve), so a caller that falls behind has its call failed instead.
* One result's data: at most dockyard.limits.COMMAND_RESULT_BYTES; a larger one fails the call.
* Time: a call with no result for `idle_timeout` seconds fails (the deadline is the caller's to set).

A call whose node has no live session fails at once (NodeUnavailable), and every call of a session that ends
fails with the session's reason, so nothing waits for an agent that is gone.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Final

import structlog

from controller.commands import CommandFailed, NodeUnavailable
from dockyard.clock import Clock
from dockyard.limits import COMMAND_RESULT_BYTES
from dockyard.logs import Throttle
from dockyard.v1 import agent_pb2 as apb

if TYPE_CHECKING:
    from controller.dispatcher.session import AgentSession

__all__ = [
    "CALLS_PER_NODE",
    "COMMAND_IDLE_SECONDS",
    "OUTBOX_COMMAND_BYTES",
    "RESULTS_PER_CALL",
    "CommandCall",
    "CommandChannel",
    "CommandFailed",
    "CommandOutbox",
    "NodeUnavailable",
]

log = structlog.get_logger()

# Bytes of commands waiting for one session's writer. Four ImageLoad pieces in flight to a node fit, with room
# for small commands beside them; a sender past it waits for the writer to take what is queued.
OUTBOX_COMMAND_BYTES: Final = 8 * 1024 * 1024

# Calls open on one node at once: a push, a few log streams and execs, a volume removal.
CALLS_PER_NODE: Final = 32

# Results queued for one call's reader. An ImageLoad has at most its window of pieces unacknowledged, so a
# reader that keeps up never comes near it.
RESULTS_PER_CALL: Final = 64

# A call with no result for this long fails: the agent is stuck or gone without its session ending yet.
COMMAND_IDLE_SECONDS: Final = 60.0


class CommandOutbox:
    """The commands waiting for one session's writer, bounded in bytes (see the module docstring)."""

    def __init__(self, limit: int = OUTBOX_COMMAND_BYTES) -> None:
        """Holds at most `limit` bytes of commands (one larger command alone is let through)."""
        self._limit = limit
        self._queue: deque[apb.Command] = deque()
        self._bytes = 0
        self._room = asyncio.Event()
        self._room.set()

    @property
    def pending_bytes(self) -> int:
        """The bytes of the commands waiting for the writer."""
        return self._bytes

    def offer(self, command: apb.Command) -> bool:
        """Queues the command if there is room; returns whether it did."""
        size = command.ByteSize()
        if self._queue and self._bytes + size > self._limit:
            self._room.clear()
            return False
        self._queue.append(command)
        self._bytes += size
        return True

    def take(self) -> list[apb.Command]:
        """Returns every queued command in order and forgets them (the writer writes them now)."""
        taken = list(self._queue)
        self._queue.clear()
        self._bytes = 0
        self._room.set()
        return taken

    async def room(self) -> None:
        """Waits until the writer has taken what was queued."""
        await self._room.wait()


class CommandCall:
    """One command on one node's session: send its parts, iterate its results until done."""

    def __init__(
        self, channel: CommandChannel, session: AgentSession, command_id: str, idle_timeout: float, clock: Clock
    ) -> None:
        self.command_id = command_id
        self.node_id = session.node_id
        self._channel = channel
        self.session = session
        self._idle = idle_timeout
        self._clock = clock
        self._results: deque[apb.CommandResult] = deque()
        self._arrived = asyncio.Event()
        self._failure: str | None = None
        self._done = False
        self._closed = False

    async def send(self, command: apb.Command) -> None:
        """Queues another part of this command (its command_id is set here); waits for room in the outbox."""
        command.command_id = self.command_id
        while True:
            self._check()
            if self.session.command(command):
                return
            try:
                async with self._clock.timeout(self._idle):
                    await _first(self.session.commands.room(), self.session.closed.wait(), self._arrived.wait())
            except TimeoutError:
                self._fail(f"node {self.node_id} took no command for {self._idle:g}s")

    def _check(self) -> None:
        if self._failure is not None:
            raise CommandFailed(self._failure)
        if self._closed:
            raise CommandFailed(f"command {self.command_id} was closed")
        if self.session.closed.is_set():
            self._fail(self._ended_reason())

    def _ended_reason(self) -> str:
        reason = self.session.close_reason or "the agent ended it"
        return f"node {self.node_id}: session ended ({reason})"

    def _fail(self, reason: str) -> None:
        if self._failure is None:
            self._failure = reason
        self._arrived.set()
        self._channel.forget(self)
        raise CommandFailed(self._failure)

    def fail(self, reason: str) -> None:
        """Makes the call fail with `reason` (its reader sees it after the results already queued)."""
        if self._failure is None and not self._done:
            self._failure = reason
        self._arrived.set()
        self._channel.forget(self)

    def deliver(self, result: apb.CommandResult) -> None:
        """Takes a result from the session reader; never waits (a reader behind fails the call instead)."""
        if self._done or self._failure is not None:
            return
        if len(result.data) > COMMAND_RESULT_BYTES:
            self.fail(f"node {self.node_id} answered with {len(result.data)} bytes (limit {COMMAND_RESULT_BYTES})")
            return
        if len(self._results) >= RESULTS_PER_CALL:
            self.fail(f"more than {RESULTS_PER_CALL} results of node {self.node_id} waited unread")
            return
        self._results.append(result)
        if result.done:
            self._done = True
            self._channel.forget(self)
        self._arrived.set()

    def __aiter__(self) -> AsyncIterator[apb.CommandResult]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[apb.CommandResult]:
        while True:
            while self._results:
                result = self._results.popleft()
                yield result
                if result.done:
                    return
            if self._done:
                return
            if self._failure is not None:
                raise CommandFailed(self._failure)
            self._check()
            self._arrived.clear()
            try:
                async with self._clock.timeout(self._idle):
                    await _first(self._arrived.wait(), self.session.closed.wait())
            except TimeoutError:
                self._fail(f"node {self.node_id} sent nothing for {self._idle:g}s")
            if not self._results and self.session.closed.is_set() and not self._done:
                self._fail(self._ended_reason())

    def close(self) -> None:
        """Forgets the call: results that still arrive for it are dropped."""
        self._closed = True
        self._channel.forget(self)

    async def __aenter__(self) -> CommandCall:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class CommandChannel:
    """Opens calls on nodes' sessions and routes the agents' results to them (see the module docstring)."""

    def __init__(
        self,
        sessions: Callable[[str], AgentSession | None],
        clock: Clock,
        *,
        idle_timeout: float = COMMAND_IDLE_SECONDS,
        calls_per_node: int = CALLS_PER_NODE,
    ) -> None:
        """`sessions` finds a node's live session (the dispatcher's table)."""
        self.sessions = sessions
        self._clock = clock
        self._idle = idle_timeout
        self._per_node = calls_per_node
        self._calls: dict[str, CommandCall] = {}
        self._open: dict[str, int] = {}  # node id -> calls open on it
        self._throttle = Throttle(clock)

    def open(self, node_id: str, command: apb.Command, *, idle_timeout: float | None = None) -> CommandCall:
        """Queues `command` on the node's session and returns its call (command_id set when empty).

        Raises NodeUnavailable when the node has no live session, CommandFailed when it has too many calls open.
        """
        session = self.sessions(node_id)
        if session is None or session.closed.is_set():
            raise NodeUnavailable(f"node {node_id} is not connected")
        if self._open.get(node_id, 0) >= self._per_node:
            raise CommandFailed(f"node {node_id} has {self._per_node} commands running; try again later")
        if not command.command_id:
            command.command_id = uuid.uuid4().hex
        if command.command_id in self._calls:
            raise CommandFailed(f"command {command.command_id} is already running")
        call = CommandCall(self, session, command.command_id, idle_timeout or self._idle, self._clock)
        self._calls[call.command_id] = call
        self._open[node_id] = self._open.get(node_id, 0) + 1
        if not session.command(command):
            # The outbox is full of other calls' parts: the first part of a new call is refused, not queued.
            self.forget(call)
            raise CommandFailed(f"node {node_id} has too many commands waiting to be written; try again later")
        return call

    def forget(self, call: CommandCall) -> None:
        """Drops a call from the routing table (done, failed or closed)."""
        if self._calls.get(call.command_id) is call:
            del self._calls[call.command_id]
            left = self._open.get(call.node_id, 1) - 1
            if left > 0:
                self._open[call.node_id] = left
            else:
                self._open.pop(call.node_id, None)

    def deliver(self, session: AgentSession, result: apb.CommandResult) -> None:
        """Routes a result an agent sent to its call; one for no call of this session is dropped (logged, limited)."""
        call = self._calls.get(result.command_id)
        if call is None or call.session is not session:
            # Late results of a closed call are ordinary; a node cannot answer another node's commands.
            suppressed = self._throttle.allow(f"stray result:{session.node_id}")
            if suppressed is not None:
                log.debug("command result for no open call", node_id=session.node_id, suppressed=suppressed)
            return
        call.deliver(result)

    def session_ended(self, session: AgentSession) -> None:
        """Fails every call open on the session: its agent can no longer answer them."""
        reason = session.close_reason or "the agent ended it"
        for call in [c for c in self._calls.values() if c.session is session]:
            call.fail(f"node {session.node_id}: session ended ({reason})")

    def open_calls(self, node_id: str) -> int:
        """How many calls are open on the node."""
        return self._open.get(node_id, 0)


async def _first(*waits: Awaitable[object]) -> None:
    """Waits until the first of the given awaitables completes and cancels the rest."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
