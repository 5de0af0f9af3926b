"""Service discovery records from services and tasks: pure, kept incrementally, diffed into deltas.

A name (dockyard.spec.stacks.dns_name of the service's spec) answers the addresses of the service's tasks
that count: wanted running, running, not starting or unhealthy by their health check, and with an address
the agent reported (TaskStatus.addresses). A name none of whose tasks counts is not in the table (the
agents answer NXDOMAIN). `dns_records` says it from scratch; `DnsIndex` keeps the same answer as events
arrive, so the dispatcher never rereads every task to publish a change.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

from dockyard.spec.stacks import dns_name
from dockyard.v1 import agent_pb2 as apb
from dockyard.v1 import types_pb2 as pb

__all__ = [
    "DnsIndex",
    "Records",
    "counts",
    "dns_delta",
    "dns_message",
    "dns_records",
    "merge_dns",
    "task_addresses",
]

# name -> the addresses it answers, sorted, never empty
Records = dict[str, tuple[str, ...]]

_NOT_READY = frozenset({pb.TaskHealth.STATE_STARTING, pb.TaskHealth.STATE_UNHEALTHY})


def task_addresses(task: pb.Task) -> frozenset[str]:
    """The task's IPv4 addresses on its networks, as the agent reported them (anything else ignored)."""
    found = set()
    for text in task.status.addresses.values():
        try:
            found.add(str(ipaddress.IPv4Address(text)))
        except ValueError:
            continue
    return frozenset(found)


def counts(task: pb.Task) -> bool:
    """Tells whether the task answers for its service: wanted running, running, healthy or unchecked, addressed."""
    return (
        task.desired_state == pb.DESIRED_STATE_RUNNING
        and task.status.state == pb.TASK_STATE_RUNNING
        and task.status.health.state not in _NOT_READY
        and bool(task_addresses(task))
    )


def _sorted(addresses: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(set(addresses), key=lambda a: int(ipaddress.IPv4Address(a))))


def dns_records(services: Iterable[pb.Service], tasks: Iterable[pb.Task]) -> Records:
    """Returns every name with the addresses of its service's counting tasks; names without any are left out."""
    names = {s.id: dns_name(s.spec) for s in services}
    found: dict[str, set[str]] = {}
    for task in tasks:
        name = names.get(task.service_id)
        if name is not None and counts(task):
            found.setdefault(name, set()).update(task_addresses(task))
    return {name: _sorted(addresses) for name, addresses in found.items()}


def dns_delta(before: Mapping[str, tuple[str, ...]], after: Mapping[str, tuple[str, ...]]) -> Records:
    """Returns the records that differ from `before` to `after`; a name that went maps to () ("gone")."""
    delta: Records = {name: addresses for name, addresses in after.items() if before.get(name) != addresses}
    delta.update({name: () for name in before if name not in after})
    return delta


class DnsIndex:
    """dns_records kept up to date one event at a time; `take_changes` says which names may have changed."""

    def __init__(self) -> None:
        """An empty index; `reset` loads a whole state."""
        self._names: dict[str, str] = {}  # service id -> name
        self._tasks: dict[str, tuple[str, frozenset[str]]] = {}  # counting task id -> (service id, addresses)
        self._by_service: dict[str, set[str]] = {}  # service id -> its counting task ids
        self._dirty: set[str] = set()  # names whose record may have changed since take_changes

    def reset(self, services: Iterable[pb.Service], tasks: Iterable[pb.Task]) -> None:
        """Forgets everything and loads the given state; every name old or new is marked changed."""
        self._dirty.update(self._names.values())
        self._names, self._tasks, self._by_service = {}, {}, {}
        for service in services:
            self.on_service(service, deleted=False)
        for task in tasks:
            self.on_task(task, deleted=False)

    def on_service(self, service: pb.Service, deleted: bool) -> None:
        """Takes a service's put or delete."""
        old = self._names.pop(service.id, None)
        if old is not None:
            self._dirty.add(old)
        if not deleted:
            self._names[service.id] = dns_name(service.spec)
            self._dirty.add(self._names[service.id])

    def on_task(self, task: pb.Task, deleted: bool) -> None:
        """Takes a task's put or delete."""
        before = self._tasks.pop(task.id, None)
        if before is not None:
            self._by_service[before[0]].discard(task.id)
            self._mark(before[0])
        if not deleted and counts(task):
            self._tasks[task.id] = (task.service_id, task_addresses(task))
            self._by_service.setdefault(task.service_id, set()).add(task.id)
            self._mark(task.service_id)

    def _mark(self, service_id: str) -> None:
        name = self._names.get(service_id)
        if name is not None:
            self._dirty.add(name)

    @property
    def dirty(self) -> bool:
        """Whether any name may have changed since the last take_changes."""
        return bool(self._dirty)

    def records(self) -> Records:
        """Returns the whole table, as dns_records would from the same state."""
        found: dict[str, set[str]] = {}
        for service_id, name in self._names.items():
            for task_id in self._by_service.get(service_id, ()):
                found.setdefault(name, set()).update(self._tasks[task_id][1])
        return {name: _sorted(addresses) for name, addresses in found.items() if addresses}

    def take_changes(self, published: Mapping[str, tuple[str, ...]]) -> Records:
        """Returns the records of the names changed since the last call that differ from `published` (() = gone)."""
        dirty, self._dirty = self._dirty, set()
        if not dirty:
            return {}
        now: dict[str, set[str]] = {name: set() for name in dirty}
        for service_id, name in self._names.items():
            if name in now:
                for task_id in self._by_service.get(service_id, ()):
                    now[name].update(self._tasks[task_id][1])
        current = {name: _sorted(addresses) for name, addresses in now.items() if addresses}
        return dns_delta({n: a for n, a in published.items() if n in dirty}, current)


def dns_message(records: Mapping[str, tuple[str, ...]], version: int, full: bool) -> apb.DnsTable:
    """Returns a DnsTable of the records, by name; in a delta, a name with no addresses is gone."""
    return apb.DnsTable(
        version=version,
        full=full,
        records=[apb.DnsRecord(name=name, addresses=records[name]) for name in sorted(records)],
    )


def merge_dns(pending: apb.DnsTable | None, table: apb.DnsTable) -> apb.DnsTable:
    """Returns what one message must say to mean `pending` then `table` (a full table replaces all before it)."""
    if pending is None or table.full:
        return table
    merged = {r.name: tuple(r.addresses) for r in pending.records}
    for record in table.records:
        if record.addresses or not pending.full:
            merged[record.name] = tuple(record.addresses)
        else:
            merged.pop(record.name, None)  # a full table simply leaves a gone name out
    return dns_message(merged, table.version, pending.full)
