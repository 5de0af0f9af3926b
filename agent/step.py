"""The task step function: given a task and its container, the one operation to perform next.

Pure: the per-task loop calls it, performs the operation, reports the transition, and calls it again
until it answers NONE with nothing to report.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from agent.runtime.base import ContainerInfo, ContainerState
from dockyard.task_state import is_terminal
from dockyard.v1 import types_pb2 as pb

_ALIVE = frozenset({ContainerState.RUNNING, ContainerState.RESTARTING, ContainerState.PAUSED})


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

    @property
    def idle(self) -> bool:
        """Tells whether there is nothing to do or report."""
        return self.op is Op.NONE and self.report is None


def next_step(task: pb.Task, container: ContainerInfo | None) -> Step:
    """Returns what to do next for a task (its status is the agent's own view) and its container, if any."""
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
        return Step(Op.NONE, pb.TASK_STATE_FAILED, error="container was removed outside of Dockyard")
    if container.state is ContainerState.CREATED:
        return Step(Op.START, pb.TASK_STATE_RUNNING, "started")
    if container.state is ContainerState.RUNNING:
        if state != pb.TASK_STATE_RUNNING:
            return Step(Op.NONE, pb.TASK_STATE_RUNNING, "running")
        return Step(Op.NONE)
    if container.state in (ContainerState.EXITED, ContainerState.DEAD):
        return _exit_step(container)
    return Step(Op.NONE)


def _shutdown_step(state: int, container: ContainerInfo | None) -> Step:
    if container is not None and container.state in _ALIVE:
        return Step(Op.STOP)
    report = None if is_terminal(state) else pb.TASK_STATE_SHUTDOWN
    if container is not None:
        return Step(Op.REMOVE, report, "stopped and removed")
    return Step(Op.NONE, report, "stopped")


def _exit_step(container: ContainerInfo) -> Step:
    if container.exit_code == 0 and not container.oom_killed:
        return Step(Op.NONE, pb.TASK_STATE_COMPLETE, "exited with code 0", exit_code=0)
    if container.oom_killed:
        error = f"killed for running out of memory (exit code {container.exit_code})"
    elif container.error:
        error = f"{container.error} (exit code {container.exit_code})"
    else:
        error = f"exited with code {container.exit_code}"
    return Step(Op.NONE, pb.TASK_STATE_FAILED, error=error, exit_code=container.exit_code)
