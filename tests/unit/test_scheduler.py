"""Table tests for the scheduler's pure core: feasibility, ranking, accounting and the unplaced reasons."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest

from controller.scheduler import (
    DEFAULT_FILTERS,
    Decision,
    Demand,
    NodeState,
    Rejection,
    SpecKey,
    Stack,
    holds_resources,
    schedule,
)
from controller.scheduler.filters import cpus_text
from dockyard.constraints import ConstraintError, parse_constraint
from dockyard.v1 import types_pb2 as pb

MIB = 1 << 20
GIB = 1 << 30
NOW = datetime(2025, 1, 1, tzinfo=UTC)

SPECS: dict[SpecKey, pb.ServiceSpec] = {}
"""The specs every call gets: each distinct spec the helpers below made, by (service id, revision)."""
_REVISIONS: dict[tuple[str, bytes], int] = {}


def revision_of(service: str, spec: pb.ServiceSpec) -> int:
    """Returns the revision under which SPECS holds this spec of the service, adding it when it is new."""
    content = (service, spec.SerializeToString(deterministic=True))
    revision = _REVISIONS.get(content)
    if revision is None:
        revision = _REVISIONS[content] = sum(1 for sid, _ in SPECS if sid == service) + 1
        SPECS[(service, revision)] = spec
    return revision


def node(
    node_id: str,
    cpus: float = 4,
    memory: int = 8 * GIB,
    status: pb.NodeStatus.ValueType = pb.NODE_STATUS_READY,
    availability: pb.NodeAvailability.ValueType = pb.NODE_AVAILABILITY_ACTIVE,
    *,
    hostname: str = "",
    labels: Mapping[str, str] | None = None,
    operator_labels: Mapping[str, str] | None = None,
) -> pb.Node:
    """Returns a node with the given capacity and state; labels are the agent's, operator_labels the API's."""
    result = pb.Node(id=node_id, status=status, availability=availability, labels=operator_labels)
    result.description.hostname = hostname
    result.description.cpus = cpus
    result.description.memory_bytes = memory
    result.description.labels.update(labels or {})
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
    constraints: tuple[str, ...] = (),
    max_per_node: int = 0,
    binpack: bool = False,
) -> pb.Task:
    """Returns a task whose spec is in SPECS under its revision; pending: PENDING, no node_id unless pinned."""
    spec = pb.ServiceSpec(name=service)
    spec.resources.cpu_reservation = cpu
    spec.resources.memory_reservation_bytes = memory
    for port, protocol in ports:
        spec.ports.add(host_port=port, container_port=port, protocol=protocol)
    placement = spec.placement
    placement.constraints.extend(constraints)
    placement.max_replicas_per_node = max_per_node
    if binpack:
        placement.strategy = pb.Placement.STRATEGY_BINPACK
    revision = revision_of(service, spec)
    result = pb.Task(
        id=task_id, service_id=service, slot=slot, revision=revision, node_id=node_id, desired_state=desired
    )
    result.status.state = state
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
    constraints: tuple[str, ...] = (),
    max_per_node: int = 0,
    binpack: bool = False,
) -> pb.Task:
    """Returns a task waiting for a node, or pinned to node_id and waiting to be admitted there."""
    return task(
        task_id,
        service=service,
        slot=slot,
        node_id=node_id,
        cpu=cpu,
        memory=memory,
        ports=ports,
        state=pb.TASK_STATE_PENDING,
        constraints=constraints,
        max_per_node=max_per_node,
        binpack=binpack,
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


ZONE_A = "node.labels.zone == a"

CONSTRAINT_CASES = [
    Case(
        name="constraints: replicas go only to matching nodes, even when spread would prefer others",
        nodes=[node("a", operator_labels={"zone": "a"}), node("b", operator_labels={"zone": "b"}), node("c")],
        pending=[pending(f"t{i}", slot=i, constraints=(ZONE_A,)) for i in (1, 2)],
        want={"t1": "a", "t2": "a"},
    ),
    Case(
        name="constraints: no node matches, a missing label never equals",
        nodes=[node("a", operator_labels={"zone": "b"}), node("b"), node("c", operator_labels={"zone": "A"})],
        pending=[pending("t1", constraints=(ZONE_A,))],
        want={"t1": None},
        reasons={"t1": "3 nodes: 3 don't match node.labels.zone == a"},
    ),
    Case(
        name="constraints: the first failing constraint is the one named",
        nodes=[
            node("a", operator_labels={"zone": "a", "disk": "hdd"}),
            node("b", operator_labels={"zone": "b", "disk": "ssd"}),
            node("c", operator_labels={"zone": "a"}),
        ],
        pending=[pending("t1", constraints=(ZONE_A, "node.labels.disk == ssd"))],
        want={"t1": None},
        reasons={"t1": "3 nodes: 2 don't match node.labels.disk == ssd, 1 doesn't match node.labels.zone == a"},
    ),
    Case(
        name="constraints: node.labels are the operator's only, engine.labels the agent's only",
        nodes=[
            node("a", labels={"zone": "a", "rack": "1"}, operator_labels={"zone": "b"}),  # claims zone a
            node("b", labels={"rack": "2"}, operator_labels={"zone": "a"}),
            node("c", labels={"rack": "1"}, operator_labels={"zone": "a"}),
        ],
        pending=[pending("t1", constraints=(ZONE_A, "engine.labels.rack == 1"))],
        want={"t1": "c"},
    ),
    Case(
        name="constraints: an agent's label never satisfies a constraint on an operator label",
        nodes=[node("a", labels={"zone": "a"}), node("b", labels={"zone": "a"}, operator_labels={"zone": "b"})],
        pending=[pending("t1", constraints=(ZONE_A,))],
        want={"t1": None},
        reasons={"t1": "2 nodes: 2 don't match node.labels.zone == a"},
    ),
    Case(
        name="constraints: != passes a node without the label; hostname and id are matched too",
        nodes=[
            node("n1", hostname="h1"),
            node("n2", hostname="h2", operator_labels={"zone": "b"}),
            node("n3", hostname="h3"),
            node("n4", hostname="h4"),
        ],
        pending=[pending("t1", constraints=("node.labels.zone != b", "node.hostname != h1", "node.id == n4"))],
        want={"t1": "n4"},
    ),
    Case(
        name="constraints: rejections mix with the other filters, each node counted once",
        nodes=[
            node("a", status=pb.NODE_STATUS_DOWN, operator_labels={"zone": "b"}),
            node("b", operator_labels={"zone": "b"}, memory=GIB),
            node("c", operator_labels={"zone": "a"}, memory=256 * MIB),
            node("d", operator_labels={"zone": "a"}, availability=pb.NODE_AVAILABILITY_DRAIN),
        ],
        pending=[pending("t1", memory=512 * MIB, constraints=(ZONE_A,))],
        want={"t1": None},
        reasons={
            "t1": "4 nodes: 1 draining, 1 not ready, 1 doesn't match node.labels.zone == a, "
            "1 lacks memory (need 512MiB)"
        },
    ),
    Case(
        name="constraints: services with and without them share a call",
        nodes=[node("a", cpus=1, operator_labels={"zone": "a"}), node("b", cpus=1)],
        running=[task("x", service="other", node_id="b", cpu=0.5)],
        pending=[
            pending("free", service="s1", cpu=0.5),
            pending("zoned", service="s2", cpu=1, constraints=(ZONE_A,)),
        ],
        want={"free": "a", "zoned": None},
        reasons={"zoned": "2 nodes: 1 doesn't match node.labels.zone == a, 1 lacks CPU (need 1 CPU)"},
    ),
]

MAX_PER_NODE_CASES = [
    Case(
        name="max per node: one each, then the rest wait",
        nodes=[node("a"), node("b")],
        pending=[pending(f"t{i}", slot=i, max_per_node=1) for i in (1, 2, 3)],
        want={"t1": "?", "t2": "?", "t3": None},
        reasons={"t3": "2 nodes: 2 already run 1 task of this service (max_replicas_per_node: 1)"},
    ),
    Case(
        name="max per node: held tasks count, other services and finished tasks do not",
        nodes=[node("a"), node("b")],
        running=[
            task("held", node_id="a"),
            task("done", node_id="b", state=pb.TASK_STATE_COMPLETE),
            task("other", service="other", node_id="b"),
        ],
        pending=[pending("t1", slot=2, max_per_node=1), pending("t2", slot=3, max_per_node=1)],
        want={"t1": "b", "t2": None},
        reasons={"t2": "2 nodes: 2 already run 1 task of this service (max_replicas_per_node: 1)"},
    ),
    Case(
        name="max per node: a single node, limit two",
        nodes=[node("a")],
        pending=[pending(f"t{i}", slot=i, max_per_node=2) for i in (1, 2, 3)],
        want={"t1": "a", "t2": "a", "t3": None},
        reasons={"t3": "1 node: 1 already runs 2 tasks of this service (max_replicas_per_node: 2)"},
    ),
    Case(
        name="max per node: a node already over a lowered limit reports what it holds",
        nodes=[node("a")],
        running=[task(f"r{i}", node_id="a", slot=i) for i in (1, 2, 3)],
        pending=[pending("t1", slot=4, max_per_node=2)],
        want={"t1": None},
        reasons={"t1": "1 node: 1 already runs 3 tasks of this service (max_replicas_per_node: 2)"},
    ),
    Case(
        name="max per node: zero means no limit",
        nodes=[node("a")],
        pending=[pending(f"t{i}", slot=i, max_per_node=0) for i in (1, 2, 3)],
        want={"t1": "a", "t2": "a", "t3": "a"},
    ),
]

BINPACK_CASES = [
    Case(
        name="binpack: the most reserved node that fits, where spread takes the emptiest",
        nodes=[node("a"), node("b"), node("c")],
        running=[
            task("x", service="other", node_id="a", cpu=2),
            task("y", service="other", node_id="b", cpu=1),
            task("z", service="other", node_id="c", cpu=3.5),
        ],
        pending=[pending("pack", service="p", cpu=1, binpack=True), pending("spread", service="s", cpu=1)],
        want={"pack": "a", "spread": "b"},
    ),
    Case(
        name="binpack: counting the task itself, the small node it nearly fills beats a fuller big one",
        nodes=[node("big", cpus=16), node("small", cpus=2)],
        running=[
            task("x", service="other", node_id="big", cpu=8),
            task("y", service="other", node_id="small", cpu=0.5),
        ],
        pending=[pending("t1", cpu=1, binpack=True)],
        want={"t1": "small"},
    ),
    Case(
        name="binpack: equally full, the node with less free memory wins",
        nodes=[node("a", cpus=4, memory=8 * GIB), node("b", cpus=8, memory=16 * GIB)],
        running=[task("x", service="o", node_id="a", cpu=2), task("y", service="o", node_id="b", cpu=4)],
        pending=[pending("t1", binpack=True)],
        want={"t1": "a"},
    ),
    Case(
        name="binpack: equally full with equal free memory, the node with fewer free CPUs wins",
        nodes=[node("a", cpus=8, memory=8 * GIB), node("b", cpus=4, memory=8 * GIB)],
        running=[
            task("x", service="o", node_id="a", memory=4 * GIB),
            task("y", service="o", node_id="b", memory=4 * GIB),
        ],
        pending=[pending("t1", binpack=True)],
        want={"t1": "b"},
    ),
    Case(
        name="binpack: a full node is skipped with the usual reason",
        nodes=[node("a", cpus=1)],
        running=[task("x", service="o", node_id="a", cpu=1)],
        pending=[pending("t1", cpu=1, binpack=True)],
        want={"t1": None},
        reasons={"t1": "1 node: 1 lacks CPU (need 1 CPU)"},
    ),
]

PINNED_CASES = [
    Case(
        name="pinned: placed on its node although spread and load would choose another",
        nodes=[node("a"), node("b")],
        running=[task("mine", node_id="b"), task("heavy", service="other", node_id="b", cpu=3)],
        pending=[pending("t1", slot=0, node_id="b", cpu=0.5)],
        want={"t1": "b"},
    ),
    Case(
        name="pinned: its node lacks memory, named by host name",
        nodes=[node("n1", hostname="h1"), node("n2", hostname="h2", memory=256 * MIB)],
        pending=[pending("t1", slot=0, node_id="n2", memory=512 * MIB)],
        want={"t1": None},
        reasons={"t1": "node h2: lacks memory (need 512MiB)"},
    ),
    Case(
        name="pinned: a node without a host name is named by id",
        nodes=[node("n1", availability=pb.NODE_AVAILABILITY_PAUSE)],
        pending=[pending("t1", slot=0, node_id="n1")],
        want={"t1": None},
        reasons={"t1": "node n1: paused"},
    ),
    Case(
        name="pinned: an unknown node",
        nodes=[node("a")],
        pending=[pending("t1", slot=0, node_id="ghost")],
        want={"t1": None},
        reasons={"t1": "node ghost is not in the cluster"},
    ),
    Case(
        name="pinned: no nodes at all",
        nodes=[],
        pending=[pending("t1", slot=0, node_id="ghost")],
        want={"t1": None},
        reasons={"t1": "node ghost is not in the cluster"},
    ),
    Case(
        name="pinned: every filter applies on its node",
        nodes=[node("a", hostname="h1", labels={"zone": "b"}), node("b", hostname="h2"), node("c", hostname="h3")],
        running=[task("r1", service="s2", node_id="b"), task("r2", service="other", node_id="c", ports=((80, "tcp"),))],
        pending=[
            pending("zoned", service="s1", slot=0, node_id="a", constraints=(ZONE_A,)),
            pending("limited", service="s2", slot=0, node_id="b", max_per_node=1),
            pending("port", service="s3", slot=0, node_id="c", ports=((80, "tcp"),)),
        ],
        want={"zoned": None, "limited": None, "port": None},
        reasons={
            "zoned": "node h1: doesn't match node.labels.zone == a",
            "limited": "node h2: already runs 1 task of this service (max_replicas_per_node: 1)",
            "port": "node h3: has port 80/tcp in use",
        },
    ),
    Case(
        name="pinned: tasks pinned to one node see each other",
        nodes=[node("a", cpus=1)],
        pending=[
            pending("g1", service="g1", slot=0, node_id="a", cpu=1),
            pending("g2", service="g2", node_id="a", cpu=1),
        ],
        want={"g1": "a", "g2": None},
        reasons={"g2": "node a: lacks CPU (need 1 CPU)"},
    ),
    Case(
        name="pinned: placed before free tasks, which cannot take its only node's room",
        nodes=[node("a", cpus=1), node("b", cpus=1)],
        pending=[
            pending("free1", service="a-first", slot=1, cpu=1),
            pending("free2", service="a-first", slot=2, cpu=1),
            pending("pinned", service="z-global", slot=0, node_id="a", cpu=1),
        ],
        want={"pinned": "a", "free1": "b", "free2": None},
        reasons={"free2": "2 nodes: 2 lack CPU (need 1 CPU)"},
    ),
    Case(
        name="pinned: its placement counts towards spreading the free tasks of its service",
        nodes=[node("a"), node("b")],
        pending=[pending("pinned", slot=0, node_id="a"), pending("free", slot=1)],
        want={"pinned": "a", "free": "b"},
    ),
]

ALL_CASES = CASES + CONSTRAINT_CASES + MAX_PER_NODE_CASES + BINPACK_CASES + PINNED_CASES


@pytest.mark.parametrize("case", ALL_CASES, ids=[c.name for c in ALL_CASES])
def test_table(case: Case) -> None:
    """Each row's placements and reasons come out as listed ("?" means placed anywhere)."""
    decisions = schedule(case.nodes, case.running + case.pending, case.pending, SPECS, NOW, seed=7)
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
        decisions = schedule(nodes, replicas, replicas, SPECS, NOW, seed)
        assert sorted(d.node_id or "" for d in decisions) == ["a", "b", "c"]


def test_six_replicas_two_per_node() -> None:
    """With more replicas than nodes every node gets the same share."""
    nodes = [node("a"), node("b"), node("c")]
    replicas = [pending(f"t{i}", slot=i) for i in range(1, 7)]
    decisions = schedule(nodes, replicas, replicas, SPECS, NOW, seed=3)
    assert Counter(d.node_id for d in decisions) == {"a": 2, "b": 2, "c": 2}


def test_pending_placed_in_service_then_slot_order() -> None:
    """Decisions come back ordered by service id then slot, whatever order pending was given in."""
    tasks = [
        pending("b2", service="b", slot=2),
        pending("a10", service="a", slot=10),
        pending("b1", service="b", slot=1),
        pending("a2", service="a", slot=2),
    ]
    decisions = schedule([node("n")], tasks, tasks, SPECS, NOW, seed=1)
    assert [d.task_id for d in decisions] == ["a2", "a10", "b1", "b2"]


def test_order_decides_who_gets_the_last_room() -> None:
    """The lower slot is placed first, so it gets the only free spot."""
    tasks = [pending("second", slot=2, cpu=1), pending("first", slot=1, cpu=1)]
    decisions = schedule([node("a", cpus=1)], tasks, tasks, SPECS, NOW, seed=1)
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
        forward = schedule(nodes, one, one, SPECS, NOW, seed)
        backward = schedule(nodes[::-1], one, one, SPECS, NOW, seed)
        assert forward == backward
        winners.add(forward[0].node_id)
    assert winners == {"n0", "n1", "n2", "n3"}


def test_pinned_task_is_not_counted_against_itself() -> None:
    """A pending task that names its node does not hold that node's resources against itself."""
    stale = pending("t1", node_id="a", cpu=1)
    stale.status.state = pb.TASK_STATE_ASSIGNED
    decisions = schedule([node("a", cpus=1)], [stale], [stale], SPECS, NOW, seed=0)
    assert decisions == [Decision("t1", "a", "")]


def test_invalid_constraint_leaves_the_task_unplaced_with_the_parser_message() -> None:
    """A constraint that does not parse never raises: its task stays unplaced, the others are placed."""
    with pytest.raises(ConstraintError) as error:
        parse_constraint("node.labels.zone = a")
    tasks = [
        pending("bad", service="s1", constraints=(ZONE_A, "node.labels.zone = a")),
        pending("bad-pinned", service="s2", node_id="a", constraints=("zone",)),
        pending("good", service="s3", constraints=(ZONE_A,)),
    ]
    decisions = {
        d.task_id: d for d in schedule([node("a", operator_labels={"zone": "a"})], tasks, tasks, SPECS, NOW, seed=0)
    }
    assert decisions["bad"] == Decision("bad", None, f"invalid placement constraint: {error.value}")
    assert decisions["bad-pinned"].node_id is None
    assert decisions["bad-pinned"].reason.startswith("invalid placement constraint: ")
    assert decisions["good"] == Decision("good", "a", "")
    assert schedule([], tasks[:1], tasks[:1], SPECS, NOW, seed=0)[0].reason.startswith("invalid placement constraint: ")


def test_a_pending_task_whose_spec_is_gone_stays_unplaced_and_says_so() -> None:
    """Free or pinned, a task whose (service, revision) has no spec is not placed; the others are."""
    gone = pending("gone", service="deleted")
    gone.revision = 99
    gone_pinned = pending("gone-pinned", service="deleted", node_id="a")
    gone_pinned.revision = 99
    tasks = [gone, gone_pinned, pending("kept", service="kept")]
    decisions = {d.task_id: d for d in schedule([node("a")], tasks, tasks, SPECS, NOW, seed=0)}
    reason = "the spec of its service at revision 99 is gone (was the service deleted?)"
    assert decisions == {
        "gone": Decision("gone", None, reason),
        "gone-pinned": Decision("gone-pinned", None, reason),
        "kept": Decision("kept", "a", ""),
    }


def test_a_running_task_whose_spec_is_gone_holds_its_slot_only() -> None:
    """A holder without a spec counts for spread and max per node, but holds no reservation and no port."""
    orphan = task("orphan", service="web", node_id="a")
    orphan.revision = 99
    placed = pending("p", service="web", cpu=4, memory=8 * GIB, ports=((80, "tcp"),))
    decisions = schedule([node("a"), node("b")], [orphan, placed], [placed], SPECS, NOW, seed=0)
    assert decisions == [Decision("p", "b", "")]  # spread: a already runs one task of web
    limited = pending("l", service="web", max_per_node=1, cpu=4, memory=8 * GIB, ports=((80, "tcp"),))
    decisions = schedule([node("a")], [orphan, limited], [limited], SPECS, NOW, seed=0)
    assert decisions == [
        Decision("l", None, "1 node: 1 already runs 1 task of this service (max_replicas_per_node: 1)")
    ]
    alone = pending("x", service="other", cpu=4, memory=8 * GIB, ports=((80, "tcp"),))
    assert schedule([node("a")], [orphan, alone], [alone], SPECS, NOW, seed=0) == [Decision("x", "a", "")]


def test_the_copy_of_a_spec_on_a_task_is_never_read() -> None:
    """Only the specs mapping counts: a stale copy on the task (as older stores kept) changes nothing."""
    held = task("held", service="other", node_id="a")
    held.spec.resources.cpu_reservation = 4
    waiting = pending("t1", cpu=1)
    waiting.spec.placement.constraints.append("node.labels.zone == nowhere")
    assert schedule([node("a", cpus=1)], [held, waiting], [waiting], SPECS, NOW, seed=0) == [Decision("t1", "a", "")]


def test_binpack_fills_one_node_where_spread_uses_all() -> None:
    """On identical nodes binpack stacks a service on one node and spread puts each replica apart, any seed."""
    nodes = [node("a"), node("b"), node("c")]
    for seed in range(20):
        packed = [pending(f"p{i}", service="pack", slot=i, cpu=0.5, binpack=True) for i in range(3)]
        spread = [pending(f"s{i}", service="spread", slot=i, cpu=0.5) for i in range(3)]
        decisions = schedule(nodes, packed + spread, packed + spread, SPECS, NOW, seed)
        assert len({d.node_id for d in decisions if d.task_id.startswith("p")}) == 1
        assert len({d.node_id for d in decisions if d.task_id.startswith("s")}) == 3


def test_binpack_moves_on_only_when_a_node_is_full() -> None:
    """Binpack fills a node to capacity before it starts the next one."""
    nodes = [node(name, cpus=2) for name in "abc"]
    tasks = [pending(f"t{i}", slot=i, cpu=1, binpack=True) for i in range(5)]
    decisions = schedule(nodes, tasks, tasks, SPECS, NOW, seed=5)
    assert sorted(Counter(d.node_id for d in decisions).values()) == [1, 2, 2]
    assert all(d.node_id is not None for d in decisions)


def test_max_per_node_beats_binpack() -> None:
    """A limit of one forces binpack replicas onto distinct nodes."""
    nodes = [node("a"), node("b"), node("c")]
    tasks = [pending(f"t{i}", slot=i, cpu=1, max_per_node=1, binpack=True) for i in range(3)]
    decisions = schedule(nodes, tasks, tasks, SPECS, NOW, seed=1)
    assert sorted(d.node_id or "" for d in decisions) == ["a", "b", "c"]


def test_pinned_decisions_come_first() -> None:
    """Decisions list pinned tasks first, then the others, each by service id then slot."""
    tasks = [
        pending("free-b", service="b", slot=1),
        pending("pin-z", service="z", node_id="n"),
        pending("free-a", service="a", slot=1),
        pending("pin-c", service="c", node_id="n"),
    ]
    decisions = schedule([node("n")], tasks, tasks, SPECS, NOW, seed=1)
    assert [d.task_id for d in decisions] == ["pin-c", "pin-z", "free-a", "free-b"]


def test_custom_filter_is_reported() -> None:
    """A filter added to the chain takes part in placement and in the reason text."""

    class NeverOnA:
        name = "never-on-a"

        def applies(self, demand: Demand) -> bool:
            return True

        def check(self, state: NodeState, demand: Demand) -> Rejection | None:
            return Rejection("is a", "are a") if state.id == "a" else None

    tasks = [pending("t1", slot=1), pending("t2", slot=2)]
    decisions = schedule(
        [node("a"), node("b")], tasks, tasks, SPECS, NOW, seed=0, stack=Stack(filters=(*DEFAULT_FILTERS, NeverOnA()))
    )
    assert decisions[0] == Decision("t1", "b", "")
    assert decisions[1] == Decision("t2", "b", "")
    blocked = schedule(
        [node("a")], tasks, tasks, SPECS, NOW, seed=0, stack=Stack(filters=(*DEFAULT_FILTERS, NeverOnA()))
    )
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
    ("nano", "text"),
    [(500_000_000, "0.5 CPUs"), (300_000_000, "0.3 CPUs"), (1_000_000_000, "1 CPU"), (2_250_000_000, "2.25 CPUs")],
)
def test_cpus_text(nano: int, text: str) -> None:
    """CPUs are shown as the spec writes them, with a unit that agrees in number."""
    assert cpus_text(nano) == text
