"""The scheduler's soft avoidance (Task.avoid_node_ids) and its plan's independence from random ids."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from controller.scheduler import Decision, SpecKey, reference_schedule, schedule, tie_break_id
from dockyard.v1 import types_pb2 as pb

NOW = datetime(2026, 12, 1, tzinfo=UTC)
GIB = 1 << 30


def node(node_id: str, cpus: float = 4, status: pb.NodeStatus.ValueType = pb.NODE_STATUS_READY) -> pb.Node:
    result = pb.Node(id=node_id, status=status)
    result.description.hostname = f"host-{node_id}"
    result.description.cpus = cpus
    result.description.memory_bytes = 8 * GIB
    return result


def spec(name: str, cpu: float = 0) -> pb.ServiceSpec:
    result = pb.ServiceSpec(name=name)
    result.resources.cpu_reservation = cpu
    return result


def pending(
    task_id: str, service: str = "svc", slot: int = 1, avoid: tuple[str, ...] = (), node_id: str = ""
) -> pb.Task:
    result = pb.Task(
        id=task_id,
        service_id=service,
        service_name=f"name-{service}",
        slot=slot,
        revision=1,
        node_id=node_id,
        desired_state=pb.DESIRED_STATE_RUNNING,
        avoid_node_ids=avoid,
    )
    result.status.state = pb.TASK_STATE_PENDING
    return result


def running(task_id: str, node_id: str, service: str = "svc", slot: int = 1) -> pb.Task:
    result = pending(task_id, service, slot)
    result.node_id = node_id
    result.status.state = pb.TASK_STATE_RUNNING
    return result


SPECS: dict[SpecKey, pb.ServiceSpec] = {("svc", 1): spec("svc"), ("big", 1): spec("big", cpu=3)}


def place(nodes: list[pb.Node], tasks: list[pb.Task], seed: int = 0) -> list[Decision]:
    """Runs the engine and the reference on the same inputs and returns their (equal) decisions."""
    todo = [t for t in tasks if t.status.state == pb.TASK_STATE_PENDING]
    decisions = schedule(nodes, tasks, todo, SPECS, NOW, seed)
    assert decisions == reference_schedule(nodes, tasks, todo, SPECS, NOW, seed)
    return decisions


@pytest.mark.parametrize("seed", range(8))
def test_an_avoided_node_is_passed_over_when_another_fits(seed: int) -> None:
    nodes = [node("a"), node("b"), node("c")]
    [free] = place(nodes, [pending("t")], seed)
    assert free.node_id is not None
    [avoiding] = place(nodes, [pending("t", avoid=(free.node_id,))], seed)
    assert avoiding.node_id not in (None, free.node_id)


def test_avoiding_outranks_the_spread() -> None:
    """b holds a task of the service and a none: the successor that avoids a still goes to b."""
    nodes = [node("a"), node("b")]
    decisions = place(nodes, [running("r", "b", slot=2), pending("t", avoid=("a",))])
    assert decisions == [Decision("t", "b", "")]


def test_an_avoided_node_is_used_when_nothing_else_fits() -> None:
    nodes = [node("a"), node("b", cpus=1), node("c", status=pb.NODE_STATUS_DOWN)]
    assert place(nodes, [pending("t", "big", avoid=("a",))]) == [Decision("t", "a", "")]
    assert place(nodes, [pending("t", "big", avoid=("a", "b", "c"))]) == [Decision("t", "a", "")]


def test_avoiding_never_changes_why_a_task_cannot_be_placed() -> None:
    nodes = [node("a", cpus=1), node("b", cpus=2)]
    [plain] = place(nodes, [pending("t", "big")])
    [avoiding] = place(nodes, [pending("t", "big", avoid=("a", "b"))])
    assert plain == avoiding == Decision("t", None, "2 nodes: 2 lack CPU (need 3 CPUs)")


def test_unknown_avoided_nodes_and_repeats_are_harmless() -> None:
    nodes = [node("a"), node("b")]
    decisions = place(nodes, [pending("t", avoid=("gone", "a", "a", ""))])
    assert decisions == [Decision("t", "b", "")]


def test_a_pinned_task_goes_to_its_node_even_if_it_avoids_it() -> None:
    assert place([node("a"), node("b")], [pending("t", node_id="a", avoid=("a",))]) == [Decision("t", "a", "")]


def test_avoidance_is_per_task_within_one_service_run() -> None:
    """Three replacements of one service, each avoiding another node, in one call: each avoids its own."""
    nodes = [node("a"), node("b"), node("c")]
    tasks = [pending(f"t{slot}", slot=slot, avoid=(avoid,)) for slot, avoid in ((1, "a"), (2, "b"), (3, "c"))]
    decisions = place(nodes, tasks)
    assert all(d.node_id is not None for d in decisions)
    assert {d.task_id: d.node_id for d in decisions}.keys() == {"t1", "t2", "t3"}
    assert all(d.node_id != avoid for d, avoid in zip(decisions, "abc", strict=True))
    assert sorted(d.node_id or "" for d in decisions) == ["a", "b", "c"], "still spread"


def test_tie_break_reads_the_service_name_slot_and_generation_only() -> None:
    one = pending("t1", slot=2)
    other = pending("t2", "elsewhere", slot=2)
    other.service_name = one.service_name
    assert tie_break_id(one) == tie_break_id(other)
    other.generation = 4
    assert tie_break_id(one) != tie_break_id(other)
    nameless = pending("t3")
    nameless.service_name = ""
    assert tie_break_id(nameless) == tie_break_id(pending("t4", "svc")).replace("name-svc", "svc")


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_a_dry_run_with_other_random_ids_picks_the_same_nodes(seed: int) -> None:
    """What PlanApply relies on: the same services and slots, created with fresh uuids, land alike."""
    nodes = [node(f"n{i}") for i in range(5)]

    def deploy() -> dict[tuple[str, int], str | None]:
        ids = {name: uuid.uuid4().hex for name in ("web", "api", "db")}
        specs = {(ids[name], 1): spec(name) for name in ids}
        tasks = [
            pending(uuid.uuid4().hex, ids[name], slot)
            for name, replicas in (("web", 4), ("api", 3), ("db", 1))
            for slot in range(1, replicas + 1)
        ]
        for t, name in zip(tasks, ["web"] * 4 + ["api"] * 3 + ["db"], strict=True):
            t.service_name = name
        decisions = schedule(nodes, tasks, tasks, specs, NOW, seed)
        by_id = {t.id: t for t in tasks}
        return {(by_id[d.task_id].service_name, by_id[d.task_id].slot): d.node_id for d in decisions}

    first = deploy()
    assert all(first.values())
    assert all(deploy() == first for _ in range(5))
