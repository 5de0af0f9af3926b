"""The scheduler's I/O shell: snapshots the cluster, runs the pure scheduler, commits its decisions."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import structlog

from controller.scheduler import Decision, SpecKey, holds_resources, schedule
from controller.store.base import Check, ConflictError, Kind, Op, Put, Store
from controller.store.specs import SpecCache
from dockyard.clock import Clock
from dockyard.timestamps import to_timestamp
from dockyard.v1 import types_pb2 as pb

log = structlog.get_logger()


def is_pending(task: pb.Task) -> bool:
    """Tells whether a task waits for a node, or pinned to one (global services) waits to be admitted there."""
    return task.desired_state == pb.DESIRED_STATE_RUNNING and task.status.state == pb.TASK_STATE_PENDING


class Scheduler:
    """Places pending tasks; each commit re-checks that the chosen nodes did not change since the snapshot."""

    def __init__(self, store: Store, clock: Clock, seed: int = 0) -> None:
        """Schedules with the given tie-break seed; specs read from the store are cached for its lifetime."""
        self._store = store
        self._clock = clock
        self._seed = seed
        self._specs = SpecCache(store)

    async def reconcile(self) -> datetime | None:
        """Places every pending task it can; returns "now" when a commit lost a race, else None."""
        tasks = await self._store.list_tasks()
        pending = [t for t in tasks if is_pending(t)]
        if not pending:
            return None
        nodes = await self._store.list_nodes()
        # Only the tasks being placed and those holding a node matter; finished tasks may name old revisions
        # whose specs would cost a read each.
        specs = await self._specs_of(t for t in tasks if holds_resources(t) or is_pending(t))
        now = self._clock.now()
        decisions = schedule(nodes, tasks, pending, specs, now, self._seed)
        ops = _ops(decisions, {t.id: t for t in pending}, {n.id: n for n in nodes}, now)
        if not ops:
            return None
        try:
            await self._store.commit(ops)
        except ConflictError as exc:
            log.debug("scheduler conflict", error=str(exc))
            return now
        placed = sum(1 for d in decisions if d.node_id)
        if placed:
            log.info("scheduled", placed=placed, pending=len(decisions) - placed)
        return None

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
            message = f"no suitable node: {decision.reason}"
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
