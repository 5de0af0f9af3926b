"""The agent's link to the controller: one Session stream, re-dialled quickly with jitter, forever.

How fast it notices a dead link and comes back once the network returns (all on the agent's Clock):

* Dial: every attempt builds a fresh channel that must be ready within the connect timeout or is
  abandoned. The channel has its own subchannel and short reconnect settings, so no attempt ever waits
  on gRPC's own reconnect backoff, which grows to two minutes and outlives a healed partition.
* Redial: jittered backoff from REDIAL_BASE, capped at REDIAL_CAP; after a partition heals the agent is
  back within about that cap.
* Dead link: the controller acks every heartbeat; MISSED_HEARTBEATS periods of silence end the session,
  whatever a write blocked on a dead connection is doing. HTTP/2 keepalive pings back this up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import grpc
import structlog

from agent.commands import CommandHandlers, CommandRunner
from agent.config import AgentConfig
from agent.files import Files
from agent.identity import ClusterGuard, ClusterMismatch, of_another_ca
from agent.network.manager import NetworkManager
from agent.reporter import Reporter
from agent.runtime.base import RuntimeFailure
from agent.task_book import TaskBook
from agent.worker import Worker
from dockyard import pki
from dockyard.backoff import Backoff
from dockyard.channels import open_channel
from dockyard.clock import Clock, SystemClock
from dockyard.limits import AGENT_MESSAGE_BYTES, REDIAL_CAP_SECONDS
from dockyard.logs import Throttle
from dockyard.task_state import spec_key
from dockyard.timestamps import seconds, to_timestamp
from dockyard.v1 import agent_pb2 as apb
from dockyard.v1 import agent_pb2_grpc as apb_grpc
from dockyard.v1 import types_pb2 as pb

log = structlog.get_logger()

MISSED_HEARTBEATS = 3.0
REDIAL_BASE = 0.25
REDIAL_CAP = REDIAL_CAP_SECONDS

_Call = grpc.aio.StreamStreamCall[apb.AgentMessage, apb.ControllerMessage]
# What ends a session or a dial in the ordinary course of a network's life; anything else is logged as a bug.
_EXPECTED = (grpc.aio.AioRpcError, asyncio.InvalidStateError, OSError, TimeoutError)
# How the controller words its refusal of a removed node (controller/security/guard.py, the dispatcher).
_REMOVED = "was removed from the cluster"


def session_channel_options(connect_timeout: float) -> list[tuple[str, int]]:
    """Returns the gRPC options of the agent's session channel; this is the one place they are set."""
    return [
        ("grpc.max_receive_message_length", AGENT_MESSAGE_BYTES),
        # gRPC's own timeout for one TCP connect (default 20 s). At most a second: a SYN sent into a partition
        # that heals is then sent again within the same dial, instead of waiting out the kernel's retransmit.
        ("grpc.min_reconnect_backoff_ms", max(100, int(min(connect_timeout, 1.0) * 1000))),
        # Within one dial, a refused or unreachable connect is retried within a second, not after 1-120 s.
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 1000),
        # A private subchannel per channel: a new dial never inherits an abandoned one's backoff.
        ("grpc.use_local_subchannel_pool", 1),
        # Transport check beside the heartbeat acks. The controller permits it because it sends data (acks)
        # far more often than this, which resets its ping-abuse counter.
        ("grpc.keepalive_time_ms", 10_000),
        ("grpc.keepalive_timeout_ms", 3_000),
        ("grpc.enable_retries", 0),
    ]


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
        *,
        connect_timeout: float = AgentConfig.connect_timeout,
        clock: Clock | None = None,
        credentials: Callable[[], pki.Credentials | None] = lambda: None,
        guard: ClusterGuard | None = None,
        commands: CommandHandlers | None = None,
        files: Files | None = None,
        network: NetworkManager | None = None,
    ) -> None:
        self._address = address
        self._network = network  # takes the NetworkMap and DnsTable messages (None: they are ignored)
        # Read at every dial, so a renewed certificate is used from the next one on (None: --insecure).
        self._credentials = credentials
        self._guard = guard
        # Each session runs the controller's commands with a runner of its own (agent/commands.py).
        self._commands = commands or CommandHandlers()
        self._files = files  # keeps Assignments.files in memory (None: they are ignored)
        self._runner = CommandRunner(self._commands, clock=clock)  # replaced at each session
        self._node_id = node_id
        self._describe = describe
        self._book = book
        self._worker = worker
        self._reporter = reporter
        self._period = heartbeat_period
        self._connect_timeout = connect_timeout
        self._clock: Clock = clock or SystemClock()
        # The "not this cluster's controller" line comes at most once a minute while it lasts.
        self._foreign = Throttle(self._clock, interval=60.0, burst=1)
        self._removed = Throttle(self._clock, interval=60.0, burst=1)  # likewise "this node was removed"
        self._probe: asyncio.Task[None] | None = None
        self._options = session_channel_options(connect_timeout)
        self._heard = 0.0  # monotonic time of the controller's last message in this session
        self.connected = asyncio.Event()
        # Counted from start: an agent that never reached the controller has been cut off all along.
        self.disconnected_since: float | None = self._clock.monotonic()

    def disconnected_for(self) -> float:
        """Returns the seconds since the controller was last reachable (0 while connected)."""
        return 0.0 if self.disconnected_since is None else self._clock.monotonic() - self.disconnected_since

    async def run(self) -> None:
        """Dials the controller until cancelled; running containers are never touched for a lost link."""
        backoff = Backoff(base=REDIAL_BASE, cap=REDIAL_CAP)
        failed_dials = 0  # since the last session
        while True:
            try:
                await self._session(backoff)
            except SessionLost as exc:
                log.warning("controller session lost", controller=self._address, error=str(exc))
            except ClusterMismatch as exc:
                log.error("controller refused", controller=self._address, error=str(exc))
            except RuntimeFailure as exc:
                log.warning("docker not answering; no hello without this host's facts", error=str(exc))
            except _EXPECTED as exc:
                detail = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc) or type(exc).__name__
                self._say_if_removed(exc, detail or "")
                if self.connected.is_set():
                    log.warning("controller session lost", controller=self._address, error=detail)
                else:
                    self._probe_if_foreign()
                    # Same event as a lost session (operators and tests watch for it), counted while cut off.
                    failed_dials += 1
                    log.warning(
                        "controller session lost", controller=self._address, failed_dials=failed_dials, error=detail
                    )
            except Exception:  # the link must outlive any one bad session
                log.exception("controller session failed", controller=self._address)
            finally:
                if self.connected.is_set():
                    failed_dials = 0
                    self.disconnected_since = self._clock.monotonic()
                self.connected.clear()
            await self._clock.sleep(backoff.next_delay())

    def _say_if_removed(self, exc: BaseException, detail: str) -> None:
        """Says how to clean this host when the controller refuses the node as removed (at most once a minute).

        Nothing is torn down here: a controller restored from a store older than this node's join says the
        same, and the node's containers and network must outlive that (docs/design/network.md).
        """
        refused = isinstance(exc, grpc.aio.AioRpcError) and exc.code() == grpc.StatusCode.PERMISSION_DENIED
        if not refused or _REMOVED not in detail or self._removed.allow("removed") is None:
            return
        log.error(
            "this node was removed from the cluster",
            controller=self._address,
            error=detail,
            containers="kept, with their network; nothing is torn down",
            fix="join this host again (dockyard-agent join --rejoin), or stop the agent and clean the host with "
            "`dockyard-agent cleanup-network`",
        )

    def _probe_if_foreign(self) -> None:
        """After a failed dial, checks beside the redials (at most once a minute) whether the server there is
        another cluster's, and says so loudly.

        gRPC reports a certificate it refused only as a dial that never connects, the same as an unreachable
        controller; one plain TLS handshake tells the two apart. It runs beside the redials, never before one:
        against a partitioned controller it may take its whole timeout.
        """
        credentials = self._credentials()
        if credentials is None or self._probe is not None or self._foreign.allow("foreign") is None:
            return
        self._probe = asyncio.get_running_loop().create_task(self._say_if_foreign(credentials.ca_pem))
        self._probe.add_done_callback(lambda _: setattr(self, "_probe", None))

    async def _say_if_foreign(self, ca_pem: bytes) -> None:
        if await of_another_ca(self._address, ca_pem):
            log.error(
                "controller refused",
                controller=self._address,
                error="its certificate is not of this node's cluster CA: another cluster, or a controller started "
                "on a wrong or emptied state dir; acting on nothing, containers kept",
            )

    async def _dial(self) -> grpc.aio.Channel:
        """Returns a fresh channel once it is connected; a dial not done within the connect timeout is abandoned."""
        channel = open_channel(self._address, self._credentials(), self._options)
        try:
            async with self._clock.timeout(self._connect_timeout):
                await channel.channel_ready()
        except BaseException as exc:
            await channel.close(grace=None)
            if isinstance(exc, TimeoutError):
                raise TimeoutError(f"not connected within {self._connect_timeout:g}s") from None
            raise
        return channel

    async def _session(self, backoff: Backoff) -> None:
        async with await self._dial() as channel:
            description = await self._describe()
            call = apb_grpc.AgentServiceStub(channel).Session()
            try:
                await self._serve(call, description, backoff)
            finally:
                call.cancel()

    async def _serve(self, call: _Call, description: pb.NodeDescription, backoff: Backoff) -> None:
        self._reporter.clear()
        hello = apb.Hello(node_id=self._node_id, description=description, inventory=self._book.inventory())
        hello.images.extend(await self._worker.images.references())
        hello.volumes.extend(await self._worker.volumes.names())
        welcome_within = self._period * MISSED_HEARTBEATS + self._connect_timeout
        try:
            async with self._clock.timeout(welcome_within):
                await call.write(apb.AgentMessage(hello=hello))
                first = await call.read()
        except TimeoutError:
            raise SessionLost(f"no welcome within {welcome_within:g}s of the hello") from None
        if not isinstance(first, apb.ControllerMessage) or not first.HasField("welcome"):
            raise SessionLost("the controller did not welcome the session")
        if self._guard is not None:
            self._guard.check(first.welcome)  # before any assignment is read: refused, nothing is applied
        period = seconds(first.welcome.heartbeat_period) or self._period
        backoff.reset()
        self.connected.set()
        self.disconnected_since = None
        log.info("controller session open", controller=self._address, session_id=first.welcome.session_id)
        self._heard = self._clock.monotonic()
        send = _Sender(call)
        self._runner = CommandRunner(self._commands, clock=self._clock)
        tasks = {
            asyncio.create_task(self._send_results(send)),
            asyncio.create_task(self._receive(call)),
            asyncio.create_task(self._heartbeat(send, period)),
            asyncio.create_task(self._watch_silence(period * MISSED_HEARTBEATS)),
            asyncio.create_task(self._send_status(send)),
        }
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._runner.close()
        for task in done:
            task.result()

    async def _receive(self, call: _Call) -> None:
        while True:
            message = await call.read()
            if message is grpc.aio.EOF or not isinstance(message, apb.ControllerMessage):
                raise SessionLost("the controller closed the session")
            self._heard = self._clock.monotonic()
            if message.HasField("assignments"):
                self._apply(message.assignments)
            elif message.HasField("network_map") and self._network is not None:
                self._network.update_map(message.network_map)
            elif message.HasField("dns") and self._network is not None:
                self._network.update_dns(message.dns)
            elif message.HasField("command"):
                self._runner.submit(message.command)

    def _apply(self, assignments: apb.Assignments) -> None:
        self._worker.images.note(assignments)  # before the tasks are woken: they may need to know
        changed = self._book.apply(assignments)
        if self._files is not None:
            self._files.take(assignments)  # after the book: it keeps the data its tasks refer to
        missing = {
            spec_key(t)
            for t in assignments.tasks
            if t.desired_state == pb.DESIRED_STATE_RUNNING and self._book.spec_of(t) is None
        }
        if missing:
            # The worker rejects these tasks rather than run a container from an empty spec.
            log.warning(
                "assigned tasks whose spec was never sent",
                revisions=sorted(f"{service_id}@{revision}" for service_id, revision in missing),
                sequence=assignments.sequence,
            )
        if changed:
            self._book.save()
            self._worker.wake(changed)
        if assignments.kind == apb.Assignments.KIND_FULL:
            # Loops for unchanged tasks too: an adopted task must report what it finds.
            self._worker.wake([t.id for t in self._book])

    async def _heartbeat(self, send: _Sender, period: float) -> None:
        while True:
            await send(apb.AgentMessage(heartbeat=apb.Heartbeat(sent_at=to_timestamp(self._clock.now()))))
            await self._clock.sleep(period)

    async def _watch_silence(self, limit: float) -> None:
        """Ends the session once the controller said nothing (not even a heartbeat ack) for `limit` seconds."""
        while True:
            silent = self._clock.monotonic() - self._heard
            if silent >= limit:
                raise SessionLost(f"no word from the controller for {silent:.1f}s")
            await self._clock.sleep(limit - silent)

    async def _send_results(self, send: _Sender) -> None:
        while True:
            result = await self._runner.next_result()
            await send(apb.AgentMessage(command_result=result))

    async def _send_status(self, send: _Sender) -> None:
        while True:
            update = await self._reporter.take()
            await send(apb.AgentMessage(status=update))


class _Sender:
    """Writes to the session one message at a time: gRPC fails the whole call on overlapping writes."""

    def __init__(self, call: _Call) -> None:
        self._call = call
        self._lock = asyncio.Lock()

    async def __call__(self, message: apb.AgentMessage) -> None:
        async with self._lock:
            await self._call.write(message)
