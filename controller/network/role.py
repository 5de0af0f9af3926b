"""The network role: keeps every Network's subnets right as nodes come and go and tasks are placed.

Why a role of its own, and how a task never reaches its agent before its subnet: the scheduler commits an
assignment; this role sees the task's event, gives the node a subnet of each of the task's networks in its
own commit (a few milliseconds later), and the dispatcher holds back an assigned task whose node has no
subnet yet for one of its networks until the map that gives it is queued for the same session, ahead of
the task (controller/dispatcher/networks.py). Putting the subnet in the scheduler's own transaction would
have made every network write a conflict for the scheduler's commits and tied the scheduler to networks;
this way the roles still meet only in the store, and the order the agent sees does not depend on which
commit lands first.

What it writes: the cluster network (dockyard.spec.stacks.CLUSTER_NETWORK) when it is missing, a stack's
implicit default network (`<stack>_default`, as Compose makes one) when a placed task needs it and the
apply did not declare it, and Network.subnets as controller/network/allocate.py decides.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime

import structlog

from controller.network.allocate import allocate, updated_networks, wanted_pairs
from controller.store.base import Action, ConflictError, Event, Kind, Op, Put, Store
from controller.store.specs import SpecCache
from dockyard.clock import Clock
from dockyard.logs import Throttle
from dockyard.spec.stacks import CLUSTER_NETWORK, default_network, networks_of
from dockyard.task_state import is_terminal, spec_key
from dockyard.timestamps import to_timestamp
from dockyard.v1 import types_pb2 as pb

log = structlog.get_logger()

__all__ = ["NetworkRole", "cluster_network_op"]


def cluster_network_op(networks: Iterable[pb.Network], new_id: Callable[[], str], now: datetime) -> Put | None:
    """Returns the write that creates the cluster network, or None when it exists."""
    if any(n.name == CLUSTER_NETWORK for n in networks):
        return None
    network = pb.Network(id=new_id(), name=CLUSTER_NETWORK)
    network.created_at.CopyFrom(to_timestamp(now))
    return Put(network, expect_version=0)


def _places(task: pb.Task) -> bool:
    """Tells whether a task holds a node's place in its networks: placed, wanted running, not finished."""
    return bool(task.node_id) and task.desired_state == pb.DESIRED_STATE_RUNNING and not is_terminal(task.status.state)


class NetworkRole:
    """Reconciles Network.subnets with the nodes and placed tasks (run it under controller.reactor.Reactor)."""

    KINDS = (Kind.NODE, Kind.TASK, Kind.NETWORK, Kind.SERVICE)

    def __init__(self, store: Store, clock: Clock, pool: ipaddress.IPv4Network, new_id: Callable[[], str]) -> None:
        """Allocates from `pool`; ids of networks it creates come from new_id."""
        self._store = store
        self._clock = clock
        self.pool = pool
        self._new_id = new_id
        self._specs = SpecCache(store)
        self._throttle = Throttle(clock, interval=60.0, burst=1)

    async def ensure_cluster_network(self) -> None:
        """Creates the cluster network if it does not exist (at the controller's start)."""
        op = cluster_network_op(await self._networks(), self._new_id, self._clock.now())
        if op is not None:
            try:
                await self._store.commit([op])
            except ConflictError:
                pass  # made meanwhile by someone else: what was wanted
            else:
                log.info("cluster network created", network=CLUSTER_NETWORK)

    async def _networks(self) -> list[pb.Network]:
        return [n for n in await self._store.list_objects(Kind.NETWORK) if isinstance(n, pb.Network)]

    async def reconcile(self, changes: Sequence[Event] | None) -> datetime | None:
        """Gives and releases subnets for what changed (None: everything); "now" again after a conflict."""
        if changes is not None and not any(_matters(e) for e in changes):
            return None
        now = self._clock.now()
        networks = await self._networks()
        nodes = await self._store.list_nodes()
        if changes is None:
            tasks = [t for t in await self._store.list_tasks() if _places(t)]
            services = await self._store.list_services()
        else:
            tasks = [e.obj for e in changes if isinstance(e.obj, pb.Task) and e.action == Action.PUT and _places(e.obj)]
            services = [e.obj for e in changes if isinstance(e.obj, pb.Service) and e.action == Action.PUT]
        specs = await self._specs.for_tasks(tasks)
        joined: dict[str, Sequence[str]] = {}
        # An implicit default network that a service or a placed task needs -> its stack. Made as soon as the
        # service is, so it normally exists before the service's first task is placed.
        stacks: dict[str, str] = {}
        for needing in [*specs.values(), *(s.spec for s in services)]:
            if needing.stack and default_network(needing.stack) in networks_of(needing):
                stacks[default_network(needing.stack)] = needing.stack
        for task in tasks:
            spec = specs.get(spec_key(task))
            if spec is not None:
                joined[task.id] = networks_of(spec)
        ops: list[Op] = []
        created = cluster_network_op(networks, self._new_id, now)
        if created is not None:
            ops.append(created)
        for name, stack in sorted(stacks.items()):
            if not any(n.name == name for n in networks):
                implicit = pb.Network(id=self._new_id(), name=name, stack=stack)
                implicit.created_at.CopyFrom(to_timestamp(now))
                ops.append(Put(implicit, expect_version=0))
        if ops:
            # New networks first, in a commit of their own: their subnets come from the pass they cause.
            try:
                await self._store.commit(ops)
            except ConflictError as exc:
                log.debug("network creation conflict", error=str(exc))
            return now
        allocation = allocate(networks, {n.id for n in nodes}, wanted_pairs(nodes, tasks, joined), self.pool)
        if allocation.unplaced and self._throttle.allow("pool exhausted") is not None:
            log.error(
                "network pool exhausted: tasks on these nodes wait for a subnet",
                pool=str(self.pool),
                pairs=[f"{network}@{node}" for network, node in allocation.unplaced[:10]],
                count=len(allocation.unplaced),
            )
        writes: list[Op] = [Put(n, expect_version=n.version) for n in updated_networks(networks, allocation)]
        if not writes:
            return None
        try:
            await self._store.commit(writes)
        except ConflictError as exc:
            log.debug("subnet allocation conflict", error=str(exc))
            return now
        given = sum(len(s) for s in allocation.assigned.values())
        released = sum(len(s) for s in allocation.released.values())
        log.info("subnets allocated", given=given, released=released)
        return None


def _matters(event: Event) -> bool:
    """Tells whether an event can change which subnets are wanted or held."""
    if event.kind == Kind.TASK:
        task = event.obj
        return event.action == Action.PUT and isinstance(task, pb.Task) and _places(task)
    if event.kind == Kind.SERVICE:
        return event.action == Action.PUT  # it may need its stack's default network
    # A node that came, went, or became ready; a network made or changed (its subnets to check) or removed.
    return event.kind in (Kind.NODE, Kind.NETWORK)
