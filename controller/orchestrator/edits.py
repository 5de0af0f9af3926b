"""The task writes the orchestrator makes: new tasks, shutdowns, lost and never-placed tasks."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from controller.orchestrator.plan import Plan
from dockyard.task_state import is_terminal
from dockyard.timestamps import to_timestamp
from dockyard.v1 import types_pb2 as pb


def new_task(service: pb.Service, slot: int, node_id: str, generation: int, now: datetime, task_id: str) -> pb.Task:
    """Builds a pending task at the service's current revision; node_id pins it (global services).

    The task names its spec by (service id, revision) and carries no copy of it: the store keeps each
    revision's spec once, and the dispatcher sends it to agents once per revision.
    """
    task = pb.Task(
        id=task_id,
        service_id=service.id,
        service_name=service.name,
        slot=slot,
        node_id=node_id,
        revision=service.revision,
        desired_state=pb.DESIRED_STATE_RUNNING,
        generation=generation,
    )
    task.status.state = pb.TASK_STATE_PENDING
    task.status.message = _waiting(node_id)
    stamp = to_timestamp(now)
    task.status.timestamp.CopyFrom(stamp)
    task.created_at.CopyFrom(stamp)
    task.updated_at.CopyFrom(stamp)
    return task


def _waiting(node_id: str) -> str:
    return "waiting for a node" if not node_id else "waiting to be admitted to its node"


def hold(task: pb.Task, why: str) -> None:
    """Holds a new task back from the scheduler (state NEW) for `why`, e.g. a dependency that does not hold."""
    task.status.state = pb.TASK_STATE_NEW
    task.status.message = why


def keep_held(task: pb.Task, why: str, now: datetime, plan: Plan) -> None:
    """Keeps a held task held, saying why now (a dependency's count moved): written only when it changed."""
    if task.status.message != why:
        changed = plan.edit(task)
        changed.status.message = why
        changed.updated_at.CopyFrom(to_timestamp(now))


def release(task: pb.Task, now: datetime, plan: Plan) -> None:
    """Hands a held task to the scheduler: PENDING, as a new one is made."""
    changed = plan.edit(task)
    changed.status.state = pb.TASK_STATE_PENDING
    changed.status.message = _waiting(changed.node_id)
    changed.status.timestamp.CopyFrom(to_timestamp(now))
    changed.updated_at.CopyFrom(to_timestamp(now))


def next_generation(group: Iterable[pb.Task]) -> int:
    """Returns the fencing generation for a new task of a slot: one above every earlier one."""
    return 1 + max((t.generation for t in group), default=0)


def shut_down(task: pb.Task, now: datetime, why: str, plan: Plan) -> None:
    """Sets a task's desired state to shutdown; a never-placed task is settled at once."""
    changed = plan.edit(task)
    changed.desired_state = pb.DESIRED_STATE_SHUTDOWN
    changed.updated_at.CopyFrom(to_timestamp(now))
    if is_terminal(changed.status.state):
        return
    if changed.status.state < pb.TASK_STATE_ASSIGNED:
        _settle(changed, now, f"stopped before it was placed: {why}")
    else:
        changed.status.message = f"shutting down: {why}"


def mark_lost(task: pb.Task, now: datetime, node_name: str, plan: Plan) -> None:
    """Records that a task's node is gone: the task is lost (terminal) and may be replaced elsewhere."""
    changed = plan.edit(task)
    changed.status.state = pb.TASK_STATE_LOST
    changed.status.message = f"node {node_name} is down or removed"
    changed.status.timestamp.CopyFrom(to_timestamp(now))
    changed.updated_at.CopyFrom(to_timestamp(now))


def settle_unplaced(task: pb.Task, now: datetime, plan: Plan) -> None:
    """Marks a never-placed task that should stop as shut down: no agent will ever report on it."""
    current = plan.current(task)
    if current.desired_state == pb.DESIRED_STATE_RUNNING or is_terminal(current.status.state):
        return
    if current.status.state >= pb.TASK_STATE_ASSIGNED:
        return
    _settle(plan.edit(task), now, "stopped before it was placed")


def _settle(task: pb.Task, now: datetime, message: str) -> None:
    task.status.state = pb.TASK_STATE_SHUTDOWN
    task.status.message = message
    task.status.timestamp.CopyFrom(to_timestamp(now))
