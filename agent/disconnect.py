"""The on_disconnect policy: which tasks to stop because the controller has been away too long."""

from __future__ import annotations

from collections.abc import Iterable

from dockyard.task_state import is_terminal
from dockyard.timestamps import seconds
from dockyard.v1 import types_pb2 as pb


def overdue(tasks: Iterable[pb.Task], disconnected_for: float) -> list[pb.Task]:
    """Returns the wanted, unfinished tasks whose stop_after is shorter than the time without a controller."""
    chosen = []
    for task in tasks:
        limit = seconds(task.spec.on_disconnect.stop_after)
        if (
            limit > 0
            and disconnected_for >= limit
            and task.desired_state == pb.DESIRED_STATE_RUNNING
            and not is_terminal(task.status.state)
        ):
            chosen.append(task)
    return chosen
