"""The dispatcher's group committer: every agent's status reports and node changes, few transactions.

Sessions hand reports over and go back to reading at once; nothing a session reads waits for the store.
Pending reports are coalesced per (node, task) (the further-along report wins, as states only move forward),
node changes per node (the latest intent wins), and whatever is pending is judged against fresh reads and
committed in one transaction, then the next batch. A node's tasks are read with one list_tasks(node_id=...)
per node and batch, never one read per reported id: only the first FORGERY_PROBES ids of a node's batch that are
not among its tasks are looked up by id, to tell a task deleted meanwhile (a race, refused quietly) from another
node's task (a forgery, refused and handed to on_forged so the dispatcher can end that session); further such
ids cost only memory and are refused unread. Every written status is stamped with the time its report arrived.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

import structlog

from controller.dispatcher.bounds import (
    COMMIT_BATCH_STATUSES,
    COMMIT_WINDOW_SECONDS,
    NETWORK_NAME_BYTES,
    PENDING_STATUSES_PER_NODE,
    TASK_ADDRESSES,
)
from controller.dispatcher.status import judge_status
from controller.errors import StoreDamaged
from controller.store.base import ConflictError, Put, Store
from controller.store.retry import retry_on_conflict
from dockyard.backoff import Backoff
from dockyard.clock import Clock
from dockyard.limits import CONTAINER_ID_BYTES, HEALTH_OUTPUT_BYTES, STATUS_TEXT_BYTES, clean_text
from dockyard.logs import Throttle
from dockyard.v1 import types_pb2 as pb

log = structlog.get_logger()

# Why a report on an id that is not among the node's tasks, past the look-ups of a batch, is refused.
_NOT_OWNED = "not a task of this node"

# Given the stored node (a copy, or None when there is none), returns the node to write, or None to write nothing.
# It runs at commit time, on every attempt, so it decides on fresh data.
NodeIntent = Callable[[pb.Node | None], pb.Node | None]

# Told (node id, task id, why) once per node and committed batch when the node reported on a task that exists but
# is not its own; the dispatcher closes that node's session with PERMISSION_DENIED.
OnForged = Callable[[str, str, str], None]

# A pending report: the status as the agent sent it (text already bounded) and when the controller received it.
_Report = tuple[pb.TaskStatus, datetime]

# How many refused task ids one log line names as examples.
_SAMPLES = 3

# Per node and batch, how many reported ids that are not the node's are looked up to find a forgery. An honest
# agent reports on few deleted tasks at once, and a forger is caught by its first forged id within these; past
# them, a flood of ids costs no read (a forged report among them is still refused, only not traced).
FORGERY_PROBES = 16


@dataclass
class _NodeWrite:
    intent: NodeIntent
    # Everyone waiting for this node's change; a later intent for the node takes over the earlier waiters.
    waiters: list[asyncio.Future[None]] = field(default_factory=list)


@dataclass
class _Refusals:
    """Reports of one node refused in one batch: counts per reason and a few ids, for one log line."""

    reasons: Counter[str] = field(default_factory=Counter)
    samples: list[str] = field(default_factory=list)
    # The first report on another node's task, as (task id, why); None when there was none.
    forged: tuple[str, str] | None = None

    def add(self, reason: str, task_id: str, forged: bool) -> None:
        self.reasons[reason] += 1
        if len(self.samples) < _SAMPLES:
            self.samples.append(task_id[:64])
        if forged and self.forged is None:
            self.forged = (task_id[:64], reason)


class GroupCommitter:
    """Batches reported statuses and node changes from all sessions into few transactions."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        throttle: Throttle,
        *,
        window: float = COMMIT_WINDOW_SECONDS,
        per_node: int = PENDING_STATUSES_PER_NODE,
        batch: int = COMMIT_BATCH_STATUSES,
        on_forged: OnForged | None = None,
    ) -> None:
        """Commits through `store`; on_forged hears of reports on other nodes' tasks (see OnForged)."""
        self._store = store
        self._clock = clock
        self._throttle = throttle
        self._window = window
        self._per_node = per_node
        self._batch = batch
        self._on_forged = on_forged
        self._statuses: dict[str, dict[str, _Report]] = {}
        self._nodes: dict[str, _NodeWrite] = {}
        self._wake = asyncio.Event()

    @property
    def pending(self) -> int:
        """How many (node, task) reports and node changes wait for a commit."""
        return sum(len(s) for s in self._statuses.values()) + len(self._nodes)

    def add_statuses(self, node_id: str, updates: Iterable[tuple[str, pb.TaskStatus]]) -> int:
        """Queues a node's reports, coalesced per task; returns how many were refused for the node's cap.

        Memory only: a report for a task already pending replaces it unless it is behind it; a new task id
        past the cap is refused without being looked at further. The reports are taken as arriving now.
        """
        arrived = self._clock.now()
        pending = self._statuses.setdefault(node_id, {})
        refused = 0
        for task_id, status in updates:
            known = pending.get(task_id)
            if known is None:
                if len(pending) >= self._per_node:
                    refused += 1
                    continue
            elif status.state < known[0].state:
                continue  # an older report overtaken; the state cannot go back anyway
            bound_status_text(status)
            pending[task_id] = (status, arrived)
        if not pending:
            del self._statuses[node_id]
        else:
            self._wake.set()
        return refused

    def write_node(self, node_id: str, intent: NodeIntent) -> asyncio.Future[None]:
        """Queues a change to a node (the latest intent per node wins); the future is done once it is committed.

        The future fails with the error that stopped the commit (the store damaged, say).
        """
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        earlier = self._nodes.get(node_id)
        self._nodes[node_id] = _NodeWrite(intent, [*(earlier.waiters if earlier else []), done])
        self._wake.set()
        return done

    async def run(self) -> None:
        """Commits pending work batch after batch until cancelled; a refused write is retried after a pause."""
        failures = Backoff(base=0.1, cap=5.0)
        while True:
            await self._wake.wait()
            if self._window > 0:
                await self._clock.sleep(self._window)
            self._wake.clear()
            if await self.flush():
                failures.reset()
            else:
                await self._clock.sleep(failures.next_delay())
            if self._statuses or self._nodes:
                self._wake.set()  # more than one batch was pending

    async def flush(self) -> bool:
        """Commits what is pending now (at most one batch of statuses, every node change) in one transaction.

        On a conflict everything is judged again on fresh reads (bounded tries); if it still loses, the batch
        goes back to pending (newer reports win) for the next round. Any other refused write (disk full, an
        I/O error) also puts the batch back and returns False, so the caller pauses: one failing write must
        neither lose reports nor end the dispatcher. StoreDamaged propagates after failing the node waiters.
        """
        nodes, self._nodes = self._nodes, {}
        statuses = self._take_batch()
        if not nodes and not statuses:
            return True
        try:
            refusals = await retry_on_conflict(lambda: self._attempt(nodes, statuses))
        except ConflictError:
            self._requeue(nodes, statuses)
            if self._throttle.allow("status commit conflicts") is not None:
                log.warning("status batch lost repeated conflicts; retrying", statuses=sum(map(len, statuses.values())))
            return True
        except StoreDamaged as exc:
            self._fail_waiters(nodes, exc)
            raise
        except Exception as exc:
            self._requeue(nodes, statuses)
            suppressed = self._throttle.allow("status commit failed")
            if suppressed is not None:
                log.error("status batch not committed; retrying", error=str(exc), lines_suppressed=suppressed)
            return False
        except BaseException as exc:
            self._fail_waiters(nodes, exc)
            raise
        for write in nodes.values():
            for waiter in write.waiters:
                if not waiter.done():
                    waiter.set_result(None)
        for node_id, refused in refusals.items():
            if refused.forged is not None:
                self._forged(node_id, *refused.forged)
            suppressed = self._throttle.allow(f"status refused:{node_id}")
            if suppressed is not None:
                log.warning(
                    "status refused",
                    node_id=node_id,
                    count=sum(refused.reasons.values()),
                    reasons=dict(refused.reasons),
                    task_ids=refused.samples,
                    lines_suppressed=suppressed,
                )
        return True

    def _forged(self, node_id: str, task_id: str, reason: str) -> None:
        """Hands a forgery to on_forged; a callback that raises is logged, never the end of the committer."""
        if self._on_forged is None:
            return
        try:
            self._on_forged(node_id, task_id, reason)
        except Exception:
            log.exception("forged status not handled", node_id=node_id, task_id=task_id)

    def _fail_waiters(self, nodes: dict[str, _NodeWrite], exc: BaseException) -> None:
        """Ends the waiters of node changes that will not be written: with the error, or cancelled."""
        for write in nodes.values():
            for waiter in write.waiters:
                if waiter.done():
                    continue
                if isinstance(exc, Exception):
                    waiter.set_exception(exc)
                    waiter.exception()  # marked retrieved: a waiter that went away must not warn
                else:
                    waiter.cancel()

    def _take_batch(self) -> dict[str, dict[str, _Report]]:
        """Takes whole nodes' pending reports, up to the batch bound (at least one node's)."""
        taken: dict[str, dict[str, _Report]] = {}
        count = 0
        for node_id in list(self._statuses):
            size = len(self._statuses[node_id])
            if taken and count + size > self._batch:
                break
            taken[node_id] = self._statuses.pop(node_id)
            count += size
        return taken

    async def _attempt(
        self, nodes: dict[str, _NodeWrite], statuses: dict[str, dict[str, _Report]]
    ) -> dict[str, _Refusals]:
        ops: list[Put] = []
        for node_id, write in nodes.items():
            stored = await self._store.get_node(node_id)
            copy = None
            if stored is not None:
                copy = pb.Node()
                copy.CopyFrom(stored)
            changed = write.intent(copy)
            if changed is not None:
                ops.append(Put(changed, expect_version=stored.version if stored is not None else 0))
        refusals: dict[str, _Refusals] = {}
        for node_id, updates in statuses.items():
            owned = {task.id: task for task in await self._store.list_tasks(node_id=node_id)}
            probes = FORGERY_PROBES
            for task_id, (status, arrived) in updates.items():
                task = owned.get(task_id)
                if task is None:
                    if not probes:
                        refusals.setdefault(node_id, _Refusals()).add(_NOT_OWNED, task_id, False)
                        continue
                    # Not the node's: deleted meanwhile, or someone else's. Only the stored task can tell.
                    probes -= 1
                    task = await self._store.get_task(task_id)
                verdict = judge_status(task, node_id, status, arrived)
                if verdict.refused:
                    refusals.setdefault(node_id, _Refusals()).add(verdict.refused, task_id, verdict.forged)
                if verdict.task is not None:
                    ops.append(Put(verdict.task, expect_version=verdict.task.version))
        if ops:
            await self._store.commit(ops)
        return refusals

    def _requeue(self, nodes: dict[str, _NodeWrite], statuses: dict[str, dict[str, _Report]]) -> None:
        """Puts a batch that kept conflicting back, behind anything newer that arrived meanwhile."""
        for node_id, write in nodes.items():
            newer = self._nodes.get(node_id)
            if newer is None:
                self._nodes[node_id] = write
            else:
                newer.waiters[:0] = write.waiters
        for node_id, updates in statuses.items():
            pending = self._statuses.setdefault(node_id, {})
            for task_id, report in updates.items():
                known = pending.get(task_id)
                # The same state again may carry news (a health change of a running task): the later one wins.
                if known is None or known[0].state <= report[0].state:
                    pending[task_id] = report
        self._wake.set()


def bound_status_text(status: pb.TaskStatus) -> None:
    """Cuts an agent-reported status message, error and container id to the protocol's limits, in place, with
    control characters (but tab and newline) replaced: they are shown to operators as they are stored."""
    status.message = clean_text(status.message, STATUS_TEXT_BYTES)
    status.health.output = clean_text(status.health.output, HEALTH_OUTPUT_BYTES)
    status.error = clean_text(status.error, STATUS_TEXT_BYTES)
    status.container_id = clean_text(status.container_id, CONTAINER_ID_BYTES)
    bound_addresses(status)


def bound_addresses(status: pb.TaskStatus) -> None:
    """Keeps, in place, at most TASK_ADDRESSES of the reported addresses: IPv4 ones, on sanely named networks."""
    kept: dict[str, str] = {}
    for network in sorted(status.addresses):
        address = status.addresses[network]
        if len(kept) < TASK_ADDRESSES and 0 < len(network.encode()) <= NETWORK_NAME_BYTES and _is_ipv4(address):
            kept[network] = address
    if len(kept) != len(status.addresses):
        status.ClearField("addresses")
        status.addresses.update(kept)


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True
