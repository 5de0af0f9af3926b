"""How much reading the public API does at once, in one place: caps on expensive reads and Watch batching.

Expensive reads (a page of ListServices, ListNodes or ListTasks, a ListServiceHistory; a PlanApply, which
simulates the roles on a copy of the cluster; an open Watch stream) are capped in number
at once. A call beyond its cap is refused at once with RESOURCE_EXHAUSTED (what, the cap, retry shortly)
instead of queueing: 500 concurrent ListTasks once stalled every other call for up to 7.6 s, because they
all share the store's one connection. Cheap calls (GetService, the writes) are never capped, so they keep
answering while the expensive ones are refused. Refusals are logged, rate-limited, since a peer triggers them.

Watch sends the events already available in one response, up to WATCH_MAX_EVENTS and the list pages' byte
budget, so a commit of 10,000 tasks is a few responses; while the store moves but nothing matches, a
progress response (no events) goes out at most every WATCH_PROGRESS_SECONDS.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Final

import grpc
import structlog

from controller.api.paging import MAX_PAGE_BYTES
from controller.api.status import Context, abort
from dockyard.clock import Clock
from dockyard.logs import Throttle

__all__ = [
    "HANDSHAKE_TIMEOUT_MS",
    "MAX_CONCURRENT_LISTS",
    "MAX_CONCURRENT_PLANS",
    "MAX_OPEN_WATCHES",
    "MAX_REQUEST_BYTES",
    "MAX_REQUEST_ITEMS",
    "SERVER_OPTIONS",
    "WATCH_FEED_DEPTH",
    "WATCH_MAX_BYTES",
    "WATCH_MAX_EVENTS",
    "WATCH_PROGRESS_SECONDS",
    "Gate",
    "ReadCaps",
]

log = structlog.get_logger("controller.api")

# List pages in flight at once. Each parses and sends up to MAX_PAGE_SIZE items on the one event loop, so a
# cheap call waits behind at most this many of them.
MAX_CONCURRENT_LISTS: Final = 8
# PlanApply calls at once. Each runs the reconciler and the scheduler over a copy of the cluster for up to
# controller.api.planning.PLAN_ROUNDS rounds (in a worker thread, but on the interpreter's one lock), so few.
MAX_CONCURRENT_PLANS: Final = 2
# Watch streams open at once. Each holds a store watcher (its queue is bounded by the store) and at most one
# response in the making; the CLI opens one per waiting apply, scale or rm.
MAX_OPEN_WATCHES: Final = 64

# One Watch response holds at most this many events and bytes of events (as list pages do).
WATCH_MAX_EVENTS: Final = 5000
WATCH_MAX_BYTES: Final = MAX_PAGE_BYTES
# A progress response (no events) while the store moves but nothing matches: at most this often.
WATCH_PROGRESS_SECONDS: Final = 1.0
# Events pulled from the store ahead of the client, per stream. Pulling stops when this many wait, so a
# slow client costs this much plus one response (the store's watcher falls back to its table meanwhile).
WATCH_FEED_DEPTH: Final = 256

# What one peer can make the gRPC server hold before any method runs (controller.server passes SERVER_OPTIONS).
# A request is at most MAX_REQUEST_BYTES (RESOURCE_EXHAUSTED beyond, before it is parsed): gRPC's own default,
# stated so it has a home. It holds an apply of 16 specs at the spec table's 256 KiB cap; a session's messages
# from an agent (statuses, an inventory of a few thousand tasks) are far smaller.
MAX_REQUEST_BYTES: Final = 4 * 1024 * 1024
# A connection that has not finished its handshake (TLS, then HTTP/2's preface) within this is closed. gRPC's
# default is 120 s, so a flood of sockets that connect and say nothing held a file descriptor each that long.
HANDSHAKE_TIMEOUT_MS: Final = 5_000
# Items in any one repeated or map field of a request (services to apply, names to watch, labels to set or
# remove, if_revision entries). Each is checked on the one event loop, so a 4 MiB request of 300,000 tiny
# services once held every other call for about 30 s (30,000: 2.4 s); at this cap a request costs tens of ms.
# A request with more is refused before any item is looked at (INVALID_ARGUMENT); the CLI applies a file's
# services in one request, so this is also the most services one file may hold.
MAX_REQUEST_ITEMS: Final = 1000
# No limit on streams per connection (grpc.max_concurrent_streams): grpcio refuses a stream beyond it with
# REFUSED_STREAM, which the client sees as UNAVAILABLE, and channels of one process to one address share a
# connection, so a CLI or a simulated fleet would meet it as an outage. Streams are bounded where they cost:
# list and watch caps above, the hello timeout for sessions.
SERVER_OPTIONS: Final = (
    ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
    ("grpc.server_handshake_timeout_ms", HANDSHAKE_TIMEOUT_MS),
)

# Refusal log lines: at most a few per cap every so often, with the count of those left out.
_REFUSAL_LOG_INTERVAL: Final = 10.0
_REFUSAL_LOG_BURST: Final = 3


@dataclass(frozen=True)
class ReadCaps:
    """How many expensive reads the API serves at once: list pages (and histories), plans, open Watch streams."""

    lists: int = MAX_CONCURRENT_LISTS
    watches: int = MAX_OPEN_WATCHES
    plans: int = MAX_CONCURRENT_PLANS


@dataclass
class Gate:
    """Admits at most `cap` holders at once; a call beyond that is RESOURCE_EXHAUSTED at once, not queued."""

    what: str  # e.g. "list calls", as in "8 list calls are already being served"
    cap: int
    throttle: Throttle
    held: int = field(default=0, init=False)

    @classmethod
    def with_clock(cls, what: str, cap: int, clock: Clock) -> Gate:
        """Returns a gate whose refusal log lines are rate-limited on `clock`."""
        return cls(what, cap, Throttle(clock, interval=_REFUSAL_LOG_INTERVAL, burst=_REFUSAL_LOG_BURST))

    def refusal(self) -> str:
        """Returns the message a refused caller reads."""
        return (
            f"{self.cap} {self.what} are already being served, the most this controller serves at once; retry shortly"
        )

    @contextlib.asynccontextmanager
    async def hold(self, context: Context, method: str) -> AsyncIterator[None]:
        """Holds a place for the body, or ends the RPC with RESOURCE_EXHAUSTED when all `cap` are taken."""
        if self.held >= self.cap:
            suppressed = self.throttle.allow(self.what)
            if suppressed is not None:
                log.warning(
                    "expensive read refused", method=method, what=self.what, cap=self.cap, suppressed=suppressed
                )
            await abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, f"{method}: {self.refusal()}")
        self.held += 1
        try:
            yield
        finally:
            self.held -= 1
