"""The scheduler's I/O shell: decides from the store's events whether a pass can place anything, snapshots the
cluster, runs the pure scheduler, commits its decisions."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import datetime

import structlog

from controller.ids import new_id
from controller.scheduler import Decision, SpecKey, holds_resources, schedule
from controller.scheduler.model import is_pending
from controller.store.base import Action, Check, ConflictError, Event, Kind, Op, Put, Store
from controller.store.follow import follow_nodes
from controller.store.specs import SpecCache
from controller.volumes import pin_ops, pinned_nodes, removing_volumes, volume_records
from dockyard.clock import Clock
from dockyard.task_state import is_terminal, spec_key, unplaced_message
from dockyard.timestamps import to_timestamp
from dockyard.v1 import types_pb2 as pb

log = structlog.get_logger()


def needs_pass(
    events: Iterable[Event], nodes_before: Mapping[str, pb.Node], judged: Mapping[str, int], unplaced: Collection[str]
) -> bool:
    """Tells whether the events give a scheduling pass anything to do; pure.

    - A task put pending (desired running) at a version newer than the one a pass last judged (judged: task id
      -> version): a new task, or one whose pin or revision changed. The scheduler's own "no suitable node"
      message writes are judged already, so they do not wake it again.
    - Only while some tasks wait unplaced (unplaced: their ids): room that may fit them. A task that reached a
      terminal state on a node, or a deleted one that held resources, frees its reservation and host ports; a
      node that can take tasks (ready, active) and changed what placement reads of it (it came up or back to
      active, its labels or its resources changed) may now pass the filters. Nodes are judged against
      nodes_before (the nodes as the earlier events left them).
    - Only while some tasks wait unplaced: any change of a volume record (where a task that mounts it may run).
    - Anything else, notably a task moving through preparing, starting and running, changes nothing a pass
      would decide: the task held its node's resources since it was assigned.
    """
    before = dict(nodes_before)
    room = False
    for event in events:
        if event.kind == Kind.TASK:
            task = event.obj
            assert isinstance(task, pb.Task)
            if event.action == Action.PUT and is_pending(task):
                if task.version > judged.get(task.id, -1):
                    return True
            elif _frees_room(event.action, task):
                room = True
        elif event.kind == Kind.VOLUME:
            # A volume made, moved, unpinned or removed may change where a task that mounts it can go.
            room = True
        elif event.kind == Kind.NODE:
            after = event.obj if event.action == Action.PUT else None
            assert after is None or isinstance(after, pb.Node)
            old = before.pop(event.id, None)
            if after is not None:
                before[event.id] = after
                if _takes_tasks(after) and (old is None or _placement_facts(old) != _placement_facts(after)):
                    room = True
    return room and bool(unplaced)


def _frees_room(action: Action, task: pb.Task) -> bool:
    """Tells whether a task event can release what the task held on its node."""
    if action == Action.DELETE:
        return holds_resources(task)
    return bool(task.node_id) and is_terminal(task.status.state)


def _takes_tasks(node: pb.Node) -> bool:
    return node.status == pb.NODE_STATUS_READY and node.availability in (
        pb.NODE_AVAILABILITY_ACTIVE,
        pb.NODE_AVAILABILITY_UNSPECIFIED,
    )


def _placement_facts(node: pb.Node) -> tuple[object, ...]:
    """Returns what the filters and scorers read of a node (not its heartbeat, address or status message)."""
    return (
        node.status,
        node.availability,
        node.description.SerializeToString(deterministic=True),
        sorted(node.labels.items()),
    )


class Scheduler:
    """Places pending tasks; each commit re-checks that the chosen nodes did not change since the snapshot."""

    def __init__(self, store: Store, clock: Clock, seed: int = 0) -> None:
        """Schedules with the given tie-break seed; specs read from the store are cached for its lifetime."""
        self._store = store
        self._clock = clock
        self._seed = seed
        self._specs = SpecCache(store)
        # The nodes as the events handed so far (or the last pass's read) left them.
        self._nodes: dict[str, pb.Node] = {}
        # Pending tasks a pass judged, at the version it judged; and those of them it could not place.
        self._judged: dict[str, int] = {}
        self._unplaced: set[str] = set()
        # Set while a pass is owed: it ran into a conflict, or raised before it finished.
        self._again = True

    @property
    def unplaced(self) -> int:
        """How many pending tasks the last pass could not place (and that are still pending)."""
        return len(self._unplaced)

    async def reconcile(self, changes: Sequence[Event] | None) -> datetime | None:
        """Places every pending task it can when changes (None: anything) may allow it; "now" after a conflict."""
        run = changes is None or self._again or needs_pass(changes, self._nodes, self._judged, self._unplaced)
        if changes is not None:
            self._follow(changes)
        if not run:
            return None
        self._again = True
        tasks = await self._store.list_tasks()
        pending = [t for t in tasks if is_pending(t)]
        nodes = await self._store.list_nodes()
        self._nodes = {n.id: n for n in nodes}
        self._judged = {t.id: t.version for t in pending}
        self._unplaced = set()
        if not pending:
            self._again = False
            return None
        # Only the tasks being placed and those holding a node matter; finished tasks may name old revisions
        # whose specs would cost a read each.
        specs = await self._specs_of(t for t in tasks if holds_resources(t) or is_pending(t))
        volumes = volume_records(await self._store.list_objects(Kind.VOLUME))
        now = self._clock.now()
        # Pure CPU (a few hundred ms at 10,000 tasks): off the event loop, so reads, acks and API calls go on.
        place = functools.partial(schedule, volumes=pinned_nodes(volumes), removing=removing_volumes(volumes))
        decisions = await asyncio.to_thread(place, nodes, tasks, pending, specs, now, self._seed)
        by_id = {t.id: t for t in pending}
        ops = _ops(decisions, by_id, self._nodes, now)
        # The volumes of the tasks placed go to their nodes in the same commit (or are Checked there), so a
        # volume removed or pinned elsewhere meanwhile fails the commit and the pass runs again.
        assigned = [(specs[spec_key(by_id[d.task_id])], d.node_id) for d in decisions if d.node_id is not None]
        ops.extend(pin_ops(assigned, volumes, now, new_id))
        if ops:
            try:
                await self._store.commit(ops)
            except ConflictError as exc:
                log.debug("scheduler conflict", error=str(exc))
                return now
        for op in ops:
            # The commit stamped each written task's new version: the events of our own writes are old news.
            if isinstance(op, Put) and isinstance(op.obj, pb.Task) and is_pending(op.obj):
                self._judged[op.obj.id] = op.obj.version
        self._unplaced = {d.task_id for d in decisions if d.node_id is None}
        self._again = False
        placed = len(decisions) - len(self._unplaced)
        if placed:
            log.info("scheduled", placed=placed, pending=len(self._unplaced))
        return None

    def _follow(self, changes: Sequence[Event]) -> None:
        """Moves the remembered nodes and pending tasks past the changes."""
        for event in changes:
            if follow_nodes(self._nodes, event):
                continue
            if event.kind == Kind.TASK:
                assert isinstance(event.obj, pb.Task)
                if event.action == Action.DELETE or not is_pending(event.obj):
                    self._judged.pop(event.id, None)
                    self._unplaced.discard(event.id)

    async def _specs_of(self, tasks: Iterable[pb.Task]) -> dict[SpecKey, pb.ServiceSpec]:
        """Returns the spec of each task's (service, revision) that can still be found."""
        services = {s.id: s for s in await self._store.list_services()}
        return await self._specs.for_tasks(tasks, services)


def _ops(decisions: list[Decision], pending: dict[str, pb.Task], nodes: dict[str, pb.Node], now: datetime) -> list[Op]:
    ops: list[Op] = []
    checked: set[str] = set()
    for decision in decisions:
        task = pending[decision.task_id]
        changed = pb.Task()
        changed.CopyFrom(task)
        if decision.node_id is None:
            message = unplaced_message(decision.reason)
            if task.status.message == message:
                continue
            changed.status.message = message
        else:
            node = nodes[decision.node_id]
            changed.node_id = node.id
            changed.status.state = pb.TASK_STATE_ASSIGNED
            changed.status.message = f"assigned to {node.description.hostname or node.id}"
            changed.status.timestamp.CopyFrom(to_timestamp(now))
            if node.id not in checked:
                checked.add(node.id)
                ops.append(Check(Kind.NODE, node.id, node.version))
        changed.updated_at.CopyFrom(to_timestamp(now))
        ops.append(Put(changed, expect_version=task.version))
    return ops
