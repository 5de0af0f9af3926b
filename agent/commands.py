"""The agent's end of the command channel: runs each Command the controller sends by its kind's handler.

A handler is registered per kind (the name of the Command's `kind` field: "image_load", "volume_remove",
"logs", ...). It gets an Incoming (the first part, then the further parts sent with the same command_id) and
either returns one CommandResult or yields several; the runner stamps the command_id and makes sure the
last one says done (a handler that ends without saying so is done with no error; one that raises is done
with its error). A kind with no handler is answered by an error at once.

Bounded like everything a peer sends: at most AGENT_COMMANDS commands run at once (one more is answered
"busy"), a command's unread parts are at most PARTS_PER_COMMAND (the controller keeps fewer in flight; one
more fails the command), and results wait for the session's writer in a bounded queue, so a handler that
produces faster than the link writes is slowed down rather than buffered.
"""

from __future__ import annotations

import asyncio
import inspect
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final

import structlog

from dockyard.clock import Clock, SystemClock
from dockyard.limits import AGENT_COMMANDS, COMMAND_RESULT_BYTES, IMAGE_PIECES_IN_FLIGHT
from dockyard.logs import Throttle
from dockyard.v1 import agent_pb2 as apb

__all__ = [
    "PARTS_PER_COMMAND",
    "RESULTS_WAITING",
    "CommandHandlers",
    "CommandRunner",
    "Handler",
    "Incoming",
    "error_result",
]

log = structlog.get_logger()

# Unread parts of one command: the controller keeps IMAGE_PIECES_IN_FLIGHT unacknowledged, so twice that is
# a controller that does not follow the protocol.
PARTS_PER_COMMAND: Final = 2 * IMAGE_PIECES_IN_FLIGHT

# Results waiting for the session's writer; a handler's next result waits for room.
RESULTS_WAITING: Final = 64

# Ids of commands that ended, remembered so that parts still in flight for them are dropped rather than taken
# for new commands (an ImageLoad answered "present" on its first piece may have more pieces on the wire).
_FINISHED_REMEMBERED: Final = 1024


class Incoming:
    """A command as its handler sees it: `first`, then (iterating) the further parts sent with its id."""

    def __init__(self, first: apb.Command) -> None:
        self.first = first
        self.command_id = first.command_id
        self._parts: deque[apb.Command] = deque()
        self._arrived = asyncio.Event()

    def _add(self, part: apb.Command) -> bool:
        if len(self._parts) >= PARTS_PER_COMMAND:
            return False
        self._parts.append(part)
        self._arrived.set()
        return True

    def __aiter__(self) -> AsyncIterator[apb.Command]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[apb.Command]:
        while True:
            while self._parts:
                yield self._parts.popleft()
            self._arrived.clear()
            await self._arrived.wait()

    async def next_part(self) -> apb.Command:
        """Waits for the next part of this command."""
        while not self._parts:
            self._arrived.clear()
            await self._arrived.wait()
        return self._parts.popleft()


Handler = Callable[[Incoming], AsyncIterator[apb.CommandResult] | Awaitable[apb.CommandResult | None]]
"""Runs one command: an async generator of results, or an async function returning one (or None: done)."""


class CommandHandlers:
    """The handlers of this agent, by command kind; built at start, read by each session's runner."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def register(self, kind: str, handler: Handler) -> None:
        """Makes `handler` run the commands of `kind` (a field name of Command's `kind` oneof)."""
        known = sorted(f.name for f in apb.Command.DESCRIPTOR.oneofs_by_name["kind"].fields)
        if kind not in known:
            raise ValueError(f"unknown command kind {kind!r}; known: {', '.join(known)}")
        self._handlers[kind] = handler

    def get(self, kind: str) -> Handler | None:
        """The handler of `kind`, None when none is registered."""
        return self._handlers.get(kind)


def error_result(command_id: str, error: str) -> apb.CommandResult:
    """A final result that says the command failed with `error`."""
    return apb.CommandResult(command_id=command_id, done=True, error=error)


class CommandRunner:
    """Runs the commands of one session; the link feeds it commands and sends what `next_result` returns."""

    def __init__(self, handlers: CommandHandlers, *, limit: int = AGENT_COMMANDS, clock: Clock | None = None) -> None:
        self._handlers = handlers
        self._limit = limit
        self._running: dict[str, tuple[Incoming, asyncio.Task[None]]] = {}
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._results: deque[apb.CommandResult] = deque()
        self._result_ready = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._throttle = Throttle(clock or SystemClock())

    @property
    def running(self) -> int:
        """How many commands are running."""
        return len(self._running)

    def submit(self, command: apb.Command) -> None:
        """Starts a command, or hands a further part to the running one of its id; never waits."""
        command_id = command.command_id
        running = self._running.get(command_id)
        if running is not None:
            incoming, task = running
            if not incoming._add(command):
                task.cancel()
                self._end(command_id)
                self._answer(error_result(command_id, f"more than {PARTS_PER_COMMAND} parts waited unread"))
            return
        if command_id in self._finished:
            return  # a part sent before the controller heard that the command ended
        kind = command.WhichOneof("kind")
        handler = self._handlers.get(kind) if kind is not None else None
        if not command_id:
            self._warn("command without an id", kind)
            return  # nothing to answer to
        if handler is None:
            self._finish(command_id)
            self._answer(
                error_result(command_id, f"unknown command kind {kind or '(none)'!r}: this agent has no handler for it")
            )
            return
        if len(self._running) >= self._limit:
            self._finish(command_id)
            self._answer(error_result(command_id, f"the agent is busy: {self._limit} commands running; try again"))
            return
        incoming = Incoming(command)
        task = asyncio.create_task(self._run(handler, incoming), name=f"command-{kind}-{command_id[:12]}")
        self._running[command_id] = (incoming, task)

    async def _run(self, handler: Handler, incoming: Incoming) -> None:
        command_id = incoming.command_id
        done = False
        try:
            outcome = handler(incoming)
            if inspect.isawaitable(outcome):
                result = await outcome
                if result is not None:
                    done = await self._emit(command_id, result, final=True)
            else:
                try:
                    async for result in outcome:
                        done = await self._emit(command_id, result, final=False)
                        if done:
                            break
                finally:
                    closing = getattr(outcome, "aclose", None)
                    if closing is not None:
                        await closing()
            if not done:
                await self._emit(command_id, apb.CommandResult(done=True), final=True)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("command failed", command_id=command_id, kind=incoming.first.WhichOneof("kind"), error=str(exc))
            await self._emit(command_id, error_result(command_id, str(exc) or type(exc).__name__), final=True)
        finally:
            self._end(command_id)

    async def _emit(self, command_id: str, result: apb.CommandResult, *, final: bool) -> bool:
        """Queues a handler's result (waiting for room); returns whether it was the command's last."""
        result.command_id = command_id
        if final:
            result.done = True
        if len(result.data) > COMMAND_RESULT_BYTES:
            result = error_result(command_id, f"result of {len(result.data)} bytes (limit {COMMAND_RESULT_BYTES})")
        while len(self._results) >= RESULTS_WAITING:
            self._room.clear()
            await self._room.wait()
        self._answer(result)
        return result.done

    def _answer(self, result: apb.CommandResult) -> None:
        # Refusals skip the wait for room: there is one per command received at most, bounded by the controller.
        self._results.append(result)
        self._result_ready.set()

    def _end(self, command_id: str) -> None:
        if self._running.pop(command_id, None) is not None:
            self._finish(command_id)

    def _finish(self, command_id: str) -> None:
        self._finished[command_id] = None
        while len(self._finished) > _FINISHED_REMEMBERED:
            self._finished.popitem(last=False)

    def _warn(self, what: str, kind: str | None) -> None:
        suppressed = self._throttle.allow(what)
        if suppressed is not None:
            log.warning(what, kind=kind, suppressed=suppressed)

    async def next_result(self) -> apb.CommandResult:
        """Waits for the next result to send to the controller."""
        while not self._results:
            self._result_ready.clear()
            await self._result_ready.wait()
        result = self._results.popleft()
        self._room.set()
        return result

    async def close(self) -> None:
        """Cancels every running command (the session ended: their results could not be delivered)."""
        tasks = [task for _, task in self._running.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._running.clear()
