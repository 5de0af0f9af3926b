"""Facts about tasks that the controller, the agent and the CLI share: their states and the spec they name."""

from __future__ import annotations

from typing import Final

from dockyard.v1 import types_pb2 as pb

TERMINAL_FROM = pb.TASK_STATE_COMPLETE

# Host faults (CAUSE_HOST) are retried at once, elsewhere when another node fits, and never count as a task's
# failure; a slot its hosts refused this many times in a row will not run (every node refuses it, e.g. an image
# no node can pull): the CLI reports it as unplaced, and a rollout counts it as one failure of the new spec.
HOST_FAULT_LIMIT: Final = 3

# A task names the spec it runs by (service id, revision); it never carries a copy in the store.
SpecKey = tuple[str, int]


# How a pending task's message begins when the scheduler found no node for it; the CLI tells "cannot be
# placed" from "waiting for something else" (a dependency) by it.
UNPLACED_PREFIX = "no suitable node"


def unplaced_message(reason: str) -> str:
    """Returns the status message of a task the scheduler could not place, for why."""
    return f"{UNPLACED_PREFIX}: {reason}"


def spec_key(task: pb.Task) -> SpecKey:
    """Returns the (service id, revision) whose spec the task runs."""
    return (task.service_id, task.revision)


def runs_current_spec(service: pb.Service, task: pb.Task) -> bool:
    """Tells whether a task runs the service's current spec: started at spec_revision or later (scaling moves
    the revision, not spec_revision), or inside the range a rollback returned to."""
    if task.revision >= service.spec_revision:
        return True
    return service.also_current_from <= task.revision <= service.also_current_to and service.also_current_to > 0


def is_terminal(state: int) -> bool:
    """Tells whether a task in this state will never run again."""
    return state >= TERMINAL_FROM


def can_move(current: int, new: int) -> bool:
    """Tells whether an observed state may replace another: states only move forward, terminal ones never."""
    if is_terminal(current):
        return False
    return new >= current


def state_name(state: int) -> str:
    """Returns the short lower-case name of a task state ("running")."""
    return pb.TaskState.Name(state).removeprefix("TASK_STATE_").lower()  # type: ignore[arg-type]


def desired_name(state: int) -> str:
    """Returns the short lower-case name of a desired state ("shutdown")."""
    return pb.DesiredState.Name(state).removeprefix("DESIRED_STATE_").lower()  # type: ignore[arg-type]
