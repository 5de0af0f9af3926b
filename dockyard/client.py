"""A small synchronous-feeling async client for the public API, with errors as one-line messages."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TypeVar

import grpc

from dockyard.v1 import controller_pb2 as cpb
from dockyard.v1 import controller_pb2_grpc as cpb_grpc
from dockyard.v1 import types_pb2 as pb

T = TypeVar("T")

DEFAULT_DEADLINE = 10.0


class ApiError(Exception):
    """A failed call, with a message fit for one line of output."""


class Client:
    """Calls ControllerService with a deadline on every RPC."""

    def __init__(self, address: str, deadline: float = DEFAULT_DEADLINE) -> None:
        self.address = address
        self._deadline = deadline
        self._channel = grpc.aio.insecure_channel(address)
        self._stub = cpb_grpc.ControllerServiceStub(self._channel)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._channel.close()

    async def _call(self, fn: Callable[..., Awaitable[T]], request: object) -> T:
        try:
            return await fn(request, timeout=self._deadline)
        except grpc.aio.AioRpcError as exc:
            raise ApiError(_describe(exc, self.address)) from None

    async def apply(self, specs: list[pb.ServiceSpec], dry_run: bool = False) -> cpb.ApplyServiceResponse:
        """Creates or updates services atomically."""
        return await self._call(self._stub.ApplyService, cpb.ApplyServiceRequest(services=specs, dry_run=dry_run))

    async def get_service(self, name: str) -> pb.Service:
        """Returns one service by name or id."""
        return await self._call(self._stub.GetService, cpb.GetServiceRequest(name=name))

    async def list_services(self) -> list[pb.Service]:
        """Returns every service."""
        return list((await self._call(self._stub.ListServices, cpb.ListServicesRequest())).services)

    async def delete_service(self, name: str) -> pb.Service:
        """Deletes a service and returns what it was."""
        return (await self._call(self._stub.DeleteService, cpb.DeleteServiceRequest(name=name))).service

    async def scale(self, name: str, replicas: int) -> pb.Service:
        """Sets a service's replica count."""
        return await self._call(self._stub.ScaleService, cpb.ScaleServiceRequest(name=name, replicas=replicas))

    async def list_nodes(self) -> list[pb.Node]:
        """Returns every node."""
        return list((await self._call(self._stub.ListNodes, cpb.ListNodesRequest())).nodes)

    async def list_tasks(self, service: str = "", include_finished: bool = False) -> list[pb.Task]:
        """Returns tasks, of one service when named."""
        request = cpb.ListTasksRequest(service=service, include_finished=include_finished)
        return list((await self._call(self._stub.ListTasks, request)).tasks)

    async def update_node(
        self,
        node: str,
        availability: int = 0,
        set_labels: dict[str, str] | None = None,
        remove_labels: list[str] | None = None,
    ) -> pb.Node:
        """Changes a node's availability and/or operator labels."""
        request = cpb.UpdateNodeRequest(
            node=node,
            availability=availability,  # type: ignore[arg-type]
            set_labels=set_labels or {},
            remove_labels=remove_labels or [],
        )
        return await self._call(self._stub.UpdateNode, request)

    async def remove_node(self, node: str, force: bool = False) -> pb.Node:
        """Forgets a node."""
        return (await self._call(self._stub.RemoveNode, cpb.RemoveNodeRequest(node=node, force=force))).node


def _describe(exc: grpc.aio.AioRpcError, address: str) -> str:
    code = exc.code()
    if code == grpc.StatusCode.UNAVAILABLE:
        return f"cannot reach the controller at {address}: is it running? (dockyard up, or set --controller)"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"the controller at {address} did not answer in time"
    return exc.details() or code.name
