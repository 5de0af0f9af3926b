"""Which tasks an agent is told about, and whether a change is worth telling."""

from __future__ import annotations

from dockyard.task_state import is_terminal
from dockyard.v1 import types_pb2 as pb

# What the agent acts on; a change to anything else (such as the status it reported itself) is not news.
# The revision stands for the spec: a task's spec never changes without its revision.
Fingerprint = tuple[int, int, int]


def belongs(task: pb.Task, node_id: str) -> bool:
    """Tells whether a task is in a node's assignment set: placed there and either wanted or still running."""
    return task.node_id == node_id and (
        task.desired_state == pb.DESIRED_STATE_RUNNING or not is_terminal(task.status.state)
    )


def fingerprint(task: pb.Task) -> Fingerprint:
    """Returns the parts of a task an agent acts on."""
    return (task.desired_state, task.revision, task.generation)
