"""The scheduler's model of the cluster for one call: what each task asks for, and what each node holds.

Everything here is plain Python read once from protobuf, so that filters and scorers never touch protobuf in
the hot loop. A task's spec is not on the task: it is looked up by (service id, revision) in the specs the
caller passes, and each distinct spec is read once per call however many tasks run it.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import NamedTuple

from dockyard.constraints import ConstraintError, parse_constraint
from dockyard.task_state import SpecKey, spec_key
from dockyard.v1 import types_pb2 as pb
from dockyard.volumes import mounted_volumes

"""A spec's key: (service id, service revision), as a task names the spec it runs."""

HostPort = tuple[int, str]
"""A published host port and its lower-case protocol, e.g. (8080, "tcp")."""

NANO_CPUS_PER_CPU = 1_000_000_000


@dataclass(frozen=True, slots=True)
class Decision:
    """Where one task goes: node_id is None when it stays unplaced, and reason then says why."""

    task_id: str
    node_id: str | None
    reason: str


def nano_cpus(cpus: float) -> int:
    """Returns a CPU amount in whole billionths (never negative), the unit reservations are summed in."""
    # Summing floats drifts (0.1 + 0.2 > 0.3), which would reject a task that exactly fills a node.
    return max(0, round(cpus * NANO_CPUS_PER_CPU))


def holds_resources(task: pb.Task) -> bool:
    """True while the task is assigned to a node and has not reached a terminal state (COMPLETE or later).

    The desired state does not matter: a task told to SHUT DOWN keeps its container, and with it the host
    ports and reservations, until the agent reports it terminal, so releasing them earlier could double-book.
    """
    return bool(task.node_id) and task.status.state < pb.TASK_STATE_COMPLETE


class VolumeSite(NamedTuple):
    """Where a volume a task mounts lives: the node holding its data, as a reason names it ("h2, which is down")."""

    volume: str
    node_id: str
    node: str


class Demand(NamedTuple):
    """A task's footprint on a node and its service's placement rules.

    A tuple because equal demands share one judgement of the nodes (see engine.ShapePools) and must compare
    and hash cheaply.
    """

    service_id: str
    cpu: int  # nano-CPUs reserved
    memory: int  # bytes reserved
    ports: tuple[HostPort, ...]  # sorted host ports > 0; port 0 lets Docker choose, so it never conflicts
    constraints: tuple[str, ...] = ()  # normalised constraint texts; every one must hold on the node
    max_per_node: int = 0  # most tasks of the service one node may hold; 0 means no limit
    binpack: bool = False  # rank with the binpack strategy instead of spread
    volumes: tuple[VolumeSite, ...] = ()  # the task's volumes that live on a node already, by name


def host_ports(ports: Iterable[pb.PortMapping]) -> tuple[HostPort, ...]:
    """Returns the distinct published host ports (> 0) with normalised protocol ("" means tcp), sorted."""
    found = []
    for mapping in ports:
        port = mapping.host_port
        if port > 0:
            found.append((port, (mapping.protocol or "tcp").lower()))
    return tuple(sorted(set(found))) if len(found) > 1 else tuple(found)


def footprint(service_id: str, spec: pb.ServiceSpec) -> Demand:
    """Returns what a task of the spec holds on its node: reservations (negative ones count as zero), ports.

    Placement rules stay at their defaults: they matter for where a task goes, not for what it holds.
    """
    resources = spec.resources
    ports = spec.ports
    return Demand(
        service_id,
        nano_cpus(resources.cpu_reservation),
        max(0, resources.memory_reservation_bytes),
        host_ports(ports) if ports else (),
    )


@lru_cache(maxsize=1024)
def _constraint_texts(texts: tuple[str, ...]) -> tuple[str, ...] | str:
    """Returns the constraints in their normal form, or why one of them does not parse."""
    # The API refuses bad constraints, so one here is stored data from an older or buggy writer: the task must
    # stay unplaced and say why, and the scheduler must keep placing everything else.
    normal = []
    for text in texts:
        try:
            normal.append(str(parse_constraint(text)))
        except ConstraintError as exc:
            return f"invalid placement constraint: {exc}"
    return tuple(normal)


def demand(service_id: str, spec: pb.ServiceSpec) -> Demand | str:
    """Returns the spec's footprint and placement rules, or why its tasks can never be placed.

    An unknown strategy counts as spread.
    """
    held = footprint(service_id, spec)
    # The spec reader leaves placement unset when every field is a default, as for most services.
    if not spec.HasField("placement"):
        return held
    placement = spec.placement
    constraints = _constraint_texts(tuple(placement.constraints)) if placement.constraints else ()
    if isinstance(constraints, str):
        return constraints
    binpack = placement.strategy == pb.Placement.STRATEGY_BINPACK
    return Demand(*held[:4], constraints, placement.max_replicas_per_node, binpack)


def missing_spec(task: pb.Task) -> str:
    """Returns the reason given for a pending task whose spec is not among the specs (its service is gone)."""
    return f"the spec of its service at revision {task.revision} is gone (was the service deleted?)"


def _site_text(node_id: str, node: pb.Node | None) -> str:
    """Returns how a reason names the node a volume lives on, with why it cannot take tasks if it cannot."""
    if node is None:
        return f"{node_id}, which is not in the cluster"
    name = node.description.hostname or node.id
    if node.status == pb.NODE_STATUS_DOWN:
        return f"{name}, which is down"
    if node.status != pb.NODE_STATUS_READY:
        return f"{name}, which is not ready"
    if node.availability == pb.NODE_AVAILABILITY_DRAIN:
        return f"{name}, which is draining"
    if node.availability == pb.NODE_AVAILABILITY_PAUSE:
        return f"{name}, which is paused"
    return name


def removing_reason(volume: str) -> str:
    """Returns why a task that mounts a volume being removed (Volume.removing) is not placed."""
    return (
        f"volume {volume} is being removed (if no `dockyard volume rm {volume}` is running, run it again: it clears "
        "the mark while a service mounts the volume)"
    )


class Demands:
    """Each task's demand and footprint for one call, computed once per (service, revision).

    A demand also carries where the task's volumes live (VolumeSite): volumes pinned to a node before the
    call (`volumes`: name -> node id), and those the call pins as it places a task that mounts an unpinned
    one there (pin()), so the next task that mounts it goes to the same node.
    """

    __slots__ = ("_demands", "_footprints", "_mounts", "_nodes", "_pins", "_removing", "_sites", "_specs")

    def __init__(
        self,
        specs: Mapping[SpecKey, pb.ServiceSpec],
        volumes: Mapping[str, str] | None = None,
        nodes: Mapping[str, pb.Node] | None = None,
        removing: Container[str] = (),
    ) -> None:
        """Reads specs lazily: only those of the tasks asked about. nodes name a volume's node in reasons; a task
        that mounts a volume in `removing` (being removed) is not placed."""
        self._removing = removing
        self._specs = specs
        self._demands: dict[SpecKey, Demand | str] = {}
        self._footprints: dict[SpecKey, Demand] = {}
        self._mounts: dict[SpecKey, tuple[str, ...]] = {}
        self._pins: dict[str, str] = dict(volumes or {})
        self._nodes: Mapping[str, pb.Node] = nodes or {}
        self._sites: dict[str, VolumeSite] = {}

    def of(self, task: pb.Task) -> Demand | str:
        """Returns a pending task's demand, or why it cannot be placed (spec gone, constraint unreadable)."""
        key = spec_key(task)
        found = self._demands.get(key)
        if found is None:
            spec = self._specs.get(key)
            found = self._demands[key] = missing_spec(task) if spec is None else demand(task.service_id, spec)
            self._mounts[key] = mounted_volumes(spec) if spec is not None else ()
        if self._removing and not isinstance(found, str):
            for name in self._mounts[key]:
                if name in self._removing:
                    return removing_reason(name)
        if self._pins and not isinstance(found, str) and (names := self._mounts[key]):
            sites = tuple(self._site(name) for name in names if name in self._pins)
            if sites:
                return found._replace(volumes=sites)
        return found

    def pin(self, task: pb.Task, node_id: str) -> None:
        """Records that the task was placed on node_id: its volumes that lived nowhere yet live there now."""
        for name in self._mounts.get(spec_key(task), ()):
            self._pins.setdefault(name, node_id)

    def _site(self, name: str) -> VolumeSite:
        site = self._sites.get(name)
        if site is None:
            node_id = self._pins[name]
            site = self._sites[name] = VolumeSite(name, node_id, _site_text(node_id, self._nodes.get(node_id)))
        return site

    def held_by(self, task: pb.Task) -> Demand:
        """Returns what a task holds on its node; one whose spec is gone holds only its slot, nothing else."""
        key = spec_key(task)
        found = self._footprints.get(key)
        if found is None:
            spec = self._specs.get(key)
            # Its service was deleted, so the orchestrator is stopping it: counting it as a task of its
            # service keeps spread and max_replicas_per_node honest until then, and its reservations and
            # ports are unknown. Refusing the whole node instead would block it for everyone over one task.
            found = Demand(task.service_id, 0, 0, ()) if spec is None else footprint(task.service_id, spec)
            self._footprints[key] = found
        return found


@dataclass(slots=True, eq=False)
class NodeState:
    """A node as the scheduler sees it during one call: fixed facts plus what its tasks hold.

    ring is the node's position on the seeded tie-break ring, paired with its id to make it unique. source
    keeps the original message for filters that need rarely read fields (labels, for constraints).
    """

    id: str
    hostname: str
    ring: tuple[int, str]
    status: int
    availability: int  # UNSPECIFIED is already mapped to ACTIVE
    cpu_capacity: int  # nano-CPUs
    memory_capacity: int  # bytes
    source: pb.Node
    cpu_reserved: int = 0
    memory_reserved: int = 0
    task_count: int = 0
    ports: set[HostPort] = field(default_factory=set)
    services: dict[str, int] = field(default_factory=dict)  # service id -> tasks held here

    def take(self, demand: Demand) -> None:
        """Records that one more task with this demand holds resources, ports and a service slot here."""
        self.cpu_reserved += demand.cpu
        self.memory_reserved += demand.memory
        self.task_count += 1
        if demand.ports:
            self.ports.update(demand.ports)
        services = self.services
        services[demand.service_id] = services.get(demand.service_id, 0) + 1


class Cluster:
    """The snapshot one call works on: every node's state, which nodes hold each service, and what changed.

    Built once per call from the nodes and every current task, then charged as tasks are placed, so each
    task sees the placements made before it.
    """

    __slots__ = ("changes", "nodes", "service_nodes")

    def __init__(
        self,
        nodes: Sequence[pb.Node],
        tasks: Sequence[pb.Task],
        demands: Demands,
        ring_point: Callable[[str], int],
        skip_task_ids: Container[str],
    ) -> None:
        """Charges each holding task not in skip_task_ids to its node; tasks on unlisted nodes are ignored.

        ring_point places a node id on the tie-break ring. The tasks being placed are skipped so that a
        pending task still naming an old node is not counted twice.
        """
        self.nodes: dict[str, NodeState] = {}
        self.service_nodes: dict[str, set[str]] = {}
        # Node ids in the order placements charged them; shape pools replay it to catch up.
        self.changes: list[str] = []
        for node in nodes:
            description = node.description
            node_id = node.id
            self.nodes[node_id] = NodeState(
                id=node_id,
                hostname=description.hostname,
                ring=(ring_point(node_id), node_id),
                status=node.status,
                availability=node.availability or pb.NODE_AVAILABILITY_ACTIVE,
                cpu_capacity=nano_cpus(description.cpus),
                memory_capacity=max(0, description.memory_bytes),
                source=node,
            )
        for task in tasks:
            if not holds_resources(task) or task.id in skip_task_ids:
                continue
            state = self.nodes.get(task.node_id)
            if state is not None:
                state.take(demands.held_by(task))
        for state in self.nodes.values():
            for service_id in state.services:
                self.service_nodes.setdefault(service_id, set()).add(state.id)

    def charge(self, node: NodeState, demand: Demand) -> None:
        """Records a placement of the demand on the node."""
        node.take(demand)
        self.service_nodes.setdefault(demand.service_id, set()).add(node.id)
        self.changes.append(node.id)


def is_pending(task: pb.Task) -> bool:
    """Tells whether a task waits for a node, or pinned to one (global services) waits to be admitted there."""
    return task.desired_state == pb.DESIRED_STATE_RUNNING and task.status.state == pb.TASK_STATE_PENDING
