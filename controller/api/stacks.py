"""Stacks: the services of one Compose file with the networks, volumes, secrets and configs it made.

A stack is not stored as an object of its own: it is the services whose spec names it and the objects
whose `stack` field does. RemoveStack deletes its services and, in the same transaction, its networks,
secrets and configs that no service left in the cluster refers to; its volumes stay (their data), as
`docker stack rm` leaves them. The tasks of the deleted services are then stopped by the orchestrator;
they have their files and networks already, and an agent removes a Docker network once no container uses it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import grpc

from controller.api.bounds import Gate
from controller.api.status import Context, abort, abort_invalid
from controller.api.writes import commit_or_abort, still_as_read
from controller.store.base import Delete, Kind, NamedObject, Op, Store, object_id
from dockyard.spec.issues import Issue
from dockyard.spec.stacks import networks_of, stack_problem
from dockyard.v1 import controller_pb2 as cpb
from dockyard.v1 import types_pb2 as pb

__all__ = ["StacksApi", "stacks_of"]

# The object kinds a stack owns, in the order RemoveStack reports them.
_OWNED = (Kind.NETWORK, Kind.VOLUME, Kind.SECRET, Kind.CONFIG)


@dataclass
class _Members:
    services: list[pb.Service] = field(default_factory=list)
    objects: dict[Kind, list[NamedObject]] = field(default_factory=dict)


def _group(services: Iterable[pb.Service], objects: dict[Kind, list[NamedObject]]) -> dict[str, _Members]:
    stacks: dict[str, _Members] = {}
    for service in services:
        if service.spec.stack:
            stacks.setdefault(service.spec.stack, _Members()).services.append(service)
    for kind, items in objects.items():
        for obj in items:
            stack = getattr(obj, "stack", "")
            if stack:
                stacks.setdefault(stack, _Members()).objects.setdefault(kind, []).append(obj)
    return stacks


def _message(name: str, members: _Members) -> cpb.Stack:
    def names(kind: Kind) -> list[str]:
        return sorted(getattr(o, "name", "") for o in members.objects.get(kind, []))

    return cpb.Stack(
        name=name,
        services=sorted(s.name for s in members.services),
        networks=names(Kind.NETWORK),
        volumes=names(Kind.VOLUME),
        secrets=names(Kind.SECRET),
        configs=names(Kind.CONFIG),
    )


def stacks_of(services: Iterable[pb.Service], objects: dict[Kind, list[NamedObject]]) -> list[cpb.Stack]:
    """Returns every stack that services or objects name, by name."""
    grouped = _group(services, objects)
    return [_message(name, grouped[name]) for name in sorted(grouped)]


def still_used(kind: Kind, name: str, services: Sequence[pb.Service]) -> bool:
    """Tells whether a service's spec refers to the network, secret or config `name`."""
    for service in services:
        spec = service.spec
        if kind is Kind.NETWORK and name in networks_of(spec):
            return True
        if kind is Kind.SECRET and any(r.name == name for r in spec.secrets):
            return True
        if kind is Kind.CONFIG and any(r.name == name for r in spec.configs):
            return True
    return False


class StacksApi:
    """The ControllerService methods of stacks (mixed into ControllerApi)."""

    _store: Store
    _lists: Gate

    async def _objects(self) -> dict[Kind, list[NamedObject]]:
        return {kind: await self._store.list_objects(kind) for kind in _OWNED}

    async def ListStacks(self, request: cpb.ListStacksRequest, context: Context) -> cpb.ListStacksResponse:
        """Returns every stack with the names of its services and objects."""
        async with self._lists.hold(context, "ListStacks"):
            return cpb.ListStacksResponse(stacks=stacks_of(await self._store.list_services(), await self._objects()))

    async def RemoveStack(self, request: cpb.RemoveStackRequest, context: Context) -> cpb.RemoveStackResponse:
        """Deletes the stack's services, and its networks, secrets and configs no other service uses; volumes stay.

        The answer lists what was removed, and under volumes the volumes left in place.
        """
        problem = stack_problem(request.name) if request.name else "is required; give a stack name"
        if problem is not None:
            await abort_invalid(context, [Issue("name", problem)])
        services = await self._store.list_services()
        members = _group(services, await self._objects()).get(request.name)
        if members is None:
            await abort(
                context, grpc.StatusCode.NOT_FOUND, f"name: stack {request.name!r} not found; see `dockyard stack ls`"
            )
        gone = {s.id for s in members.services}
        left = [s for s in services if s.id not in gone]
        ops: list[Op] = [Delete(Kind.SERVICE, s.id, expect_version=s.version) for s in members.services]
        removed = _Members(services=list(members.services))
        for kind in (Kind.NETWORK, Kind.SECRET, Kind.CONFIG):
            for obj in members.objects.get(kind, []):
                if not still_used(kind, getattr(obj, "name", ""), left):
                    ops.append(Delete(kind, object_id(obj), expect_version=obj.version))
                    removed.objects.setdefault(kind, []).append(obj)
        removed.objects[Kind.VOLUME] = members.objects.get(Kind.VOLUME, [])
        # The objects' users were judged from `left`: a service given one of them meanwhile fails this commit.
        ops.extend(still_as_read(left))
        await commit_or_abort(self._store, context, ops, f"stacks.{request.name}", False)
        return cpb.RemoveStackResponse(stack=_message(request.name, removed))
