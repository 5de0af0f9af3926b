"""The pure replicated-service reconciler: table tests and properties."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.orchestrator.nodes import NodeFacts
from controller.orchestrator.reconciler import reconcile_service
from dockyard.task_state import is_terminal
from dockyard.timestamps import duration, to_timestamp
from dockyard.v1 import types_pb2 as pb

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
NODES = NodeFacts.of([pb.Node(id="n1", status=pb.NODE_STATUS_READY, availability=pb.NODE_AVAILABILITY_ACTIVE)])


def ids() -> itertools.count[int]:
    return itertools.count(1)


def new_id_factory() -> object:
    counter = itertools.count(1)
    return lambda: f"t{next(counter)}"


def service(replicas: int = 3, image: str = "img:1", revision: int = 1, **restart: object) -> pb.Service:
    svc = pb.Service(id="svc", name="web", revision=revision, spec_revision=revision)
    svc.spec.name = "web"
    svc.spec.image = image
    svc.spec.replicas = replicas
    if restart:
        svc.spec.restart.CopyFrom(pb.RestartPolicy(**restart))  # type: ignore[arg-type]
    return svc


def task(
    slot: int,
    state: int = pb.TASK_STATE_RUNNING,
    desired: int = pb.DESIRED_STATE_RUNNING,
    svc: pb.Service | None = None,
    task_id: str = "",
    node: str = "n1",
    stopped_ago: float = 0.0,
) -> pb.Task:
    svc = svc or service()
    t = pb.Task(
        id=task_id or f"old{slot}-{state}-{desired}",
        service_id=svc.id,
        service_name=svc.name,
        slot=slot,
        revision=svc.revision,
        node_id=node,
        desired_state=desired,  # type: ignore[arg-type]
        version=7,
    )
    t.status.state = state  # type: ignore[assignment]
    t.status.timestamp.CopyFrom(to_timestamp(NOW - timedelta(seconds=stopped_ago)))
    t.created_at.CopyFrom(to_timestamp(NOW - timedelta(seconds=100)))
    return t


def reconcile(svc: pb.Service | None, tasks: list[pb.Task]):  # type: ignore[no-untyped-def]
    return reconcile_service(svc, tasks, NODES, NOW, new_id_factory())  # type: ignore[arg-type]


def test_new_service_gets_one_pending_task_per_slot() -> None:
    plan = reconcile(service(3), [])
    assert sorted(t.slot for t in plan.create) == [1, 2, 3]
    assert all(t.status.state == pb.TASK_STATE_PENDING and not t.node_id for t in plan.create)
    assert all(t.desired_state == pb.DESIRED_STATE_RUNNING and t.revision == 1 for t in plan.create)
    assert not any(t.HasField("spec") for t in plan.create), "tasks name their spec's revision, never copy it"
    assert not plan.update and not plan.delete


def test_converged_service_needs_nothing() -> None:
    plan = reconcile(service(2), [task(1), task(2)])
    assert plan.empty()


def test_scale_down_shuts_down_the_highest_slots() -> None:
    plan = reconcile(service(1), [task(1), task(2), task(3)])
    assert sorted(t.slot for t in plan.update) == [2, 3]
    assert all(t.desired_state == pb.DESIRED_STATE_SHUTDOWN for t in plan.update)
    assert not plan.create


def test_scaled_away_stopped_tasks_are_forgotten() -> None:
    gone = task(2, pb.TASK_STATE_SHUTDOWN, pb.DESIRED_STATE_SHUTDOWN)
    plan = reconcile(service(1), [task(1), gone])
    assert plan.delete == [gone]


def test_failed_task_is_replaced_after_the_restart_delay() -> None:
    svc = service(1, condition=pb.RestartPolicy.CONDITION_ON_FAILURE, delay=duration(5))
    failed = task(1, pb.TASK_STATE_FAILED, svc=svc, stopped_ago=2)
    waiting = reconcile(svc, [failed])
    assert waiting.empty()
    assert waiting.wake_at == NOW + timedelta(seconds=3)
    due = reconcile(svc, [task(1, pb.TASK_STATE_FAILED, svc=svc, stopped_ago=6)])
    assert [t.slot for t in due.create] == [1]
    assert [t.desired_state for t in due.update] == [pb.DESIRED_STATE_SHUTDOWN]


def test_restart_policy_none_and_completed_on_failure_leave_the_slot() -> None:
    none = service(1, condition=pb.RestartPolicy.CONDITION_NONE)
    assert reconcile(none, [task(1, pb.TASK_STATE_FAILED, svc=none, stopped_ago=60)]).empty()
    on_failure = service(1, condition=pb.RestartPolicy.CONDITION_ON_FAILURE)
    assert reconcile(on_failure, [task(1, pb.TASK_STATE_COMPLETE, svc=on_failure, stopped_ago=60)]).empty()


def test_max_attempts_stops_replacing() -> None:
    svc = service(1, condition=pb.RestartPolicy.CONDITION_ANY, max_attempts=2, delay=duration(0))
    history = [task(1, pb.TASK_STATE_FAILED, pb.DESIRED_STATE_SHUTDOWN, svc=svc, task_id=f"h{i}") for i in range(2)]
    current = task(1, pb.TASK_STATE_FAILED, svc=svc, task_id="now")
    assert reconcile(svc, [*history, current]).create == []
    assert len(reconcile(svc, [history[0], current]).create) == 1


def test_update_is_stop_first_one_slot_at_a_time() -> None:
    old = service(3, image="img:1")
    new = service(3, image="img:2", revision=2)
    tasks = [task(s, svc=old) for s in (1, 2, 3)]
    plan = reconcile(new, tasks)
    assert [t.slot for t in plan.update] == [1]
    assert plan.update[0].desired_state == pb.DESIRED_STATE_SHUTDOWN
    assert not plan.create, "the new task waits until the old one stopped"
    assert plan.service is not None and plan.service.update_status.state == pb.UpdateStatus.STATE_UPDATING
    new = plan.service
    stopping = plan.update[0]
    assert reconcile(new, [stopping, *tasks[1:]]).empty()
    stopped = task(1, pb.TASK_STATE_SHUTDOWN, pb.DESIRED_STATE_SHUTDOWN, svc=old)
    plan = reconcile(new, [stopped, *tasks[1:]])
    assert [(t.slot, t.revision) for t in plan.create] == [(1, new.revision)]
    assert not plan.update


def test_scaling_does_not_replace_running_tasks() -> None:
    old = service(2, revision=1)
    scaled = service(3, revision=2)
    scaled.spec_revision = 1  # the API keeps spec_revision when only replicas change
    plan = reconcile(scaled, [task(1, svc=old), task(2, svc=old)])
    assert [t.slot for t in plan.create] == [3]
    assert not plan.update


def test_deleted_service_shuts_everything_down_then_forgets() -> None:
    running, pending = task(1), task(2, pb.TASK_STATE_PENDING, node="")
    plan = reconcile(None, [running, pending])
    by_slot = {t.slot: t for t in plan.update}
    assert by_slot[1].desired_state == pb.DESIRED_STATE_SHUTDOWN
    assert by_slot[2].status.state == pb.TASK_STATE_SHUTDOWN, "never placed: settled at once"
    done = task(1, pb.TASK_STATE_SHUTDOWN, pb.DESIRED_STATE_SHUTDOWN)
    assert reconcile(None, [done]).delete == [done]


def test_duplicate_live_tasks_in_a_slot_keep_the_running_one() -> None:
    a = task(1, pb.TASK_STATE_RUNNING, task_id="a")
    b = task(1, pb.TASK_STATE_STARTING, task_id="b")
    plan = reconcile(service(1), [a, b])
    assert [t.id for t in plan.update] == ["b"]


STATES = [
    pb.TASK_STATE_PENDING,
    pb.TASK_STATE_ASSIGNED,
    pb.TASK_STATE_RUNNING,
    pb.TASK_STATE_FAILED,
    pb.TASK_STATE_SHUTDOWN,
    pb.TASK_STATE_COMPLETE,
]


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[pb.Service, list[pb.Task]]:
    replicas = draw(st.integers(0, 6))
    svc = service(
        replicas,
        image=draw(st.sampled_from(["img:1", "img:2"])),
        revision=3,
        condition=draw(st.sampled_from([0, 1, 2, 3])),
        delay=duration(0),
    )
    old = service(replicas, image="img:1", revision=2)
    tasks = []
    for i in range(draw(st.integers(0, 10))):
        state = draw(st.sampled_from(STATES))
        desired = draw(st.sampled_from([pb.DESIRED_STATE_RUNNING, pb.DESIRED_STATE_SHUTDOWN]))
        tasks.append(
            task(
                draw(st.integers(1, 8)),
                state,
                desired,
                svc=draw(st.sampled_from([svc, old])),
                task_id=f"x{i}",
            )
        )
    return svc, tasks


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_never_more_live_tasks_than_replicas_once_settled(scenario: tuple[pb.Service, list[pb.Task]]) -> None:
    svc, tasks = scenario
    plan = reconcile(svc, tasks)
    after = {t.id: t for t in tasks}
    for changed in plan.update:
        after[changed.id] = changed
    for gone in plan.delete:
        after.pop(gone.id)
    for created in plan.create:
        after[created.id] = created
    live = [t for t in after.values() if t.desired_state == pb.DESIRED_STATE_RUNNING]
    # Every slot has at most one live task, and only slots 1..replicas have any.
    slots = [t.slot for t in live]
    assert len(slots) == len(set(slots))
    assert all(1 <= s <= svc.spec.replicas for s in slots)
    # A slot never gets a new task while an old one there still runs (stop-first).
    for created in plan.create:
        assert not any(
            t.slot == created.slot and t.id != created.id and not is_terminal(t.status.state) for t in after.values()
        )
    # Writes never touch a task twice, and terminal tasks are never revived.
    assert len({t.id for t in plan.update}) == len(plan.update)
    for changed in plan.update:
        original = next(t for t in tasks if t.id == changed.id)
        if is_terminal(original.status.state):
            assert changed.status.state == original.status.state


def node(
    node_id: str, status: int = pb.NODE_STATUS_READY, availability: int = pb.NODE_AVAILABILITY_ACTIVE, **labels: str
) -> pb.Node:
    n = pb.Node(id=node_id, status=status, availability=availability)  # type: ignore[arg-type]
    n.description.hostname = f"host-{node_id}"
    n.labels.update(labels)  # the operator's, which node.labels constraints read
    return n


def reconcile_on(svc: pb.Service | None, tasks: list[pb.Task], nodes: list[pb.Node]):  # type: ignore[no-untyped-def]
    return reconcile_service(svc, tasks, NodeFacts.of(nodes), NOW, new_id_factory())  # type: ignore[arg-type]


def test_tasks_of_a_down_node_are_lost_and_replaced_with_a_higher_generation() -> None:
    svc = service(2, condition=pb.RestartPolicy.CONDITION_NONE)
    on_a, on_b = task(1, node="a", task_id="ta"), task(2, node="b", task_id="tb")
    on_a.generation = 4
    plan = reconcile_on(svc, [on_a, on_b], [node("a", pb.NODE_STATUS_DOWN), node("b")])
    [lost] = plan.update
    assert lost.id == "ta"
    assert lost.status.state == pb.TASK_STATE_LOST, "lost is terminal and recorded by the controller"
    assert lost.desired_state == pb.DESIRED_STATE_SHUTDOWN
    assert "host-a" in lost.status.message
    [replacement] = plan.create
    assert (replacement.slot, replacement.node_id, replacement.generation) == (1, "", 5)


def test_a_removed_node_counts_as_down() -> None:
    plan = reconcile_on(service(1), [task(1, node="gone")], [node("b")])
    assert plan.update[0].status.state == pb.TASK_STATE_LOST
    assert len(plan.create) == 1


def test_unknown_nodes_after_a_controller_restart_keep_their_tasks() -> None:
    plan = reconcile_on(service(1), [task(1, node="a")], [node("a", pb.NODE_STATUS_UNKNOWN)])
    assert plan.empty()


def test_drain_is_start_first() -> None:
    svc = service(1)
    old = task(1, node="a", task_id="old")
    nodes = [node("a", availability=pb.NODE_AVAILABILITY_DRAIN), node("b")]
    plan = reconcile_on(svc, [old], nodes)
    [replaced] = plan.update
    assert replaced.replaced and replaced.desired_state == pb.DESIRED_STATE_RUNNING, "it runs until its successor runs"
    [new] = plan.create
    assert new.slot == 1
    old = replaced
    starting = task(1, pb.TASK_STATE_STARTING, node="b", task_id="new")
    assert reconcile_on(svc, [old, starting], nodes).empty()
    running_new = task(1, pb.TASK_STATE_RUNNING, node="b", task_id="new")
    plan = reconcile_on(svc, [old, running_new], nodes)
    assert [(t.id, t.desired_state) for t in plan.update] == [("old", pb.DESIRED_STATE_SHUTDOWN)]
    assert not plan.create


def global_service(*constraints: str) -> pb.Service:
    svc = service(0)
    svc.spec.mode = pb.SERVICE_MODE_GLOBAL
    svc.spec.placement.constraints.extend(constraints)
    return svc


def test_global_service_runs_one_pinned_task_per_matching_active_ready_node() -> None:
    svc = global_service("node.labels.zone == a")
    nodes = [
        node("n1", zone="a"),
        node("n2", zone="b"),
        node("n3", pb.NODE_STATUS_DOWN, zone="a"),
        node("n4", availability=pb.NODE_AVAILABILITY_PAUSE, zone="a"),
        node("n5", zone="a"),
    ]
    plan = reconcile_on(svc, [], nodes)
    assert sorted(t.node_id for t in plan.create) == ["n1", "n5"]
    assert all(t.slot == 0 and t.status.state == pb.TASK_STATE_PENDING for t in plan.create)


def test_global_service_follows_label_changes_drains_and_pauses() -> None:
    svc = global_service("node.labels.zone == a")
    t1 = task(0, node="n1", task_id="t1", svc=svc)
    t2 = task(0, node="n2", task_id="t2", svc=svc)
    t3 = task(0, node="n3", task_id="t3", svc=svc)
    nodes = [
        node("n1", zone="b"),  # relabelled away
        node("n2", availability=pb.NODE_AVAILABILITY_PAUSE, zone="a"),  # paused: keeps what runs
        node("n3", availability=pb.NODE_AVAILABILITY_DRAIN, zone="a"),
    ]
    plan = reconcile_on(svc, [t1, t2, t3], nodes)
    assert sorted(t.id for t in plan.update) == ["t1", "t3"]
    assert all(t.desired_state == pb.DESIRED_STATE_SHUTDOWN for t in plan.update)
    assert not plan.create


def test_global_task_of_a_down_node_is_lost_and_not_moved() -> None:
    svc = global_service()
    t1 = task(0, node="n1", task_id="t1", svc=svc)
    plan = reconcile_on(svc, [t1], [node("n1", pb.NODE_STATUS_DOWN), node("n2")])
    assert plan.update[0].status.state == pb.TASK_STATE_LOST
    assert [t.node_id for t in plan.create] == ["n2"]


def test_rollout_of_a_global_service_targets_its_live_tasks() -> None:
    from dockyard.cli.rollout import progress

    svc = global_service()
    live = [task(0, node=n, task_id=f"g{n}", svc=svc) for n in ("n1", "n2")]
    state = progress(svc, live)
    assert (state.desired, state.running, state.done) == (2, 2, True)
    starting = task(0, pb.TASK_STATE_STARTING, node="n3", task_id="g3", svc=svc)
    assert not progress(svc, [*live, starting]).done


def test_max_attempts_inside_a_window_looks_again_when_attempts_age_out() -> None:
    svc = service(1, condition=pb.RestartPolicy.CONDITION_ANY, max_attempts=1, delay=duration(0), window=duration(60))
    older = task(1, pb.TASK_STATE_FAILED, pb.DESIRED_STATE_SHUTDOWN, svc=svc, task_id="older", stopped_ago=50)
    current = task(1, pb.TASK_STATE_FAILED, svc=svc, task_id="now", stopped_ago=10)
    plan = reconcile(svc, [older, current])
    assert plan.empty(), "two attempts inside the window: no restart"
    assert plan.wake_at == NOW + timedelta(seconds=10, microseconds=1), "the older attempt leaves the window then"
    never = service(1, condition=pb.RestartPolicy.CONDITION_ANY, max_attempts=1, delay=duration(0))
    assert reconcile(never, [older, current]).wake_at is None, "without a window only a change can help"


def stamped(t: pb.Task, seconds: int, nanos: int = 0) -> pb.Task:
    """The task with a stop time as an agent could once store it (read back from the wire, unchecked)."""
    t.status.timestamp.seconds, t.status.timestamp.nanos = seconds, nanos
    return pb.Task.FromString(t.SerializeToString())


UNTRUSTED_STAMPS = [
    pytest.param(int(NOW.timestamp()) - 2, -1, id="nanos-negative"),
    pytest.param(int(NOW.timestamp()) - 2, 10**9, id="nanos-too-large"),
    pytest.param(2**62, 0, id="seconds-past-9999"),
    pytest.param(-(2**62), 0, id="seconds-before-year-1"),
    pytest.param(int((NOW + timedelta(days=365)).timestamp()), 0, id="a-year-ahead"),
    pytest.param(0, 0, id="unset"),
]


@pytest.mark.parametrize(("seconds", "nanos"), UNTRUSTED_STAMPS)
def test_a_stop_time_that_cannot_be_trusted_neither_raises_nor_holds_the_slot(seconds: int, nanos: int) -> None:
    """Stored before the controller stamped statuses: the restart delay cannot count from it, so it is not
    waited for (counted from now it would never end)."""
    svc = service(1, condition=pb.RestartPolicy.CONDITION_ON_FAILURE, delay=duration(5))
    failed = stamped(task(1, pb.TASK_STATE_FAILED, svc=svc), seconds, nanos)
    plan = reconcile(svc, [failed])
    assert [t.slot for t in plan.create] == [1]
    assert plan.wake_at is None


@pytest.mark.parametrize(("seconds", "nanos"), UNTRUSTED_STAMPS)
def test_max_attempts_counts_an_untrusted_stop_without_raising(seconds: int, nanos: int) -> None:
    """In a window, an attempt whose time is unknown still counts (it never ages out), as an unset one did."""
    svc = service(1, condition=pb.RestartPolicy.CONDITION_ANY, max_attempts=1, delay=duration(0), window=duration(60))
    older = stamped(task(1, pb.TASK_STATE_FAILED, pb.DESIRED_STATE_SHUTDOWN, svc=svc, task_id="older"), seconds, nanos)
    current = task(1, pb.TASK_STATE_FAILED, svc=svc, task_id="now", stopped_ago=10)
    plan = reconcile(svc, [older, current])
    assert plan.empty(), "two attempts in the window"
    assert plan.wake_at == NOW + timedelta(seconds=50, microseconds=1), "when the known one ages out"
