"""Hypothesis properties of the scheduler: capacity, ports, determinism and spread hold on any cluster."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from controller.scheduler import (
    DEFAULT_FILTERS,
    SPREAD_SCORERS,
    Decision,
    Demand,
    FewestTasks,
    LeastLoaded,
    NodeState,
    Scorer,
    ServiceSpread,
    schedule,
)
from controller.scheduler.accounting import Accounting
from controller.scheduler.demand import demand_of
from controller.scheduler.reason import RejectionKey, unplaced_reason
from controller.scheduler.scorers import load_fraction
from controller.scheduler.tiebreak import ring_point
from dockyard.v1 import types_pb2 as pb

MIB = 1 << 20
NOW = datetime(2025, 1, 1, tzinfo=UTC)
PORTS = [(80, "tcp"), (80, "udp"), (443, "tcp"), (0, "tcp")]
SERVICES = ["s0", "s1", "s2"]


def nano(cpus: float) -> int:
    """CPUs in billionths, the unit the scheduler promises exact sums in."""
    return round(cpus * 1_000_000_000)


def is_holder(task: pb.Task) -> bool:
    """The documented rule, restated independently: assigned and not terminal."""
    return bool(task.node_id) and task.status.state < pb.TASK_STATE_COMPLETE


def host_ports(task: pb.Task) -> set[tuple[int, str]]:
    """The published host ports a task occupies."""
    return {(p.host_port, p.protocol or "tcp") for p in task.spec.ports if p.host_port > 0}


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
        node.description.cpus = draw(st.sampled_from([0, 0.5, 1, 2, 4]))
        node.description.memory_bytes = draw(st.sampled_from([0, 256 * MIB, 1024 * MIB, 2048 * MIB]))
        nodes.append(node)
    return nodes


@st.composite
def task_strategy(draw: st.DrawFn, task_id: str, node_ids: list[str], placed: bool) -> pb.Task:
    """A task of a random service, reservations and ports; placed ones also get a node and a state."""
    task = pb.Task(
        id=task_id,
        service_id=draw(st.sampled_from(SERVICES)),
        slot=draw(st.integers(0, 5)),
        desired_state=draw(st.sampled_from(list(pb.DesiredState.values()))),
    )
    task.spec.resources.cpu_reservation = draw(st.sampled_from([0, 0.1, 0.25, 0.5, 1]))
    task.spec.resources.memory_reservation_bytes = draw(st.sampled_from([0, 128 * MIB, 512 * MIB]))
    for port, protocol in draw(st.lists(st.sampled_from(PORTS), max_size=2, unique=True)):
        task.spec.ports.add(host_port=port, container_port=8000 + port, protocol=protocol)
    if placed:
        task.node_id = draw(st.sampled_from([*node_ids, "", "elsewhere"]))
        task.status.state = draw(st.sampled_from(list(pb.TaskState.values())))
    else:
        task.status.state = pb.TASK_STATE_PENDING
    return task


@dataclass
class Cluster:
    """A generated scheduling problem."""

    nodes: list[pb.Node]
    tasks: list[pb.Task]
    pending: list[pb.Task]


@st.composite
def clusters(draw: st.DrawFn, max_pending: int = 12) -> Cluster:
    """Nodes, current tasks (some holding, some terminal), and pending tasks that are also current."""
    nodes = draw(nodes_strategy())
    node_ids = [n.id for n in nodes]
    current = [draw(task_strategy(f"r{i}", node_ids, placed=True)) for i in range(draw(st.integers(0, 10)))]
    pending = [draw(task_strategy(f"p{i}", node_ids, placed=False)) for i in range(draw(st.integers(0, max_pending)))]
    return Cluster(nodes, current + pending, pending)


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
    decisions = schedule(cluster.nodes, cluster.tasks, cluster.pending, NOW, seed)
    assert sorted(d.task_id for d in decisions) == sorted(t.id for t in cluster.pending)
    usable = {
        n.id
        for n in cluster.nodes
        if n.status == pb.NODE_STATUS_READY
        and n.availability in (pb.NODE_AVAILABILITY_UNSPECIFIED, pb.NODE_AVAILABILITY_ACTIVE)
    }
    for decision in decisions:
        if decision.node_id is None:
            assert decision.reason
        else:
            assert decision.node_id in usable
            assert decision.reason == ""


@settings(deadline=None)
@given(clusters(), st.integers(0, 2**32))
def test_never_over_capacity(cluster: Cluster, seed: int) -> None:
    """A node that receives a task ends within its CPU and memory, counting every holder."""
    decisions = schedule(cluster.nodes, cluster.tasks, cluster.pending, NOW, seed)
    pending_ids = {t.id for t in cluster.pending}
    for node in cluster.nodes:
        new = placements(decisions, cluster.pending).get(node.id, [])
        if not new:
            continue
        held = [t for t in cluster.tasks if t.node_id == node.id and is_holder(t) and t.id not in pending_ids]
        cpu = sum(nano(t.spec.resources.cpu_reservation) for t in held + new)
        memory = sum(t.spec.resources.memory_reservation_bytes for t in held + new)
        assert cpu <= nano(node.description.cpus)
        assert memory <= node.description.memory_bytes


@settings(deadline=None)
@given(clusters(), st.integers(0, 2**32))
def test_never_two_holders_of_a_host_port(cluster: Cluster, seed: int) -> None:
    """A new task never shares a host port and protocol with any other holder on its node."""
    decisions = schedule(cluster.nodes, cluster.tasks, cluster.pending, NOW, seed)
    pending_ids = {t.id for t in cluster.pending}
    for node_id, new in placements(decisions, cluster.pending).items():
        taken: set[tuple[int, str]] = set()
        for t in cluster.tasks:
            if t.node_id == node_id and is_holder(t) and t.id not in pending_ids:
                taken |= host_ports(t)
        for t in new:
            assert not host_ports(t) & taken
            taken |= host_ports(t)


@settings(deadline=None)
@given(clusters(), st.integers(0, 2**32), st.data())
def test_same_inputs_and_seed_same_plan(cluster: Cluster, seed: int, data: st.DataObject) -> None:
    """Repeating the call, or shuffling nodes, tasks and pending, yields the identical plan."""
    first = schedule(cluster.nodes, cluster.tasks, cluster.pending, NOW, seed)
    assert schedule(cluster.nodes, cluster.tasks, cluster.pending, NOW, seed) == first
    shuffled = schedule(
        data.draw(st.permutations(cluster.nodes)),
        data.draw(st.permutations(cluster.tasks)),
        data.draw(st.permutations(cluster.pending)),
        NOW,
        seed,
    )
    assert shuffled == first


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
    for s, count in enumerate(replicas):
        for slot in range(count):
            task = pb.Task(id=f"s{s}-{slot}", service_id=f"s{s}", slot=slot)
            task.spec.resources.cpu_reservation = cpu
            task.spec.resources.memory_reservation_bytes = 64 * MIB
            pending.append(task)
    decisions = schedule(nodes, pending, pending, NOW, seed)
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
    (LeastLoaded(),),
    (MostLoaded(), FewestTasks()),
    (ServiceSpread(), MostLoaded()),
    (),
]


def brute_force(cluster: Cluster, seed: int, scorers: tuple[Scorer, ...]) -> list[Decision]:
    """The plan by definition: per task, judge every node afresh and take the smallest (score, ring distance)."""
    ordered = sorted(cluster.pending, key=lambda t: (t.service_id, t.slot, t.id))
    accounting = Accounting(cluster.nodes, cluster.tasks, seed, {t.id for t in ordered})
    plan = []
    for task in ordered:
        demand = demand_of(task)
        point = ring_point(seed, task.id)
        best: tuple[tuple[float, ...], int, str] | None = None
        rejections: Counter[RejectionKey] = Counter()
        for node in accounting.nodes.values():
            rejected = False
            for index, check in enumerate(DEFAULT_FILTERS):
                rejection = check.check(node, demand)
                if rejection is not None:
                    rejections[(index, rejection)] += 1
                    rejected = True
                    break
            if rejected:
                continue
            score = tuple(scorer.score(node, demand) for scorer in scorers)
            candidate = (score, (node.ring[0] - point) % 2**64, node.id)
            best = candidate if best is None else min(best, candidate)
        if best is None:
            plan.append(Decision(task.id, None, unplaced_reason(len(accounting.nodes), rejections)))
        else:
            accounting.charge(accounting.nodes[best[2]], demand)
            plan.append(Decision(task.id, best[2], ""))
    return plan


@settings(deadline=None, max_examples=300)
@given(clusters(max_pending=30), st.integers(0, 2**32), st.sampled_from(STRATEGIES))
def test_incremental_plan_equals_brute_force(cluster: Cluster, seed: int, scorers: tuple[Scorer, ...]) -> None:
    """Shared pools and per-service runs give exactly the plan of re-judging every node for every task."""
    plan = schedule(cluster.nodes, cluster.tasks, cluster.pending, NOW, seed, scorers=scorers)
    assert plan == brute_force(cluster, seed, scorers)
