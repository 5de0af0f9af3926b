"""Measures scheduler placements per second on synthetic clusters, against a first-fit baseline.

Run from anywhere: python bench/scheduler.py [--repetitions N]. Both contenders get the same protobuf inputs
and are timed end to end (conversion, accounting and placement), so the ratio is measured in this run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

# The script runs as a file, not as an installed package, so the repository root must be importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from controller.scheduler import SpecKey, holds_resources, schedule
from dockyard.constraints import node_satisfies
from dockyard.v1 import types_pb2 as pb

GIB = 1 << 30
MIB = 1 << 20
NOW = datetime(2025, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class ServiceShape:
    """One synthetic service: how many tasks, what each reserves, which host ports it publishes, its placement.

    A global service gets one task pinned to each ready, active node instead of replicas.
    """

    name: str
    replicas: int
    cpu: float
    memory: int
    ports: tuple[tuple[int, str], ...] = ()
    constraints: tuple[str, ...] = ()
    binpack: bool = False
    global_: bool = False


FEW_SERVICES = (
    ServiceShape("web", 500, 0.25, 256 * MIB, ((8080, "tcp"),)),
    ServiceShape("api", 2000, 0.5, 512 * MIB),
    ServiceShape("worker", 1500, 1.0, 1 * GIB),
    ServiceShape("cache", 500, 0.5, 4 * GIB),
    ServiceShape("dns", 500, 0.1, 64 * MIB, ((53, "udp"), (53, "tcp"))),
)
# The scheduler pays one pass over the nodes per service, so many small services is its worst realistic case.
MANY_SERVICES = tuple(ServiceShape(f"small{i}", 5, 0.1, 128 * MIB) for i in range(1_000))
# Half the nodes are in zone a (see make_node), so the constrained services compete for half the room.
ZONED_SERVICES = tuple(replace(shape, constraints=("node.labels.zone == a",)) for shape in FEW_SERVICES)
BINPACK_SERVICES = tuple(replace(shape, binpack=True) for shape in FEW_SERVICES)
GLOBAL_SERVICES = tuple(
    ServiceShape(f"agent{i}", 0, 0.1, 64 * MIB, ports=((9100 + i, "tcp"),), global_=True) for i in range(5)
)
WORKLOADS = {
    "5 services": FEW_SERVICES,
    "1000 services": MANY_SERVICES,
    "5 svc zone==a": ZONED_SERVICES,
    "5 svc binpack": BINPACK_SERVICES,
    "5 global": GLOBAL_SERVICES,
}
RUNNING_PER_NODE = 2  # background load, so accounting has real work


def make_node(index: int) -> pb.Node:
    """Returns a 16-CPU 64GiB node in zone a or b (alternately); a few percent are down, drained or paused."""
    node = pb.Node(id=f"node-{index:05d}", status=pb.NODE_STATUS_READY)
    node.description.hostname = f"host-{index:05d}"
    node.labels["zone"] = "ab"[index % 2]  # the operator's, which node.labels constraints read
    node.description.cpus = 16
    node.description.memory_bytes = 64 * GIB
    if index % 50 == 7:
        node.status = pb.NODE_STATUS_DOWN
    elif index % 100 == 13:
        node.availability = pb.NODE_AVAILABILITY_DRAIN
    elif index % 100 == 31:
        node.availability = pb.NODE_AVAILABILITY_PAUSE
    return node


def make_spec(shape: ServiceShape) -> pb.ServiceSpec:
    """Returns the spec of the shape's service: its reservations, host ports and placement."""
    spec = pb.ServiceSpec(name=shape.name)
    spec.resources.cpu_reservation = shape.cpu
    spec.resources.memory_reservation_bytes = shape.memory
    for port, protocol in shape.ports:
        spec.ports.add(host_port=port, container_port=port, protocol=protocol)
    # Touching placement at all would set it; the spec reader leaves it unset when every field is a default.
    if shape.constraints:
        spec.placement.constraints.extend(shape.constraints)
    if shape.binpack:
        spec.placement.strategy = pb.Placement.STRATEGY_BINPACK
    return spec


def make_task(shape: ServiceShape, slot: int, node_id: str = "", running: bool = False) -> pb.Task:
    """Returns a task of the shape at revision 1, no spec: RUNNING on node_id if running, else PENDING (pinned)."""
    task = pb.Task(
        id=f"{shape.name}-{slot}{'-run' if running else ''}",
        service_id=service_id(shape, running),
        slot=slot,
        revision=1,
        node_id=node_id,
        desired_state=pb.DESIRED_STATE_RUNNING,
    )
    task.status.state = pb.TASK_STATE_RUNNING if running else pb.TASK_STATE_PENDING
    return task


def service_id(shape: ServiceShape, running: bool = False) -> str:
    """Returns the id of the shape's service; running background tasks belong to an older one."""
    return f"svc-{shape.name}{'-old' if running else ''}"


@dataclass(frozen=True)
class Cluster:
    """Inputs for one run: all nodes, every current task, the pending subset, and the specs they run."""

    nodes: list[pb.Node]
    tasks: list[pb.Task]
    pending: list[pb.Task]
    specs: dict[SpecKey, pb.ServiceSpec]


def usable(node: pb.Node) -> bool:
    """Tells whether the node is READY and ACTIVE."""
    return node.status == pb.NODE_STATUS_READY and node.availability in (
        pb.NODE_AVAILABILITY_UNSPECIFIED,
        pb.NODE_AVAILABILITY_ACTIVE,
    )


def make_cluster(node_count: int, services: Sequence[ServiceShape]) -> Cluster:
    """Builds the cluster: RUNNING_PER_NODE background tasks per ready node plus the pending services."""
    nodes = [make_node(i) for i in range(node_count)]
    background = ServiceShape("bg", 0, 0.5, 1 * GIB)
    running = [
        make_task(background, i * RUNNING_PER_NODE + j, node.id, running=True)
        for i, node in enumerate(nodes)
        if node.status == pb.NODE_STATUS_READY
        for j in range(RUNNING_PER_NODE)
    ]
    specs = {(service_id(background, running=True), 1): make_spec(background)}
    pending = []
    for shape in services:
        specs[(service_id(shape), 1)] = make_spec(shape)
        if shape.global_:
            # As the orchestrator does: one task per eligible node, pinned there, slot 0, told apart by node.
            pending += [replace_id(make_task(shape, 0, node.id), node.id) for node in nodes if usable(node)]
        else:
            pending += [make_task(shape, slot) for slot in range(shape.replicas)]
    return Cluster(nodes, running + pending, pending, specs)


def replace_id(task: pb.Task, node_id: str) -> pb.Task:
    """Makes a global task's id unique by appending its node."""
    task.id = f"{task.id}-{node_id}"
    return task


def first_fit(
    nodes: Sequence[pb.Node],
    tasks: Sequence[pb.Task],
    pending: Sequence[pb.Task],
    specs: Mapping[SpecKey, pb.ServiceSpec],
) -> int:
    """The baseline: per task, scan nodes in list order and take the first that fits. Returns placements.

    It honours constraints and pins, so every workload compares like with like.
    """
    index = {node.id: i for i, node in enumerate(nodes)}
    ready = [usable(n) for n in nodes]
    free_cpu = [n.description.cpus for n in nodes]
    free_memory = [n.description.memory_bytes for n in nodes]
    used_ports: list[set[tuple[int, str]]] = [set() for _ in nodes]
    pending_ids = {t.id for t in pending}
    for task in tasks:
        i = index.get(task.node_id, -1)
        if i >= 0 and task.id not in pending_ids and holds_resources(task):
            spec = specs[(task.service_id, task.revision)]
            free_cpu[i] -= spec.resources.cpu_reservation
            free_memory[i] -= spec.resources.memory_reservation_bytes
            used_ports[i].update((p.host_port, p.protocol) for p in spec.ports if p.host_port)
    placed = 0
    for task in pending:
        spec = specs[(task.service_id, task.revision)]
        cpu = spec.resources.cpu_reservation
        memory = spec.resources.memory_reservation_bytes
        ports = {(p.host_port, p.protocol) for p in spec.ports if p.host_port}
        texts = spec.placement.constraints
        node_id = task.node_id
        candidates = range(len(nodes)) if not node_id else [index[node_id]] if node_id in index else []
        for i in candidates:
            if (
                ready[i]
                and free_cpu[i] >= cpu
                and free_memory[i] >= memory
                and not ports & used_ports[i]
                and (not texts or node_satisfies(nodes[i], texts))
            ):
                free_cpu[i] -= cpu
                free_memory[i] -= memory
                used_ports[i] |= ports
                placed += 1
                break
    return placed


def scheduler_run(cluster: Cluster) -> int:
    """Runs the real scheduler once and returns how many tasks it placed."""
    decisions = schedule(cluster.nodes, cluster.tasks, cluster.pending, cluster.specs, NOW, seed=42)
    return sum(1 for d in decisions if d.node_id is not None)


def baseline_run(cluster: Cluster) -> int:
    """Runs the first-fit baseline once and returns how many tasks it placed."""
    return first_fit(cluster.nodes, cluster.tasks, cluster.pending, cluster.specs)


def rates(run: Callable[[Cluster], int], cluster: Cluster, repetitions: int) -> tuple[int, list[float]]:
    """Returns the placements of one run and the placements/s of each repetition."""
    placed = 0
    per_second = []
    for _ in range(repetitions):
        start = time.perf_counter()
        placed = run(cluster)
        per_second.append(placed / (time.perf_counter() - start))
    return placed, per_second


def main() -> None:
    """Prints one row per cluster size and workload: placements/s of each contender and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000])
    args = parser.parse_args()
    header = (
        f"{'nodes':>6} {'workload':>14} {'pending':>7} {'placed':>6} "
        f"{'sched/s med':>11} {'sched/s best':>12} {'base placed':>11} "
        f"{'base/s med':>10} {'base/s best':>11} {'ratio':>6}"
    )
    print(f"{args.repetitions} repetitions; placements/s = placed tasks / wall time of one whole call;")
    print("ratio = scheduler median / first-fit baseline median, both measured in this run")
    print(header)
    print("-" * len(header))
    for size in args.sizes:
        for workload, services in WORKLOADS.items():
            cluster = make_cluster(size, services)
            placed, sched = rates(scheduler_run, cluster, args.repetitions)
            base_placed, base = rates(baseline_run, cluster, args.repetitions)
            sched_median, base_median = statistics.median(sched), statistics.median(base)
            print(
                f"{size:>6} {workload:>14} {len(cluster.pending):>7} {placed:>6} {sched_median:>11,.0f} "
                f"{max(sched):>12,.0f} {base_placed:>11} {base_median:>10,.0f} {max(base):>11,.0f} "
                f"{sched_median / base_median:>5.2f}x"
            )


if __name__ == "__main__":
    main()
