"""The loop every level-triggered role runs: reconcile, then sleep until the store changes or a timer fires."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Collection
from datetime import datetime, timedelta

import structlog

from controller.errors import DAMAGED_RETRY_SECONDS, StoreDamaged
from controller.store.base import Kind, Store
from controller.store.follow import Resync, follow
from dockyard.backoff import Backoff
from dockyard.clock import Clock

log = structlog.get_logger()

Reconcile = Callable[[], Awaitable[datetime | None]]


class Reactor:
    """Runs reconcile() whenever objects of the given kinds change, at the time it asks for, and every resync."""

    def __init__(
        self,
        name: str,
        store: Store,
        reconcile: Reconcile,
        kinds: Collection[Kind],
        clock: Clock,
        resync_seconds: float = 30.0,
    ) -> None:
        self._name = name
        self._store = store
        self._reconcile = reconcile
        self._kinds = frozenset(kinds)
        self._clock = clock
        self._resync = resync_seconds
        self._wake = asyncio.Event()

    def poke(self) -> None:
        """Asks for a reconcile pass as soon as possible."""
        self._wake.set()

    async def run(self) -> None:
        """Runs until cancelled; a failing pass is logged and retried, never fatal."""
        watcher = asyncio.create_task(self._watch(), name=f"{self._name}-watch")
        # A pass that keeps crashing must not spin: retries back off up to the resync period.
        failures = Backoff(base=0.1, cap=self._resync)
        try:
            while True:
                self._wake.clear()
                next_at: datetime | None = None
                try:
                    next_at = await self._reconcile()
                    failures.reset()
                except asyncio.CancelledError:
                    raise
                except StoreDamaged as exc:
                    # Nothing a retry can fix: the server is already out of service. Say so once per stretch.
                    if failures.attempt == 0:
                        log.error("reconcile stopped: store damaged", role=self._name, error=str(exc))
                    failures.attempt += 1
                    next_at = self._clock.now() + timedelta(seconds=DAMAGED_RETRY_SECONDS)
                except Exception:
                    delay = failures.next_delay()
                    if failures.attempt <= 3 or failures.attempt % 20 == 0:
                        log.exception("reconcile failed", role=self._name, attempt=failures.attempt)
                    next_at = self._clock.now() + timedelta(seconds=delay)
                await self._sleep_until(next_at)
        finally:
            watcher.cancel()
            # A watcher that already died (a damaged store) must not turn a clean stop into a crash.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watcher

    async def _sleep_until(self, next_at: datetime | None) -> None:
        timeout = self._resync
        if next_at is not None:
            # A pass that asks to run again "now" (after a write conflict) still yields a moment to writers.
            timeout = min(timeout, max(0.05, (next_at - self._clock.now()).total_seconds()))
        with contextlib.suppress(TimeoutError):
            async with self._clock.timeout(timeout):
                await self._wake.wait()

    async def _watch(self) -> None:
        while True:
            try:
                async for event in follow(self._store):
                    # After a gap the pass re-reads everything anyway, so a resync is just a wake-up.
                    if isinstance(event, Resync) or event.kind in self._kinds:
                        self._wake.set()
                return
            except StoreDamaged:
                # The pass reports it; the watch tries again when the pass would.
                await self._clock.sleep(DAMAGED_RETRY_SECONDS)
                self._wake.set()
