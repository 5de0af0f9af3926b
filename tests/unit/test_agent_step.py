"""The agent's pure step function: table tests over desired state x task state x container."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from agent.runtime.base import ContainerInfo, ContainerState, Health, HealthStatus
from agent.step import WAITING_FOR_HEALTH, Op, Step, next_step, start_report_stands
from dockyard.limits import HEALTH_OUTPUT_BYTES
from dockyard.task_state import is_terminal
from dockyard.v1 import types_pb2 as pb

RUNNING = pb.DESIRED_STATE_RUNNING
SHUTDOWN = pb.DESIRED_STATE_SHUTDOWN
TASK = pb.TaskStatus.CAUSE_TASK
HOST = pb.TaskStatus.CAUSE_HOST

ALL_STATES: list[pb.TaskState.ValueType] = list(pb.TaskState.values())
TERMINAL_STATES = [s for s in ALL_STATES if is_terminal(s)]
LIVE_STATES = [s for s in ALL_STATES if not is_terminal(s)]
ALIVE_CONTAINERS = [ContainerState.RUNNING, ContainerState.RESTARTING, ContainerState.PAUSED]
STOPPED_CONTAINERS = [ContainerState.CREATED, ContainerState.EXITED, ContainerState.DEAD, ContainerState.REMOVING]

REMOVED_OUTSIDE = "container was removed outside of Dockyard"
EXEC_ERROR = 'exec: "/nonexistent/app": stat /nonexistent/app: no such file or directory'


def make_task(
    state: pb.TaskState.ValueType,
    desired: pb.DesiredState.ValueType = RUNNING,
) -> pb.Task:
    task = pb.Task(id="t1", service_name="web", slot=1, node_id="n1", desired_state=desired)
    task.spec.image = "dockyard-test:latest"
    task.status.state = state
    return task


def make_container(
    state: ContainerState,
    exit_code: int = 0,
    error: str = "",
    oom_killed: bool = False,
) -> ContainerInfo:
    return ContainerInfo(
        id="c" * 64,
        name="web.1.t1",
        image="dockyard-test:latest",
        labels={"dockyard.task.id": "t1"},
        state=state,
        exit_code=exit_code,
        error=error,
        oom_killed=oom_killed,
    )


def every_container() -> list[ContainerInfo | None]:
    """No container, one of each state, and the exit variants that matter."""
    containers: list[ContainerInfo | None] = [None]
    containers += [make_container(state) for state in ContainerState]
    containers += [
        make_container(ContainerState.EXITED, exit_code=3),
        make_container(ContainerState.EXITED, exit_code=137, oom_killed=True),
        make_container(ContainerState.CREATED, exit_code=127, error=EXEC_ERROR),
        make_container(ContainerState.DEAD, exit_code=1, error="driver failed"),
    ]
    return containers


def state_id(state: int) -> str:
    return pb.TaskState.Name(state).removeprefix("TASK_STATE_").lower()  # type: ignore[arg-type]


# --- desired running ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "container", "expected"),
    [
        # No container yet: prepare the image, then create.
        (pb.TASK_STATE_ASSIGNED, None, Step(Op.PREPARE, pb.TASK_STATE_PREPARING, "image ready")),
        (pb.TASK_STATE_PREPARING, None, Step(Op.CREATE, pb.TASK_STATE_STARTING, "container created")),
        # A container that should exist is gone: the task failed, nothing is recreated.
        (pb.TASK_STATE_STARTING, None, Step(Op.NONE, pb.TASK_STATE_FAILED, error=REMOVED_OUTSIDE, cause=HOST)),
        (pb.TASK_STATE_RUNNING, None, Step(Op.NONE, pb.TASK_STATE_FAILED, error=REMOVED_OUTSIDE, cause=HOST)),
        # Created: start it.
        (
            pb.TASK_STATE_STARTING,
            make_container(ContainerState.CREATED),
            Step(Op.START, pb.TASK_STATE_RUNNING, "started"),
        ),
        # Running: report it once, then nothing.
        (
            pb.TASK_STATE_STARTING,
            make_container(ContainerState.RUNNING),
            Step(Op.NONE, pb.TASK_STATE_RUNNING, "running"),
        ),
        (pb.TASK_STATE_RUNNING, make_container(ContainerState.RUNNING), Step(Op.NONE)),
        # Exited by itself.
        (
            pb.TASK_STATE_RUNNING,
            make_container(ContainerState.EXITED, exit_code=0),
            Step(Op.NONE, pb.TASK_STATE_COMPLETE, "exited with code 0", exit_code=0),
        ),
        (
            pb.TASK_STATE_RUNNING,
            make_container(ContainerState.EXITED, exit_code=3),
            Step(Op.NONE, pb.TASK_STATE_FAILED, error="exited with code 3", exit_code=3, cause=TASK),
        ),
        (
            pb.TASK_STATE_RUNNING,
            make_container(ContainerState.DEAD, exit_code=2),
            Step(Op.NONE, pb.TASK_STATE_FAILED, error="exited with code 2", exit_code=2, cause=TASK),
        ),
        # Out of memory, whatever the exit code.
        (
            pb.TASK_STATE_RUNNING,
            make_container(ContainerState.EXITED, exit_code=137, oom_killed=True),
            Step(
                Op.NONE,
                pb.TASK_STATE_FAILED,
                error="killed for running out of memory (exit code 137)",
                exit_code=137,
                cause=TASK,
            ),
        ),
        (
            pb.TASK_STATE_RUNNING,
            make_container(ContainerState.EXITED, exit_code=0, oom_killed=True),
            Step(
                Op.NONE,
                pb.TASK_STATE_FAILED,
                error="killed for running out of memory (exit code 0)",
                exit_code=0,
                cause=TASK,
            ),
        ),
        # Docker's own error text is kept.
        (
            pb.TASK_STATE_STARTING,
            make_container(ContainerState.EXITED, exit_code=127, error=EXEC_ERROR),
            Step(Op.NONE, pb.TASK_STATE_FAILED, error=f"{EXEC_ERROR} (exit code 127)", exit_code=127, cause=TASK),
        ),
        # Paused, restarting or being removed: wait and see.
        (pb.TASK_STATE_RUNNING, make_container(ContainerState.PAUSED), Step(Op.NONE)),
        (pb.TASK_STATE_RUNNING, make_container(ContainerState.RESTARTING), Step(Op.NONE)),
        (pb.TASK_STATE_RUNNING, make_container(ContainerState.REMOVING), Step(Op.NONE)),
    ],
    ids=lambda value: repr(value.state) if isinstance(value, ContainerInfo) else None,
)
def test_desired_running(state: pb.TaskState.ValueType, container: ContainerInfo | None, expected: Step) -> None:
    assert next_step(make_task(state), container) == expected


@pytest.mark.parametrize(
    "state",
    [pb.TASK_STATE_UNSPECIFIED, pb.TASK_STATE_NEW, pb.TASK_STATE_PENDING, pb.TASK_STATE_ASSIGNED],
    ids=state_id,
)
def test_every_state_up_to_assigned_prepares_first(state: pb.TaskState.ValueType) -> None:
    assert next_step(make_task(state), None) == Step(Op.PREPARE, pb.TASK_STATE_PREPARING, "image ready")


@pytest.mark.parametrize("state", [pb.TASK_STATE_ASSIGNED, pb.TASK_STATE_PREPARING], ids=state_id)
def test_an_adopted_running_container_is_reported_running(state: pb.TaskState.ValueType) -> None:
    step = next_step(make_task(state), make_container(ContainerState.RUNNING))
    assert step == Step(Op.NONE, pb.TASK_STATE_RUNNING, "running")


@pytest.mark.parametrize("state", [pb.TASK_STATE_ASSIGNED, pb.TASK_STATE_PREPARING], ids=state_id)
def test_an_adopted_created_container_is_started(state: pb.TaskState.ValueType) -> None:
    step = next_step(make_task(state), make_container(ContainerState.CREATED))
    assert step == Step(Op.START, pb.TASK_STATE_RUNNING, "started")


@pytest.mark.parametrize("state", TERMINAL_STATES, ids=state_id)
def test_a_terminal_task_is_never_revived(state: pb.TaskState.ValueType) -> None:
    for container in every_container():
        step = next_step(make_task(state), container)
        assert step == Step(Op.NONE), container
        assert step.idle


def test_desired_running_never_reports_a_state_below_the_current_one() -> None:
    for state, container in itertools.product(LIVE_STATES, every_container()):
        step = next_step(make_task(state), container)
        case = (state_id(state), container)
        if step.report is not None:
            assert step.report >= pb.TASK_STATE_PREPARING, case
            assert step.report >= state, case
        # Nothing but a create makes a container, and only when there is none.
        assert (step.op is Op.CREATE) == (container is None and state == pb.TASK_STATE_PREPARING), case
        assert step.op not in (Op.STOP, Op.REMOVE), case


# --- desired shutdown -----------------------------------------------------------------------------------


@pytest.mark.parametrize("container_state", ALIVE_CONTAINERS, ids=str)
def test_shutdown_stops_an_alive_container_first_without_reporting(container_state: ContainerState) -> None:
    for state in ALL_STATES:
        step = next_step(make_task(state, SHUTDOWN), make_container(container_state))
        assert step == Step(Op.STOP), state_id(state)


@pytest.mark.parametrize("container_state", STOPPED_CONTAINERS, ids=str)
def test_shutdown_removes_a_stopped_container_and_reports_shutdown(container_state: ContainerState) -> None:
    for state in LIVE_STATES:
        step = next_step(make_task(state, SHUTDOWN), make_container(container_state, exit_code=143))
        assert step == Step(Op.REMOVE, pb.TASK_STATE_SHUTDOWN, "stopped and removed"), state_id(state)


@pytest.mark.parametrize("container_state", STOPPED_CONTAINERS, ids=str)
def test_shutdown_of_a_terminal_task_removes_its_container_but_keeps_its_state(container_state: ContainerState) -> None:
    for state in TERMINAL_STATES:
        step = next_step(make_task(state, SHUTDOWN), make_container(container_state, exit_code=3))
        assert step.op is Op.REMOVE, state_id(state)
        assert step.report is None, state_id(state)


@pytest.mark.parametrize("state", LIVE_STATES, ids=state_id)
def test_shutdown_without_a_container_reports_shutdown(state: pb.TaskState.ValueType) -> None:
    assert next_step(make_task(state, SHUTDOWN), None) == Step(Op.NONE, pb.TASK_STATE_SHUTDOWN, "stopped")


@pytest.mark.parametrize("state", TERMINAL_STATES, ids=state_id)
def test_shutdown_of_a_terminal_task_without_a_container_is_idle(state: pb.TaskState.ValueType) -> None:
    step = next_step(make_task(state, SHUTDOWN), None)
    assert step.op is Op.NONE
    assert step.report is None
    assert step.idle


def test_an_unspecified_desired_state_is_treated_as_shutdown() -> None:
    for state, container in itertools.product(ALL_STATES, every_container()):
        unspecified = make_task(state, pb.DESIRED_STATE_UNSPECIFIED)
        shutdown = make_task(state, SHUTDOWN)
        assert next_step(unspecified, container) == next_step(shutdown, container), (state_id(state), container)


def test_shutdown_only_ever_stops_removes_or_reports_shutdown() -> None:
    for state, container in itertools.product(ALL_STATES, every_container()):
        step = next_step(make_task(state, SHUTDOWN), container)
        case = (state_id(state), container)
        assert step.op in (Op.NONE, Op.STOP, Op.REMOVE), case
        assert step.report in (None, pb.TASK_STATE_SHUTDOWN), case
        if is_terminal(state):
            assert step.report is None, case


# --- Step -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("step", "idle"),
    [
        (Step(Op.NONE), True),
        (Step(Op.NONE, message="stopped"), True),
        (Step(Op.NONE, pb.TASK_STATE_RUNNING), False),
        (Step(Op.STOP), False),
        (Step(Op.REMOVE, None), False),
    ],
)
def test_idle_means_no_operation_and_no_report(step: Step, idle: bool) -> None:
    assert step.idle is idle


def test_next_step_does_not_modify_the_task() -> None:
    task = make_task(pb.TASK_STATE_RUNNING)
    before = task.SerializeToString()
    next_step(task, make_container(ContainerState.EXITED, exit_code=1))
    next_step(task, None)
    assert task.SerializeToString() == before


# --- health ---------------------------------------------------------------------------------------------

STARTING_H = Health(HealthStatus.STARTING)
HEALTHY_H = Health(HealthStatus.HEALTHY, 0, "ok\n")
UNHEALTHY_H = Health(HealthStatus.UNHEALTHY, 3, "connection refused\n")


def running_with(health: Health | None) -> ContainerInfo:
    return replace(make_container(ContainerState.RUNNING), health=health)


def reported(state: pb.TaskState.ValueType, health: pb.TaskHealth | None = None, message: str = "") -> pb.Task:
    """A task as the agent last reported it, health included."""
    task = make_task(state)
    task.status.message = message
    if health is not None:
        task.status.health.CopyFrom(health)
    return task


def test_a_running_container_that_is_not_yet_healthy_is_starting_waiting_to_be_healthy() -> None:
    step = next_step(make_task(pb.TASK_STATE_STARTING), running_with(STARTING_H))
    assert step.op is Op.NONE
    assert (step.report, step.message) == (pb.TASK_STATE_STARTING, WAITING_FOR_HEALTH)
    assert step.health == pb.TaskHealth(state=pb.TaskHealth.STATE_STARTING)


def test_starting_is_reported_once_then_again_only_when_the_streak_moves() -> None:
    starting = pb.TaskHealth(state=pb.TaskHealth.STATE_STARTING)
    task = reported(pb.TASK_STATE_STARTING, starting, WAITING_FOR_HEALTH)
    assert next_step(task, running_with(STARTING_H)) == Step(Op.NONE)
    # A new output alone is no news: not every probe is reported.
    assert next_step(task, running_with(Health(HealthStatus.STARTING, 0, "other"))) == Step(Op.NONE)
    step = next_step(task, running_with(Health(HealthStatus.STARTING, 1, "refused")))
    assert (step.report, step.message) == (pb.TASK_STATE_STARTING, WAITING_FOR_HEALTH)
    assert step.health is not None and step.health.failing_streak == 1


def test_healthy_makes_the_task_running() -> None:
    step = next_step(make_task(pb.TASK_STATE_STARTING), running_with(HEALTHY_H))
    assert step == Step(
        Op.NONE,
        pb.TASK_STATE_RUNNING,
        "healthy",
        health=pb.TaskHealth(state=pb.TaskHealth.STATE_HEALTHY, output="ok\n"),
    )


def test_a_running_task_reports_health_changes_in_the_same_state() -> None:
    healthy = pb.TaskHealth(state=pb.TaskHealth.STATE_HEALTHY)
    task = reported(pb.TASK_STATE_RUNNING, healthy, "healthy")
    assert next_step(task, running_with(HEALTHY_H)) == Step(Op.NONE)
    step = next_step(task, running_with(Health(HealthStatus.HEALTHY, 1, "timed out")))
    assert (step.op, step.report, step.message) == (Op.NONE, pb.TASK_STATE_RUNNING, "healthy")
    assert step.health == pb.TaskHealth(state=pb.TaskHealth.STATE_HEALTHY, output="timed out", failing_streak=1)


def test_a_running_task_never_goes_back_to_starting() -> None:
    healthy = pb.TaskHealth(state=pb.TaskHealth.STATE_HEALTHY)
    task = reported(pb.TASK_STATE_RUNNING, healthy, "healthy")
    assert next_step(task, running_with(STARTING_H)) == Step(Op.NONE)
    step = next_step(task, running_with(Health(HealthStatus.STARTING, 2, "refused")))
    assert step.report == pb.TASK_STATE_RUNNING


@pytest.mark.parametrize("state", [pb.TASK_STATE_STARTING, pb.TASK_STATE_RUNNING], ids=state_id)
def test_unhealthy_stops_the_container_and_fails_the_task(state: pb.TaskState.ValueType) -> None:
    step = next_step(make_task(state), running_with(UNHEALTHY_H))
    assert step.op is Op.STOP
    assert step.report == pb.TASK_STATE_FAILED
    assert step.error == "health check failed: connection refused"
    assert step.cause == pb.TaskStatus.CAUSE_UNHEALTHY
    assert step.health == pb.TaskHealth(
        state=pb.TaskHealth.STATE_UNHEALTHY, output="connection refused\n", failing_streak=3
    )


def test_reported_output_is_cut_to_the_limit() -> None:
    long = Health(HealthStatus.UNHEALTHY, 3, "é" * HEALTH_OUTPUT_BYTES)
    step = next_step(make_task(pb.TASK_STATE_RUNNING), running_with(long))
    assert step.health is not None
    assert len(step.health.output.encode()) <= HEALTH_OUTPUT_BYTES
    assert step.health.output == "é" * (HEALTH_OUTPUT_BYTES // 2)


def test_a_task_without_a_check_runs_as_soon_as_its_container_does() -> None:
    step = next_step(make_task(pb.TASK_STATE_STARTING), running_with(None))
    assert step == Step(Op.NONE, pb.TASK_STATE_RUNNING, "running")
    assert step.health is None


def test_a_start_reports_running_only_without_a_check_or_once_healthy() -> None:
    start = Step(Op.START, pb.TASK_STATE_RUNNING, "started")
    assert start_report_stands(start, running_with(None))
    assert start_report_stands(start, running_with(HEALTHY_H))
    assert not start_report_stands(start, running_with(STARTING_H))
    exited_while_starting = replace(make_container(ContainerState.EXITED, exit_code=1), health=STARTING_H)
    assert not start_report_stands(start, exited_while_starting)
    assert start_report_stands(Step(Op.NONE, pb.TASK_STATE_RUNNING), running_with(STARTING_H))


def test_an_exit_while_docker_was_away_is_the_hosts_fault() -> None:
    exited = make_container(ContainerState.EXITED, exit_code=143)
    step = next_step(make_task(pb.TASK_STATE_RUNNING), exited, host_fault=True)
    assert (step.report, step.cause, step.exit_code) == (pb.TASK_STATE_FAILED, pb.TaskStatus.CAUSE_HOST, 143)
    assert "Docker" in step.error
    own = next_step(make_task(pb.TASK_STATE_RUNNING), exited)
    assert own.cause == pb.TaskStatus.CAUSE_TASK


def test_every_failure_names_its_cause() -> None:
    healths: list[Health | None] = [None, STARTING_H, HEALTHY_H, UNHEALTHY_H]
    for state, container, health, host in itertools.product(LIVE_STATES, every_container(), healths, [False, True]):
        checked = replace(container, health=health) if container is not None else None
        step = next_step(make_task(state), checked, host_fault=host)
        if step.report in (pb.TASK_STATE_FAILED, pb.TASK_STATE_REJECTED):
            assert step.cause != pb.TaskStatus.CAUSE_UNSPECIFIED, (state_id(state), checked)
        else:
            assert step.cause == pb.TaskStatus.CAUSE_UNSPECIFIED
