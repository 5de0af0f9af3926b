"""The dispatcher: serves AgentService.Session, routes task changes to agents, marks silent nodes down."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta

import grpc
import structlog

from controller.dispatcher.bounds import COMMIT_WINDOW_SECONDS, PENDING_STATUSES_PER_NODE, WRITE_STALL_SECONDS
from controller.dispatcher.commands import CommandChannel
from controller.dispatcher.committer import GroupCommitter, NodeIntent
from controller.dispatcher.files import FileSource
from controller.dispatcher.identity import IdentityError, node_identity
from controller.dispatcher.liveness import silent_nodes
from controller.dispatcher.networks import NetworkPublisher
from controller.dispatcher.session import AgentSession
from controller.errors import DAMAGED_RETRY_SECONDS, StoreDamaged
from controller.ids import new_id
from controller.images import ImageRegistry
from controller.network.allocate import DEFAULT_POOL, host_in_pool, parse_pool
from controller.network.maps import peer_host
from controller.security.authority import ClusterAuthority
from controller.security.join import renew
from controller.store.base import ConflictError, Kind, Put, Store
from controller.store.follow import Resync, follow
from controller.store.retry import retry_on_conflict
from controller.store.specs import SpecCache, SpecKey
from controller.volumes import reported_ops, volume_records
from dockyard.clock import Clock
from dockyard.limits import (
    CONNECT_TIMEOUT_SECONDS,
    HELLO_TIMEOUT_SECONDS,
    NODE_LABELS,
    NODE_TEXT_BYTES,
    REDIAL_CAP_SECONDS,
    truncate_text,
)
from dockyard.logs import Throttle
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
    """Holds every agent session; writes node status and reported task status, nothing else.

    Nothing a session reads waits for the store: a message is stamped with its arrival time, a heartbeat is
    acknowledged at once and statuses go to the group committer. What a session writes is coalesced and
    bounded (see session.py), and a writer that stalls past `write_stall` seconds closes its session
    (checked by the heartbeat watcher every quarter period).
    """

    def __init__(
        self,
        store: Store,
        clock: Clock,
        heartbeat_period: float = 1.0,
        grace_periods: float = 3.0,
        *,
        commit_window: float = COMMIT_WINDOW_SECONDS,
        write_stall: float = WRITE_STALL_SECONDS,
        hello_timeout: float = HELLO_TIMEOUT_SECONDS,
        authority: ClusterAuthority | None = None,
        files: FileSource | None = None,
        network_pool: str = DEFAULT_POOL,
    ) -> None:
        self._store = store
        self._files = files  # the data of secrets, configs and registry credentials for assignments (None: none)
        # None only with --insecure: node ids then come from the hello, and there is no cluster id.
        self._authority = authority
        self._clock = clock
        self._period = heartbeat_period
        self._grace = timedelta(seconds=heartbeat_period * grace_periods)
        # After a controller restart every agent must first notice and re-dial: a node not heard from since
        # the start gets REDIAL_ALLOWANCE on top of the usual grace.
        self._startup_grace = self._grace + timedelta(seconds=REDIAL_ALLOWANCE)
        self._write_stall = write_stall
        self._hello_timeout = hello_timeout
        self._sessions: dict[str, AgentSession] = {}
        self.commands = CommandChannel(self._sessions.get, clock)
        """Commands to the agents through their sessions (image loads, volume removals, ...)."""
        self.images = ImageRegistry()
        """Which node has which image (from hellos and pushes; in memory)."""
        # Network maps and the DNS table for every session (networks.py); it follows the router's events.
        self.networks = NetworkPublisher(store, clock, self._sessions, network_pool)
        self._pool = parse_pool(network_pool)  # a host inside it is refused at hello
        self._networks_loading = asyncio.Lock()
        self._last_seen: dict[str, datetime] = {}
        self._volume_writes: set[asyncio.Task[None]] = set()  # records for volumes hellos reported
        self._started = clock.now()
        self._specs = SpecCache(store)
        # Where the change router starts: the oldest of the revision at run() and the full sets read before it
        # subscribed (None: from the store's revision when it does); _routing once it has.
        self._route_from: int | None = None
        self._routing = False
        # Lines an agent can trigger (refused statuses, dropped labels) share one throttle, keyed per node.
        self._throttle = Throttle(clock)
        self._committer = GroupCommitter(
            store, clock, self._throttle, window=commit_window, on_forged=self._close_forger
        )

    def _close_forger(self, node_id: str, task_id: str, reason: str) -> None:
        """Ends the session of a node that reported on a task that is not its own (see GroupCommitter)."""
        session = self._sessions.get(node_id)
        if session is not None:
            # The owner stays unnamed: being refused tells a node nothing about other nodes' tasks.
            session.close(grpc.StatusCode.PERMISSION_DENIED, f"status for task {task_id}: not assigned to this node")
        if self._throttle.allow(f"forged:{node_id}") is not None:
            log.warning("forged status report; session closed", node_id=node_id, task_id=task_id, reason=reason)

    async def run(self) -> None:
        """Commits statuses, routes task changes to sessions and watches heartbeats until cancelled."""
        self._store.on_damage(self._close_all)
        self._note_route_start(self._store.revision)
        await self._forget_readiness()
        await self._load_networks()
        async with asyncio.TaskGroup() as group:
            group.create_task(self._outlast_damage("network publishing", self.networks.run))
            group.create_task(self._outlast_damage("status commit", self._committer.run))
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

    def _close_all(self, damage: StoreDamaged) -> None:
        """Ends every session when the store is found damaged: agents keep their containers and re-dial."""
        for session in list(self._sessions.values()):
            session.close(grpc.StatusCode.UNAVAILABLE, str(damage))

    async def Session(  # type: ignore[override]
        self, request_iterator: object, context: Context
    ) -> None:
        """Serves one agent: hello, then heartbeats and status in, assignments out, until either side ends.

        A stream whose hello does not arrive within the hello timeout is closed with DEADLINE_EXCEEDED.
        """
        del request_iterator
        try:
            async with self._clock.timeout(self._hello_timeout):
                # object: the EOF marker or, from a lenient deserializer, what did not parse.
                first: object = await context.read()
        except TimeoutError:
            # DEADLINE_EXCEEDED, not INVALID_ARGUMENT: nothing the peer sent was wrong, a time limit passed.
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED, f"hello: none within {self._hello_timeout:g}s of opening the session"
            )
            return
        if not isinstance(first, apb.AgentMessage) or not first.HasField("hello"):
            # A message that did not parse arrives as an object that says why (controller.api.handlers).
            why = "" if first is grpc.aio.EOF or isinstance(first, apb.AgentMessage) else f" ({first})"
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"the first message of a session must be a hello{why}"
            )
            return
        try:
            node_id = node_identity(context, first.hello, secure=self._authority is not None)
        except IdentityError as exc:
            await context.abort(exc.code, str(exc))
            return
        if self._store.damage is not None:
            # The agent keeps its containers and re-dials; the controller is out of service meanwhile.
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(self._store.damage))
            return
        refused = host_in_pool(peer_host(context.peer()), self._pool)
        if refused is not None:
            if self._throttle.allow(f"address in pool:{node_id}") is not None:
                log.error("node refused: its address is inside the network pool", node_id=node_id, why=refused)
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"hello: {refused}")
            return
        session = await self._register(node_id, context)
        if session is None:
            return
        now = self._clock.now()
        self._last_seen[node_id] = now
        bound = log.bind(node_id=node_id, session_id=session.session_id)
        # Neither the node write nor the inventory is waited for: the welcome, the full set and the first
        # heartbeats do not depend on them (see docs/design/protocol.md, "A session").
        self._committer.write_node(node_id, self._registration(node_id, first.hello, context.peer(), now))
        self.images.hello(node_id, first.hello.images)
        if first.hello.volumes:
            self._record_volumes(node_id, list(first.hello.volumes))
        inventory = ((item.task_id, item.status) for item in first.hello.inventory)
        self._refuse_flood(node_id, self._committer.add_statuses(node_id, inventory))
        session.welcome(
            apb.Welcome(
                node_id=node_id,
                session_id=session.session_id,
                heartbeat_period=duration(self._period),
                cluster_id=self._authority.cluster_id if self._authority is not None else "",
                store_epoch=self._store.epoch,
            )
        )
        bound.info("agent session started", hostname=truncate_text(first.hello.description.hostname, 64))
        sync = asyncio.create_task(self._sync(session))
        writer = asyncio.create_task(self._write(session, context))
        tasks = {
            asyncio.create_task(self._read(session, context)),
            writer,
            asyncio.create_task(session.closed.wait()),
        }
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            await self._finish_write(session, writer)
        finally:
            # Deregistered before anything is awaited: gRPC may cancel a dead call's handler again while its
            # tasks wind down, which would skip whatever follows the await and leave the node "connected",
            # refusing its restarted agent as a twin until the heartbeat grace has passed.
            if self._sessions.get(node_id) is session:
                del self._sessions[node_id]
            bound.info("agent session ended", reason=session.close_reason or "stream ended")
            self.commands.session_ended(session)
            for task in (*tasks, sync):
                task.cancel()
            await asyncio.gather(*tasks, sync, return_exceptions=True)
        if session.close_code != grpc.StatusCode.OK:
            await context.abort(session.close_code, session.close_reason)

    async def Renew(
        self, request: apb.RenewRequest, context: grpc.aio.ServicerContext[apb.RenewRequest, apb.RenewResponse]
    ) -> apb.RenewResponse:
        """A new certificate for the calling node's own key (its identity is the certificate's)."""
        if self._authority is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "the controller runs --insecure: no certificates")
            raise AssertionError("unreachable")
        return await renew(self._authority, request, context)

    async def _read(self, session: AgentSession, context: Context) -> None:
        """Reads until the stream ends; never waits for the store, so heartbeats are read however busy it is."""
        while True:
            message: object = await context.read()
            if message is grpc.aio.EOF:
                return
            if not isinstance(message, apb.AgentMessage):
                session.close(grpc.StatusCode.INVALID_ARGUMENT, str(message))  # did not parse: says why
                return
            arrived = self._clock.now()
            self._last_seen[session.node_id] = arrived
            kind = message.WhichOneof("msg")
            if kind == "heartbeat":
                session.ack(arrived)
            elif kind == "status":
                updates = ((u.task_id, u.status) for u in message.status.updates)
                self._refuse_flood(session.node_id, self._committer.add_statuses(session.node_id, updates))
            elif kind == "command_result":
                self.commands.deliver(session, message.command_result)

    async def _register(self, node_id: str, context: Context) -> AgentSession | None:
        """Registers a new session for the node, or refuses it (the call aborted; None returned).

        ALREADY_EXISTS while another session of the node is alive; PERMISSION_DENIED when the node was removed.
        """
        session = AgentSession(node_id=node_id, session_id=uuid.uuid4().hex, pushable=self.images.pushable)
        previous = self._sessions.get(node_id)
        if previous is not None:
            heard = self._last_seen.get(node_id)
            if heard is not None and self._clock.now() - heard <= self._grace:
                # The first session is alive: a second one for the node is an impostor or a confused twin,
                # and letting it in would knock the first off (and each would knock the other off forever).
                await context.abort(
                    grpc.StatusCode.ALREADY_EXISTS,
                    f"node {node_id} already has a live session (from {previous.peer or 'unknown'}); "
                    "two agents must not share one node identity",
                )
                return None
            previous.close(grpc.StatusCode.ABORTED, "a newer session for this node started; this one was silent")
        session.peer = context.peer()
        # Register before the snapshot is read so no change falls between the two; agents ignore stale versions.
        self._sessions[node_id] = session
        if self._authority is not None and await self._store.get_node(node_id) is None:
            # Removed between the guard's check and here (the hello may take its time): the router's delete
            # event found no session to close, so this is the last place to refuse it.
            del self._sessions[node_id]
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"node {node_id} was removed from the cluster")
            return None
        return session

    async def _finish_write(self, session: AgentSession, writer: asyncio.Task[None]) -> None:
        """Lets a write in flight finish, within the write-stall limit, before the session's call is ended.

        Cancelled mid-write, the writer would leave gRPC's send pending, and the call could then never be
        ended (the peer would wait out its own deadline). The writer stops after that write, the session
        being closed.
        """
        if session.writing_since is None or writer.done():
            return
        with contextlib.suppress(TimeoutError):
            async with self._clock.timeout(self._write_stall):
                await asyncio.wait({writer})

    async def _write(self, session: AgentSession, context: Context) -> None:
        """Writes what the session has pending; a write that stalls past the limit closes the session."""
        # No timer per write (one per heartbeat ack, a few percent of a core at 1,000 agents): the heartbeat
        # watcher closes a session whose write has been in progress too long (_close_stalled).
        while True:
            for message in await session.next_messages():
                session.writing_since = self._clock.monotonic()
                await context.write(message)
                session.writing_since = None
                if session.closed.is_set():
                    return  # ended meanwhile: Session() waits for this write, then ends the call

    async def _sync(self, session: AgentSession) -> None:
        """Sends a new session its full set beside reading and writing, so its heartbeats never wait for it."""
        try:
            # Its map and DNS table first, and the gate its tasks wait at for their subnets.
            await self._load_networks()
            self.networks.greet(session)
            await self._send_full(session)
        except StoreDamaged as exc:
            session.close(grpc.StatusCode.UNAVAILABLE, str(exc))
        except Exception as exc:
            # A session without its full set would hold every change for the node in its backlog for good:
            # end it, and the agent re-dials for a fresh one.
            log.exception("full set not sent", node_id=session.node_id)
            session.close(grpc.StatusCode.UNAVAILABLE, f"the controller could not read this node's tasks: {exc}")

    def _refuse_flood(self, node_id: str, refused: int) -> None:
        """Logs, rate-limited and counted, the reports refused because the node has too many pending."""
        if not refused:
            return
        suppressed = self._throttle.allow(f"status flood:{node_id}")
        if suppressed is not None:
            log.warning(
                "status refused: too many pending for one node",
                node_id=node_id,
                count=refused,
                limit=PENDING_STATUSES_PER_NODE,
                lines_suppressed=suppressed,
            )

    async def _send_full(self, session: AgentSession) -> None:
        """Queues the node's full set, then the changes that arrived while it was read, in order.

        While the set is read (several awaits), the change feed keeps moving: its events for this session are
        held back (session.backlog) and replayed after the full set, skipping those the snapshot already
        holds, so an incremental change can never overtake the full set it belongs after.
        """
        if session.backlog is None:
            session.backlog = []
        snapshot_revision = self._store.revision
        session.synced_revision = snapshot_revision
        self._note_route_start(snapshot_revision)
        tasks = await self._store.list_tasks(node_id=session.node_id)
        session.send_full(tasks, await self._offer_files(session, await self._specs.for_tasks(tasks)))
        while True:
            held, session.backlog = session.backlog, []
            later = [(task, deleted) for revision, task, deleted in held if revision > snapshot_revision]
            specs = await self._specs.for_tasks(task for task, deleted in later if not deleted)
            await self._offer_files(session, specs)
            for task, deleted in later:  # no await in this loop: nothing can slip in between
                if session.wants(task, deleted):
                    session.on_task(task, deleted, specs)
            if not session.backlog:
                session.backlog = None
                return

    async def _offer_files(
        self, session: AgentSession, specs: Mapping[SpecKey, pb.ServiceSpec]
    ) -> Mapping[SpecKey, pb.ServiceSpec]:
        """Offers the session the file data and credentials the specs need (it sends what the agent lacks)."""
        if self._files is not None and specs:
            session.files.take_offer(await self._files.offer(specs.values()))
        return specs

    def _registration(self, node_id: str, hello: apb.Hello, address: str, at: datetime) -> NodeIntent:
        """Returns the change a hello makes to its node: its facts from the hello, ready, seen now."""
        description = pb.NodeDescription()
        description.CopyFrom(hello.description)
        dropped = bound_description(description)
        if dropped and self._throttle.allow(f"labels dropped:{node_id}") is not None:
            log.warning("agent labels dropped", node_id=node_id, dropped=dropped[:5], count=len(dropped))

        secure = self._authority is not None

        def intent(node: pb.Node | None) -> pb.Node | None:
            if node is None:
                if secure:
                    return None  # removed meanwhile: only a join creates a node (the guard refuses the next call)
                node = pb.Node(id=node_id, availability=pb.NODE_AVAILABILITY_ACTIVE)
                node.created_at.CopyFrom(to_timestamp(at))
            if secure:
                # The hostname was fixed at join: an agent cannot take another (constraints on hostnames mean
                # the host the operator joined).
                claimed = description.hostname
                description.hostname = node.description.hostname
                if claimed != description.hostname and self._throttle.allow(f"hostname:{node_id}") is not None:
                    log.warning(
                        "agent hostname ignored; the one it joined with stays",
                        node_id=node_id,
                        claimed=truncate_text(claimed, 64),
                        hostname=description.hostname,
                    )
            node.description.CopyFrom(description)
            node.status = pb.NODE_STATUS_READY
            node.status_message = ""
            node.address = address
            node.last_heartbeat.CopyFrom(to_timestamp(at))
            return node

        return intent

    def _marked_down(self, node_id: str, seen: datetime | None, message: str) -> NodeIntent:
        """Returns the change that marks a silent node down, unless it was heard from after the decision."""

        def intent(node: pb.Node | None) -> pb.Node | None:
            if node is None or node.status == pb.NODE_STATUS_DOWN or self._last_seen.get(node_id) != seen:
                return None
            node.status = pb.NODE_STATUS_DOWN
            node.status_message = message
            return node

        return intent

    async def _load_networks(self) -> None:
        """Loads the network view once, before the router routes: it follows the router's events from there."""
        async with self._networks_loading:
            if not self.networks.ready.is_set():
                self._note_route_start(self._store.revision)
                await self.networks.load()

    def _note_route_start(self, revision: int) -> None:
        """Makes the router, until it subscribes, start no later than `revision` (a full set read at it)."""
        if not self._routing and (self._route_from is None or revision < self._route_from):
            self._route_from = revision

    async def _route_changes(self) -> None:
        # Sessions open before the router subscribes (the server serves before the dispatcher runs): it starts
        # at the oldest full set read so far, so no change falls between a set and the feed.
        self._routing = True
        async for event in follow(self._store, self._route_from):
            if isinstance(event, Resync):
                await self.networks.load()
                # Too far behind to replay: resend every session its full set instead, closing those whose
                # node was removed meanwhile (their delete event is among those skipped).
                for live in list(self._sessions.values()):
                    if self._authority is not None and await self._store.get_node(live.node_id) is None:
                        live.close(grpc.StatusCode.PERMISSION_DENIED, f"node {live.node_id} was removed")
                        continue
                    self.networks.greet(live)
                    await self._send_full(live)
                continue
            self.networks.on_event(event)
            if event.kind is Kind.NODE and event.action.value == "delete":
                removed = self._sessions.get(event.id)
                if removed is not None:
                    removed.close(grpc.StatusCode.PERMISSION_DENIED, f"node {event.id} was removed from the cluster")
                self.images.forget(event.id)
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
            if event.revision <= session.synced_revision:
                continue  # the full set already holds it: sent now, it would be stale news
            if not session.wants(task, deleted):
                continue
            specs: dict[SpecKey, pb.ServiceSpec] = {}
            if not deleted:
                spec = await self._specs.get(task.service_id, task.revision)
                if spec is not None:
                    specs[spec_key(task)] = spec
                await self._offer_files(session, specs)
            session.on_task(task, deleted, specs)

    async def _forget_readiness(self) -> None:
        """Marks every ready node unknown at start, in one commit: readiness must be observed afresh."""

        async def attempt() -> None:
            ops: list[Put] = []
            for node in await self._store.list_nodes():
                if node.status == pb.NODE_STATUS_READY:
                    changed = pb.Node()
                    changed.CopyFrom(node)
                    changed.status = pb.NODE_STATUS_UNKNOWN
                    changed.status_message = "controller restarted; waiting for the agent"
                    ops.append(Put(changed, expect_version=node.version))
            if ops:
                await self._store.commit(ops)

        with contextlib.suppress(ConflictError):
            await retry_on_conflict(attempt)

    def _record_volumes(self, node_id: str, names: list[str]) -> None:
        """Gives each volume a hello reports and that has no record one on its node (controller.volumes), in the
        background: the session does not wait for it, and a failure is logged (the next hello tries again)."""

        async def attempt() -> None:
            records = volume_records(await self._store.list_objects(Kind.VOLUME))
            ops = reported_ops(node_id, names, records, self._clock.now(), new_id)
            if ops:
                await self._store.commit(ops)

        async def record() -> None:
            try:
                await retry_on_conflict(attempt)
            except (ConflictError, StoreDamaged) as exc:
                log.warning("reported volumes not recorded", node_id=node_id, error=str(exc))

        task = asyncio.create_task(record())
        self._volume_writes.add(task)
        task.add_done_callback(self._volume_writes.discard)

    def _close_stalled(self) -> None:
        """Closes the sessions whose write has not completed within the write-stall limit: readers that stopped."""
        now = self._clock.monotonic()
        for session in list(self._sessions.values()):
            if _stalled(session, now, self._write_stall):
                session.close(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"the agent read nothing for {self._write_stall:g}s; closing instead of buffering",
                )

    async def _judged_nodes(self, now: datetime) -> list[pb.Node]:
        """The nodes a heartbeat round must look at.

        All of them while nodes unheard since the start may still be within the startup grace; after that only
        those whose last message is older than the grace, found by a scan of the arrival times (no store read
        for a node heard from in time), so a round costs little and can come often.
        """
        if now - self._started <= self._startup_grace * 2:
            return await self._store.list_nodes()
        cutoff = now - self._grace
        found = []
        for node_id, seen in list(self._last_seen.items()):
            if seen >= cutoff:
                continue
            node = await self._store.get_node(node_id)
            if node is None:
                self._last_seen.pop(node_id, None)  # removed from the cluster
            else:
                found.append(node)
        return found

    async def _watch_heartbeats(self) -> None:
        """Every quarter period, marks every node silent past its grace down, all in one commit.

        A round that starts more than half a period late (the controller's own loop was blocked) judges nobody;
        see liveness.py. Rounds come every quarter period so that a dead node is noticed at most a quarter
        period after its grace ends.
        """
        tick = self._period / 4
        planned = self._clock.monotonic() + tick
        # (when a round looked, how late), for as long as any node's silence can reach back.
        stalls: deque[tuple[datetime, timedelta]] = deque()
        while True:
            await self._clock.sleep(planned - self._clock.monotonic())
            lag = self._clock.monotonic() - planned
            now = self._clock.now()
            if lag > 0:
                stalls.append((now, timedelta(seconds=lag)))
            while stalls and now - stalls[0][0] > self._startup_grace * 2:
                stalls.popleft()
            self._close_stalled()
            nodes = await self._judged_nodes(now)
            found = silent_nodes(
                nodes,
                self._last_seen,
                self._started,
                now,
                self._grace,
                self._startup_grace,
                lag=timedelta(seconds=lag),
                lag_tolerance=timedelta(seconds=self._period / 2),
                stalls=stalls,
            )
            if lag > self._period / 2 and self._throttle.allow("heartbeat watch late") is not None:
                log.warning("heartbeat watch ran late; judging no node this round", lag_seconds=round(lag, 2))
            writes = []
            for silent in found:
                log.warning("node down", node_id=silent.node_id, silent_seconds=round(silent.seconds, 1))
                message = f"no heartbeat for {silent.seconds:.1f}s"
                seen = self._last_seen.get(silent.node_id)
                writes.append(
                    self._committer.write_node(silent.node_id, self._marked_down(silent.node_id, seen, message))
                )
                session = self._sessions.get(silent.node_id)
                if session is not None:
                    session.close(grpc.StatusCode.UNAVAILABLE, message)
            if writes:
                # One commit for the round; the next round reads its result instead of deciding again.
                # A write that failed is retried by the committer; this round only waits for the outcome.
                await asyncio.gather(*writes, return_exceptions=True)
            planned = self._clock.monotonic() + tick


def _stalled(session: AgentSession, now: float, limit: float) -> bool:
    return session.writing_since is not None and now - session.writing_since > limit


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
