"""The dispatcher: serves AgentService.Session, routes task changes to agents, marks silent nodes down."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

import grpc
import structlog

from controller.dispatcher.identity import IdentityError, node_identity
from controller.dispatcher.liveness import silent_nodes
from controller.dispatcher.session import AgentSession
from controller.dispatcher.status import judge_status
from controller.errors import DAMAGED_RETRY_SECONDS, StoreDamaged
from controller.store.base import ConflictError, Kind, Put, Store
from controller.store.follow import Resync, follow
from controller.store.retry import retry_on_conflict
from controller.store.specs import SpecCache, SpecKey
from dockyard.clock import Clock
from dockyard.limits import (
    CONNECT_TIMEOUT_SECONDS,
    CONTAINER_ID_BYTES,
    NODE_LABELS,
    NODE_TEXT_BYTES,
    REDIAL_CAP_SECONDS,
    STATUS_TEXT_BYTES,
    truncate_text,
)
from dockyard.spec.issues import key_path
from dockyard.spec.validation import label_issues
from dockyard.task_state import spec_key
from dockyard.timestamps import duration, to_timestamp
from dockyard.v1 import agent_pb2 as apb
from dockyard.v1 import agent_pb2_grpc as apb_grpc
from dockyard.v1 import types_pb2 as pb

log = structlog.get_logger()

# An agent notices the restart, waits at most the redial cap, and its dial takes at most the connect timeout.
REDIAL_ALLOWANCE = REDIAL_CAP_SECONDS + CONNECT_TIMEOUT_SECONDS + 0.5

Context = grpc.aio.ServicerContext[apb.AgentMessage, apb.ControllerMessage]


class Dispatcher(apb_grpc.AgentServiceServicer):
    """Holds every agent session; writes node status and reported task status, nothing else."""

    def __init__(self, store: Store, clock: Clock, heartbeat_period: float = 1.0, grace_periods: float = 3.0) -> None:
        self._store = store
        self._clock = clock
        self._period = heartbeat_period
        self._grace = timedelta(seconds=heartbeat_period * grace_periods)
        # After a controller restart every agent must first notice and re-dial: a node not heard from since
        # the start gets REDIAL_ALLOWANCE on top of the usual grace.
        self._startup_grace = self._grace + timedelta(seconds=REDIAL_ALLOWANCE)
        self._sessions: dict[str, AgentSession] = {}
        self._last_seen: dict[str, datetime] = {}
        self._started = clock.now()
        self._specs = SpecCache(store)

    async def run(self) -> None:
        """Routes task changes to sessions and watches heartbeats until cancelled."""
        await self._forget_readiness()
        async with asyncio.TaskGroup() as group:
            group.create_task(self._outlast_damage("routing", self._route_changes))
            group.create_task(self._outlast_damage("heartbeat watch", self._watch_heartbeats))

    async def _outlast_damage(self, what: str, loop: Callable[[], Awaitable[None]]) -> None:
        """Runs a loop of the dispatcher; a damaged store pauses it (logged once) instead of ending the controller."""
        reported = False
        while True:
            try:
                await loop()
                return
            except StoreDamaged as exc:
                if not reported:
                    log.error("dispatcher paused: store damaged", loop=what, error=str(exc))
                    reported = True
                await self._clock.sleep(DAMAGED_RETRY_SECONDS)

    async def Session(  # type: ignore[override]
        self, request_iterator: object, context: Context
    ) -> None:
        """Serves one agent: hello, then heartbeats and status in, assignments out, until either side ends."""
        del request_iterator
        first = await context.read()
        if not isinstance(first, apb.AgentMessage) or not first.HasField("hello"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message of a session must be a hello")
            return
        try:
            node_id = node_identity(context, first.hello)
        except IdentityError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            return
        session = AgentSession(node_id=node_id, session_id=uuid.uuid4().hex)
        previous = self._sessions.get(node_id)
        if previous is not None:
            previous.closed.set()
        # Register before reading the snapshot so no change falls between the two; agents ignore stale versions.
        self._sessions[node_id] = session
        self._last_seen[node_id] = self._clock.now()
        bound = log.bind(node_id=node_id, session_id=session.session_id)
        try:
            await self._register(node_id, first.hello, context.peer())
            await self._apply_statuses(node_id, [(i.task_id, i.status) for i in first.hello.inventory])
            await context.write(
                apb.ControllerMessage(
                    welcome=apb.Welcome(
                        node_id=node_id,
                        session_id=session.session_id,
                        heartbeat_period=duration(self._period),
                    )
                )
            )
            await self._send_full(session)
            bound.info("agent session started", hostname=truncate_text(first.hello.description.hostname, 64))
            tasks = {
                asyncio.create_task(self._read(session, context)),
                asyncio.create_task(self._write(session, context)),
                asyncio.create_task(session.closed.wait()),
            }
            try:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        except StoreDamaged as exc:
            # The agent keeps its containers and re-dials; the controller is out of service meanwhile.
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        finally:
            if self._sessions.get(node_id) is session:
                del self._sessions[node_id]
            bound.info("agent session ended")

    async def _read(self, session: AgentSession, context: Context) -> None:
        while True:
            message = await context.read()
            if not isinstance(message, apb.AgentMessage):
                return  # end of stream
            self._last_seen[session.node_id] = self._clock.now()
            kind = message.WhichOneof("msg")
            if kind == "heartbeat":
                session.outbox.put_nowait(
                    apb.ControllerMessage(heartbeat_ack=apb.HeartbeatAck(received_at=to_timestamp(self._clock.now())))
                )
            elif kind == "status":
                await self._apply_statuses(session.node_id, [(u.task_id, u.status) for u in message.status.updates])

    async def _write(self, session: AgentSession, context: Context) -> None:
        while True:
            await context.write(await session.outbox.get())

    async def _send_full(self, session: AgentSession) -> None:
        """Queues the node's full set, then the changes that arrived while it was read, in order.

        While the set is read (several awaits), the change feed keeps moving: its events for this session are
        held back (session.backlog) and replayed after the full set, skipping those the snapshot already
        holds, so an incremental change can never overtake the full set it belongs after.
        """
        if session.backlog is None:
            session.backlog = []
        snapshot_revision = self._store.revision
        tasks = await self._store.list_tasks(node_id=session.node_id)
        session.send_full(tasks, await self._specs.for_tasks(tasks))
        while True:
            held, session.backlog = session.backlog, []
            later = [(task, deleted) for revision, task, deleted in held if revision > snapshot_revision]
            specs = await self._specs.for_tasks(task for task, deleted in later if not deleted)
            for task, deleted in later:  # no await in this loop: nothing can slip in between
                if session.wants(task, deleted):
                    session.on_task(task, deleted, specs)
            if not session.backlog:
                session.backlog = None
                return

    async def _register(self, node_id: str, hello: apb.Hello, address: str) -> None:
        description = pb.NodeDescription()
        description.CopyFrom(hello.description)
        dropped = bound_description(description)
        if dropped:
            log.warning("agent labels dropped", node_id=node_id, dropped=dropped[:5], count=len(dropped))

        async def attempt() -> None:
            existing = await self._store.get_node(node_id)
            node = pb.Node()
            if existing is not None:
                node.CopyFrom(existing)
            else:
                node.id = node_id
                node.availability = pb.NODE_AVAILABILITY_ACTIVE
                node.created_at.CopyFrom(to_timestamp(self._clock.now()))
            node.description.CopyFrom(description)
            node.status = pb.NODE_STATUS_READY
            node.status_message = ""
            node.address = address
            node.last_heartbeat.CopyFrom(to_timestamp(self._clock.now()))
            await self._store.commit([Put(node, expect_version=existing.version if existing else 0)])

        await retry_on_conflict(attempt)

    async def _apply_statuses(self, node_id: str, updates: list[tuple[str, pb.TaskStatus]]) -> None:
        if not updates:
            return
        for _, status in updates:
            bound_status_text(status)

        async def attempt() -> None:
            ops: list[Put] = []
            for task_id, status in updates:
                verdict = judge_status(await self._store.get_task(task_id), node_id, status)
                if verdict.refused:
                    log.warning("status refused", node_id=node_id, task_id=task_id, reason=verdict.refused)
                if verdict.task is not None:
                    ops.append(Put(verdict.task, expect_version=verdict.task.version))
            if ops:
                await self._store.commit(ops)

        try:
            await retry_on_conflict(attempt)
        except ConflictError:
            log.warning("status dropped after repeated conflicts", node_id=node_id, count=len(updates))

    async def _route_changes(self) -> None:
        async for event in follow(self._store):
            if isinstance(event, Resync):
                # Too far behind to replay: resend every session its full set instead.
                for live in list(self._sessions.values()):
                    await self._send_full(live)
                continue
            if event.kind is not Kind.TASK or not isinstance(event.obj, pb.Task):
                continue
            task, deleted = event.obj, event.action.value == "delete"
            session = self._sessions.get(task.node_id)
            if session is None:
                continue
            if session.backlog is not None:
                session.backlog.append((event.revision, task, deleted))  # its full set is being read
                continue
            if not session.wants(task, deleted):
                continue
            specs: dict[SpecKey, pb.ServiceSpec] = {}
            if not deleted:
                spec = await self._specs.get(task.service_id, task.revision)
                if spec is not None:
                    specs[spec_key(task)] = spec
            session.on_task(task, deleted, specs)

    async def _forget_readiness(self) -> None:
        """Marks every node unknown at start: readiness must be observed afresh, not inherited from the store."""
        for node in await self._store.list_nodes():
            if node.status == pb.NODE_STATUS_READY:
                await self._set_status(node.id, pb.NODE_STATUS_UNKNOWN, "controller restarted; waiting for the agent")

    async def _watch_heartbeats(self) -> None:
        while True:
            await self._clock.sleep(self._period / 2)
            nodes = await self._store.list_nodes()
            now = self._clock.now()
            for silent in silent_nodes(nodes, self._last_seen, self._started, now, self._grace, self._startup_grace):
                log.warning("node down", node_id=silent.node_id, silent_seconds=round(silent.seconds, 1))
                await self._set_status(silent.node_id, pb.NODE_STATUS_DOWN, f"no heartbeat for {silent.seconds:.1f}s")
                session = self._sessions.get(silent.node_id)
                if session is not None:
                    session.closed.set()

    async def _set_status(self, node_id: str, status: int, message: str) -> None:
        async def attempt() -> None:
            node = await self._store.get_node(node_id)
            if node is None:
                return
            node.status = status  # type: ignore[assignment]
            node.status_message = message
            await self._store.commit([Put(node, expect_version=node.version)])

        with contextlib.suppress(ConflictError):
            await retry_on_conflict(attempt)


def bound_status_text(status: pb.TaskStatus) -> None:
    """Cuts an agent-reported status message, error and container id to the protocol's limits, in place."""
    status.message = truncate_text(status.message, STATUS_TEXT_BYTES)
    status.error = truncate_text(status.error, STATUS_TEXT_BYTES)
    status.container_id = truncate_text(status.container_id, CONTAINER_ID_BYTES)


def bound_description(description: pb.NodeDescription) -> list[str]:
    """Cuts an agent's host facts to the protocol's limits in place; returns the labels it dropped, and why.

    Labels follow the rules of service labels (so constraints read them the same way); past NODE_LABELS, the
    rest (by key) are dropped.
    """
    for name in ("hostname", "docker_version", "os", "arch", "agent_version"):
        setattr(description, name, truncate_text(getattr(description, name), NODE_TEXT_BYTES))
    dropped: list[str] = []
    kept = 0
    for key in sorted(description.labels):
        problems = list(label_issues(key, description.labels[key], key_path("labels", key)))
        if problems or kept >= NODE_LABELS:
            dropped.append(str(problems[0]) if problems else f"labels: more than {NODE_LABELS}")
            del description.labels[key]
        else:
            kept += 1
    return dropped
