"""Whether an agent's status report may change a task: pure, so its rules are table-tested."""

from __future__ import annotations

from dataclasses import dataclass

from dockyard.task_state import can_move, state_name
from dockyard.v1 import types_pb2 as pb


@dataclass(frozen=True)
class StatusVerdict:
    """The task to write (None: nothing to write) and, for a refused report, why."""

    task: pb.Task | None
    refused: str = ""


def judge_status(task: pb.Task | None, node_id: str, status: pb.TaskStatus) -> StatusVerdict:
    """Applies one reported status to a task if the reporting node owns it and the state moves forward.

    `task` is None when the caller found no such task among the node's own (the dispatcher reads only
    those, so an unknown id and another node's task look the same to it).
    """
    if task is None:
        return StatusVerdict(None, "no such task on this node")
    if task.node_id != node_id:
        return StatusVerdict(None, f"task is assigned to node {task.node_id or '(none)'}, not {node_id}")
    if status.state < pb.TASK_STATE_ASSIGNED:
        return StatusVerdict(None, f"an agent cannot report state {state_name(status.state)}")
    if not can_move(task.status.state, status.state):
        return StatusVerdict(None)
    if _same(task.status, status):
        return StatusVerdict(None)
    changed = pb.Task()
    changed.CopyFrom(task)
    changed.status.CopyFrom(status)
    changed.updated_at.CopyFrom(status.timestamp)
    return StatusVerdict(changed)


def _same(a: pb.TaskStatus, b: pb.TaskStatus) -> bool:
    return (a.state, a.message, a.error, a.exit_code, a.container_id) == (
        b.state,
        b.message,
        b.error,
        b.exit_code,
        b.container_id,
    )
