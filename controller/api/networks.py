"""Networks: the API's create, list and remove.

A network made here belongs to no stack; a stack's networks are made by the apply that declares them (or by
the network role for a stack's implicit default network). The cluster network (CLUSTER_NETWORK) exists from
the controller's start and cannot be made or removed here. Removing a network is refused while a service's
spec joins it, naming the services; its subnets go with it, and each agent removes its Docker network once
no container uses it. Subnets are the network role's to give (controller/network/role.py), never the API's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import grpc

from controller.api.bounds import Gate
from controller.api.status import Context, abort, abort_invalid
from controller.api.writes import commit_or_abort, still_as_read
from controller.store.base import Delete, Kind, Put, Store
from dockyard.clock import Clock
from dockyard.spec.issues import Issue, key_path
from dockyard.spec.stacks import CLUSTER_NETWORK, networks_of, object_name_problem
from dockyard.spec.validation import label_issues
from dockyard.timestamps import to_timestamp
from dockyard.v1 import controller_pb2 as cpb
from dockyard.v1 import types_pb2 as pb

__all__ = ["NetworksApi", "network_spec_issues", "network_users"]


def network_spec_issues(spec: cpb.NetworkSpec, path: str = "network") -> list[Issue]:
    """Returns the problems of a NetworkSpec at `path`."""
    issues: list[Issue] = []
    problem = object_name_problem(spec.name)
    if problem is not None:
        issues.append(Issue(key_path(path, "name"), f"{problem}; give the network a name"))
    for key, value in spec.labels.items():
        issues.extend(label_issues(key, value, key_path(key_path(path, "labels"), key)))
    return issues


def network_users(name: str, services: Iterable[pb.Service]) -> list[str]:
    """Returns the names of the services whose containers join network `name` (named, or by default), sorted."""
    return sorted(s.name for s in services if name in networks_of(s.spec))


class NetworksApi:
    """The ControllerService methods of networks (mixed into ControllerApi)."""

    _store: Store
    _clock: Clock
    _new_id: Callable[[], str]
    _lists: Gate

    async def CreateNetwork(self, request: cpb.CreateNetworkRequest, context: Context) -> pb.Network:
        """Makes a network (no subnets yet: a node gets one when a task joining it is placed there)."""
        spec = request.network
        issues = network_spec_issues(spec)
        if issues:
            await abort_invalid(context, issues)
        if spec.name == CLUSTER_NETWORK or await self._store.get_object(Kind.NETWORK, spec.name) is not None:
            await abort(
                context,
                grpc.StatusCode.ALREADY_EXISTS,
                f"network.name: network {spec.name!r} exists; see `dockyard network ls`",
            )
        network = pb.Network(id=self._new_id(), name=spec.name, labels=dict(spec.labels), internal=spec.internal)
        network.created_at.CopyFrom(to_timestamp(self._clock.now()))
        await commit_or_abort(self._store, context, [Put(network, expect_version=0)], "network.name", False)
        return network

    async def ListNetworks(self, request: cpb.ListNetworksRequest, context: Context) -> cpb.ListNetworksResponse:
        """Returns every network with its subnets, by name."""
        async with self._lists.hold(context, "ListNetworks"):
            found = await self._store.list_objects(Kind.NETWORK)
        return cpb.ListNetworksResponse(networks=[n for n in found if isinstance(n, pb.Network)])

    async def RemoveNetwork(self, request: cpb.RemoveNetworkRequest, context: Context) -> cpb.RemoveNetworkResponse:
        """Deletes a network; FAILED_PRECONDITION for the cluster network and while services join it (named)."""
        if not request.name:
            await abort_invalid(context, [Issue("name", "is required; give a network name or id")])
        network = await self._store.get_object(Kind.NETWORK, request.name)
        if not isinstance(network, pb.Network):
            await abort(
                context,
                grpc.StatusCode.NOT_FOUND,
                f"name: network {request.name!r} not found; see `dockyard network ls`",
            )
        if network.name == CLUSTER_NETWORK:
            await abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"name: {CLUSTER_NETWORK!r} is the cluster network, which services without networks join; "
                "it cannot be removed",
            )
        services = await self._store.list_services()
        users = network_users(network.name, services)
        if users:
            await abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"name: network {network.name!r} is used by service(s) {', '.join(users)}; remove it from their "
                "specs (apply them without it) or delete them first",
            )
        await commit_or_abort(
            self._store,
            context,
            # As for secrets: a concurrent apply that joins a service to the network fails this commit, or it.
            [Delete(Kind.NETWORK, network.id, expect_version=network.version), *still_as_read(services)],
            f"networks.{network.name}",
            False,
        )
        return cpb.RemoveNetworkResponse(network=network)
