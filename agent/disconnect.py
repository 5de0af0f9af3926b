"""The on_disconnect policy: which tasks to stop because the controller has been away too long."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from dockyard.task_state import is_terminal
from dockyard.timestamps import seconds
from dockyard.v1 import types_pb2 as pb


def overdue(
    tasks: Iterable[pb.Task], spec_of: Callable[[pb.Task], pb.ServiceSpec | None], disconnected_for: float
) -> list[pb.Task]:
    """Returns the wanted, unfinished tasks whose spec's stop_after is shorter than the time without a controller.

    A task whose spec is unknown has no policy to apply and keeps running.
    """
    chosen = []
    for task in tasks:
        spec = spec_of(task)
        limit = seconds(spec.on_disconnect.stop_after) if spec is not None else 0.0
        if (
            limit > 0
            and disconnected_for >= limit
            and task.desired_state == pb.DESIRED_STATE_RUNNING
            and not is_terminal(task.status.state)
        ):
            chosen.append(task)
    return chosen
