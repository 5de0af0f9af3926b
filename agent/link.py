"""The agent's link to the controller: one Session stream, re-dialled with jittered backoff forever."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import grpc
import structlog

from agent.reporter import Reporter
from agent.runtime.base import RuntimeFailure
from agent.task_book import TaskBook
from agent.worker import Worker
from dockyard.backoff import Backoff
from dockyard.timestamps import seconds, to_timestamp
from dockyard.v1 import agent_pb2 as apb
from dockyard.v1 import agent_pb2_grpc as apb_grpc
from dockyard.v1 import types_pb2 as pb

log = structlog.get_logger()

MISSED_HEARTBEATS = 3.0

_Call = grpc.aio.StreamStreamCall[apb.AgentMessage, apb.ControllerMessage]


class SessionLost(Exception):
    """The controller stopped answering."""


class ControllerLink:
    """Keeps a session open: hello with inventory, heartbeats, statuses out, assignments in."""

    def __init__(
        self,
        address: str,
        node_id: str,
        describe: Callable[[], Awaitable[pb.NodeDescription]],
        book: TaskBook,
        worker: Worker,
        reporter: Reporter,
        heartbeat_period: float,
    ) -> None:
        self._address = address
        self._node_id = node_id
        self._describe = describe
        self._book = book
        self._worker = worker
        self._reporter = reporter
        self._period = heartbeat_period
        self.connected = asyncio.Event()
        # Counted from start: an agent that never reached the controller has been cut off all along.
        self.disconnected_since: float | None = time.monotonic()

    def disconnected_for(self) -> float:
        """Returns the seconds since the controller was last reachable (0 while connected)."""
        return 0.0 if self.disconnected_since is None else time.monotonic() - self.disconnected_since

    async def run(self) -> None:
        """Dials the controller until cancelled; running containers are never touched for a lost link."""
        backoff = Backoff(base=0.2, cap=5.0)
        while True:
            try:
                await self._session(backoff)
            except (grpc.aio.AioRpcError, SessionLost, OSError, RuntimeFailure, TimeoutError) as exc:
                detail = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
                log.warning("controller session lost", controller=self._address, error=detail)
            finally:
                if self.connected.is_set():
                    self.disconnected_since = time.monotonic()
                self.connected.clear()
            await asyncio.sleep(backoff.next_delay())

    async def _session(self, backoff: Backoff) -> None:
        description = await self._describe()
        options = [("grpc.keepalive_time_ms", 10000), ("grpc.keepalive_timeout_ms", 5000)]
        async with grpc.aio.insecure_channel(self._address, options=options) as channel:
            call = apb_grpc.AgentServiceStub(channel).Session()
            self._reporter.clear()
            hello = apb.Hello(node_id=self._node_id, description=description, inventory=self._book.inventory())
            await call.write(apb.AgentMessage(hello=hello))
            async with asyncio.timeout(self._period * MISSED_HEARTBEATS + 5):
                first = await call.read()
            if not isinstance(first, apb.ControllerMessage) or not first.HasField("welcome"):
                raise SessionLost("the controller did not welcome the session")
            period = seconds(first.welcome.heartbeat_period) or self._period
            backoff.reset()
            self.connected.set()
            self.disconnected_since = None
            log.info("controller session open", controller=self._address, session_id=first.welcome.session_id)
            heard = [time.monotonic()]
            tasks = {
                asyncio.create_task(self._receive(call, heard)),
                asyncio.create_task(self._heartbeat(call, period, heard)),
                asyncio.create_task(self._send_status(call)),
            }
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                call.cancel()
            for task in done:
                task.result()

    async def _receive(self, call: _Call, heard: list[float]) -> None:
        while True:
            message = await call.read()
            if message is grpc.aio.EOF or not isinstance(message, apb.ControllerMessage):
                raise SessionLost("the controller closed the session")
            heard[0] = time.monotonic()
            if message.HasField("assignments"):
                self._apply(message.assignments)

    def _apply(self, assignments: apb.Assignments) -> None:
        if assignments.kind == apb.Assignments.KIND_FULL:
            changed = self._book.apply_full(list(assignments.tasks))
        else:
            changed = {t.id for t in assignments.tasks if self._book.upsert(t)}
            changed |= {i for i in assignments.removed_task_ids if self._book.drop(i)}
        if changed:
            self._book.save()
            self._worker.wake(changed)
        if assignments.kind == apb.Assignments.KIND_FULL:
            # Loops for unchanged tasks too: an adopted task must report what it finds.
            self._worker.wake([t.id for t in self._book])

    async def _heartbeat(self, call: _Call, period: float, heard: list[float]) -> None:
        while True:
            await call.write(apb.AgentMessage(heartbeat=apb.Heartbeat(sent_at=to_timestamp(datetime.now(UTC)))))
            await asyncio.sleep(period)
            if time.monotonic() - heard[0] > period * MISSED_HEARTBEATS:
                raise SessionLost(f"no word from the controller for {time.monotonic() - heard[0]:.1f}s")

    async def _send_status(self, call: _Call) -> None:
        while True:
            update = await self._reporter.take()
            await call.write(apb.AgentMessage(status=update))
