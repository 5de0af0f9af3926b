"""The dispatcher's view of the cluster's networks and service discovery, published to every session.

It follows the store's events through the dispatcher's router (on_event): Networks and node addresses for
the NetworkMaps, services and tasks for the DNS table (controller/network/dns.py). A new session is greeted
with its whole map and the whole table; afterwards changes are published at most PUBLISH_WINDOW_SECONDS
after they happen, a map only to the sessions whose map changed and a DNS delta to every session. Versions
are store revisions, so they grow across sessions and controller restarts and an agent can ignore an older
map or table.

The gate (`gate`) is how an assigned task never reaches its agent before its subnet: a session holds back a
task the agent has not seen while its node lacks a subnet of one of its networks (see session.py), and every
map published to a session is followed by releasing what it now covers, so the map is written first. What
counts is the map queued for the session, not the view: when the view already has the subnet but the
session's map does not, the gate queues the session's map at once (ahead of the task) instead of letting
the task wait for the publish window.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from functools import partial

import structlog

from controller.dispatcher.bounds import MAP_INTERVAL_SECONDS, PUBLISH_WINDOW_SECONDS
from controller.dispatcher.session import AgentSession
from controller.network.dns import DnsIndex, Records, dns_message
from controller.network.maps import covers, network_map, participation, peer_host
from controller.store.base import Action, Event, Kind, Store
from dockyard.clock import Clock
from dockyard.spec.stacks import networks_of
from dockyard.v1 import agent_pb2 as apb
from dockyard.v1 import types_pb2 as pb

log = structlog.get_logger()

__all__ = ["NetworkPublisher"]


class NetworkPublisher:
    """Keeps the networks, node addresses and DNS records as of the router's position, and tells the sessions."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        sessions: Mapping[str, AgentSession],
        pool: str,
        window: float = PUBLISH_WINDOW_SECONDS,
        map_interval: float = MAP_INTERVAL_SECONDS,
    ) -> None:
        """Publishes to the live `sessions` (the dispatcher's own registry, by node id) the maps of `pool`."""
        self._store = store
        self._clock = clock
        self._sessions = sessions
        self._pool = pool
        self._window = window
        self.ready = asyncio.Event()  # set once loaded: sessions wait for it before their first map
        self._loaded_at = 0
        self.revision = 0  # the newest store revision the view reflects
        self._networks: dict[str, pb.Network] = {}  # by name
        self._hosts: dict[str, str] = {}  # node id -> address the other nodes reach it at
        self._dns = DnsIndex()
        self._published: Records = {}
        # The revision the published table is as of: a greeting's full table says it, so the next delta (made
        # of later events) always has a higher version and no agent drops it as old news.
        self._published_version = 0
        self._maps_dirty = False
        # Peers' map changes go out at most once per map interval: every round sends each session its whole map
        # (71 KB at 1,000 nodes), so a wave of joins must not send them ten times a second. A task's own
        # subnet never waits for it (see gate).
        self._map_interval = map_interval
        self._maps_due = 0.0
        self._wake = asyncio.Event()

    async def load(self) -> None:
        """Reads everything the view holds from the store (at start, and after the router missed events)."""
        revision = self._store.revision
        networks = [n for n in await self._store.list_objects(Kind.NETWORK) if isinstance(n, pb.Network)]
        nodes = await self._store.list_nodes()
        services = await self._store.list_services()
        tasks = await self._store.list_tasks()
        self._networks = {n.name: n for n in networks}
        self._hosts = {n.id: peer_host(n.address) for n in nodes}
        self._dns.reset(services, tasks)
        self._dns.take_changes({})
        self._published = self._dns.records()
        self._loaded_at = self.revision = self._published_version = revision
        # Nothing to publish: a session is greeted with the whole view (after a reload, by the router).
        self._maps_dirty = False
        self.ready.set()

    def on_event(self, event: Event) -> None:
        """Moves the view past one store event (events the last load already read are skipped)."""
        if event.revision <= self._loaded_at or not self.ready.is_set():
            return
        self.revision = max(self.revision, event.revision)
        deleted = event.action == Action.DELETE
        obj = event.obj
        if isinstance(obj, pb.Network):
            if deleted:
                self._networks.pop(obj.name, None)
            else:
                # A rename (not something the API does) must not leave the old name behind.
                for name in [n for n, old in self._networks.items() if old.id == obj.id and n != obj.name]:
                    del self._networks[name]
                self._networks[obj.name] = obj
            self._changed_maps()
        elif isinstance(obj, pb.Node):
            host = "" if deleted else peer_host(obj.address)
            if self._hosts.get(obj.id, "") != host:
                if deleted:
                    self._hosts.pop(obj.id, None)
                else:
                    self._hosts[obj.id] = host
                if any(obj.id in n.subnets for n in self._networks.values()):
                    self._changed_maps()
        elif isinstance(obj, pb.Task):
            self._dns.on_task(obj, deleted)
            if self._dns.dirty:
                self._wake.set()
        elif isinstance(obj, pb.Service):
            self._dns.on_service(obj, deleted)
            if self._dns.dirty:
                self._wake.set()

    def _changed_maps(self) -> None:
        self._maps_dirty = True
        self._wake.set()

    def gate(self, session: AgentSession, task: pb.Task, spec: pb.ServiceSpec | None) -> bool:
        """The session gate: whether the session's queued map has a subnet of every network of the task's spec.

        When only the view has them yet, the session's map is queued now, so the task may follow it.
        """
        del task
        if spec is None:
            return True
        needed = {name for name in networks_of(spec) if name in self._networks}
        if needed <= session.map_networks:
            return True
        if not covers(self._networks, session.node_id, spec):
            return False  # the network role has not given the subnet yet: a later map releases the task
        self._send_map(session, {})
        return True

    def greet(self, session: AgentSession) -> None:
        """Queues a session's whole map and DNS table, and fits it with the gate; call once the view is ready."""
        session.gate = partial(self.gate, session)
        session.map_content = None
        self._send_map(session, {})
        session.dns(dns_message(self._published, self._published_version, full=True))
        session.greeted = True

    def _send_map(self, session: AgentSession, built: dict[frozenset[str], tuple[apb.NetworkMap, bytes]]) -> None:
        """Queues the session's map if it changed, building each distinct map once per round (`built`)."""
        names = participation(self._networks.values(), session.node_id)
        entry = built.get(names)
        if entry is None:
            message = network_map(self._networks, self._hosts, names, self._pool, self.revision)
            content = apb.NetworkMap(pool=message.pool, subnets=message.subnets).SerializeToString(deterministic=True)
            entry = built[names] = (message, content)
        session.network_map(*entry)
        session.map_networks = names

    async def run(self) -> None:
        """Publishes what changed, at most one window after it changed (maps: one map interval), until cancelled."""
        while True:
            if self._maps_dirty:
                # Maps held back by the map interval: go when it is over, or sooner for DNS news.
                with contextlib.suppress(TimeoutError):
                    async with self._clock.timeout(max(0.0, self._maps_due - self._clock.monotonic())):
                        await self._wake.wait()
            else:
                await self._wake.wait()
            await self._clock.sleep(self._window)
            self._wake.clear()
            self.publish()

    def publish(self) -> None:
        """Sends every greeted session its changed map (then the tasks it lets through) and the DNS delta."""
        sessions = [s for s in self._sessions.values() if s.greeted and not s.closed.is_set()]
        if self._maps_dirty and self._clock.monotonic() >= self._maps_due:
            self._maps_dirty = False
            self._maps_due = self._clock.monotonic() + self._map_interval
            built: dict[frozenset[str], tuple[apb.NetworkMap, bytes]] = {}
            for session in sessions:
                self._send_map(session, built)
        for session in sessions:
            if session.held:
                # Within the map interval too: the gate sends a session its own map when the view covers a task.
                session.release_held()
        delta = self._dns.take_changes(self._published)
        self._published_version = self.revision
        if delta:
            for name, addresses in delta.items():
                if addresses:
                    self._published[name] = addresses
                else:
                    self._published.pop(name, None)
            table = dns_message(delta, self.revision, full=False)
            for session in sessions:
                session.dns(table)
            log.debug("dns published", names=len(delta), sessions=len(sessions))
