"""The orchestrator's I/O shell: finds the services a batch of changes touches, reads only their tasks, runs the
pure reconciler on each and commits their plans together.

A pass handed None (start, a gap in the feed, the periodic full pass) reconciles every service. A pass handed
events reconciles the services dirty.py names, those whose restart delay is due, and those whose retry after a
failure is due. A service whose reconcile raises backs off on its own; the others go on.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

import structlog

from controller.errors import StoreDamaged
from controller.orchestrator import rollout
from controller.orchestrator.depends import DependencyView
from controller.orchestrator.dirty import Dirty, dirty_from
from controller.orchestrator.nodes import NodeFacts
from controller.orchestrator.plan import Plan
from controller.orchestrator.reconciler import after_plan, reconcile_service, waits_for_running
from controller.store.base import Action, ConflictError, Delete, Event, Kind, Op, Put, Store
from controller.store.follow import follow_nodes
from dockyard.backoff import Backoff
from dockyard.clock import Clock
from dockyard.logs import Throttle
from dockyard.v1 import types_pb2 as pb

log = structlog.get_logger()


class ReconcileService(Protocol):
    """The pure reconciler's signature (reconciler.reconcile_service); tests may wrap it."""

    def __call__(
        self,
        service: pb.Service | None,
        tasks: Sequence[pb.Task],
        nodes: NodeFacts,
        now: datetime,
        new_id: Callable[[], str],
        *,
        rollback_to: rollout.RollbackTarget | None = None,
        deps: Mapping[str, DependencyView] | None = None,
        rebalance: bool = False,
    ) -> Plan:
        """Plans one service."""
        ...


# A service whose reconcile raised is retried after 1 s, doubling up to a minute: a bug that a later write
# fixes (a stored object the reconciler chokes on, replaced by the next write) heals quickly, one that persists
# costs one failed read of that service a minute. The others are reconciled meanwhile either way.
SERVICE_RETRY_BASE_SECONDS = 1.0
SERVICE_RETRY_CAP_SECONDS = 60.0


# A pass commits its services' plans together in transactions of about this many writes (a service's plan is
# never split): few commits for many lost nodes, while one batch stays well inside the store's event log
# (SqliteStore keeps 10,000 events) so followers do not lose track.
MAX_BATCH_OPS = 5_000


@dataclass
class _Planned:
    """One service's plan in a pass, with what it was computed from."""

    service_id: str
    service: pb.Service | None
    tasks: list[pb.Task]
    plan: Plan
    ops: list[Op]  # the plan's writes, each guarded by the version it was computed from


@dataclass
class _Work:
    """One service to plan: what the store holds of it, and what its plan may need besides."""

    service_id: str
    service: pb.Service | None
    tasks: list[pb.Task]
    rollback_to: rollout.RollbackTarget | None = None
    deps: dict[str, DependencyView] | None = None
    rebalance: bool = False


@dataclass
class _Failing:
    """A service whose last reconcile or commit raised: its backoff, and when it may be tried again."""

    backoff: Backoff
    retry_at: datetime


class Orchestrator:
    """Keeps every service's tasks matching its spec; reconcile(changes) is one pass over what changed."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        new_id: Callable[[], str],
        reconcile_one: ReconcileService = reconcile_service,
    ) -> None:
        """Reconciles each service with reconcile_one (the pure reconciler; tests may wrap it)."""
        self._store = store
        self._clock = clock
        self._new_id = new_id
        self._reconcile_one = reconcile_one
        # The nodes as the events handed so far left them: node events are judged against these.
        self._nodes: dict[str, pb.Node] = {}
        # Services that follow the set of nodes: global ones, and those with placement.rebalance.
        self._global: set[str] = set()
        # Services whose plan left tasks held (depends_on), with the names of the services they wait for.
        self._held: dict[str, tuple[str, ...]] = {}
        # Services whose plan waits for a task to reach running (see reconciler.waits_for_running).
        self._waiting: set[str] = set()
        # Per service, when its plan asked to look again (a restart delay, attempts ageing out of a window).
        self._timers: dict[str, datetime] = {}
        self._failing: dict[str, _Failing] = {}
        # What is still to do: kept across passes, so a conflict or a read that fails leaves it for the next.
        self._dirty = Dirty()
        # Set when a pass raised (the store failed it) after moving past its events: the next reads everything.
        self._unsure = False
        self._throttle = Throttle(clock)

    async def reconcile(self, changes: Sequence[Event] | None) -> datetime | None:
        """Reconciles the services the changes touch (None: every service); returns when to run again."""
        now = self._clock.now()
        try:
            if changes is None or self._unsure:
                self._unsure = False
                await self._full_pass(now)
            else:
                self._note(changes)
                await self._dirty_pass(now)
        except Exception:
            self._unsure = True
            raise
        return self._next_wake(now)

    def _note(self, changes: Sequence[Event]) -> None:
        """Adds what the changes make dirty, then moves the remembered nodes and global services past them."""
        held_by: dict[str, set[str]] = defaultdict(set)
        for service_id, names in self._held.items():
            for name in names:
                held_by[name].add(service_id)
        found = dirty_from(changes, self._nodes, self._waiting, self._global, held_by)
        self._dirty.services |= found.services
        self._dirty.nodes |= found.nodes
        for event in changes:
            if follow_nodes(self._nodes, event):
                continue
            if event.kind == Kind.SERVICE:
                assert isinstance(event.obj, pb.Service)
                if event.action == Action.PUT and _follows_nodes(event.obj):
                    self._global.add(event.id)
                else:
                    self._global.discard(event.id)

    async def _full_pass(self, now: datetime) -> None:
        """Reconciles every service (and every service id its tasks name) from one read of each table."""
        services = {s.id: s for s in await self._store.list_services()}
        tasks_by_service: dict[str, list[pb.Task]] = defaultdict(list)
        for task in await self._store.list_tasks():
            tasks_by_service[task.service_id].append(task)
        node_list = await self._store.list_nodes()
        self._nodes = {n.id: n for n in node_list}
        self._global = {s.id for s in services.values() if _follows_nodes(s)}
        # This pass reads everything, so nothing noted before it is still to do.
        self._dirty = Dirty()
        work = [
            _Work(service_id, services.get(service_id), tasks_by_service.get(service_id, []))
            for service_id in sorted(set(services) | set(tasks_by_service))
            if not self._backing_off(service_id, now)
        ]
        await self._reconcile_services(work, NodeFacts(self._nodes), now)

    async def _dirty_pass(self, now: datetime) -> None:
        """Reconciles the dirty services, those on dirty nodes, and those whose timer or retry is due."""
        for node_id in sorted(self._dirty.nodes):
            self._dirty.services.update(t.service_id for t in await self._store.list_tasks(node_id=node_id))
            self._dirty.nodes.discard(node_id)
        for service_id, at in list(self._timers.items()):
            if at > now:
                continue
            if self._backing_off(service_id, now):
                del self._timers[service_id]  # its retry reads it afresh and sets the timer again
            else:
                self._dirty.services.add(service_id)
        self._dirty.services.update(s for s, failing in self._failing.items() if failing.retry_at <= now)
        # A service backing off waits for its retry, which reads it afresh; events meanwhile add nothing.
        self._dirty.services = {s for s in self._dirty.services if not self._backing_off(s, now)}
        if not self._dirty.services:
            return
        nodes = NodeFacts.of(await self._store.list_nodes())
        work: list[_Work] = []
        for service_id in sorted(self._dirty.services):
            service = await self._store.get_service(service_id)
            if service is not None and service.id != service_id:
                service = None  # get_service also matches names; a service named like this id is not it
            work.append(_Work(service_id, service, await self._store.list_tasks(service_id=service_id)))
        self._dirty.services.clear()
        await self._reconcile_services(work, nodes, now)

    async def _reconcile_services(self, work: list[_Work], nodes: NodeFacts, now: datetime) -> None:
        """Plans each service, then commits the plans in few batches (one per service only after a failure).

        Committing a pass's plans together keeps many lost nodes one pass with one commit: the scheduler then
        places all replacements at once instead of running once per service between our commits.
        """
        live: list[_Work] = []
        for item in work:
            self._timers.pop(item.service_id, None)
            if item.service is None and not item.tasks:
                self._forget(item.service_id)
            else:
                live.append(item)
        read: list[_Work] = []
        for item in live:
            try:
                await self._read_extras(item)
            except (asyncio.CancelledError, StoreDamaged):
                raise
            except Exception as exc:
                self._failed(item.service_id, item.service, item.tasks, now, exc)
            else:
                read.append(item)
        live = read
        # Planning is pure CPU (tens of ms per thousand tasks): off the event loop it cannot hold up the
        # dispatcher's reads and acks or the API for a whole pass; the interpreter switches threads every few ms.
        planned: list[_Planned] = []
        plans = await asyncio.to_thread(self._plan_all, live, nodes, now)
        for item, plan in zip(live, plans, strict=True):
            if isinstance(plan, Exception):
                self._failed(item.service_id, item.service, item.tasks, now, plan)
                continue
            planned.append(_Planned(item.service_id, item.service, item.tasks, plan, _ops(item.service, plan)))
        batch: list[_Planned] = []
        size = 0
        for one in planned:
            if one.plan.empty():
                self._done(one, nodes)
                continue
            if batch and size + len(one.ops) > MAX_BATCH_OPS:
                await self._commit(batch, nodes, now)
                batch, size = [], 0
            batch.append(one)
            size += len(one.ops)
        if batch:
            await self._commit(batch, nodes, now)

    async def _read_extras(self, item: _Work) -> None:
        """Reads what a service's plan may need besides its tasks: its dependencies (depends_on), and the
        target of a rollback its rollout may make."""
        service = item.service
        if service is None:
            return
        item.rebalance = service.rebalance_generation > service.rebalanced_generation
        if service.spec.depends_on:
            item.deps = {}
            for name in service.spec.depends_on:
                found = await self._store.get_service(name)
                if found is None or found.name != name:
                    item.deps[name] = DependencyView(None, ())
                else:
                    item.deps[name] = DependencyView(found, await self._store.list_tasks(service_id=found.id))
        if not rollout.is_active(service) or rollout.is_rolling_back(service):
            return
        if rollout.policy(service.spec, rolling_back=False).failure_action != rollout.ROLLBACK:
            return
        service_id = service.id

        async def spec_at(revision: int) -> pb.ServiceSpec | None:
            return await self._store.get_service_spec(service_id, revision)

        live = {t.revision for t in item.tasks if t.desired_state == pb.DESIRED_STATE_RUNNING}
        item.rollback_to = await rollout.find_rollback_target(
            service, service.update_status.from_revision, spec_at, live_revisions=live
        )

    def _plan_all(self, work: list[_Work], nodes: NodeFacts, now: datetime) -> list[Plan | Exception]:
        """Plans each service (in a worker thread: it touches nothing but its arguments); the error where one raised."""
        plans: list[Plan | Exception] = []
        for item in work:
            try:
                plans.append(
                    self._reconcile_one(
                        item.service,
                        item.tasks,
                        nodes,
                        now,
                        self._new_id,
                        rollback_to=item.rollback_to,
                        deps=item.deps,
                        rebalance=item.rebalance,
                    )
                )
            except Exception as exc:
                plans.append(exc)
        return plans

    async def _commit(self, batch: list[_Planned], nodes: NodeFacts, now: datetime) -> None:
        """Commits the plans of several services in one transaction; if that fails, each one on its own."""
        if len(batch) == 1:
            await self._commit_one(batch[0], nodes, now)
            return
        try:
            await self._store.commit([op for item in batch for op in item.ops])
        except (asyncio.CancelledError, StoreDamaged):
            raise
        except Exception:
            # One service's writes (a conflict, a write the store refuses) must not hold back the others.
            for item in batch:
                await self._commit_one(item, nodes, now)
            return
        for item in batch:
            self._done(item, nodes)

    async def _commit_one(self, item: _Planned, nodes: NodeFacts, now: datetime) -> None:
        """Commits one service's plan; a conflict asks for another look, any other failure backs off."""
        try:
            await self._store.commit(item.ops)
        except ConflictError as exc:
            # Someone (usually an agent's status) wrote first: look again at once with fresh data.
            log.debug("orchestrator conflict", service_id=item.service_id, error=str(exc))
            self._dirty.services.add(item.service_id)
            return
        except (asyncio.CancelledError, StoreDamaged):
            raise
        except Exception:
            self._failed(item.service_id, item.service, item.tasks, now)
            return
        self._done(item, nodes)

    def _done(self, item: _Planned, nodes: NodeFacts) -> None:
        """Records what a service's committed (or empty) plan means for the passes to come."""
        service_id, plan = item.service_id, item.plan
        self._failing.pop(service_id, None)
        if plan.wake_at is not None:
            self._timers[service_id] = plan.wake_at
        service = plan.service if plan.service is not None else item.service
        after = after_plan(item.tasks, plan)
        if waits_for_running(service, after, nodes):
            self._waiting.add(service_id)
        else:
            self._waiting.discard(service_id)
        if service is not None and service.spec.depends_on and _may_wait_for_dependencies(service, after):
            self._held[service_id] = tuple(service.spec.depends_on)
        else:
            self._held.pop(service_id, None)
        if not plan.empty():
            log.info(
                "orchestrated",
                service=_name(item.service, item.tasks),
                created=len(plan.create),
                updated=len(plan.update),
                deleted=len(plan.delete),
            )

    def _failed(
        self,
        service_id: str,
        service: pb.Service | None,
        tasks: list[pb.Task],
        now: datetime,
        error: Exception | None = None,
    ) -> None:
        """Backs a service off after its reconcile or its commit raised; logs it, rate-limited per service."""
        failing = self._failing.get(service_id)
        if failing is None:
            failing = self._failing[service_id] = _Failing(
                Backoff(base=SERVICE_RETRY_BASE_SECONDS, cap=SERVICE_RETRY_CAP_SECONDS), now
            )
        delay = failing.backoff.next_delay()
        failing.retry_at = now + timedelta(seconds=delay)
        suppressed = self._throttle.allow(service_id)
        if suppressed is not None:
            log.error(
                "service reconcile failed",
                exc_info=error or True,
                service=_name(service, tasks),
                service_id=service_id,
                attempt=failing.backoff.attempt,
                retry_in=round(delay, 1),
                suppressed=suppressed,
            )

    def _backing_off(self, service_id: str, now: datetime) -> bool:
        failing = self._failing.get(service_id)
        return failing is not None and failing.retry_at > now

    def _forget(self, service_id: str) -> None:
        """Drops what is remembered about a service that is gone with all its tasks."""
        self._timers.pop(service_id, None)
        self._waiting.discard(service_id)
        self._failing.pop(service_id, None)
        self._global.discard(service_id)
        self._held.pop(service_id, None)

    def _next_wake(self, now: datetime) -> datetime | None:
        """Returns the earliest timer or retry, or now when a service is left to do (after a conflict)."""
        times = [*self._timers.values(), *(f.retry_at for f in self._failing.values())]
        if self._dirty.services or self._dirty.nodes:
            times.append(now)
        return min(times, default=None)


def _follows_nodes(service: pb.Service) -> bool:
    """Tells whether a change of any node may change the service's plan: global, or rebalancing by itself."""
    return service.spec.mode == pb.SERVICE_MODE_GLOBAL or service.spec.placement.rebalance


def _ops(service: pb.Service | None, plan: Plan) -> list[Op]:
    ops: list[Op] = []
    if plan.service is not None:
        # Guarded by the version the plan was computed from: a newer write (a new spec, a rollback the API
        # made) wins, and the conflict makes the service reconciled again from what is stored now.
        ops.append(Put(plan.service, expect_version=service.version if service is not None else 0))
    ops.extend(Put(task, expect_version=0) for task in plan.create)
    ops.extend(Put(task, expect_version=task.version) for task in plan.update)
    ops.extend(Delete(Kind.TASK, task.id, expect_version=task.version) for task in plan.delete)
    return ops


def _name(service: pb.Service | None, tasks: list[pb.Task]) -> str:
    if service is not None:
        return service.name
    return tasks[0].service_name if tasks else "?"


def _may_wait_for_dependencies(service: pb.Service, tasks: Sequence[pb.Task]) -> bool:
    """Tells whether a pass may have left something waiting for the service's dependencies: held (NEW) tasks,
    an active rollout (it changes no slot while they do not hold, with no task of its own held) or a
    rebalance (asked for, or placement.rebalance): each must go on once a dependency changes, not at the
    next full pass."""
    if service.rebalance_generation > service.rebalanced_generation or service.spec.placement.rebalance:
        return True
    if rollout.is_active(service):
        return True
    return any(t.status.state == pb.TASK_STATE_NEW and t.desired_state == pb.DESIRED_STATE_RUNNING for t in tasks)
