"""The spec each task runs, by (service id, revision): tasks name their revision, the store keeps its spec once."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping

from controller.store.base import Store
from dockyard.task_state import SpecKey, spec_key
from dockyard.v1 import types_pb2 as pb

__all__ = ["SpecCache", "SpecKey"]


class SpecCache:
    """A read-through cache of the service history: a revision's spec never changes, so entries never go stale."""

    def __init__(self, store: Store, max_entries: int = 1024) -> None:
        """Keeps at most max_entries specs, dropping the least recently used."""
        self._store = store
        self._max = max_entries
        self._specs: OrderedDict[SpecKey, pb.ServiceSpec] = OrderedDict()

    def remember(self, service: pb.Service) -> None:
        """Caches a service's current spec under its revision (saves a read for tasks at that revision)."""
        self._put((service.id, service.revision), service.spec)

    async def get(self, service_id: str, revision: int) -> pb.ServiceSpec | None:
        """Returns the spec of that revision, or None once the service (and its history) is gone."""
        key = (service_id, revision)
        spec = self._specs.get(key)
        if spec is not None:
            self._specs.move_to_end(key)
            return spec
        spec = await self._store.get_service_spec(service_id, revision)
        if spec is not None:
            self._put(key, spec)
        return spec

    async def for_tasks(
        self, tasks: Iterable[pb.Task], services: Mapping[str, pb.Service] | None = None
    ) -> dict[SpecKey, pb.ServiceSpec]:
        """Returns the spec of every (service, revision) the tasks run that can still be found.

        A task at its service's current revision takes the spec from `services` (by id) without a read.
        The returned specs are shared: callers must not change them.
        """
        for service in (services or {}).values():
            self.remember(service)
        found: dict[SpecKey, pb.ServiceSpec] = {}
        for task in tasks:
            key = spec_key(task)
            if key in found:
                continue
            spec = await self.get(*key)
            if spec is not None:
                found[key] = spec
        return found

    def _put(self, key: SpecKey, spec: pb.ServiceSpec) -> None:
        self._specs[key] = spec
        self._specs.move_to_end(key)
        while len(self._specs) > self._max:
            self._specs.popitem(last=False)
