"""Whether an agent's status report may change a task: pure, so its rules are table-tested.

An agent is trusted with its own tasks' observed state and nothing more: it may report only on tasks placed on
its node, only the states an agent observes, and only forward; the time of a change is the controller's (when
the report arrived), never the agent's, so no clock or forged stamp of an agent reaches the store.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from dockyard.task_state import can_move, state_name
from dockyard.timestamps import to_timestamp
from dockyard.v1 import types_pb2 as pb

# The states an agent observes on its host. Below ASSIGNED is the controller's placement; LOST (its node is
# gone, replace it whatever the restart policy says) and ORPHANED are the controller's verdicts on a node, and
# a value outside the enum means nothing. An agent reporting any of these is refused.
AGENT_STATES = frozenset(range(pb.TASK_STATE_ASSIGNED, pb.TASK_STATE_REJECTED + 1))


@dataclass(frozen=True)
class StatusVerdict:
    """The task to write (None: nothing to write) and, for a refused report, why.

    forged is set when the task exists but is not the reporting node's: no honest agent sends that (a task
    never moves between nodes), so the caller ends the session rather than only dropping the report.
    """

    task: pb.Task | None
    refused: str = ""
    forged: bool = False


def judge_status(task: pb.Task | None, node_id: str, status: pb.TaskStatus, arrived: datetime) -> StatusVerdict:
    """Applies one reported status to the stored task if the reporting node owns it and the state moves forward.

    `task` is the stored task with the reported id, whichever node it is on (None: there is none, a task
    deleted while the report was on its way, refused quietly). The written status is stamped `arrived`, the
    controller's time of the report; the agent's own timestamp is ignored.
    """
    if task is None:
        return StatusVerdict(None, "no such task")
    if task.node_id != node_id:
        return StatusVerdict(None, f"task is assigned to node {task.node_id or '(none)'}, not {node_id}", forged=True)
    if status.state not in AGENT_STATES:
        return StatusVerdict(None, f"an agent cannot report state {_state_text(status.state)}")
    if not can_move(task.status.state, status.state):
        return StatusVerdict(None)
    if _same(task.status, status):
        return StatusVerdict(None)
    stamp = to_timestamp(arrived)
    changed = pb.Task()
    changed.CopyFrom(task)
    changed.status.CopyFrom(status)
    # The stamp says when the task entered its state: news within a state (health) keeps it, so a rollout's
    # monitor and a restart delay count from the transition, not from the latest probe.
    same_state = task.status.state == status.state and task.status.HasField("timestamp")
    changed.status.timestamp.CopyFrom(task.status.timestamp if same_state else stamp)
    changed.updated_at.CopyFrom(stamp)
    return StatusVerdict(changed)


def _state_text(state: int) -> str:
    """Names a state for a refusal; a number outside the enum (an agent can send any) is shown as a number."""
    return state_name(state) if state in pb.TaskState.values() else f"{state} (not a task state)"


def _same(a: pb.TaskStatus, b: pb.TaskStatus) -> bool:
    return (
        (a.state, a.message, a.error, a.exit_code, a.container_id, a.cause)
        == (
            b.state,
            b.message,
            b.error,
            b.exit_code,
            b.container_id,
            b.cause,
        )
        and a.health == b.health
        and a.addresses == b.addresses
    )  # addresses: service discovery's news
