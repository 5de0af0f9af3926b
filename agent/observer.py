"""Watches Docker for changes to this node's containers: the event stream at once, a full re-list periodically."""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from agent.runtime.base import ContainerInfo, ContainerRuntime, RuntimeFailure, RuntimeUnavailable
from agent.task_book import TaskBook
from agent.worker import Worker
from dockyard import labels
from dockyard.backoff import Backoff
from dockyard.clock import Clock, SystemClock

log = structlog.get_logger()


class Observer:
    """Wakes task loops when their containers change, and reaps containers of tasks nobody assigned."""

    def __init__(
        self,
        runtime: ContainerRuntime,
        book: TaskBook,
        worker: Worker,
        node_id: str,
        *,
        relist_period: float,
        stranger_grace: float,
        clock: Clock | None = None,
    ) -> None:
        self._runtime = runtime
        self._book = book
        self._worker = worker
        self._node_id = node_id
        self._clock: Clock = clock or SystemClock()
        self._relist_period = relist_period
        self._stranger_grace = stranger_grace
        self._strangers: dict[str, float] = {}  # container id -> when first seen (monotonic)

    async def run(self) -> None:
        """Runs the event watcher and the re-lister until cancelled."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._follow_events())
            group.create_task(self._relist_forever())

    async def _follow_events(self) -> None:
        backoff = Backoff(base=0.2, cap=5.0)
        while True:
            try:
                # aclosing releases the daemon connection when this loop is cancelled.
                events = self._runtime.events({labels.NODE_ID: self._node_id})
                async with contextlib.aclosing(events):
                    async for event in events:
                        backoff.reset()
                        self._worker.outages.came_back(self._clock.now())
                        task_id = event.labels.get(labels.TASK_ID, "")
                        if self._book.get(task_id) is not None:
                            self._worker.wake([task_id], stale=True)
                log.warning("docker event stream ended; reconnecting")
                self._worker.outages.went_down(self._clock.now())
            except RuntimeFailure as exc:
                log.warning("docker event stream failed; reconnecting", error=str(exc))
                if isinstance(exc, RuntimeUnavailable):
                    # Docker closes its API first when it shuts down: this is when its containers start to go.
                    self._worker.outages.went_down(self._clock.now())
            await self._clock.sleep(backoff.next_delay())
            # Whatever happened while the stream was down is caught by looking at everything again.
            await self._try_relist()

    async def _relist_forever(self) -> None:
        while True:
            await self._try_relist()
            await self._clock.sleep(self._relist_period)

    async def _try_relist(self) -> None:
        try:
            await self.relist()
        except RuntimeFailure as exc:
            log.warning("re-list failed", error=str(exc))
            if isinstance(exc, RuntimeUnavailable):
                self._worker.outages.went_down(self._clock.now())

    async def relist(self) -> None:
        """Compares every container of this node with what the task loops believe, waking those that differ."""
        containers = await self._runtime.list({labels.NODE_ID: self._node_id})
        self._worker.outages.came_back(self._clock.now())
        known = self._worker.known_containers
        seen: set[str] = set()
        now = self._clock.monotonic()
        for info in containers:
            task_id = info.labels.get(labels.TASK_ID, "")
            if self._book.get(task_id) is None:
                await self._consider_stranger(info.id, info.name, now)
                continue
            seen.add(task_id)
            cached = known.get(task_id)
            if cached is None or cached.id != info.id or cached.state != info.state or _health_moved(cached, info):
                self._worker.wake([task_id], stale=True)
        for task in self._book:
            if task.id not in seen and known.get(task.id) is not None:
                self._worker.wake([task.id], stale=True)
        live = {info.id for info in containers}
        for container_id in list(self._strangers):
            if container_id not in live:
                del self._strangers[container_id]
        self._worker.wake([t.id for t in self._book])

    async def _consider_stranger(self, container_id: str, name: str, now: float) -> None:
        """Removes a container labelled for this node but for no known task, once it stayed so for the grace."""
        first = self._strangers.setdefault(container_id, now)
        # Until the controller has sent a full set, an unknown container may be one we are about to adopt.
        if not self._book.full_sync_seen or now - first < self._stranger_grace:
            return
        log.warning("reaping container of no known task", container_id=container_id[:12], name=name)
        await self._runtime.remove(container_id)
        del self._strangers[container_id]


def _health_moved(cached: ContainerInfo, info: ContainerInfo) -> bool:
    """Tells whether Docker's health of a container changed in state or streak (Docker emits no event for a
    streak that grows without changing the state)."""
    if cached.health is None or info.health is None:
        return cached.health is not info.health
    return (cached.health.status, cached.health.failing_streak) != (info.health.status, info.health.failing_streak)
