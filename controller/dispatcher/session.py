"""One agent's live session: the outgoing queue and what it has been told."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from controller.dispatcher.assignment import Fingerprint, belongs, fingerprint
from dockyard.v1 import agent_pb2 as apb
from dockyard.v1 import types_pb2 as pb


@dataclass
class AgentSession:
    """Tracks the tasks sent to one agent so that only real changes are sent again."""

    node_id: str
    session_id: str
    outbox: asyncio.Queue[apb.ControllerMessage] = field(default_factory=asyncio.Queue)
    sent: dict[str, Fingerprint] = field(default_factory=dict)
    sequence: int = 0
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    def send_full(self, tasks: list[pb.Task]) -> None:
        """Queues the complete assignment set; anything the agent has that is not in it goes."""
        chosen = [t for t in tasks if belongs(t, self.node_id)]
        self.sent = {t.id: fingerprint(t) for t in chosen}
        self._queue(apb.Assignments(kind=apb.Assignments.KIND_FULL, tasks=chosen))

    def on_task(self, task: pb.Task, deleted: bool) -> None:
        """Queues an incremental assignment when a change to this task matters to the agent."""
        if not deleted and belongs(task, self.node_id):
            print_ = fingerprint(task)
            if self.sent.get(task.id) == print_:
                return
            self.sent[task.id] = print_
            self._queue(apb.Assignments(kind=apb.Assignments.KIND_INCREMENTAL, tasks=[task]))
        elif self.sent.pop(task.id, None) is not None:
            self._queue(apb.Assignments(kind=apb.Assignments.KIND_INCREMENTAL, removed_task_ids=[task.id]))

    def _queue(self, assignments: apb.Assignments) -> None:
        self.sequence += 1
        assignments.sequence = self.sequence
        self.outbox.put_nowait(apb.ControllerMessage(assignments=assignments))
