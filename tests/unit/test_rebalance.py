"""Which running tasks a rebalance moves: tables and properties."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from controller.orchestrator.rebalance import to_move
from dockyard.v1 import types_pb2 as pb


def service(replicas: int = 4, mode: int = pb.SERVICE_MODE_REPLICATED, per_node: int = 0) -> pb.Service:
    svc = pb.Service(id="svc", name="web", revision=1, spec_revision=1)
    svc.spec.replicas = replicas
    svc.spec.mode = mode  # type: ignore[assignment]
    if per_node:
        svc.spec.placement.max_replicas_per_node = per_node
    return svc


def task(
    slot: int,
    node: str,
    state: int = pb.TASK_STATE_RUNNING,
    created: int = 0,
    desired: int = pb.DESIRED_STATE_RUNNING,
    replaced: bool = False,
    service_id: str = "svc",
) -> pb.Task:
    t = pb.Task(
        id=f"t{slot:02d}",
        service_id=service_id,
        slot=slot,
        node_id=node,
        desired_state=desired,  # type: ignore[arg-type]
        replaced=replaced,
    )
    t.status.state = state  # type: ignore[assignment]
    t.created_at.seconds = 1_700_000_000 + (created or slot)
    return t


def ids(tasks: list[pb.Task]) -> list[str]:
    return [t.id for t in tasks]


def test_a_spread_service_moves_nothing() -> None:
    tasks = [task(1, "n1"), task(2, "n2"), task(3, "n1"), task(4, "n2")]
    assert to_move(service(), tasks, ["n1", "n2"]) == []


def test_a_node_that_joined_gets_its_share_newest_first() -> None:
    tasks = [task(s, "n1" if s <= 3 else "n2") for s in range(1, 7)]
    moves = to_move(service(6), tasks, ["n1", "n2", "n3"])
    assert ids(moves) == ["t03", "t06"], "one off each full node, the newest of each, the fullest node first"


def test_the_most_over_full_node_gives_first() -> None:
    tasks = [*(task(s, "n1") for s in range(1, 5)), task(5, "n2"), task(6, "n2"), task(7, "n2")]
    moves = to_move(service(7), tasks, ["n1", "n2", "n3"])
    assert ids(moves) == ["t04", "t03"], "3, 3, 1 would be within ceil(7 / 3) but is no spread: 2, 3, 2 is"


def test_ties_between_nodes_go_by_node_id_and_between_tasks_by_id() -> None:
    tasks = [task(1, "b", created=5), task(2, "b", created=5), task(3, "a", created=5), task(4, "a", created=5)]
    assert ids(to_move(service(4), tasks, ["a", "b", "c", "d"])) == ["t04", "t02"]


def test_only_running_tasks_move_but_all_live_ones_count() -> None:
    tasks = [task(1, "n1", pb.TASK_STATE_STARTING), task(2, "n1", pb.TASK_STATE_STARTING), task(3, "n1")]
    assert ids(to_move(service(3), tasks, ["n1", "n2"])) == ["t03"]
    starting = [task(1, "n1", pb.TASK_STATE_STARTING), task(2, "n1", pb.TASK_STATE_ASSIGNED)]
    assert to_move(service(2), starting, ["n1", "n2"]) == []


def test_a_move_in_flight_is_not_made_again() -> None:
    """Four on n1 and none on n2: two move. While they do, the replaced two and their pending successors must
    not make it look like more should go."""
    before = [task(s, "n1") for s in range(1, 5)]
    first = to_move(service(4), before, ["n1", "n2"])
    assert ids(first) == ["t04", "t03"]
    replaced = [task(s, "n1", replaced=True) for s in (3, 4)]
    successors = [task(s, "", pb.TASK_STATE_PENDING, created=100 + s) for s in (3, 4)]
    for successor in successors:
        successor.avoid_node_ids.append("n1")
    during = [task(1, "n1"), task(2, "n1"), *replaced, *successors]
    assert to_move(service(4), during, ["n1", "n2"]) == []
    for successor in successors:
        successor.node_id = "n2"
    assert to_move(service(4), during, ["n1", "n2"]) == []


def test_a_node_a_move_came_back_to_gives_nothing() -> None:
    """n2 had no room: the successor that avoided n1 was placed on n1 again. Moving another would only restart
    it there too."""
    came_back = task(4, "n1", created=100)
    came_back.avoid_node_ids.append("n1")
    tasks = [task(1, "n1"), task(2, "n1"), task(3, "n1"), came_back]
    assert to_move(service(4), tasks, ["n1", "n2"]) == []
    came_back.ClearField("avoid_node_ids")
    assert ids(to_move(service(4), tasks, ["n1", "n2"])) == ["t04", "t03"]
    elsewhere = task(5, "n3", created=100)
    elsewhere.avoid_node_ids.append("n1")
    assert len(to_move(service(5), [*tasks, elsewhere], ["n1", "n2", "n3"])) == 2, "it avoided n1 and is not there"


def test_tasks_on_nodes_that_are_not_eligible_are_not_its_business() -> None:
    tasks = [task(1, "n1"), task(2, "n1"), task(3, "drained"), task(4, "drained"), task(5, "drained")]
    assert to_move(service(5), tasks, ["n1", "n2"]) == ids_of(tasks, "t02")


def ids_of(tasks: list[pb.Task], *wanted: str) -> list[pb.Task]:
    return [t for w in wanted for t in tasks if t.id == w]


def test_stopped_shut_down_and_foreign_tasks_are_ignored() -> None:
    tasks = [
        task(1, "n1"),
        task(2, "n1", pb.TASK_STATE_FAILED),
        task(3, "n1", desired=pb.DESIRED_STATE_SHUTDOWN),
        task(4, "n1", service_id="other"),
    ]
    assert to_move(service(1), tasks, ["n1", "n2"]) == []


def test_max_replicas_per_node_is_restored_where_there_is_room() -> None:
    tasks = [task(s, "n1") for s in range(1, 4)] + [task(4, "n2")]
    assert ids(to_move(service(4, per_node=1), tasks, ["n1", "n2", "n3", "n4"])) == ["t03", "t02"]
    assert ids(to_move(service(4, per_node=1), tasks, ["n1", "n2", "n3"])) == ["t03"], "room for one only"
    assert to_move(service(4, per_node=1), tasks, ["n1", "n2"]) == [], "no room anywhere: nothing moves"


def test_global_services_jobs_and_no_eligible_node_move_nothing() -> None:
    tasks = [task(s, "n1") for s in range(1, 5)]
    assert to_move(service(4, pb.SERVICE_MODE_GLOBAL), tasks, ["n1", "n2"]) == []
    assert to_move(service(4, pb.SERVICE_MODE_JOB), tasks, ["n1", "n2"]) == []
    assert to_move(service(4), tasks, []) == []


NODES = ["n1", "n2", "n3", "n4"]


@st.composite
def clusters(draw: st.DrawFn) -> tuple[pb.Service, list[pb.Task], list[str]]:
    states = st.sampled_from([pb.TASK_STATE_RUNNING] * 3 + [pb.TASK_STATE_STARTING])
    placed = draw(st.lists(st.tuples(st.sampled_from(["", *NODES]), states), max_size=12))
    tasks = [task(slot, node, state if node else pb.TASK_STATE_PENDING) for slot, (node, state) in enumerate(placed, 1)]
    eligible = draw(st.lists(st.sampled_from(NODES), min_size=1, unique=True))
    per_node = draw(st.integers(0, 3))
    return service(len(tasks), per_node=per_node), tasks, eligible


@given(clusters())
def test_the_moves_even_out_the_spread_as_far_as_running_tasks_and_room_allow(
    cluster: tuple[pb.Service, list[pb.Task], list[str]],
) -> None:
    svc, tasks, eligible = cluster
    per_node = svc.spec.placement.max_replicas_per_node
    moves = to_move(svc, tasks, eligible)
    assert moves == to_move(svc, list(reversed(tasks)), list(reversed(eligible))), "deterministic"
    assert len({t.id for t in moves}) == len(moves)
    assert all(t.status.state == pb.TASK_STATE_RUNNING and t.node_id in eligible for t in moves)
    loads = Counter({node: 0 for node in eligible})
    loads.update(t.node_id for t in tasks if t.node_id in eligible)
    for _ in range(sum(1 for t in tasks if not t.node_id)):
        loads[min(eligible, key=lambda n: (loads[n], n))] += 1
    # Land each move where the spread scorer would: the least loaded other node.
    for moved in moves:
        target = min((n for n in eligible if n != moved.node_id), key=lambda n: (loads[n], n))
        assert loads[moved.node_id] >= loads[target] + 2, "every move evens the spread out"
        assert not per_node or loads[target] < per_node, "and lands where max_replicas_per_node has room"
        loads[moved.node_id] -= 1
        loads[target] += 1
    left = [t for t in tasks if t.status.state == pb.TASK_STATE_RUNNING and t.node_id in eligible and t not in moves]
    if all(t.status.state == pb.TASK_STATE_RUNNING for t in tasks if t.node_id) and not per_node:
        assert max(loads.values()) - min(loads.values()) <= 1
    for still in left:
        others = [n for n in eligible if n != still.node_id]
        if not others:
            continue
        least = min(others, key=lambda n: (loads[n], n))
        if not (per_node and loads[least] >= per_node):
            assert loads[still.node_id] < loads[least] + 2, "no running task is left that a move would help"
