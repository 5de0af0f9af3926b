"""The orchestrator's output: task writes to commit, and when to look again."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from dockyard.v1 import types_pb2 as pb


@dataclass
class Plan:
    """Tasks to create, changed copies of tasks to write, task records to forget, and the next wake-up."""

    create: list[pb.Task] = field(default_factory=list)
    update: list[pb.Task] = field(default_factory=list)
    delete: list[pb.Task] = field(default_factory=list)
    wake_at: datetime | None = None

    def wake_no_later_than(self, when: datetime | None) -> None:
        """Moves the wake-up earlier to when, if when is set and sooner."""
        if when is not None and (self.wake_at is None or when < self.wake_at):
            self.wake_at = when

    def empty(self) -> bool:
        """Tells whether there is nothing to write."""
        return not (self.create or self.update or self.delete)
