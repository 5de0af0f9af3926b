"""The loop every level-triggered role runs: hand it what changed, run its pass, sleep until more changes or a timer.

A pass is given the store's events since the previous pass, coalesced to the newest event per object in
revision order, or None, meaning "everything may have changed: read it all". None comes at start, after a
RESYNC (the follower missed events), after the watch met a damaged store, and every FULL_PASS_SECONDS as a
safety net for a change the role's dirty-set rules failed to foresee.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Collection, Sequence
from datetime import datetime

import structlog

from controller.errors import DAMAGED_RETRY_SECONDS, StoreDamaged
from controller.store.base import Event, Kind, Store
from controller.store.follow import Resync, follow
from dockyard.backoff import Backoff
from dockyard.clock import Clock

log = structlog.get_logger()

# How often a role re-reads everything although no event asked for it. The full pass only bounds the damage of a
# change the roles' dirty-set rules did not foresee, so it should be rare, not quick: at 10,000 tasks it costs
# 0.13 s idle and up to 5.3 s during a large deploy (docs/design/controller.md), which every 60 s is at most
# a tenth of a core, while a missed change still heals within a minute.
FULL_PASS_SECONDS = 60.0

Changes = Sequence[Event]
Reconcile = Callable[[Changes | None], Awaitable[datetime | None]]


class Reactor:
    """Runs reconcile(changes) when objects of the given kinds change, at the time it asks for, and full passes.

    Events arriving during a pass are handed to the next one. A pass that raises is handed its changes again,
    merged under whatever arrived since, after a backoff.
    """

    def __init__(
        self,
        name: str,
        store: Store,
        reconcile: Reconcile,
        kinds: Collection[Kind],
        clock: Clock,
        full_pass_seconds: float = FULL_PASS_SECONDS,
    ) -> None:
        self._name = name
        self._store = store
        self._reconcile = reconcile
        self._kinds = frozenset(kinds)
        self._clock = clock
        self._full_pass = full_pass_seconds
        self._wake = asyncio.Event()
        # The newest event per object since the last pass took them; insertion order is not revision order.
        self._pending: dict[tuple[Kind, str], Event] = {}
        self._everything = True  # the first pass reads everything
        self._full_due = 0.0

    @property
    def waiting(self) -> int:
        """How many changed objects wait for the next pass."""
        return len(self._pending)

    async def run(self) -> None:
        """Runs until cancelled; a failing pass is logged and retried, never fatal."""
        # The feed starts at the revision the first (full) pass can read no earlier than, taken now: the watcher
        # task subscribes only once it first runs, and a commit between the two would be in neither.
        watcher = asyncio.create_task(self._watch(self._store.revision), name=f"{self._name}-watch")
        # A pass that keeps crashing must not spin: retries back off up to the full-pass period.
        failures = Backoff(base=0.1, cap=self._full_pass)
        try:
            while True:
                changes = self._take()
                try:
                    next_at = await self._reconcile(changes)
                except asyncio.CancelledError:
                    raise
                except StoreDamaged as exc:
                    # Nothing a retry can fix: the server is already out of service. Say so once per stretch.
                    if failures.attempt == 0:
                        log.error("reconcile stopped: store damaged", role=self._name, error=str(exc))
                    failures.attempt += 1
                    delay = DAMAGED_RETRY_SECONDS
                except Exception:
                    delay = failures.next_delay()
                    if failures.attempt <= 3 or failures.attempt % 20 == 0:
                        log.exception("reconcile failed", role=self._name, attempt=failures.attempt)
                else:
                    failures.reset()
                    await self._sleep_until(next_at)
                    continue
                self._give_back(changes)
                # A failed pass waits out its delay whatever arrives meanwhile; what arrives is kept for it.
                await self._clock.sleep(delay)
        finally:
            watcher.cancel()
            # A watcher that already died (a damaged store) must not turn a clean stop into a crash.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watcher

    def _take(self) -> Changes | None:
        """Returns what changed since the last pass (None: everything) and starts collecting afresh."""
        self._wake.clear()
        if self._clock.monotonic() >= self._full_due:
            self._everything = True
        pending, self._pending = self._pending, {}
        if self._everything:
            self._everything = False
            self._full_due = self._clock.monotonic() + self._full_pass
            return None
        return sorted(pending.values(), key=lambda event: event.revision)

    def _give_back(self, changes: Changes | None) -> None:
        """Returns a failed pass's changes to the queue; an object's newer event, if one came since, wins."""
        if changes is None:
            self._everything = True
            return
        for event in changes:
            self._pending.setdefault((event.kind, event.id), event)

    async def _sleep_until(self, next_at: datetime | None) -> None:
        timeout = max(0.0, self._full_due - self._clock.monotonic())
        if next_at is not None:
            # A pass that asks to run again "now" (after a write conflict) still yields a moment to writers.
            timeout = min(timeout, max(0.05, (next_at - self._clock.now()).total_seconds()))
        if self._wake.is_set():
            return
        with contextlib.suppress(TimeoutError):
            async with self._clock.timeout(timeout):
                await self._wake.wait()

    async def _watch(self, since: int) -> None:
        start: int | None = since
        while True:
            try:
                async for event in follow(self._store, start):
                    if isinstance(event, Resync):
                        # Events were missed: only a pass that reads everything can make up for them.
                        self._everything = True
                        self._wake.set()
                    elif event.kind in self._kinds:
                        self._pending[(event.kind, event.id)] = event
                        self._wake.set()
                return
            except StoreDamaged:
                # The pass reports it; the watch tries again when the pass would, and what it missed meanwhile
                # is unknown.
                await self._clock.sleep(DAMAGED_RETRY_SECONDS)
                start = None  # from now: the full pass this asks for reads what came before
                self._everything = True
                self._wake.set()
