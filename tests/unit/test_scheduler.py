"""Table tests for the scheduler's pure core: feasibility, ranking, accounting and the unplaced reasons."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest

from controller.scheduler import (
    DEFAULT_FILTERS,
    Decision,
    Demand,
    NodeState,
    Rejection,
    holds_resources,
    schedule,
)
from controller.scheduler.units import format_bytes, format_cpus
from dockyard.v1 import types_pb2 as pb

MIB = 1 << 20
GIB = 1 << 30
NOW = datetime(2025, 1, 1, tzinfo=UTC)


def node(
    node_id: str,
    cpus: float = 4,
    memory: int = 8 * GIB,
    status: pb.NodeStatus.ValueType = pb.NODE_STATUS_READY,
    availability: pb.NodeAvailability.ValueType = pb.NODE_AVAILABILITY_ACTIVE,
) -> pb.Node:
    """Returns a node with the given capacity and state."""
    result = pb.Node(id=node_id, status=status, availability=availability)
    result.description.cpus = cpus
    result.description.memory_bytes = memory
    return result


def task(
    task_id: str,
    *,
    service: str = "svc",
    slot: int = 1,
    node_id: str = "",
    cpu: float = 0,
    memory: int = 0,
    ports: tuple[tuple[int, str], ...] = (),
    state: pb.TaskState.ValueType = pb.TASK_STATE_RUNNING,
    desired: pb.DesiredState.ValueType = pb.DESIRED_STATE_RUNNING,
) -> pb.Task:
    """Returns a task; pending ones are the same with no node_id and state PENDING."""
    result = pb.Task(id=task_id, service_id=service, slot=slot, node_id=node_id, desired_state=desired)
    result.status.state = state
    result.spec.resources.cpu_reservation = cpu
    result.spec.resources.memory_reservation_bytes = memory
    for port, protocol in ports:
        result.spec.ports.add(host_port=port, container_port=port, protocol=protocol)
    return result


def pending(
    task_id: str,
    *,
    service: str = "svc",
    slot: int = 1,
    cpu: float = 0,
    memory: int = 0,
    ports: tuple[tuple[int, str], ...] = (),
    node_id: str = "",
) -> pb.Task:
    """Returns a task waiting for a node."""
    return task(
        task_id,
        service=service,
        slot=slot,
        node_id=node_id,
        cpu=cpu,
        memory=memory,
        ports=ports,
        state=pb.TASK_STATE_PENDING,
    )


@dataclass
class Case:
    """One table row: a cluster, what to place, and the expected decisions (node id or reason per task)."""

    name: str
    nodes: list[pb.Node]
    pending: list[pb.Task]
    want: dict[str, str | None]  # task id -> node id, or None when any unplaced result is fine
    running: list[pb.Task] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)  # task id -> exact unplaced reason


CASES = [
    Case(
        name="down, unknown, paused and drained nodes are skipped",
        nodes=[
            node("a", status=pb.NODE_STATUS_DOWN),
            node("b", availability=pb.NODE_AVAILABILITY_PAUSE),
            node("c", availability=pb.NODE_AVAILABILITY_DRAIN),
            node("d", status=pb.NODE_STATUS_UNKNOWN),
            node("e", availability=pb.NODE_AVAILABILITY_UNSPECIFIED),
        ],
        pending=[pending("t1", slot=1), pending("t2", slot=2)],
        want={"t1": "e", "t2": "e"},
    ),
    Case(
        name="only unavailable nodes",
        nodes=[
            node("a", status=pb.NODE_STATUS_DOWN),
            node("b", status=pb.NODE_STATUS_UNKNOWN),
            node("c", availability=pb.NODE_AVAILABILITY_DRAIN),
            node("d", availability=pb.NODE_AVAILABILITY_PAUSE),
        ],
        pending=[pending("t1")],
        want={"t1": None},
        reasons={"t1": "4 nodes: 2 not ready, 1 draining, 1 paused"},
    ),
    Case(
        name="two nodes not ready",
        nodes=[node("a", status=pb.NODE_STATUS_DOWN), node("b", status=pb.NODE_STATUS_DOWN)],
        pending=[pending("t1")],
        want={"t1": None},
        reasons={"t1": "2 nodes: 2 not ready"},
    ),
    Case(
        name="no nodes",
        nodes=[],
        pending=[pending("t1"), pending("t2", slot=2)],
        want={"t1": None, "t2": None},
        reasons={"t1": "no nodes", "t2": "no nodes"},
    ),
    Case(
        name="a held host port blocks the same port and protocol only",
        nodes=[node("a")],
        running=[task("old", service="other", node_id="a", ports=((8080, "tcp"),))],
        pending=[
            pending("tcp", service="s1", ports=((8080, "tcp"),)),
            pending("udp", service="s2", ports=((8080, "udp"),)),
            pending("other-port", service="s3", ports=((8081, "tcp"),)),
            pending("docker-picks", service="s4", ports=((0, "tcp"),)),
        ],
        want={"tcp": None, "udp": "a", "other-port": "a", "docker-picks": "a"},
        reasons={"tcp": "1 node: 1 has port 8080/tcp in use"},
    ),
    Case(
        name="an empty protocol means tcp",
        nodes=[node("a")],
        running=[task("old", service="other", node_id="a", ports=((8080, ""),))],
        pending=[pending("t1", ports=((8080, "TCP"),))],
        want={"t1": None},
        reasons={"t1": "1 node: 1 has port 8080/tcp in use"},
    ),
    Case(
        name="two pending tasks never get the same host port on one node",
        nodes=[node("a"), node("b")],
        pending=[pending(f"t{i}", slot=i, ports=((80, "tcp"), (443, "tcp"))) for i in range(1, 4)],
        want={"t1": "?", "t2": "?", "t3": None},
        reasons={"t3": "2 nodes: 2 have port 80/tcp in use"},
    ),
    Case(
        name="resources exhausted, mixed with a port conflict",
        nodes=[node("a", memory=1 * GIB), node("b", memory=1 * GIB), node("c", memory=4 * GIB)],
        running=[
            task("r1", service="other", node_id="a", memory=768 * MIB),
            task("r2", service="other", node_id="b", memory=768 * MIB),
            task("r3", service="other", node_id="c", ports=((8080, "tcp"),)),
        ],
        pending=[pending("t1", memory=512 * MIB, ports=((8080, "tcp"),))],
        want={"t1": None},
        reasons={"t1": "3 nodes: 2 lack memory (need 512MiB), 1 has port 8080/tcp in use"},
    ),
    Case(
        name="cpu exhausted within one call",
        nodes=[node("a", cpus=1)],
        pending=[pending(f"t{i}", slot=i, cpu=0.5) for i in range(1, 4)],
        want={"t1": "a", "t2": "a", "t3": None},
        reasons={"t3": "1 node: 1 lacks CPU (need 0.5 CPUs)"},
    ),
    Case(
        name="cpu and memory both short",
        nodes=[node("a", cpus=1, memory=1 * GIB)],
        pending=[pending("t1", cpu=2, memory=int(1.5 * GIB))],
        want={"t1": None},
        reasons={"t1": "1 node: 1 lacks CPU and memory (need 2 CPUs, 1.5GiB)"},
    ),
    Case(
        name="fractional CPUs add up exactly",
        nodes=[node("a", cpus=0.3)],
        pending=[pending(f"t{i}", slot=i, cpu=0.1) for i in range(1, 4)],
        want={"t1": "a", "t2": "a", "t3": "a"},
    ),
    Case(
        name="a task sees what tasks of other services and shapes took before it",
        nodes=[node("a", memory=1 * GIB)],
        pending=[
            pending("first", service="s1", memory=512 * MIB),
            pending("between", service="s2", memory=256 * MIB),
            pending("last", service="s3", memory=512 * MIB),
        ],
        want={"first": "a", "between": "a", "last": None},
        reasons={"last": "1 node: 1 lacks memory (need 512MiB)"},
    ),
    Case(
        name="terminal tasks hold nothing",
        nodes=[node("a", cpus=1, memory=1 * GIB)],
        running=[
            task(f"done-{state}", node_id="a", cpu=1, memory=GIB, ports=((80, "tcp"),), state=state)
            for state in (
                pb.TASK_STATE_COMPLETE,
                pb.TASK_STATE_FAILED,
                pb.TASK_STATE_SHUTDOWN,
                pb.TASK_STATE_REJECTED,
                pb.TASK_STATE_ORPHANED,
            )
        ],
        pending=[pending("t1", cpu=1, memory=GIB, ports=((80, "tcp"),))],
        want={"t1": "a"},
    ),
    Case(
        name="a task told to shut down holds until it is terminal",
        nodes=[node("a", cpus=1)],
        running=[task("stopping", node_id="a", cpu=1, desired=pb.DESIRED_STATE_SHUTDOWN)],
        pending=[pending("t1", cpu=1)],
        want={"t1": None},
        reasons={"t1": "1 node: 1 lacks CPU (need 1 CPU)"},
    ),
    Case(
        name="tasks on unknown nodes are ignored",
        nodes=[node("a", cpus=1)],
        running=[task("elsewhere", node_id="gone", cpu=1)],
        pending=[pending("t1", cpu=1)],
        want={"t1": "a"},
    ),
    Case(
        name="spread beats load: the replica goes where its service is absent",
        nodes=[node("a"), node("b")],
        running=[
            task("mine", service="svc", node_id="a"),
            task("heavy", service="other", node_id="b", cpu=3, memory=6 * GIB),
        ],
        pending=[pending("t1", service="svc", slot=2)],
        want={"t1": "b"},
    ),
    Case(
        name="least loaded wins when spread ties",
        nodes=[node("a"), node("b"), node("c")],
        running=[
            task("x", service="other", node_id="a", cpu=2),
            task("y", service="other", node_id="b", memory=6 * GIB),
            task("z", service="other", node_id="c", cpu=1),
        ],
        pending=[pending("t1", service="svc")],
        want={"t1": "c"},
    ),
    Case(
        name="fewest tasks wins when reservations tie",
        nodes=[node("a"), node("b")],
        running=[task("x", service="other", node_id="a"), task("y", service="more", node_id="a")],
        pending=[pending("t1", service="svc")],
        want={"t1": "b"},
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_table(case: Case) -> None:
    """Each row's placements and reasons come out as listed ("?" means placed anywhere)."""
    decisions = schedule(case.nodes, case.running + case.pending, case.pending, NOW, seed=7)
    got = {d.task_id: d for d in decisions}
    assert set(got) == set(case.want)
    for task_id, want in case.want.items():
        decision = got[task_id]
        if want is None:
            assert decision.node_id is None, decision
            assert decision.reason
        else:
            assert decision.node_id is not None, decision
            assert decision.reason == ""
            if want != "?":
                assert decision.node_id == want, decision
    for task_id, reason in case.reasons.items():
        assert got[task_id].reason == reason


def test_three_replicas_spread_over_three_nodes() -> None:
    """Replicas of one service land on distinct nodes whatever the seed."""
    nodes = [node("a"), node("b"), node("c")]
    replicas = [pending(f"t{i}", slot=i) for i in range(1, 4)]
    for seed in range(20):
        decisions = schedule(nodes, replicas, replicas, NOW, seed)
        assert sorted(d.node_id or "" for d in decisions) == ["a", "b", "c"]


def test_six_replicas_two_per_node() -> None:
    """With more replicas than nodes every node gets the same share."""
    nodes = [node("a"), node("b"), node("c")]
    replicas = [pending(f"t{i}", slot=i) for i in range(1, 7)]
    decisions = schedule(nodes, replicas, replicas, NOW, seed=3)
    assert Counter(d.node_id for d in decisions) == {"a": 2, "b": 2, "c": 2}


def test_pending_placed_in_service_then_slot_order() -> None:
    """Decisions come back ordered by service id then slot, whatever order pending was given in."""
    tasks = [
        pending("b2", service="b", slot=2),
        pending("a10", service="a", slot=10),
        pending("b1", service="b", slot=1),
        pending("a2", service="a", slot=2),
    ]
    decisions = schedule([node("n")], tasks, tasks, NOW, seed=1)
    assert [d.task_id for d in decisions] == ["a2", "a10", "b1", "b2"]


def test_order_decides_who_gets_the_last_room() -> None:
    """The lower slot is placed first, so it gets the only free spot."""
    tasks = [pending("second", slot=2, cpu=1), pending("first", slot=1, cpu=1)]
    decisions = schedule([node("a", cpus=1)], tasks, tasks, NOW, seed=1)
    assert decisions == [
        Decision("first", "a", ""),
        Decision("second", None, "1 node: 1 lacks CPU (need 1 CPU)"),
    ]


def test_ties_follow_the_seed_not_node_order() -> None:
    """On identical nodes the winner varies with the seed and is unchanged by reversing the node list."""
    nodes = [node(f"n{i}") for i in range(4)]
    one = [pending("t1")]
    winners = set()
    for seed in range(40):
        forward = schedule(nodes, one, one, NOW, seed)
        backward = schedule(nodes[::-1], one, one, NOW, seed)
        assert forward == backward
        winners.add(forward[0].node_id)
    assert winners == {"n0", "n1", "n2", "n3"}


def test_pending_task_with_old_node_is_not_double_counted() -> None:
    """A task being re-placed does not hold its old node's resources against itself."""
    stale = pending("t1", node_id="a", cpu=1)
    stale.status.state = pb.TASK_STATE_ASSIGNED
    decisions = schedule([node("a", cpus=1)], [stale], [stale], NOW, seed=0)
    assert decisions == [Decision("t1", "a", "")]


def test_custom_filter_is_reported() -> None:
    """A filter added to the chain takes part in placement and in the reason text."""

    class NeverOnA:
        name = "never-on-a"

        def check(self, state: NodeState, demand: Demand) -> Rejection | None:
            return Rejection("is a", "are a") if state.id == "a" else None

    tasks = [pending("t1", slot=1), pending("t2", slot=2)]
    decisions = schedule([node("a"), node("b")], tasks, tasks, NOW, seed=0, filters=(*DEFAULT_FILTERS, NeverOnA()))
    assert decisions[0] == Decision("t1", "b", "")
    assert decisions[1] == Decision("t2", "b", "")
    blocked = schedule([node("a")], tasks, tasks, NOW, seed=0, filters=(*DEFAULT_FILTERS, NeverOnA()))
    assert blocked[0].reason == "1 node: 1 is a"


@pytest.mark.parametrize(
    ("state", "node_id", "desired", "holds"),
    [
        (pb.TASK_STATE_RUNNING, "a", pb.DESIRED_STATE_RUNNING, True),
        (pb.TASK_STATE_ASSIGNED, "a", pb.DESIRED_STATE_RUNNING, True),
        (pb.TASK_STATE_STARTING, "a", pb.DESIRED_STATE_SHUTDOWN, True),
        (pb.TASK_STATE_RUNNING, "", pb.DESIRED_STATE_RUNNING, False),
        (pb.TASK_STATE_COMPLETE, "a", pb.DESIRED_STATE_RUNNING, False),
        (pb.TASK_STATE_FAILED, "a", pb.DESIRED_STATE_SHUTDOWN, False),
    ],
)
def test_holds_resources(
    state: pb.TaskState.ValueType, node_id: str, desired: pb.DesiredState.ValueType, holds: bool
) -> None:
    """A task holds its node while assigned and not terminal, whatever its desired state."""
    assert holds_resources(task("t", node_id=node_id, state=state, desired=desired)) is holds


@pytest.mark.parametrize(
    ("count", "text"),
    [
        (0, "0B"),
        (1000, "1000B"),
        (1024, "1KiB"),
        (512 * MIB, "512MiB"),
        (int(1.5 * GIB), "1.5GiB"),
        (GIB, "1GiB"),
    ],
)
def test_format_bytes(count: int, text: str) -> None:
    """Bytes are shown in the largest binary unit reached, trailing zeros dropped."""
    assert format_bytes(count) == text


@pytest.mark.parametrize(
    ("nano", "text"), [(500_000_000, "0.5 CPUs"), (1_000_000_000, "1 CPU"), (2_250_000_000, "2.25 CPUs")]
)
def test_format_cpus(nano: int, text: str) -> None:
    """CPUs are shown with up to three decimals and a unit that agrees in number."""
    assert format_cpus(nano) == text
