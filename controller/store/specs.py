"""The spec each task runs, by (service id, revision): tasks name their revision, the store keeps its spec once."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping

from controller.store.base import Store
from dockyard.task_state import SpecKey, spec_key
from dockyard.v1 import types_pb2 as pb

__all__ = ["SpecCache", "SpecKey", "current_spec_for"]


def current_spec_for(service: pb.Service, revision: int) -> pb.ServiceSpec | None:
    """Returns the service's current spec when a task at `revision` runs it, else None (read the history).

    From spec_revision on, revisions differ only in controller-only fields (dockyard.spec.diff.same_task_spec),
    which a task's container does not depend on. A spec_revision of 0 was never set, so it answers nothing.
    """
    if 0 < service.spec_revision <= revision <= service.revision:
        return service.spec
    return None


class SpecCache:
    """A read-through cache of the service history: a revision's spec never changes, so entries never go stale."""

    def __init__(self, store: Store, max_bytes: int = 16 * 1024 * 1024) -> None:
        """Keeps specs of at most max_bytes in all (serialized), dropping the least recently used.

        The newest spec is always kept, whatever its size, so a lookup just made is never wasted.
        """
        self._store = store
        self._max_bytes = max_bytes
        self._bytes = 0
        self._specs: OrderedDict[SpecKey, tuple[pb.ServiceSpec, int]] = OrderedDict()

    async def get(self, service_id: str, revision: int) -> pb.ServiceSpec | None:
        """Returns the spec a task at that revision runs, or None once the service (or that revision) is gone."""
        key = (service_id, revision)
        cached = self._specs.get(key)
        if cached is not None:
            self._specs.move_to_end(key)
            return cached[0]
        spec = await self._store.get_service_spec(service_id, revision)
        if spec is None:
            # History keeps only the newest revisions; one since spec_revision is answered from the service.
            service = await self._store.get_service(service_id)
            if service is not None and service.id == service_id:
                spec = current_spec_for(service, revision)
        if spec is not None:
            self._put(key, spec)
        return spec

    async def for_tasks(
        self, tasks: Iterable[pb.Task], services: Mapping[str, pb.Service] | None = None
    ) -> dict[SpecKey, pb.ServiceSpec]:
        """Returns the spec of every (service, revision) the tasks run that can still be found.

        A task whose revision `current_spec_for` its service in `services` (by id) answers takes the current
        spec without a read and without filling the cache. The returned specs are shared: do not change them.
        """
        services = services or {}
        found: dict[SpecKey, pb.ServiceSpec] = {}
        for task in tasks:
            key = spec_key(task)
            if key in found:
                continue
            service = services.get(task.service_id)
            spec = current_spec_for(service, task.revision) if service is not None else None
            if spec is None:
                spec = await self.get(*key)
            if spec is not None:
                found[key] = spec
        return found

    def _put(self, key: SpecKey, spec: pb.ServiceSpec) -> None:
        old = self._specs.pop(key, None)
        if old is not None:
            self._bytes -= old[1]
        size = spec.ByteSize()
        self._specs[key] = (spec, size)
        self._bytes += size
        while self._bytes > self._max_bytes and len(self._specs) > 1:
            _, (_, dropped) = self._specs.popitem(last=False)
            self._bytes -= dropped
