"""The depends_on gate: which dependencies hold, what a held task says, and who depends on whom."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.orchestrator.depends import DependencyView, dependents, holds, waiting_for
from dockyard.v1 import types_pb2 as pb

STARTED = pb.Dependency.CONDITION_SERVICE_STARTED
HEALTHY = pb.Dependency.CONDITION_SERVICE_HEALTHY
COMPLETED = pb.Dependency.CONDITION_SERVICE_COMPLETED_SUCCESSFULLY


def service(
    name: str,
    replicas: int = 2,
    mode: int = pb.SERVICE_MODE_REPLICATED,
    revision: int = 3,
    spec_revision: int = 3,
    **depends_on: int,
) -> pb.Service:
    svc = pb.Service(id=f"id-{name}", name=name, revision=revision, spec_revision=spec_revision)
    svc.spec.name = name
    svc.spec.replicas = replicas
    svc.spec.mode = mode  # type: ignore[assignment]
    for dep, condition in depends_on.items():
        svc.spec.depends_on[dep].condition = condition  # type: ignore[assignment]
    return svc


def task(
    svc: pb.Service,
    slot: int,
    state: int = pb.TASK_STATE_RUNNING,
    generation: int = 1,
    revision: int | None = None,
    desired: int = pb.DESIRED_STATE_RUNNING,
    node: str = "n1",
) -> pb.Task:
    t = pb.Task(
        id=f"{svc.name}-{slot}-{generation}-{node}",
        service_id=svc.id,
        slot=slot,
        generation=generation,
        revision=svc.revision if revision is None else revision,
        desired_state=desired,  # type: ignore[arg-type]
        node_id=node,
    )
    t.status.state = state  # type: ignore[assignment]
    return t


def gate(web: pb.Service, *views: tuple[pb.Service, list[pb.Task]]) -> str | None:
    return waiting_for(web, {dep.name: DependencyView(dep, tasks) for dep, tasks in views})


def test_no_dependencies_never_wait() -> None:
    assert waiting_for(service("web"), {}) is None


@pytest.mark.parametrize(
    ("condition", "states", "waits"),
    [
        (STARTED, [pb.TASK_STATE_RUNNING, pb.TASK_STATE_STARTING], False),
        (STARTED, [pb.TASK_STATE_RUNNING, pb.TASK_STATE_PREPARING], True),
        (STARTED, [pb.TASK_STATE_RUNNING, pb.TASK_STATE_FAILED], True),
        (HEALTHY, [pb.TASK_STATE_RUNNING, pb.TASK_STATE_RUNNING], False),
        (HEALTHY, [pb.TASK_STATE_RUNNING, pb.TASK_STATE_STARTING], True),
        (COMPLETED, [pb.TASK_STATE_COMPLETE, pb.TASK_STATE_COMPLETE], False),
        (COMPLETED, [pb.TASK_STATE_COMPLETE, pb.TASK_STATE_RUNNING], True),
        (COMPLETED, [pb.TASK_STATE_COMPLETE, pb.TASK_STATE_FAILED], True),
    ],
)
def test_each_condition_judges_every_slot(condition: int, states: list[int], waits: bool) -> None:
    db = service("db")
    tasks = [task(db, slot, state) for slot, state in enumerate(states, 1)]
    assert (gate(service("web", db=condition), (db, tasks)) is not None) is waits
    assert holds(db, tasks, condition) is not waits  # type: ignore[arg-type]


def test_the_message_names_the_dependency_its_condition_and_how_far_it_is() -> None:
    db = service("db", replicas=3)
    tasks = [task(db, 1), task(db, 2, pb.TASK_STATE_STARTING)]
    assert gate(service("web", db=HEALTHY), (db, tasks)) == "waiting for db (service_healthy): 1 of 3 tasks healthy"
    assert gate(service("web", db=STARTED), (db, tasks)) == "waiting for db (service_started): 2 of 3 tasks started"


def test_an_unspecified_condition_is_service_started() -> None:
    db = service("db", replicas=1)
    web = service("web", db=pb.Dependency.CONDITION_UNSPECIFIED)
    assert gate(web, (db, [])) == "waiting for db (service_started): 0 of 1 task started"
    assert gate(web, (db, [task(db, 1, pb.TASK_STATE_STARTING)])) is None


def test_a_missing_dependency_is_named() -> None:
    web = service("web", db=HEALTHY, queue=STARTED)
    assert waiting_for(web, {"db": DependencyView(None, [])}) == (
        "waiting for db (service_healthy): no such service; waiting for queue (service_started): no such service"
    )


def test_every_unmet_dependency_is_named_in_name_order_and_met_ones_are_not() -> None:
    db, cache, auth = service("db", replicas=1), service("cache", replicas=1), service("auth", replicas=1)
    web = service("web", db=HEALTHY, cache=STARTED, auth=STARTED)
    message = gate(web, (db, [task(db, 1, pb.TASK_STATE_STARTING)]), (cache, []), (auth, [task(auth, 1)]))
    assert message == (
        "waiting for cache (service_started): 0 of 1 task started; "
        "waiting for db (service_healthy): 0 of 1 task healthy"
    )


def test_only_tasks_at_the_current_spec_count() -> None:
    db = service("db", replicas=2, revision=5, spec_revision=5)
    old = [task(db, 1, revision=4), task(db, 2, revision=4)]
    assert gate(service("web", db=HEALTHY), (db, old)) == "waiting for db (service_healthy): 0 of 2 tasks healthy"
    scaled = service("db", replicas=2, revision=6, spec_revision=5)
    assert gate(service("web", db=HEALTHY), (scaled, [task(scaled, 1, revision=5), task(scaled, 2)])) is None


def test_tasks_of_a_rollback_range_count_as_current() -> None:
    db = service("db", replicas=1, revision=9, spec_revision=9)
    db.also_current_from, db.also_current_to = 3, 4
    assert gate(service("web", db=HEALTHY), (db, [task(db, 1, revision=4)])) is None


def test_each_slot_counts_by_its_newest_task() -> None:
    db = service("db", replicas=1)
    stopping_old = task(db, 1, pb.TASK_STATE_RUNNING, generation=1, desired=pb.DESIRED_STATE_SHUTDOWN)
    starting_new = task(db, 1, pb.TASK_STATE_STARTING, generation=2)
    assert gate(service("web", db=HEALTHY), (db, [stopping_old, starting_new])) is not None
    failed_then_running = [task(db, 1, pb.TASK_STATE_FAILED, generation=1), task(db, 1, generation=2)]
    assert gate(service("web", db=HEALTHY), (db, failed_then_running)) is None
    waiting_restart = [
        task(db, 1, generation=1, desired=pb.DESIRED_STATE_SHUTDOWN),
        task(db, 1, pb.TASK_STATE_FAILED, 2),
    ]
    assert gate(service("web", db=STARTED), (db, waiting_restart)) is not None


def test_slots_beyond_replicas_and_other_services_tasks_are_ignored() -> None:
    db, other = service("db", replicas=1), service("other")
    tasks = [task(db, 1), task(db, 2, pb.TASK_STATE_FAILED), task(other, 1, pb.TASK_STATE_FAILED)]
    tasks[2].slot = 1
    tasks[2].generation = 7
    assert gate(service("web", db=HEALTHY), (db, tasks)) is None


def test_a_dependency_with_nothing_to_run_never_holds() -> None:
    db = service("db", replicas=0)
    assert gate(service("web", db=STARTED), (db, [])) == "waiting for db (service_started): it has no tasks to run"
    agent = service("agent", mode=pb.SERVICE_MODE_GLOBAL)
    assert gate(service("web", agent=STARTED), (agent, [])) is not None


def test_a_global_dependency_counts_the_nodes_it_runs_on() -> None:
    agent = service("agent", mode=pb.SERVICE_MODE_GLOBAL)
    on = [task(agent, 0, node="n1"), task(agent, 0, pb.TASK_STATE_STARTING, node="n2")]
    gone = task(agent, 0, pb.TASK_STATE_SHUTDOWN, desired=pb.DESIRED_STATE_SHUTDOWN, node="n3")
    web = service("web", agent=HEALTHY)
    assert gate(web, (agent, [*on, gone])) == "waiting for agent (service_healthy): 1 of 2 tasks healthy"
    on[1].status.state = pb.TASK_STATE_RUNNING
    assert gate(web, (agent, [*on, gone])) is None


def test_a_job_that_completed_has_started_and_was_healthy() -> None:
    migrate = service("migrate", replicas=1, mode=pb.SERVICE_MODE_JOB)
    done = [task(migrate, 1, pb.TASK_STATE_COMPLETE)]
    for condition in (STARTED, HEALTHY, COMPLETED):
        assert gate(service("web", migrate=condition), (migrate, done)) is None
    failed = [task(migrate, 1, pb.TASK_STATE_FAILED)]
    assert gate(service("web", migrate=COMPLETED), (migrate, failed)) == (
        "waiting for migrate (service_completed_successfully): 0 of 1 task completed"
    )


def test_a_replicated_service_that_exited_has_not_started() -> None:
    db = service("db", replicas=1)
    assert gate(service("web", db=STARTED), (db, [task(db, 1, pb.TASK_STATE_COMPLETE)])) is not None


def test_dependents_maps_each_dependency_to_who_waits_for_it() -> None:
    services = [
        service("web", db=HEALTHY, cache=STARTED),
        service("worker", db=STARTED),
        service("db"),
    ]
    assert dependents(services) == {"db": {"web", "worker"}, "cache": {"web"}}
    assert dependents([]) == {}


STATES = [s for s in pb.TaskState.values() if s]


@given(
    states=st.lists(st.sampled_from(STATES), max_size=4),
    replicas=st.integers(0, 4),
    condition=st.sampled_from([STARTED, HEALTHY, COMPLETED]),
)
def test_the_gate_holds_exactly_when_every_slot_is_there(
    states: list[int], replicas: int, condition: pb.Dependency.Condition.ValueType
) -> None:
    db = service("db", replicas=replicas)
    tasks = [task(db, slot, state) for slot, state in enumerate(states, 1)]
    wanted: set[int] = {pb.TASK_STATE_COMPLETE}
    if condition == STARTED:
        wanted = {pb.TASK_STATE_STARTING, pb.TASK_STATE_RUNNING}
    elif condition == HEALTHY:
        wanted = {pb.TASK_STATE_RUNNING}
    there = replicas > 0 and len(states) >= replicas and all(s in wanted for s in states[:replicas])
    message = gate(service("web", db=condition), (db, tasks))
    assert (message is None) is there
    assert message is None or message.startswith("waiting for db (service_")
