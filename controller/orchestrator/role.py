"""The orchestrator's I/O shell: reads services and tasks, runs the pure reconciler, commits its plan."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from datetime import datetime

import structlog

from controller.orchestrator.nodes import NodeFacts
from controller.orchestrator.plan import Plan
from controller.orchestrator.reconciler import reconcile_service
from controller.store.base import ConflictError, Delete, Kind, Op, Put, Store
from dockyard.clock import Clock
from dockyard.v1 import types_pb2 as pb

log = structlog.get_logger()


class Orchestrator:
    """Keeps every service's tasks matching its spec; reconcile() is one level-triggered pass."""

    def __init__(self, store: Store, clock: Clock, new_id: Callable[[], str]) -> None:
        self._store = store
        self._clock = clock
        self._new_id = new_id

    async def reconcile(self) -> datetime | None:
        """Reconciles every service once; returns when it wants to run again (None: on the next change)."""
        services = {s.id: s for s in await self._store.list_services()}
        tasks_by_service: dict[str, list[pb.Task]] = defaultdict(list)
        for task in await self._store.list_tasks():
            tasks_by_service[task.service_id].append(task)
        nodes = NodeFacts.of(await self._store.list_nodes())
        now = self._clock.now()
        wake: Plan = Plan()
        for service_id in sorted(set(services) | set(tasks_by_service)):
            plan = reconcile_service(
                services.get(service_id), tasks_by_service.get(service_id, []), nodes, now, self._new_id
            )
            wake.wake_no_later_than(plan.wake_at)
            if plan.empty():
                continue
            try:
                await self._store.commit(_ops(plan))
            except ConflictError as exc:
                # Someone (usually an agent's status) wrote first: look again at once with fresh data.
                log.debug("orchestrator conflict", service_id=service_id, error=str(exc))
                wake.wake_no_later_than(now)
                continue
            log.info(
                "orchestrated",
                service=_name(services.get(service_id), tasks_by_service.get(service_id, [])),
                created=len(plan.create),
                updated=len(plan.update),
                deleted=len(plan.delete),
            )
        return wake.wake_at


def _ops(plan: Plan) -> list[Op]:
    ops: list[Op] = [Put(task, expect_version=0) for task in plan.create]
    ops.extend(Put(task, expect_version=task.version) for task in plan.update)
    ops.extend(Delete(Kind.TASK, task.id, expect_version=task.version) for task in plan.delete)
    return ops


def _name(service: pb.Service | None, tasks: list[pb.Task]) -> str:
    if service is not None:
        return service.name
    return tasks[0].service_name if tasks else "?"
