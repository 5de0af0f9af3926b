"""A simulated fleet: many agents in one process, each speaking the real Session protocol to a real controller.

Each simulated agent (`SimAgent`) does on the wire what `agent.link.ControllerLink` does: a hello with a node
description and its inventory, heartbeats at the period the Welcome gives, status batches, a session ended
after MISSED_HEARTBEATS periods without a word from the controller, and a jittered re-dial. Assignments go
through the agent's own `TaskBook`, so FULL and INCREMENTAL sets, removals and specs are handled exactly as
on a host. Containers are imaginary: each task moves through `agent.step.next_step` (the real worker's step
function) against an in-memory container, one step per small random delay, so a task reports PREPARING,
STARTING and RUNNING, and a task the controller takes away reports SHUTDOWN once "stopped and removed".

    async with Fleet(address, FleetConfig(agents=200)) as fleet:
        await fleet.wait_connected(within=30)
        ...  # apply services through dockyard.client.Client
        fleet.running()  # task id -> node id, as the agents see it (running_count() to poll cheaply)
        lost = fleet.lose(20)  # as 20 hosts dying at once (silent=True: streams left open, mute)
        fleet.drops()  # every session that ended, and why

Against a controller that serves mutual TLS (the default), give the fleet the join address and a token:
`Fleet(address, config, join=FleetJoin(join_address, token))`. Each agent then joins as `dockyard-agent join`
does (the controller is checked against the token's CA digest once, then one CSR and the token's secret per
agent through JoinService.Join, RESOURCE_EXHAUSTED past the controller's join rate retried with backoff),
gets its own node certificate, and opens its sessions over mutual TLS with it; its hello names the node id of
its certificate, and every Welcome is checked by the agent's own ClusterGuard (cluster id and store epoch), so
a controller of another cluster or store is refused before any assignment is applied. `enroll(n)` joins ahead
(a benchmark keeps the join rate out of its timings) and `add(n)` starts n enrolled agents; `start()` joins
what was not enrolled, then starts them. Without `join` the agents speak plaintext (a controller run with
--insecure) and name themselves, and `add` needs no enrolling.

What makes a measurement trustworthy is recorded too: each agent's longest wait for a word from the
controller (`Fleet.longest_silence`, the margin before a session ends) and how late this process's own event
loop ran (`Fleet.max_lag`): a fleet too busy to keep time would blame the controller for its own stalls.

Plaintext streams are spread over several gRPC channels (`FleetConfig.streams_per_channel`, 100 by default).
One channel per agent, as on real hosts, would cost this process a TCP connection, an HTTP/2 transport and its
keepalive timer per agent; one channel for all would push every agent through a single connection's flow
control window and a single TCP socket, so one slow stream or one broken connection would stall or drop
the whole fleet, which no real fleet does. About a hundred streams per connection keeps the controller's
per-connection work realistic at a small cost here. Set it to 1 for one connection per agent.
With TLS every agent has a channel of its own: a channel presents one client certificate, and agents that
shared one would be one node to the controller. So 1,000 TLS agents are 1,000 connections and handshakes,
as a real fleet is. bench/fleet.py measured at 1,000 agents, against 100 plaintext streams per connection:
about 0.12 MB more of this process's memory and 0.08 MB more of the controller's per agent.

Everything is bounded: each agent holds at most one status per task (the agent's own Reporter), writes one
message at a time and keeps only its latest RECORDS_KEPT drops and welcomes; every stepping task ends when
its task is idle, and `stop()` ends everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import random
import secrets
import shutil
import tempfile
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType

import grpc

from agent.identity import (
    JOIN_DEADLINE,
    ClusterGuard,
    ClusterMismatch,
    Membership,
    NotJoined,
    fetch_ca,
    join_request,
    joined_credentials,
)
from agent.link import MISSED_HEARTBEATS, REDIAL_BASE, REDIAL_CAP, session_channel_options
from agent.reporter import Reporter
from agent.runtime.base import ContainerInfo, ContainerState
from agent.step import Op, next_step
from agent.task_book import TaskBook
from dockyard import __version__, pki
from dockyard.backoff import Backoff
from dockyard.channels import open_channel, open_server_tls_channel
from dockyard.clock import Clock, SystemClock
from dockyard.limits import CONNECT_TIMEOUT_SECONDS
from dockyard.spec.stacks import networks_of
from dockyard.task_state import is_terminal
from dockyard.timestamps import seconds, to_timestamp
from dockyard.v1 import agent_pb2 as apb
from dockyard.v1 import agent_pb2_grpc as apb_grpc
from dockyard.v1 import types_pb2 as pb

__all__ = ["Drop", "Fleet", "FleetConfig", "FleetJoin", "JoinFailed", "SimAgent", "SimHost", "SimIdentity", "Slot"]

GIB = 1 << 30
RECORDS_KEPT = 1000  # per agent: the latest drops and welcomes
# Loop turns a silent-looking session waits before it ends: enough for a reply gRPC already holds to be read.
SETTLE_TURNS = 3
LAG_PROBE_SECONDS = 0.05
# Joins in flight at once: enough to keep the controller's join path busy, few enough not to crowd its API.
JOIN_CONCURRENCY = 16
# A join refused for the controller's join rate (RESOURCE_EXHAUSTED) is retried after this backoff.
JOIN_RETRY_BASE = 0.05
JOIN_RETRY_CAP = 1.0
# Where each agent's ClusterGuard records the store epoch it accepted: memory-backed where there is one, as
# the guard writes its file (with fsync) at every agent's first welcome, on this process's event loop.
_GUARD_PARENT = "/dev/shm" if Path("/dev/shm").is_dir() else None

# A replica's place: (service id, slot), or (service id, node id) for a global service's task.
Slot = tuple[str, str]
_Call = grpc.aio.StreamStreamCall[apb.AgentMessage, apb.ControllerMessage]
# Never written: the simulated book lives in memory only.
_NO_FILE = Path("/nonexistent/dockyard-sim/tasks.pb")


@dataclass(frozen=True)
class FleetConfig:
    """How many agents, what they say about their hosts, and how they pace their work."""

    agents: int = 0
    streams_per_channel: int = 100
    # Each step of a task (prepare, create, start, stop, remove) takes a delay drawn from this range.
    step_delay: tuple[float, float] = (0.0, 0.05)
    # At most one status message per agent per this many seconds; what piles up meanwhile goes in it.
    status_interval: float = 0.05
    # Agents start at random moments within this many seconds, as a fleet coming up does, not all at once.
    ramp: float = 1.0
    # Used until a Welcome names the controller's period.
    heartbeat_period: float = 1.0
    connect_timeout: float = CONNECT_TIMEOUT_SECONDS
    cpus: float = 8.0
    memory_bytes: int = 16 * GIB
    labels: Mapping[str, str] = field(default_factory=lambda: {"fleet": "sim"})
    seed: int | None = None  # also names the nodes (sim-<seed>-<index>); None: random, unique per fleet


@dataclass(frozen=True)
class FleetJoin:
    """How the agents join a controller that serves TLS: its join address and the cluster's join token."""

    address: str
    token: str


@dataclass(frozen=True)
class SimIdentity:
    """Who one agent is: node id and hostname, and with TLS its node certificate and membership."""

    node_id: str
    hostname: str
    credentials: pki.Credentials | None = None  # None: plaintext (--insecure)
    membership: Membership | None = None  # None: no cluster to hold the controller to


class JoinFailed(Exception):
    """The controller refused a join for a reason retrying will not change (wrong token, another CA)."""


@dataclass(frozen=True)
class Drop:
    """A session that ended, when (the fleet clock's monotonic time) and why."""

    at: float
    reason: str


class SimHost:
    """One host's tasks and imaginary containers: the agent's TaskBook and Reporter, and the worker's steps.

    Synchronous and free of I/O, so that assignment handling can be tested step by step: `apply` takes an
    Assignments message and returns the tasks to step; `step` performs one step of one task.
    """

    def __init__(self, node_id: str, clock: Clock) -> None:
        """An empty host; statuses go to `reporter`, stamped with `clock`."""
        self.node_id = node_id
        self.book = TaskBook(_NO_FILE, clock=clock)
        self.reporter = Reporter()
        self._clock = clock
        self._containers: dict[str, ContainerInfo] = {}
        self.reported: Counter[int] = Counter()  # how many times each state was reported
        # Networks: the newest NetworkMap, and the addresses a running task reports on the networks of its spec
        # that this node has a subnet of (as the real worker reports its container's): one per task, in order.
        self.network_map: apb.NetworkMap | None = None
        self._addresses: dict[str, dict[str, str]] = {}
        # Kept up to date on every change, because benchmarks ask for it far more often than anything changes.
        self._running: dict[str, Slot] = {}  # task id -> its slot

    def apply(self, assignments: apb.Assignments) -> set[str]:
        """Takes one Assignments message as the agent's link does; returns the ids of the tasks to step."""
        changed = self.book.apply(assignments)
        for task_id in changed:
            self._refresh(task_id)
        if assignments.kind == apb.Assignments.KIND_FULL:
            # As the link does: every task steps after a full set, so an adopted task reports what it finds.
            return {t.id for t in self.book}
        return changed

    def step(self, task_id: str) -> bool:
        """Performs the next step of a task and reports its transition; returns whether more steps follow."""
        try:
            return self._step(task_id)
        finally:
            self._refresh(task_id)

    def _refresh(self, task_id: str) -> None:
        task = self.book.get(task_id)
        if (
            task is not None
            and task.desired_state == pb.DESIRED_STATE_RUNNING
            and task.status.state == pb.TASK_STATE_RUNNING
            and task_id in self._containers
        ):
            self._running[task_id] = (task.service_id, str(task.slot) if task.slot else task.node_id)
        else:
            self._running.pop(task_id, None)

    def _step(self, task_id: str) -> bool:
        task = self.book.get(task_id)
        if task is None:
            return False
        container = self._containers.get(task_id)
        step = next_step(task, container)
        if step.idle:
            if container is None and task.desired_state != pb.DESIRED_STATE_RUNNING and is_terminal(task.status.state):
                self.book.forget(task_id)  # as the worker does once a finished task's container is gone
            return False
        if step.op in (Op.PREPARE, Op.CREATE) and self.book.spec_of(task) is None:
            # The worker refuses to run a container from an empty spec.
            self._report(task, pb.TASK_STATE_REJECTED, "", "the controller sent no spec for this revision")
            return True
        if step.op is Op.CREATE:
            self._containers[task_id] = _container(task, ContainerState.CREATED)
        elif step.op is Op.START:
            self._containers[task_id] = _container(task, ContainerState.RUNNING)
        elif step.op is Op.STOP:
            self._containers[task_id] = _container(task, ContainerState.EXITED)
        elif step.op is Op.REMOVE:
            self._containers.pop(task_id, None)
        if step.report is not None:
            self._report(task, step.report, step.message, step.error)
        return True

    def running(self) -> set[str]:
        """Returns the ids of the tasks this host runs that the controller wants running."""
        return set(self._running)

    def running_slots(self) -> Iterable[Slot]:
        """Returns the slot of each task running() would return, without copying them."""
        return self._running.values()

    def containers(self) -> set[str]:
        """Returns the ids of the tasks that have a container here, whatever they are wanted to do."""
        return set(self._containers)

    def _report(self, task: pb.Task, state: int, message: str, error: str) -> None:
        status = pb.TaskStatus(
            state=state,  # type: ignore[arg-type]
            message=message,
            error=error,
            container_id=_container_id(task.id) if task.id in self._containers else "",
            addresses=self._task_addresses(task) if state == pb.TASK_STATE_RUNNING else {},
        )
        status.timestamp.CopyFrom(to_timestamp(self._clock.now()))
        self.book.set_status(task.id, status)
        self.reporter.report(task.id, status)
        self.reported[state] += 1

    def _task_addresses(self, task: pb.Task) -> dict[str, str]:
        """The imaginary container's address on each of its networks this node has a subnet of (kept per task)."""
        spec = self.book.spec_of(task)
        if spec is None or self.network_map is None:
            return {}
        given = self._addresses.setdefault(task.id, {})
        for subnet in self.network_map.subnets:
            if subnet.node_id == self.node_id and subnet.network in networks_of(spec) and subnet.network not in given:
                # .1 is the gateway; hosts from .2 on, one per task ever started here (enough for tests).
                network = ipaddress.IPv4Network(subnet.subnet)
                given[subnet.network] = str(network.network_address + 2 + len(self._addresses) % 250)
        return dict(given)


def _container_id(task_id: str) -> str:
    return hashlib.sha256(task_id.encode()).hexdigest()


def _container(task: pb.Task, state: ContainerState) -> ContainerInfo:
    return ContainerInfo(id=_container_id(task.id), name=task.id, image="", labels={}, state=state)


def _rpc_reason(exc: grpc.aio.AioRpcError) -> str:
    """Returns why a call failed, in words; gRPC's bare INTERNAL for a write after the stream ended is explained."""
    if exc.code() == grpc.StatusCode.INTERNAL and exc.details() == "Internal error from Core":
        # grpc/grpc#36066: an asyncio client that writes after the server ended the stream gets this instead of
        # the server's own status; the controller had closed the session.
        return "the controller ended the session (a write after its end: INTERNAL)"
    return f"{exc.code().name}: {exc.details()}"


class _SessionEnded(Exception):
    """The session ended for the reason given."""


class _Session:
    """One open session: its call, when the controller last spoke, and one write at a time."""

    def __init__(self, call: _Call, now: float) -> None:
        self.call = call
        self.heard = now
        self._lock = asyncio.Lock()

    async def send(self, message: apb.AgentMessage) -> None:
        """Writes one message; gRPC fails the whole call on overlapping writes."""
        async with self._lock:
            await self.call.write(message)


class SimAgent:
    """One simulated agent: keeps a session open on a shared channel and drives its host's tasks."""

    def __init__(
        self,
        index: int,
        identity: SimIdentity,
        channel: grpc.aio.Channel,
        config: FleetConfig,
        clock: Clock,
        rng: random.Random,
        guard: ClusterGuard | None = None,
    ) -> None:
        """An agent that has not dialled yet; `run()` starts it. `guard` checks every Welcome (None: none)."""
        self.index = index
        self.identity = identity
        self.node_id = identity.node_id
        self.hostname = identity.hostname
        self.host = SimHost(identity.node_id, clock)
        self._channel = channel
        self._stub = apb_grpc.AgentServiceStub(channel)
        self._guard = guard
        self._config = config
        self._clock = clock
        self._rng = rng
        self._stepping: dict[str, asyncio.Task[None]] = {}
        self._silent_call: _Call | None = None
        self._keep_open = False
        self.connected = asyncio.Event()
        self.lost = False
        # The latest records only, so that an agent re-dialling for hours stays small; the counts are exact.
        self.drops: deque[Drop] = deque(maxlen=RECORDS_KEPT)
        self.welcomes: deque[float] = deque(maxlen=RECORDS_KEPT)  # monotonic time of each Welcome
        self.welcome_waits: deque[float] = deque(maxlen=RECORDS_KEPT)  # seconds from a hello to its Welcome
        # Seconds each dial waited for its channel to be ready: a TCP connect, and with TLS the handshake (0 on a
        # plaintext channel other agents had already connected).
        self.connect_waits: deque[float] = deque(maxlen=RECORDS_KEPT)
        self.dials = 0
        self.sessions = 0  # welcomed sessions
        # The longest wait for a word from the controller within a session (reset by Fleet.reset_lag): the
        # margin left before MISSED_HEARTBEATS periods end the session.
        self.longest_silence = 0.0
        # Service discovery as this agent was told it: name -> addresses, and when (the fleet clock's now(), the
        # time the controller stamps statuses with) each name last changed, so a test can measure how soon a
        # change reaches every agent.
        self.dns: dict[str, tuple[str, ...]] = {}
        self.dns_changed_at: dict[str, datetime] = {}
        self.dns_version = 0

    @property
    def reconnects(self) -> int:
        """Sessions opened after the first one."""
        return max(0, self.sessions - 1)

    def description(self) -> pb.NodeDescription:
        """Returns the host facts this agent's hello carries."""
        return pb.NodeDescription(
            hostname=self.hostname,
            labels=dict(self._config.labels),
            cpus=self._config.cpus,
            memory_bytes=self._config.memory_bytes,
            docker_version="sim",
            os="linux",
            arch="x86_64",
            agent_version=__version__,
        )

    async def run(self) -> None:
        """Dials and re-dials with the agent's jittered backoff until cancelled."""
        backoff = Backoff(base=REDIAL_BASE, cap=REDIAL_CAP, rng=self._rng)
        await self._clock.sleep(self._rng.uniform(0.0, self._config.ramp))
        try:
            while True:
                self.dials += 1
                try:
                    await self._session(backoff)
                except _SessionEnded as exc:
                    self.drops.append(Drop(self._clock.monotonic(), str(exc)))
                except grpc.aio.AioRpcError as exc:
                    self.drops.append(Drop(self._clock.monotonic(), _rpc_reason(exc)))
                except Exception as exc:  # the agent outlives any one bad session, as the real link does
                    self.drops.append(Drop(self._clock.monotonic(), f"{type(exc).__name__}: {exc}"))
                finally:
                    self.connected.clear()
                await self._clock.sleep(backoff.next_delay())
        finally:
            for stepping in list(self._stepping.values()):
                stepping.cancel()
            await asyncio.gather(*self._stepping.values(), return_exceptions=True)

    def mark_lost(self, silent: bool) -> None:
        """Marks the agent lost; the caller then cancels its run. A silent one leaves its stream open, mute."""
        self.lost = True
        self._keep_open = silent

    def close_silent(self) -> None:
        """Cancels a stream left open by a silent loss."""
        if self._silent_call is not None:
            self._silent_call.cancel()
            self._silent_call = None

    async def _session(self, backoff: Backoff) -> None:
        # As the agent's link: the channel is connected (within the connect timeout) before the hello is sent,
        # so that hello-to-welcome is the controller's answer, not a connect or a TLS handshake.
        started = self._clock.monotonic()
        try:
            async with self._clock.timeout(self._config.connect_timeout):
                await self._channel.channel_ready()
        except TimeoutError:
            raise _SessionEnded(f"not connected within {self._config.connect_timeout:g}s") from None
        self.connect_waits.append(self._clock.monotonic() - started)
        call = self._stub.Session()
        try:
            await self._serve(call, backoff)
        finally:
            if self.lost and self._keep_open and self._silent_call is None:
                self._silent_call = call  # a dead host never closes its connection; stop() does
            else:
                call.cancel()

    async def _serve(self, call: _Call, backoff: Backoff) -> None:
        period = await self._hello(call)
        backoff.reset()
        self.connected.set()
        session = _Session(call, self._clock.monotonic())
        tasks = {
            asyncio.create_task(self._receive(session)),
            asyncio.create_task(self._heartbeat(session, period)),
            asyncio.create_task(self._watch_silence(session, period * MISSED_HEARTBEATS)),
            asyncio.create_task(self._send_status(session)),
        }
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            task.result()

    async def _hello(self, call: _Call) -> float:
        """Sends the hello with the inventory and waits for the Welcome; returns the heartbeat period it gives."""
        self.host.reporter.clear()  # the inventory says it all
        hello = apb.Hello(node_id=self.node_id, description=self.description(), inventory=self.host.book.inventory())
        welcome_within = self._config.heartbeat_period * MISSED_HEARTBEATS + self._config.connect_timeout
        sent = self._clock.monotonic()
        try:
            async with self._clock.timeout(welcome_within):
                await call.write(apb.AgentMessage(hello=hello))
                first = await call.read()
        except TimeoutError:
            raise _SessionEnded(f"no welcome within {welcome_within:g}s of the hello") from None
        if not isinstance(first, apb.ControllerMessage) or not first.HasField("welcome"):
            raise _SessionEnded("the controller did not welcome the session")
        if self._guard is not None:
            try:
                self._guard.check(first.welcome)  # as the agent's link: before any assignment is read
            except ClusterMismatch as exc:
                raise _SessionEnded(f"controller refused: {exc}") from None
        now = self._clock.monotonic()
        self.sessions += 1
        self.welcomes.append(now)
        self.welcome_waits.append(now - sent)
        return seconds(first.welcome.heartbeat_period) or self._config.heartbeat_period

    async def _receive(self, session: _Session) -> None:
        while True:
            message = await session.call.read()
            if message is grpc.aio.EOF or not isinstance(message, apb.ControllerMessage):
                raise _SessionEnded("the controller closed the session")
            now = self._clock.monotonic()
            self.longest_silence = max(self.longest_silence, now - session.heard)
            session.heard = now
            if message.HasField("assignments"):
                self._wake(self.host.apply(message.assignments))
            elif message.HasField("network_map"):
                current = self.host.network_map
                if current is None or message.network_map.version >= current.version:
                    self.host.network_map = message.network_map
            elif message.HasField("dns"):
                self._take_dns(message.dns, self._clock.now())

    def _take_dns(self, table: apb.DnsTable, now: datetime) -> None:
        """Applies a full DNS table or a delta, as the agent's DNS server does (an older version is ignored)."""
        if table.version < self.dns_version:
            return
        self.dns_version = table.version
        after = {} if table.full else dict(self.dns)
        for record in table.records:
            if record.addresses:
                after[record.name] = tuple(record.addresses)
            else:
                after.pop(record.name, None)
        for name in after.keys() | self.dns.keys():
            if after.get(name) != self.dns.get(name):
                self.dns_changed_at[name] = now
        self.dns = after

    async def _heartbeat(self, session: _Session, period: float) -> None:
        while True:
            await session.send(apb.AgentMessage(heartbeat=apb.Heartbeat(sent_at=to_timestamp(self._clock.now()))))
            await self._clock.sleep(period)

    async def _watch_silence(self, session: _Session, limit: float) -> None:
        while True:
            silent = self._clock.monotonic() - session.heard
            if silent >= limit:
                # Replies that arrived while this process was too busy to run are read first: hundreds of agents
                # share one event loop here, and their stalls must not pass for the controller's silence.
                for _ in range(SETTLE_TURNS):
                    await self._clock.sleep(0)
                silent = self._clock.monotonic() - session.heard
                if silent >= limit:
                    raise _SessionEnded(f"no word from the controller for {silent:.1f}s")
            await self._clock.sleep(limit - silent)

    async def _send_status(self, session: _Session) -> None:
        while True:
            update = await self.host.reporter.take()
            await session.send(apb.AgentMessage(status=update))
            await self._clock.sleep(self._config.status_interval)  # what comes meanwhile goes in the next one

    def _wake(self, task_ids: Iterable[str]) -> None:
        for task_id in task_ids:
            if task_id not in self._stepping:
                self._stepping[task_id] = asyncio.create_task(self._drive(task_id))

    async def _drive(self, task_id: str) -> None:
        """Steps one task until it is idle, each step after a random delay (the real worker's loop, imagined)."""
        low, high = self._config.step_delay
        try:
            while True:
                await self._clock.sleep(self._rng.uniform(low, high))
                if not self.host.step(task_id):
                    return
        finally:
            self._stepping.pop(task_id, None)


class Fleet:
    """Simulated agents against one controller; grows with `add`, loses hosts with `lose`, ends with `stop`."""

    def __init__(
        self,
        address: str,
        config: FleetConfig | None = None,
        clock: Clock | None = None,
        *,
        join: FleetJoin | None = None,
    ) -> None:
        """A fleet of `config.agents` agents for the controller at `address`; `start()` dials them.

        With `join` the agents join through the controller's JoinService and speak mutual TLS; without, plaintext.
        """
        self.address = address
        self.config = config or FleetConfig()
        self._clock: Clock = clock or SystemClock()
        self._rng = random.Random(self.config.seed)
        # Hostnames (and plaintext node ids) unique per fleet, so two fleets against one store never share one.
        self._prefix = f"sim-{secrets.token_hex(3) if self.config.seed is None else f'{self.config.seed:06x}'}"
        self._join = join
        self._enrolled = 0  # identities made so far (joined, or named for plaintext)
        self._pool: deque[SimIdentity] = deque()  # made and not yet given to an agent
        self._ca_pem: bytes | None = None
        self._join_channel: grpc.aio.Channel | None = None
        self._guard_root: Path | None = None
        self.join_retries = 0  # joins refused for the controller's join rate and tried again
        self._channels: list[grpc.aio.Channel] = []  # every channel, to close at stop
        self._shared: grpc.aio.Channel | None = None  # the plaintext channel new streams go on
        self._streams_on_last = 0
        self.agents: list[SimAgent] = []
        self._runs: dict[str, asyncio.Task[None]] = {}
        self._lag_probe: asyncio.Task[None] | None = None
        self.max_lag = 0.0  # the worst lateness of this process's event loop, in seconds, since start

    async def __aenter__(self) -> Fleet:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    @property
    def secure(self) -> bool:
        """Whether the agents join and speak mutual TLS."""
        return self._join is not None

    async def start(self) -> None:
        """Joins (with TLS) and starts the configured number of agents."""
        await self.enroll(self.config.agents - len(self._pool))
        self.add(self.config.agents)

    async def enroll(self, count: int) -> None:
        """Makes `count` more identities for `add`: with TLS each is a join, up to JOIN_CONCURRENCY at once.

        JoinFailed when the controller refuses for good (wrong token, a server not of the token's CA).
        """
        if count <= 0:
            return
        if self._join is None:
            self._name_plain(count)
            return
        indexes = range(self._enrolled, self._enrolled + count)
        self._enrolled += count
        join = self._join
        token = pki.parse_token(join.token)
        if self._ca_pem is None:
            # Once per fleet, as each real host does once: the controller is checked against the token's digest.
            self._ca_pem = await fetch_ca(join.address, token.ca_digest)
        if self._join_channel is None:
            # Joins carry no client certificate, so one channel serves them all.
            self._join_channel = open_server_tls_channel(join.address, self._ca_pem)
        stub = apb_grpc.JoinServiceStub(self._join_channel)
        gate = asyncio.Semaphore(JOIN_CONCURRENCY)

        async def one(index: int) -> SimIdentity:
            async with gate:
                return await self._join_one(stub, token, index)

        self._pool.extend(await asyncio.gather(*(one(i) for i in indexes)))

    async def _join_one(self, stub: apb_grpc.JoinServiceAsyncStub, token: pki.JoinToken, index: int) -> SimIdentity:
        """Joins one agent as agent.identity.join does, in memory; retries while the join rate refuses it."""
        hostname = self._name(index)
        key, request = join_request(token, hostname)
        backoff = Backoff(base=JOIN_RETRY_BASE, cap=JOIN_RETRY_CAP, rng=random.Random(self._rng.random()))
        while True:
            try:
                response = await stub.Join(request, timeout=JOIN_DEADLINE)
                break
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE):
                    raise JoinFailed(f"{hostname}: the controller refused the join: {_rpc_reason(exc)}") from None
                self.join_retries += 1
                await self._clock.sleep(backoff.next_delay())
        try:
            credentials = joined_credentials(token, key, response)
        except NotJoined as exc:
            raise JoinFailed(f"{hostname}: {exc}") from None
        membership = Membership(node_id=response.node_id, cluster_id=response.cluster_id, controller=self.address)
        return SimIdentity(response.node_id, hostname, credentials, membership)

    def adopt(self, identities: Iterable[SimIdentity]) -> None:
        """Queues identities made elsewhere (certificates of a test CA) for the next agents `add` starts."""
        self._pool.extend(identities)

    def _name(self, index: int) -> str:
        return f"{self._prefix}-{index:05d}"

    async def _probe_lag(self) -> None:
        """Measures how late the event loop runs a timer: a fleet too busy to keep time makes false silences."""
        while True:
            start = self._clock.monotonic()
            await self._clock.sleep(LAG_PROBE_SECONDS)
            self.max_lag = max(self.max_lag, self._clock.monotonic() - start - LAG_PROBE_SECONDS)

    def reset_lag(self) -> None:
        """Starts measuring max_lag and longest_silence afresh."""
        self.max_lag = 0.0
        for agent in self.agents:
            agent.longest_silence = 0.0

    def longest_silence(self) -> float:
        """Returns the longest a live agent waited for a word from the controller within a session."""
        return max((a.longest_silence for a in self.live), default=0.0)

    def add(self, count: int) -> list[SimAgent]:
        """Starts `count` more agents (each after a random part of the ramp) and returns them.

        The first call also starts the probe of this process's own event-loop lag (max_lag).
        """
        if self._lag_probe is None:
            self._lag_probe = asyncio.create_task(self._probe_lag())
        if self._join is None and len(self._pool) < count:
            self._name_plain(count - len(self._pool))  # nothing to join: naming them is all enroll() would do
        if len(self._pool) < count:
            raise ValueError(f"add({count}): only {len(self._pool)} agents joined; enroll() the rest first")
        added = []
        for _ in range(count):
            index = len(self.agents)
            identity = self._pool.popleft()
            agent = SimAgent(
                index,
                identity,
                self._channel_for(identity),
                self.config,
                self._clock,
                random.Random(self._rng.random()),
                self._guard_for(identity),
            )
            self.agents.append(agent)
            self._runs[agent.node_id] = asyncio.create_task(agent.run(), name=f"sim-agent-{index}")
            added.append(agent)
        return added

    def _name_plain(self, count: int) -> None:
        """Queues `count` plaintext identities: each names itself in its hello, as with --insecure."""
        names = [self._name(i) for i in range(self._enrolled, self._enrolled + count)]
        self._enrolled += count
        self._pool.extend(SimIdentity(name, name) for name in names)

    def _guard_for(self, identity: SimIdentity) -> ClusterGuard | None:
        if identity.membership is None:
            return None
        if self._guard_root is None:
            self._guard_root = Path(tempfile.mkdtemp(prefix="dockyard-fleet-", dir=_GUARD_PARENT))
        return ClusterGuard(self._guard_root / identity.hostname, identity.membership)

    def _channel_for(self, identity: SimIdentity) -> grpc.aio.Channel:
        if identity.credentials is not None:
            # Its own channel: a channel presents one certificate, and the certificate is the node.
            channel = open_channel(
                self.address, identity.credentials, session_channel_options(self.config.connect_timeout)
            )
            self._channels.append(channel)
            return channel
        if self._shared is None or self._streams_on_last >= max(1, self.config.streams_per_channel):
            # The agent's own options, among them a private subchannel: otherwise gRPC would put every channel
            # to the same address on one shared connection.
            options = session_channel_options(self.config.connect_timeout)
            self._shared = grpc.aio.insecure_channel(self.address, options=options)
            self._channels.append(self._shared)
            self._streams_on_last = 0
        self._streams_on_last += 1
        return self._shared

    @property
    def live(self) -> list[SimAgent]:
        """The agents not lost."""
        return [a for a in self.agents if not a.lost]

    def connected(self) -> int:
        """Returns how many live agents have a welcomed session now."""
        return sum(1 for a in self.live if a.connected.is_set())

    async def wait_connected(self, within: float) -> None:
        """Returns once every live agent has a session; raises TimeoutError after `within` seconds."""
        async with self._clock.timeout(within):
            for agent in self.live:
                await agent.connected.wait()

    def lose(self, count: int, *, silent: bool = False, among: Iterable[SimAgent] | None = None) -> list[SimAgent]:
        """Takes `count` live agents away at once, as dead hosts: no more heartbeats, statuses or re-dials.

        Their streams are cancelled (the controller sees them end), or with `silent` left open and mute, as
        after a power cut or a partition. Returns the lost agents.
        """
        candidates = [a for a in (among if among is not None else self.agents) if not a.lost]
        chosen = candidates[:count]
        for agent in chosen:
            agent.mark_lost(silent)
            self._runs[agent.node_id].cancel()
        return chosen

    def running(self) -> dict[str, str]:
        """Returns task id -> node id of every task live agents run and the controller wants running."""
        return {task_id: a.node_id for a in self.live for task_id in a.host.running()}

    def running_count(self) -> int:
        """Returns how many slots live agents run (cheap enough to poll): replicas running, each counted once.

        A slot counts once however many agents run a task of it: an agent cut off from the controller keeps
        running what it was last told (as a real one does) while a replacement runs elsewhere.
        """
        return len({slot for agent in self.live for slot in agent.host.running_slots()})

    def duplicates(self) -> dict[str, list[str]]:
        """Returns the tasks that more than one live agent runs, with those agents' node ids."""
        seen: dict[str, list[str]] = {}
        for agent in self.live:
            for task_id in agent.host.running():
                seen.setdefault(task_id, []).append(agent.node_id)
        return {task_id: nodes for task_id, nodes in seen.items() if len(nodes) > 1}

    def slots_run_twice(self) -> dict[Slot, list[str]]:
        """Returns the slots that more than one live agent runs a task of, with those agents' node ids."""
        seen: dict[Slot, list[str]] = {}
        for agent in self.live:
            for slot in agent.host.running_slots():
                seen.setdefault(slot, []).append(agent.node_id)
        return {slot: nodes for slot, nodes in seen.items() if len(nodes) > 1}

    def drops(self, since: float | None = None) -> list[tuple[str, Drop]]:
        """Returns (node id, drop) of every session that ended among live agents, optionally since a moment."""
        return [
            (agent.node_id, drop) for agent in self.live for drop in agent.drops if since is None or drop.at >= since
        ]

    async def stop(self) -> None:
        """Stops every agent and closes every stream and channel."""
        runs = list(self._runs.values())
        if self._lag_probe is not None:
            runs.append(self._lag_probe)
            self._lag_probe = None
        for run in runs:
            run.cancel()
        await asyncio.gather(*runs, return_exceptions=True)
        for agent in self.agents:
            agent.close_silent()
        for channel in [*self._channels, *([self._join_channel] if self._join_channel is not None else [])]:
            with contextlib.suppress(Exception):
                await channel.close(grace=None)
        self._channels.clear()
        self._shared = None
        self._join_channel = None
        if self._guard_root is not None:
            shutil.rmtree(self._guard_root, ignore_errors=True)
            self._guard_root = None
