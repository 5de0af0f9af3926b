"""One agent's live session: what it has been told and what is still to be written, coalesced and bounded.

Nothing is queued per event. The session keeps the welcome, at most one full set, the latest heartbeat ack
and one pending change per task id; when the writer is free it takes all of it as a few messages (the
changes as one Assignments message, or several of at most ASSIGNMENTS_CHUNK_BYTES). A burst of changes to
one node therefore goes out as one message, and what a session holds is bounded by the node's tasks however
slowly its agent reads; past OUTBOX_BYTES (file data included) the session is closed rather than buffered.

The data of secrets and configs goes in incremental Assignments messages of its own (files only, chunked
at ASSIGNMENTS_CHUNK_BYTES), each batch just before the message whose tasks need it, also before a full set:
a node whose tasks use many large files never gets a message over AGENT_MESSAGE_BYTES. The agent keeps
such data until the next message with tasks or specs says which of it is used (agent/files.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

import grpc
import structlog

from controller.dispatcher.assignment import Fingerprint, belongs, fingerprint
from controller.dispatcher.bounds import ASSIGNMENTS_CHUNK_BYTES, OUTBOX_BYTES
from controller.dispatcher.commands import CommandOutbox
from controller.dispatcher.files import SessionFiles
from controller.network.dns import merge_dns
from controller.store.specs import SpecKey
from dockyard.limits import AGENT_MESSAGE_BYTES
from dockyard.task_state import spec_key
from dockyard.timestamps import to_timestamp
from dockyard.v1 import agent_pb2 as apb
from dockyard.v1 import types_pb2 as pb

log = structlog.get_logger()


@dataclass
class AgentSession:
    """Tracks the tasks and specs sent to one agent so that only real changes are sent again."""

    node_id: str
    session_id: str
    peer: str = ""  # the agent's address, as gRPC gives it
    sent: dict[str, Fingerprint] = field(default_factory=dict)
    # The (service, revision) specs this session already carried: an agent keeps them for the session.
    sent_specs: set[SpecKey] = field(default_factory=set)
    sequence: int = 0
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    # The store revision of the last full set: changes up to it are in that set, so the router skips them.
    synced_revision: int = 0
    # When the write in progress started (the clock's monotonic time), None between writes.
    writing_since: float | None = None
    # Why the session was closed from the controller's side: the status the agent is told.
    close_code: grpc.StatusCode = grpc.StatusCode.OK
    close_reason: str = ""
    # Task changes (store revision, task, deleted) held back while the full set is read; None otherwise.
    # A new session starts holding: it is registered before its snapshot is read.
    backlog: list[tuple[int, pb.Task, bool]] | None = field(default_factory=list)
    # What waits for the writer, in the order it is written: welcome, full set, ack, changes.
    _welcome: apb.Welcome | None = None
    _full: apb.Assignments | None = None
    _full_files: list[apb.FileData] = field(default_factory=list)  # the file data the full set's tasks need
    _ack: datetime | None = None
    # Per task id: the task to upsert, or None to remove it; and the specs those tasks need, once per revision.
    _changes: dict[str, pb.Task | None] = field(default_factory=dict)
    _specs: dict[SpecKey, pb.ServiceSpec] = field(default_factory=dict)
    _bytes: int = 0  # the size of _full, _changes and _specs, and of the file data they bring
    _ready: asyncio.Event = field(default_factory=asyncio.Event)
    # Commands for the agent (see commands.py), written after the ack and before the changes.
    commands: CommandOutbox = field(default_factory=CommandOutbox)
    # Whether some node has an image or a push brings it (controller/images.py): such images of the tasks sent
    # are listed in Assignments.pushable_images, so a task whose image is missing waits for the push.
    pushable: Callable[[str], bool] = field(default=lambda _: False)
    # The secrets, configs and registry credentials sent beside the specs (files.py), once each per session.
    files: SessionFiles = field(default_factory=SessionFiles)
    # Networks (controller/dispatcher/networks.py): a task the agent has not seen yet goes only once the gate
    # says its node has a subnet of each of its networks, so its NetworkMap always arrives first; until then
    # it is held (task id -> (task, spec)). The map and DNS table wait here for the writer, ahead of tasks.
    gate: Callable[[pb.Task, pb.ServiceSpec | None], bool] = field(default=lambda task, spec: True)
    held: dict[str, tuple[pb.Task, pb.ServiceSpec | None]] = field(default_factory=dict)
    greeted: bool = False  # given its full map and DNS table: deltas may follow
    map_content: bytes | None = None  # what the last map queued said (its subnets and pool), to send only news
    map_networks: frozenset[str] = frozenset()  # the networks in which that map gives this node a subnet
    _map: apb.NetworkMap | None = None
    _dns: apb.DnsTable | None = None

    @property
    def pending_bytes(self) -> int:
        """About how many bytes of assignments wait for the writer."""
        return self._bytes

    def close(self, code: grpc.StatusCode, reason: str) -> None:
        """Ends the session (the first reason given is the one the agent hears)."""
        if not self.closed.is_set():
            self.close_code, self.close_reason = code, reason
            self.closed.set()

    def welcome(self, welcome: apb.Welcome) -> None:
        """Queues the welcome; it is written before anything else."""
        self._welcome = welcome
        self._ready.set()

    def ack(self, received_at: datetime) -> None:
        """Queues a heartbeat ack; an ack not yet written is replaced, as only the latest says anything."""
        self._ack = received_at
        self._ready.set()

    def send_full(self, tasks: list[pb.Task], specs: Mapping[SpecKey, pb.ServiceSpec]) -> None:
        """Queues the complete assignment set with the spec of every revision in it, once each.

        Anything the agent has that is not in the set goes, so pending changes (all older than the set) are
        dropped. `specs` must hold each chosen task's spec.
        """
        chosen = [t for t in tasks if belongs(t, self.node_id)]
        self.held = {t.id: (t, specs.get(spec_key(t))) for t in chosen if self._holds(t, specs.get(spec_key(t)))}
        chosen = [t for t in chosen if t.id not in self.held]
        self.sent = {t.id: fingerprint(t) for t in chosen}
        self.sent_specs = set()
        self.files.reset()
        assignments = apb.Assignments(kind=apb.Assignments.KIND_FULL, tasks=chosen)
        files = self._attach_specs(assignments, {spec_key(t): specs.get(spec_key(t)) for t in chosen})
        size = assignments.ByteSize()
        if size > AGENT_MESSAGE_BYTES:
            # Nothing smaller can be sent that still means "everything else goes"; say so where it is seen.
            log.error("full assignment set too large for the agent", node_id=self.node_id, bytes=size)
        self._full = assignments
        self._full_files = files
        self._changes = {}
        self._specs = {}
        self._bytes = size + sum(item.ByteSize() for item in files)
        if self._bytes > OUTBOX_BYTES:
            # Not a slow reader: this node's tasks need more than a session may hold at once. Say so.
            log.error(
                "full assignment set and file data too large for a session", node_id=self.node_id, bytes=self._bytes
            )
            self.close(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the node's tasks need {self._bytes} bytes of assignments and secret or config data at once, more "
                f"than a session holds ({OUTBOX_BYTES}); run fewer of them on this node",
            )
        self._ready.set()
        self._check_bound()

    def command(self, command: apb.Command) -> bool:
        """Queues a command for the writer; False when the command outbox has no room (see commands.py)."""
        if not self.commands.offer(command):
            return False
        self._ready.set()
        return True

    def wants(self, task: pb.Task, deleted: bool) -> bool:
        """Tells whether a change to this task is news for the agent (so its spec may be needed)."""
        if not deleted and belongs(task, self.node_id):
            return self.sent.get(task.id) != fingerprint(task)
        return task.id in self.sent or task.id in self.held

    def on_task(self, task: pb.Task, deleted: bool, specs: Mapping[SpecKey, pb.ServiceSpec]) -> None:
        """Records a change to this task as pending when it matters to the agent (the latest per task wins)."""
        if not deleted and belongs(task, self.node_id):
            print_ = fingerprint(task)
            if self.sent.get(task.id) == print_:
                return
            key = spec_key(task)
            spec = specs.get(key)
            if self._holds(task, spec):
                self.held[task.id] = (task, spec)
                return
            self.held.pop(task.id, None)
            self.sent[task.id] = print_
            if spec is not None:
                self.files.want(spec)
                self._bytes += self.files.count(spec)
            if spec is not None and key not in self.sent_specs and key not in self._specs:
                self._specs[key] = spec
                self._bytes += spec.ByteSize()
            self._set_change(task.id, task)
        elif self.sent.pop(task.id, None) is not None:
            self._set_change(task.id, None)
        else:
            self.held.pop(task.id, None)  # never sent: the agent has nothing to remove

    def _holds(self, task: pb.Task, spec: pb.ServiceSpec | None) -> bool:
        """Tells whether a task must wait for its node's subnets: new to the agent, to be run, not covered yet."""
        return (
            task.id not in self.sent
            and task.desired_state == pb.DESIRED_STATE_RUNNING
            and task.status.state <= pb.TASK_STATE_ASSIGNED
            and not self.gate(task, spec)
        )

    def release_held(self) -> None:
        """Queues the held tasks the gate now lets through (after a map that covers them was queued)."""
        for task, spec in list(self.held.values()):
            self.on_task(task, False, {spec_key(task): spec} if spec is not None else {})

    def network_map(self, network_map: apb.NetworkMap, content: bytes) -> None:
        """Queues the node's network map unless it says what the last one queued said (content: its subnets)."""
        if content == self.map_content:
            return
        self.map_content = content
        self._map = network_map
        self._ready.set()

    def dns(self, table: apb.DnsTable) -> None:
        """Queues a DNS table (full) or delta, merged with one not yet written."""
        self._dns = merge_dns(self._dns, table)
        self._ready.set()

    def _set_change(self, task_id: str, change: pb.Task | None) -> None:
        if task_id in self._changes:
            self._bytes -= _change_size(task_id, self._changes[task_id])
        self._changes[task_id] = change
        self._bytes += _change_size(task_id, change)
        self._ready.set()
        self._check_bound()

    def _check_bound(self) -> None:
        if self._bytes > OUTBOX_BYTES:
            self.close(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the agent is not reading: {self._bytes} bytes of assignments waiting (limit {OUTBOX_BYTES})",
            )

    async def next_messages(self) -> list[apb.ControllerMessage]:
        """Waits until something is to be written and returns all of it, in writing order."""
        await self._ready.wait()
        return self.take()

    def take(self) -> list[apb.ControllerMessage]:
        """Returns everything pending as messages, in writing order, and forgets it (no waiting)."""
        self._ready.clear()
        out: list[apb.ControllerMessage] = []
        if self._welcome is not None:
            out.append(apb.ControllerMessage(welcome=self._welcome))
            self._welcome = None
        if self._map is not None:  # before any task that needs it
            out.append(apb.ControllerMessage(network_map=self._map))
            self._map = None
        if self._full is not None:
            out.extend(self._file_messages(self._full_files))
            out.append(apb.ControllerMessage(assignments=self._numbered(self._full)))
            self._full, self._full_files = None, []
        if self._ack is not None:
            out.append(apb.ControllerMessage(heartbeat_ack=apb.HeartbeatAck(received_at=to_timestamp(self._ack))))
            self._ack = None
        if self._dns is not None:
            out.append(apb.ControllerMessage(dns=self._dns))
            self._dns = None
        out.extend(apb.ControllerMessage(command=c) for c in self.commands.take())
        for files, change in self._incremental():
            out.extend(self._file_messages(files))
            out.append(apb.ControllerMessage(assignments=self._numbered(change)))
        self.files.taken(spec for _, spec in self.held.values() if spec is not None)
        self._bytes = 0
        return out

    def _incremental(self) -> list[tuple[list[apb.FileData], apb.Assignments]]:
        """Turns pending changes into as few Assignments messages as the chunk size allows (not numbered yet),
        each with the file data its tasks need and the agent lacks, to be sent ahead of it."""
        changes, self._changes = self._changes, {}
        specs, self._specs = self._specs, {}
        messages: list[tuple[list[apb.FileData], apb.Assignments]] = []
        files: list[apb.FileData] = []
        current = apb.Assignments(kind=apb.Assignments.KIND_INCREMENTAL)
        size = 0
        for task_id, change in changes.items():
            grown = _change_size(task_id, change)
            key = spec_key(change) if change is not None else None
            spec = specs.get(key) if key is not None and key not in self.sent_specs else None
            grown += spec.ByteSize() if spec is not None else 0
            if size and size + grown > ASSIGNMENTS_CHUNK_BYTES:
                messages.append((files, current))
                files, current = [], apb.Assignments(kind=apb.Assignments.KIND_INCREMENTAL)
                size = 0
            size += grown
            if change is None:
                current.removed_task_ids.append(task_id)
                continue
            current.tasks.append(change)
            if key is not None:
                files.extend(self._attach_specs(current, {key: spec}))
        if size:
            messages.append((files, current))
        if messages:
            # Changed tasks whose spec the agent has may still need news: it goes ahead of the first message.
            messages[0][0][:0] = self.files.attach_wanted(messages[0][1])
        return messages

    def _attach_specs(
        self, assignments: apb.Assignments, specs: Mapping[SpecKey, pb.ServiceSpec | None]
    ) -> list[apb.FileData]:
        """Adds the specs the agent lacks (with credentials and pushable images); returns their files' data."""
        files: list[apb.FileData] = []
        for key, spec in specs.items():
            if key in self.sent_specs or spec is None:
                continue  # a missing spec (service deleted meanwhile): the agent stops what it cannot run
            self.sent_specs.add(key)
            assignments.specs.append(apb.ServiceRevisionSpec(service_id=key[0], revision=key[1], spec=spec))
            files.extend(self.files.attach(assignments, spec))
            if self.pushable(spec.image) and spec.image not in assignments.pushable_images:
                assignments.pushable_images.append(spec.image)
        return files

    def _file_messages(self, files: list[apb.FileData]) -> list[apb.ControllerMessage]:
        """File data as numbered incremental Assignments of files alone, each at most about ASSIGNMENTS_CHUNK_BYTES
        (one file, at most FILE_BYTES, always fits)."""
        chunks: list[apb.Assignments] = []
        size = 0
        for item in files:
            grown = item.ByteSize()
            if not chunks or size + grown > ASSIGNMENTS_CHUNK_BYTES:
                chunks.append(apb.Assignments(kind=apb.Assignments.KIND_INCREMENTAL))
                size = 0
            chunks[-1].files.append(item)
            size += grown
        return [apb.ControllerMessage(assignments=self._numbered(chunk)) for chunk in chunks]

    def _numbered(self, assignments: apb.Assignments) -> apb.Assignments:
        self.sequence += 1
        assignments.sequence = self.sequence
        return assignments


def _change_size(task_id: str, change: pb.Task | None) -> int:
    """About the bytes a pending change holds."""
    return len(task_id) if change is None else change.ByteSize()
