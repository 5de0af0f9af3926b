"""One agent's live session: the outgoing queue and what it has been told."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field

import structlog

from controller.dispatcher.assignment import Fingerprint, belongs, fingerprint
from controller.store.specs import SpecKey
from dockyard.limits import AGENT_MESSAGE_BYTES
from dockyard.task_state import spec_key
from dockyard.v1 import agent_pb2 as apb
from dockyard.v1 import types_pb2 as pb

log = structlog.get_logger()


@dataclass
class AgentSession:
    """Tracks the tasks and specs sent to one agent so that only real changes are sent again."""

    node_id: str
    session_id: str
    outbox: asyncio.Queue[apb.ControllerMessage] = field(default_factory=asyncio.Queue)
    sent: dict[str, Fingerprint] = field(default_factory=dict)
    # The (service, revision) specs this session already carried: an agent keeps them for the session.
    sent_specs: set[SpecKey] = field(default_factory=set)
    sequence: int = 0
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    # Task changes (store revision, task, deleted) held back while the full set is read; None otherwise.
    # A new session starts holding: it is registered before its snapshot is read.
    backlog: list[tuple[int, pb.Task, bool]] | None = field(default_factory=list)

    def send_full(self, tasks: list[pb.Task], specs: Mapping[SpecKey, pb.ServiceSpec]) -> None:
        """Queues the complete assignment set with the spec of every revision in it, once each.

        Anything the agent has that is not in the set goes. `specs` must hold each chosen task's spec.
        """
        chosen = [t for t in tasks if belongs(t, self.node_id)]
        self.sent = {t.id: fingerprint(t) for t in chosen}
        self.sent_specs = set()
        assignments = apb.Assignments(kind=apb.Assignments.KIND_FULL, tasks=chosen)
        self._attach_specs(assignments, specs)
        size = assignments.ByteSize()
        if size > AGENT_MESSAGE_BYTES:
            # Nothing smaller can be sent that still means "everything else goes"; say so where it is seen.
            log.error("full assignment set too large for the agent", node_id=self.node_id, bytes=size)
        self._queue(assignments)

    def wants(self, task: pb.Task, deleted: bool) -> bool:
        """Tells whether a change to this task is news for the agent (so its spec may be needed)."""
        if not deleted and belongs(task, self.node_id):
            return self.sent.get(task.id) != fingerprint(task)
        return task.id in self.sent

    def on_task(self, task: pb.Task, deleted: bool, specs: Mapping[SpecKey, pb.ServiceSpec]) -> None:
        """Queues an incremental assignment when a change to this task matters to the agent."""
        if not deleted and belongs(task, self.node_id):
            print_ = fingerprint(task)
            if self.sent.get(task.id) == print_:
                return
            self.sent[task.id] = print_
            assignments = apb.Assignments(kind=apb.Assignments.KIND_INCREMENTAL, tasks=[task])
            self._attach_specs(assignments, specs)
            self._queue(assignments)
        elif self.sent.pop(task.id, None) is not None:
            self._queue(apb.Assignments(kind=apb.Assignments.KIND_INCREMENTAL, removed_task_ids=[task.id]))

    def _attach_specs(self, assignments: apb.Assignments, specs: Mapping[SpecKey, pb.ServiceSpec]) -> None:
        for task in assignments.tasks:
            key = spec_key(task)
            spec = specs.get(key)
            if key in self.sent_specs or spec is None:
                continue  # a missing spec (service deleted meanwhile): the agent stops what it cannot run
            self.sent_specs.add(key)
            assignments.specs.append(apb.ServiceRevisionSpec(service_id=key[0], revision=key[1], spec=spec))

    def _queue(self, assignments: apb.Assignments) -> None:
        self.sequence += 1
        assignments.sequence = self.sequence
        self.outbox.put_nowait(apb.ControllerMessage(assignments=assignments))
