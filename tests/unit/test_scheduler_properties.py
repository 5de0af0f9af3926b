"""Hypothesis properties of the scheduler: capacity, ports, placement rules, pins, determinism and spread, and
the engine's plan equal to the brute-force reference's."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from controller.scheduler import (
    BINPACK_SCORERS,
    SPREAD_SCORERS,
    Decision,
    Demand,
    FewestTasks,
    LeastLoaded,
    NodeState,
    Scorer,
    ServiceSpread,
    SpecKey,
    Stack,
    reference_schedule,
    schedule,
)
from controller.scheduler.scorers import load_fraction
from dockyard.constraints import parse_constraint
from dockyard.v1 import types_pb2 as pb

MIB = 1 << 20
NOW = datetime(2025, 1, 1, tzinfo=UTC)
PORTS = [(80, "tcp"), (80, "udp"), (443, "tcp"), (0, "tcp")]
SERVICES = ["s0", "s1", "s2"]
CONSTRAINTS = [
    "node.labels.zone == a",
    "node.labels.zone != b",
    "engine.labels.zone == b",
    "node.hostname != h0",
    "node.id != n1",
]
INVALID_CONSTRAINT = "node.labels.zone = a"
ZONES = [None, "a", "b"]
VOLUMES = ["va", "vb", "vc"]


def nano(cpus: float) -> int:
    """CPUs in billionths, the unit the scheduler promises exact sums in."""
    return round(cpus * 1_000_000_000)


def is_holder(task: pb.Task) -> bool:
    """The documented rule, restated independently: assigned and not terminal."""
    return bool(task.node_id) and task.status.state < pb.TASK_STATE_COMPLETE


def host_ports(spec: pb.ServiceSpec | None) -> set[tuple[int, str]]:
    """The published host ports a task of the spec occupies; none when the spec is gone."""
    return {(p.host_port, p.protocol or "tcp") for p in spec.ports if p.host_port > 0} if spec else set()


@st.composite
def nodes_strategy(draw: st.DrawFn, max_nodes: int = 6) -> list[pb.Node]:
    """Nodes with assorted states and small capacities, so exhaustion is common."""
    count = draw(st.integers(0, max_nodes))
    nodes = []
    for i in range(count):
        node = pb.Node(
            id=f"n{i}",
            # Weighted towards usable nodes so that most examples place something.
            status=draw(st.sampled_from([*pb.NodeStatus.values(), *[pb.NODE_STATUS_READY] * 4])),
            availability=draw(st.sampled_from([*pb.NodeAvailability.values(), *[pb.NODE_AVAILABILITY_ACTIVE] * 4])),
        )
        node.description.hostname = f"h{i}"
        node.description.cpus = draw(st.sampled_from([0, 0.5, 1, 2, 4]))
        node.description.memory_bytes = draw(st.sampled_from([0, 256 * MIB, 1024 * MIB, 2048 * MIB]))
        agent_zone, operator_zone = draw(st.sampled_from(ZONES)), draw(st.sampled_from(ZONES))
        if agent_zone:
            node.description.labels["zone"] = agent_zone
        if operator_zone:
            node.labels["zone"] = operator_zone
        nodes.append(node)
    return nodes


@st.composite
def placement_strategy(draw: st.DrawFn) -> pb.Placement:
    """A service's placement rules: a few constraints (rarely an invalid one), a limit, a strategy."""
    placement = pb.Placement(
        constraints=draw(st.lists(st.sampled_from(CONSTRAINTS), max_size=2, unique=True)),
        max_replicas_per_node=draw(st.sampled_from([0, 0, 1, 2])),
        strategy=draw(st.sampled_from(list(pb.Placement.Strategy.values()))),
    )
    if draw(st.integers(0, 9)) == 0:
        placement.constraints.append(INVALID_CONSTRAINT)
    return placement


@st.composite
def task_strategy(
    draw: st.DrawFn,
    task_id: str,
    revision: int,
    node_ids: list[str],
    placed: bool,
    placements: Mapping[str, pb.Placement],
) -> tuple[pb.Task, pb.ServiceSpec | None]:
    """A task of a random service at its own revision, and the spec of that revision (rarely gone: None).

    The spec has random reservations and ports and its service's placement rules. Placed tasks also get a
    node and a state; pending ones are sometimes pinned, to a node or to a stranger.
    """
    service_id = draw(st.sampled_from(SERVICES))
    task = pb.Task(
        id=task_id,
        service_id=service_id,
        # Mostly the service's name; rarely none (an old record), which the scheduler reads as the id.
        service_name=draw(st.sampled_from([f"name-{service_id}"] * 5 + [""])),
        slot=draw(st.integers(0, 5)),
        generation=draw(st.integers(0, 3)),
        revision=revision,
        desired_state=draw(st.sampled_from(list(pb.DesiredState.values()))),
    )
    spec = pb.ServiceSpec(name=service_id)
    spec.resources.cpu_reservation = draw(st.sampled_from([0, 0.1, 0.25, 0.5, 1]))
    spec.resources.memory_reservation_bytes = draw(st.sampled_from([0, 128 * MIB, 512 * MIB]))
    for port, protocol in draw(st.lists(st.sampled_from(PORTS), max_size=2, unique=True)):
        spec.ports.add(host_port=port, container_port=8000 + port, protocol=protocol)
    spec.placement.CopyFrom(placements[service_id])
    # Mostly no volume; else one or two, shared between services, some living on a node already.
    if draw(st.integers(0, 2)) == 0:
        for name in draw(st.lists(st.sampled_from(VOLUMES), min_size=1, max_size=2, unique=True)):
            spec.mounts.add(type=pb.Mount.TYPE_VOLUME, source=name, target=f"/{name}")
    if placed:
        task.node_id = draw(st.sampled_from([*node_ids, "", "elsewhere"]))
        task.status.state = draw(st.sampled_from(list(pb.TaskState.values())))
    else:
        task.node_id = draw(st.sampled_from(["", "", "", *node_ids, "ghost"]))
        task.status.state = pb.TASK_STATE_PENDING
        task.avoid_node_ids.extend(draw(st.lists(st.sampled_from([*node_ids, "ghost"]), max_size=3)))
    return task, None if draw(st.integers(0, 11)) == 0 else spec


@dataclass
class Cluster:
    """A generated scheduling problem."""

    nodes: list[pb.Node]
    tasks: list[pb.Task]
    pending: list[pb.Task]
    specs: dict[SpecKey, pb.ServiceSpec]
    volumes: dict[str, str]  # volume name -> the node it lives on (absent: nowhere yet)

    def spec(self, task: pb.Task) -> pb.ServiceSpec | None:
        """The spec a task runs, None when it is gone."""
        return self.specs.get((task.service_id, task.revision))


@st.composite
def clusters(draw: st.DrawFn, max_pending: int = 12) -> Cluster:
    """Nodes, current tasks (some holding, some terminal), pending tasks that are also current, their specs."""
    nodes = draw(nodes_strategy())
    node_ids = [n.id for n in nodes]
    rules = {service: draw(placement_strategy()) for service in SERVICES}
    current = [draw(task_strategy(f"r{i}", i + 1, node_ids, True, rules)) for i in range(draw(st.integers(0, 10)))]
    pending = [
        draw(task_strategy(f"p{i}", 100 + i, node_ids, False, rules)) for i in range(draw(st.integers(0, max_pending)))
    ]
    specs = {(t.service_id, t.revision): spec for t, spec in current + pending if spec is not None}
    volumes = {name: node_id for name in VOLUMES if (node_id := draw(st.sampled_from(["", "", *node_ids, "ghost"])))}
    return Cluster(nodes, [t for t, _ in current + pending], [t for t, _ in pending], specs, volumes)


def placements(decisions: list[Decision], pending: list[pb.Task]) -> dict[str, list[pb.Task]]:
    """Groups the newly placed tasks by node id."""
    by_id = {t.id: t for t in pending}
    placed: dict[str, list[pb.Task]] = defaultdict(list)
    for decision in decisions:
        if decision.node_id is not None:
            placed[decision.node_id].append(by_id[decision.task_id])
    return placed


@settings(deadline=None)
@given(clusters(), st.integers(0, 2**32))
def test_every_task_decided_on_a_usable_node(cluster: Cluster, seed: int) -> None:
    """One decision per pending task; placed ones name a READY, ACTIVE node; unplaced ones say why."""
    decisions = schedule(cluster.nodes, cluster.tasks, cluster.pending, cluster.specs, NOW, seed)
    assert sorted(d.task_id for d in decisions) == sorted(t.id for t in cluster.pending)
    usable = {
        n.id
        for n in cluster.nodes
        if n.status == pb.NODE_STATUS_READY
        and n.availability in (pb.NODE_AVAILABILITY_UNSPECIFIED, pb.NODE_AVAILABILITY_ACTIVE)
    }
    by_id = {t.id: t for t in cluster.pending}
    for decision in decisions:
        if decision.node_id is None:
            assert decision.reason
        else:
            assert decision.node_id in usable
            assert decision.reason == ""
            assert cluster.spec(by_id[decision.task_id]) is not None  # a task whose spec is gone stays put


@settings(deadline=None)
@given(clusters(), st.integers(0, 2**32))
def test_never_over_capacity(cluster: Cluster, seed: int) -> None:
    """A node that receives a task ends within its CPU and memory, counting every holder."""
    decisions = schedule(cluster.nodes, cluster.tasks, cluster.pending, cluster.specs, NOW, seed)
    pending_ids = {t.id for t in cluster.pending}
    for node in cluster.nodes:
        new = placements(decisions, cluster.pending).get(node.id, [])
        if not new:
            continue
        held = [t for t in cluster.tasks if t.node_id == node.id and is_holder(t) and t.id not in pending_ids]
        # A holder whose spec is gone reserves nothing (the design note says why).
        specs = [spec for t in held + new if (spec := cluster.spec(t)) is not None]
        cpu = sum(nano(spec.resources.cpu_reservation) for spec in specs)
        memory = sum(spec.resources.memory_reservation_bytes for spec in specs)
        assert cpu <= nano(node.description.cpus)
        assert memory <= node.description.memory_bytes


@settings(deadline=None)
@given(clusters(), st.integers(0, 2**32))
def test_never_two_holders_of_a_host_port(cluster: Cluster, seed: int) -> None:
    """A new task never shares a host port and protocol with any other holder on its node."""
    decisions = schedule(cluster.nodes, cluster.tasks, cluster.pending, cluster.specs, NOW, seed)
    pending_ids = {t.id for t in cluster.pending}
    for node_id, new in placements(decisions, cluster.pending).items():
        taken: set[tuple[int, str]] = set()
        for t in cluster.tasks:
            if t.node_id == node_id and is_holder(t) and t.id not in pending_ids:
                taken |= host_ports(cluster.spec(t))
        for t in new:
            assert not host_ports(cluster.spec(t)) & taken
            taken |= host_ports(cluster.spec(t))


@settings(deadline=None)
@given(clusters(), st.integers(0, 2**32), st.data())
def test_same_inputs_and_seed_same_plan(cluster: Cluster, seed: int, data: st.DataObject) -> None:
    """Repeating the call, or shuffling nodes, tasks and pending, yields the identical plan."""
    first = schedule(cluster.nodes, cluster.tasks, cluster.pending, cluster.specs, NOW, seed)
    assert schedule(cluster.nodes, cluster.tasks, cluster.pending, cluster.specs, NOW, seed) == first
    shuffled = schedule(
        data.draw(st.permutations(cluster.nodes)),
        data.draw(st.permutations(cluster.tasks)),
        data.draw(st.permutations(cluster.pending)),
        cluster.specs,
        NOW,
        seed,
    )
    assert shuffled == first


@settings(deadline=None)
@given(clusters(), st.integers(0, 2**32), st.data())
def test_the_plan_does_not_depend_on_the_ids_of_pending_tasks_or_services(
    cluster: Cluster, seed: int, data: st.DataObject
) -> None:
    """A dry run builds the same tasks (service name, slot, generation) with other random ids, for services
    that may have other ids too: it must get the same node, or the same reason, for each task."""

    def copy(task: pb.Task, task_id: str, service_id: str) -> pb.Task:
        changed = pb.Task()
        changed.CopyFrom(task)
        changed.id, changed.service_id = task_id, service_id
        # Every task the reconciler makes carries its service's name.
        changed.service_name = task.service_name or f"name-{task.service_id}"
        return changed

    service_ids = dict(zip(SERVICES, data.draw(st.permutations(["x", "y", "z"])), strict=True))
    pending_ids = {t.id for t in cluster.pending}
    task_ids = dict(
        zip(sorted(pending_ids), data.draw(st.permutations([f"q{i}" for i in range(len(pending_ids))])), strict=True)
    )
    real = [copy(t, t.id, t.service_id) for t in cluster.tasks]
    dry = [copy(t, task_ids.get(t.id, t.id), service_ids[t.service_id]) for t in cluster.tasks]
    dry_specs = {(service_ids[service], revision): spec for (service, revision), spec in cluster.specs.items()}
    applied = schedule(cluster.nodes, real, [t for t in real if t.id in pending_ids], cluster.specs, NOW, seed)
    planned = schedule(cluster.nodes, dry, [t for t in dry if t.id in task_ids.values()], dry_specs, NOW, seed)
    as_planned = {d.task_id: (d.node_id, d.reason) for d in planned}
    assert {d.task_id: (d.node_id, d.reason) for d in applied} == {
        old: as_planned[new] for old, new in task_ids.items()
    }


@settings(deadline=None)
@given(
    st.integers(1, 8),
    st.lists(st.integers(0, 20), min_size=1, max_size=3),
    st.sampled_from([0, 0.1, 0.5]),
    st.integers(0, 2**32),
)
def test_replicas_spread_evenly(node_count: int, replicas: list[int], cpu: float, seed: int) -> None:
    """On identical feasible nodes, each service's per-node replica counts differ by at most one."""
    nodes = []
    for i in range(node_count):
        node = pb.Node(id=f"n{i}", status=pb.NODE_STATUS_READY)
        node.description.cpus = 64
        node.description.memory_bytes = 64 << 30
        nodes.append(node)
    pending = []
    specs = {}
    for s, count in enumerate(replicas):
        spec = specs[(f"s{s}", 1)] = pb.ServiceSpec(name=f"s{s}")
        spec.resources.cpu_reservation = cpu
        spec.resources.memory_reservation_bytes = 64 * MIB
        pending += [pb.Task(id=f"s{s}-{slot}", service_id=f"s{s}", slot=slot, revision=1) for slot in range(count)]
    decisions = schedule(nodes, pending, pending, specs, NOW, seed)
    assert all(d.node_id is not None for d in decisions)
    for s in range(len(replicas)):
        counts = Counter(d.node_id for d in decisions if d.task_id.startswith(f"s{s}-"))
        per_node = [counts.get(n.id, 0) for n in nodes]
        assert max(per_node) - min(per_node) <= 1


class MostLoaded:
    """A binpack-style scorer: fullest node first."""

    name = "most-loaded"

    def score(self, node: NodeState, demand: Demand) -> float:
        """Returns the negated load fraction after the placement."""
        return -load_fraction(node, demand)


STRATEGIES: list[tuple[Scorer, ...]] = [
    SPREAD_SCORERS,
    BINPACK_SCORERS,
    (LeastLoaded(),),
    (MostLoaded(), FewestTasks()),
    (ServiceSpread(), MostLoaded()),
    (),
]


@settings(deadline=None, max_examples=300)
@given(
    clusters(max_pending=30),
    st.integers(0, 2**32),
    st.sampled_from(STRATEGIES),
    st.sampled_from(STRATEGIES),
)
def test_engine_plan_equals_the_reference(
    cluster: Cluster, seed: int, scorers: tuple[Scorer, ...], binpack_scorers: tuple[Scorer, ...]
) -> None:
    """Shared pools and per-service runs give exactly the plan of re-judging every node for every task."""
    stack = Stack(spread=scorers, binpack=binpack_scorers)
    inputs = (cluster.nodes, cluster.tasks, cluster.pending, cluster.specs, NOW, seed)
    volumes = cluster.volumes
    assert schedule(*inputs, stack=stack, volumes=volumes) == reference_schedule(*inputs, stack=stack, volumes=volumes)


@given(clusters(max_pending=20), st.integers(0, 2**32))
def test_a_volume_s_tasks_all_go_where_it_lives(cluster: Cluster, seed: int) -> None:
    """Every task placed with a volume goes to the node it lives on, or else where the first of them went."""
    decisions = schedule(
        cluster.nodes, cluster.tasks, cluster.pending, cluster.specs, NOW, seed, volumes=cluster.volumes
    )
    pending = {t.id: t for t in cluster.pending}
    where = dict(cluster.volumes)
    for decision in decisions:
        spec = cluster.spec(pending[decision.task_id])
        if decision.node_id is None or spec is None:
            continue
        for mount in spec.mounts:
            assert where.setdefault(mount.source, decision.node_id) == decision.node_id, mount.source


def satisfied(text: str, node: pb.Node) -> bool:
    """The documented rule, restated: node.labels are the operator's, engine.labels the agent's; missing never equal."""
    constraint = parse_constraint(text)
    facts = {
        "labels": dict(node.labels).get(constraint.key),
        "engine.labels": dict(node.description.labels).get(constraint.key),
        "hostname": node.description.hostname,
        "id": node.id,
    }
    return (facts[constraint.field] == constraint.value) == constraint.equal


@settings(deadline=None)
@given(clusters(), st.integers(0, 2**32))
def test_constraints_never_violated(cluster: Cluster, seed: int) -> None:
    """Every placed task's node satisfies all its constraints; a task with an unreadable one is never placed."""
    decisions = schedule(cluster.nodes, cluster.tasks, cluster.pending, cluster.specs, NOW, seed)
    by_id = {t.id: t for t in cluster.pending}
    nodes = {n.id: n for n in cluster.nodes}
    for decision in decisions:
        spec = cluster.spec(by_id[decision.task_id])
        if spec is None:
            assert decision.node_id is None
            continue
        texts = spec.placement.constraints
        if INVALID_CONSTRAINT in texts:
            assert decision.node_id is None
            assert decision.reason.startswith("invalid placement constraint: ")
            continue
        if decision.node_id is None:
            continue
        node = nodes[decision.node_id]
        for text in texts:
            assert satisfied(text, node), text


@settings(deadline=None)
@given(clusters(), st.integers(0, 2**32))
def test_max_replicas_per_node_never_exceeded(cluster: Cluster, seed: int) -> None:
    """A node that receives a task of a limited service ends with at most the limit of its holders."""
    decisions = schedule(cluster.nodes, cluster.tasks, cluster.pending, cluster.specs, NOW, seed)
    pending_ids = {t.id for t in cluster.pending}
    for node_id, new in placements(decisions, cluster.pending).items():
        for service_id in {t.service_id for t in new}:
            spec = cluster.spec(next(t for t in new if t.service_id == service_id))
            assert spec is not None
            limit = spec.placement.max_replicas_per_node
            if not limit:
                continue
            held = [
                t
                for t in cluster.tasks
                if t.node_id == node_id and t.service_id == service_id and is_holder(t) and t.id not in pending_ids
            ]
            assert len(held) + sum(1 for t in new if t.service_id == service_id) <= limit


@settings(deadline=None)
@given(
    st.integers(1, 5),
    st.integers(1, 3),
    st.lists(st.integers(0, 4), min_size=1, max_size=5),
    st.integers(0, 20),
    st.booleans(),
    st.integers(0, 2**32),
)
def test_max_replicas_per_node_caps_each_node(
    node_count: int, limit: int, held: list[int], count: int, binpack: bool, seed: int
) -> None:
    """With more replicas than room, each node ends at the limit (or what it held), and the rest wait."""
    nodes = []
    for i in range(node_count):
        node = pb.Node(id=f"n{i}", status=pb.NODE_STATUS_READY)
        node.description.cpus = 64
        node.description.memory_bytes = 64 << 30
        nodes.append(node)
    running = []
    for i, node in enumerate(nodes):
        for j in range(held[i % len(held)]):
            task = pb.Task(id=f"r{i}-{j}", service_id="s", node_id=node.id, revision=1)
            task.status.state = pb.TASK_STATE_RUNNING
            running.append(task)
    # Revision 2 sets the limit; the running tasks run revision 1, which had none.
    limited = pb.ServiceSpec(name="s")
    limited.placement.max_replicas_per_node = limit
    if binpack:
        limited.placement.strategy = pb.Placement.STRATEGY_BINPACK
    specs = {("s", 1): pb.ServiceSpec(name="s"), ("s", 2): limited}
    pending = []
    for slot in range(count):
        task = pb.Task(id=f"t{slot}", service_id="s", slot=slot, revision=2)
        task.status.state = pb.TASK_STATE_PENDING
        pending.append(task)
    decisions = schedule(nodes, running + pending, pending, specs, NOW, seed)
    before = Counter(t.node_id for t in running)
    after = before + Counter(d.node_id for d in decisions if d.node_id is not None)
    room = sum(max(0, limit - before[n.id]) for n in nodes)
    assert sum(1 for d in decisions if d.node_id is not None) == min(count, room)
    for node in nodes:
        assert after[node.id] <= max(limit, before[node.id])


@settings(deadline=None)
@given(clusters(), st.integers(0, 2**32))
def test_pinned_tasks_go_only_to_their_node(cluster: Cluster, seed: int) -> None:
    """A pinned task is placed on its own node or not at all, and one pinned to a stranger says so."""
    decisions = schedule(cluster.nodes, cluster.tasks, cluster.pending, cluster.specs, NOW, seed)
    by_id = {t.id: t for t in cluster.pending}
    known = {n.id for n in cluster.nodes}
    for decision in decisions:
        pinned = by_id[decision.task_id].node_id
        if not pinned:
            continue
        assert decision.node_id in (None, pinned)
        spec = cluster.spec(by_id[decision.task_id])
        if pinned not in known and spec is not None and INVALID_CONSTRAINT not in spec.placement.constraints:
            assert decision.reason == f"node {pinned} is not in the cluster"


@settings(deadline=None)
@given(st.integers(1, 8), st.integers(1, 4), st.integers(0, 30), st.integers(0, 2**32))
def test_binpack_uses_as_few_nodes_as_possible(node_count: int, per_node: int, count: int, seed: int) -> None:
    """On identical empty nodes binpack fills each node before opening the next."""
    nodes = []
    for i in range(node_count):
        node = pb.Node(id=f"n{i}", status=pb.NODE_STATUS_READY)
        node.description.cpus = per_node
        node.description.memory_bytes = 64 << 30
        nodes.append(node)
    spec = pb.ServiceSpec(name="s")
    spec.resources.cpu_reservation = 1
    spec.placement.strategy = pb.Placement.STRATEGY_BINPACK
    pending = [pb.Task(id=f"t{slot}", service_id="s", slot=slot, revision=1) for slot in range(count)]
    decisions = schedule(nodes, pending, pending, {("s", 1): spec}, NOW, seed)
    placed = [d.node_id for d in decisions if d.node_id is not None]
    assert len(placed) == min(count, node_count * per_node)
    assert len(set(placed)) == math.ceil(len(placed) / per_node)
