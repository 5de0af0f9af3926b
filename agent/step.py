"""The task step function: given a task and its container, the one operation to perform next.

Pure: the per-task loop calls it, performs the operation, reports the transition, and calls it again
until it answers NONE with nothing to report.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from agent.health import task_health
from agent.runtime.base import ContainerInfo, ContainerState, HealthStatus
from dockyard.task_state import is_terminal
from dockyard.v1 import types_pb2 as pb

_ALIVE = frozenset({ContainerState.RUNNING, ContainerState.RESTARTING, ContainerState.PAUSED})
WAITING_FOR_HEALTH = "waiting to be healthy"


class Op(enum.Enum):
    """One runtime operation."""

    NONE = "none"
    PREPARE = "prepare"  # make sure the image is present
    CREATE = "create"
    START = "start"
    STOP = "stop"
    REMOVE = "remove"


@dataclass(frozen=True)
class Step:
    """An operation and the state to report once it succeeds (None: report nothing)."""

    op: Op
    report: int | None = None
    message: str = ""
    error: str = ""
    exit_code: int = 0
    cause: int = pb.TaskStatus.CAUSE_UNSPECIFIED  # set on every FAILED and REJECTED report
    health: pb.TaskHealth | None = None  # the health to report with it (None: as the container shows)

    @property
    def idle(self) -> bool:
        """Tells whether there is nothing to do or report."""
        return self.op is Op.NONE and self.report is None


def next_step(task: pb.Task, container: ContainerInfo | None, *, host_fault: bool = False) -> Step:
    """Returns what to do next for a task (its status is the agent's own view) and its container, if any.

    `container.health` is the task's health as known now (Docker's check, or the agent's probe); a running
    container with a check counts as RUNNING only once healthy, and is stopped and FAILED once unhealthy.
    `host_fault` says the container ended while Docker was down or restarting: the host's fault.
    """
    state = task.status.state
    if task.desired_state != pb.DESIRED_STATE_RUNNING:
        return _shutdown_step(state, container)
    if is_terminal(state):
        # A stopped task is never revived; the controller replaces it with a new one.
        return Step(Op.NONE)
    if container is None:
        if state <= pb.TASK_STATE_ASSIGNED:
            return Step(Op.PREPARE, pb.TASK_STATE_PREPARING, "image ready")
        if state == pb.TASK_STATE_PREPARING:
            return Step(Op.CREATE, pb.TASK_STATE_STARTING, "container created")
        # Someone on the host (or a wiped Docker) took it: not the task's doing.
        return Step(
            Op.NONE,
            pb.TASK_STATE_FAILED,
            error="container was removed outside of Dockyard",
            cause=pb.TaskStatus.CAUSE_HOST,
        )
    if container.state is ContainerState.CREATED:
        return Step(Op.START, pb.TASK_STATE_RUNNING, "started")
    if container.state is ContainerState.RUNNING:
        if container.health is not None:
            return _health_step(task, container)
        if state != pb.TASK_STATE_RUNNING:
            return Step(Op.NONE, pb.TASK_STATE_RUNNING, "running")
        return Step(Op.NONE)
    if container.state in (ContainerState.EXITED, ContainerState.DEAD):
        return _exit_step(container, host_fault)
    return Step(Op.NONE)


def start_report_stands(step: Step, container: ContainerInfo | None) -> bool:
    """Tells whether a step's report still holds once its operation ran, given the container as it is now.

    A start reports RUNNING; but a container that turned out to have a health check and is not yet healthy
    reports nothing here: the next step says STARTING, RUNNING or why it ended.
    """
    if step.op is not Op.START or container is None:
        return True
    return container.health is None or container.health.status is HealthStatus.HEALTHY


def _health_step(task: pb.Task, container: ContainerInfo) -> Step:
    """The step of a running container that has a health check."""
    assert container.health is not None
    state = task.status.state
    health = task_health(container.health)
    reported = task.status.health if task.status.HasField("health") else None
    moved = reported is None or (reported.state, reported.failing_streak) != (health.state, health.failing_streak)
    if container.health.status is HealthStatus.UNHEALTHY:
        output = container.health.output.strip() or "no output"
        return Step(
            Op.STOP,
            pb.TASK_STATE_FAILED,
            error=f"health check failed: {output}",
            cause=pb.TaskStatus.CAUSE_UNHEALTHY,
            health=health,
        )
    if container.health.status is HealthStatus.HEALTHY:
        if state != pb.TASK_STATE_RUNNING:
            return Step(Op.NONE, pb.TASK_STATE_RUNNING, "healthy", health=health)
        if moved:
            return Step(Op.NONE, pb.TASK_STATE_RUNNING, task.status.message, health=health)
        return Step(Op.NONE)
    if state == pb.TASK_STATE_RUNNING:
        # States only move forward: a running task whose check starts over (Docker restarting the
        # container's monitor) stays RUNNING; only new failures are news.
        if reported is not None and health.failing_streak != reported.failing_streak:
            return Step(Op.NONE, pb.TASK_STATE_RUNNING, task.status.message, health=health)
        return Step(Op.NONE)
    if state != pb.TASK_STATE_STARTING or task.status.message != WAITING_FOR_HEALTH or moved:
        return Step(Op.NONE, pb.TASK_STATE_STARTING, WAITING_FOR_HEALTH, health=health)
    return Step(Op.NONE)


def _shutdown_step(state: int, container: ContainerInfo | None) -> Step:
    if container is not None and container.state in _ALIVE:
        return Step(Op.STOP)
    report = None if is_terminal(state) else pb.TASK_STATE_SHUTDOWN
    if container is not None:
        return Step(Op.REMOVE, report, "stopped and removed")
    return Step(Op.NONE, report, "stopped")


def _exit_step(container: ContainerInfo, host_fault: bool) -> Step:
    if host_fault:
        # Docker stopping or restarting ends every container, whatever code they then exit with.
        error = f"stopped by Docker going down or restarting (exit code {container.exit_code})"
        return Step(
            Op.NONE, pb.TASK_STATE_FAILED, error=error, exit_code=container.exit_code, cause=pb.TaskStatus.CAUSE_HOST
        )
    if container.exit_code == 0 and not container.oom_killed:
        return Step(Op.NONE, pb.TASK_STATE_COMPLETE, "exited with code 0", exit_code=0)
    if container.oom_killed:
        error = f"killed for running out of memory (exit code {container.exit_code})"
    elif container.error:
        error = f"{container.error} (exit code {container.exit_code})"
    else:
        error = f"exited with code {container.exit_code}"
    return Step(
        Op.NONE, pb.TASK_STATE_FAILED, error=error, exit_code=container.exit_code, cause=pb.TaskStatus.CAUSE_TASK
    )
