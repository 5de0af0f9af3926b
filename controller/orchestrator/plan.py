"""The orchestrator's output: task writes (and a service write) to commit, and when to look again."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from dockyard.v1 import types_pb2 as pb


@dataclass
class Plan:
    """Tasks to create, changed copies of tasks to write, task records to forget, and the next wake-up.

    service, when set, is the service to write (its rollout status changed, or a rollback): commit it guarded
    by the version it was read at; a conflict means a newer write won, and the service is reconciled again.
    """

    create: list[pb.Task] = field(default_factory=list)
    changed: dict[str, pb.Task] = field(default_factory=dict)
    delete: list[pb.Task] = field(default_factory=list)
    wake_at: datetime | None = None
    service: pb.Service | None = None
    # Set when the pass judged the service's spread for a rebalance asked for (rebalance_generation).
    rebalanced: bool = False

    @property
    def update(self) -> list[pb.Task]:
        """The changed tasks, each once, in the order they were first changed."""
        return list(self.changed.values())

    def edit(self, task: pb.Task) -> pb.Task:
        """Returns the plan's working copy of a task, making one on first use; change that copy."""
        copy = self.changed.get(task.id)
        if copy is None:
            copy = pb.Task()
            copy.CopyFrom(task)
            self.changed[task.id] = copy
        return copy

    def current(self, task: pb.Task) -> pb.Task:
        """Returns the task as the plan will leave it (the working copy if there is one)."""
        return self.changed.get(task.id, task)

    def wake_no_later_than(self, when: datetime | None) -> None:
        """Moves the wake-up earlier to when, if when is set and sooner."""
        if when is not None and (self.wake_at is None or when < self.wake_at):
            self.wake_at = when

    def empty(self) -> bool:
        """Tells whether there is nothing to write."""
        return not (self.create or self.changed or self.delete or self.service is not None)
