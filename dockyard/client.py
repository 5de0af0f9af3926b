"""A small async client for the public API: deadlines, one-line errors, and lists that follow every page."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from types import TracebackType
from typing import Protocol, TypeVar

import grpc

from dockyard.task_state import SpecKey, spec_key
from dockyard.v1 import controller_pb2 as cpb
from dockyard.v1 import controller_pb2_grpc as cpb_grpc
from dockyard.v1 import types_pb2 as pb

__all__ = ["DEFAULT_DEADLINE", "PAGE_SIZE", "ApiError", "Client", "SpecKey"]

T = TypeVar("T")
R = TypeVar("R", bound="_Paged")

DEFAULT_DEADLINE = 10.0
PAGE_SIZE = 1000  # the server's maximum; it may return fewer (its byte budget per page)

_DETAILS_KEY = "grpc-status-details-bin"


class ApiError(Exception):
    """A failed call, with a message fit for one line of output (several when the server listed problems)."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        """Keeps the gRPC status code (None when the call never reached the API)."""
        super().__init__(message)
        self.code = code


class _Paged(Protocol):
    next_page_token: str


class Client:
    """Calls ControllerService with a deadline on every RPC; list methods return every page."""

    def __init__(self, address: str, deadline: float = DEFAULT_DEADLINE) -> None:
        """Connects lazily to `address`; each RPC (each page of a list) gets `deadline` seconds."""
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
            raise ApiError(_describe(exc, self.address), exc.code()) from None

    async def _pages(self, fn: Callable[..., Awaitable[R]], request: _PageRequest) -> list[R]:
        """Calls a list RPC for every page, passing each next_page_token back, and returns the responses."""
        request.page_size = PAGE_SIZE
        responses: list[R] = []
        seen: set[str] = set()
        while True:
            response = await self._call(fn, request)
            responses.append(response)
            if not response.next_page_token:
                return responses
            if response.next_page_token in seen:
                # A server that hands back a token twice would keep this loop going for ever.
                raise ApiError("the controller repeated a page token; the list is incomplete")
            seen.add(response.next_page_token)
            request.page_token = response.next_page_token

    async def apply(
        self, specs: list[pb.ServiceSpec], dry_run: bool = False, if_revision: Mapping[str, int] | None = None
    ) -> cpb.ApplyServiceResponse:
        """Creates or updates services atomically; `if_revision` (name -> revision, 0: new) makes it conditional."""
        request = cpb.ApplyServiceRequest(services=specs, dry_run=dry_run, if_revision=dict(if_revision or {}))
        return await self._call(self._stub.ApplyService, request)

    async def get_service(self, name: str, revision: int = 0) -> pb.Service:
        """Returns one service by name or id: now, or with the spec it had at `revision`."""
        return await self._call(self._stub.GetService, cpb.GetServiceRequest(name=name, revision=revision))

    async def list_services(self) -> list[pb.Service]:
        """Returns every service."""
        pages = await self._pages(self._stub.ListServices, cpb.ListServicesRequest())
        return [service for page in pages for service in page.services]

    async def delete_service(self, name: str, if_revision: int | None = None) -> pb.Service:
        """Deletes a service and returns what it was; with `if_revision`, only while it is at that revision."""
        request = cpb.DeleteServiceRequest(name=name, if_revision=if_revision)
        return (await self._call(self._stub.DeleteService, request)).service

    async def scale(self, name: str, replicas: int, if_revision: int | None = None) -> pb.Service:
        """Sets a service's replica count; with `if_revision`, only while it is at that revision."""
        request = cpb.ScaleServiceRequest(name=name, replicas=replicas, if_revision=if_revision)
        return await self._call(self._stub.ScaleService, request)

    async def list_nodes(self) -> list[pb.Node]:
        """Returns every node."""
        pages = await self._pages(self._stub.ListNodes, cpb.ListNodesRequest())
        return [node for page in pages for node in page.nodes]

    async def list_tasks(
        self, service: str = "", include_finished: bool = False, full: bool = False, node_id: str = ""
    ) -> list[pb.Task]:
        """Returns tasks, of one service and/or node when named; `full` fills each task's spec (TASK_VIEW_FULL)."""
        view = cpb.TASK_VIEW_FULL if full else cpb.TASK_VIEW_BASIC
        request = cpb.ListTasksRequest(service=service, node_id=node_id, include_finished=include_finished, view=view)
        pages = await self._pages(self._stub.ListTasks, request)
        return [task for page in pages for task in page.tasks]

    async def specs_for(self, tasks: Iterable[pb.Task]) -> dict[SpecKey, pb.ServiceSpec]:
        """Returns the spec of each (service, revision) the tasks run, reading each once; gone ones are left out."""
        specs: dict[SpecKey, pb.ServiceSpec] = {}
        missing: set[SpecKey] = set()
        for task in tasks:
            key = spec_key(task)
            if key in specs or key in missing:
                continue
            try:
                specs[key] = (await self.get_service(task.service_id, revision=task.revision)).spec
            except ApiError as exc:
                if exc.code != grpc.StatusCode.NOT_FOUND:
                    raise
                missing.add(key)  # deleted since, or a revision no longer kept
        return specs

    async def update_node(
        self,
        node: str,
        availability: int = 0,
        set_labels: dict[str, str] | None = None,
        remove_labels: list[str] | None = None,
        if_version: int | None = None,
    ) -> pb.Node:
        """Changes a node's availability and/or operator labels; with `if_version`, only at that version."""
        request = cpb.UpdateNodeRequest(
            node=node,
            availability=availability,  # type: ignore[arg-type]
            set_labels=set_labels or {},
            remove_labels=remove_labels or [],
            if_version=if_version,
        )
        return await self._call(self._stub.UpdateNode, request)

    async def remove_node(self, node: str, force: bool = False, if_version: int | None = None) -> pb.Node:
        """Forgets a node; with `if_version`, only while it is at that version."""
        request = cpb.RemoveNodeRequest(node=node, force=force, if_version=if_version)
        return (await self._call(self._stub.RemoveNode, request)).node


class _PageRequest(Protocol):
    page_size: int
    page_token: str


def _describe(exc: grpc.aio.AioRpcError, address: str) -> str:
    code = exc.code()
    answered = any(key == _DETAILS_KEY for key, _ in exc.trailing_metadata() or ())
    if code == grpc.StatusCode.UNAVAILABLE and not answered:
        # No details: the transport's own UNAVAILABLE, not one the API sent (a damaged store is sent with details).
        return f"cannot reach the controller at {address}: is it running? (dockyard up, or set --controller)"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"the controller at {address} did not answer in time"
    return exc.details() or code.name
