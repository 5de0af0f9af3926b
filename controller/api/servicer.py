"""The public ControllerService: validates each request and writes desired state to the store."""

from __future__ import annotations

from collections.abc import Callable
from typing import NoReturn

import grpc

from controller.api.apply import plan_apply
from controller.api.validation import apply_errors, node_label_errors, replicas_error
from controller.store.base import ConflictError, Delete, Kind, Put, Store
from dockyard.clock import Clock
from dockyard.task_state import is_terminal
from dockyard.timestamps import to_timestamp
from dockyard.v1 import controller_pb2 as cpb
from dockyard.v1 import controller_pb2_grpc as cpb_grpc
from dockyard.v1 import types_pb2 as pb

Context = grpc.aio.ServicerContext[object, object]


class ControllerApi(cpb_grpc.ControllerServiceServicer):
    """Validates, then writes services; reads nodes and tasks. It never talks to the other roles."""

    def __init__(self, store: Store, clock: Clock, new_id: Callable[[], str]) -> None:
        self._store = store
        self._clock = clock
        self._new_id = new_id

    async def ApplyService(self, request: cpb.ApplyServiceRequest, context: Context) -> cpb.ApplyServiceResponse:
        """Creates or updates every service of the request atomically; an invalid request writes nothing."""
        errors = apply_errors(request.services)
        if errors:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "\n".join(map(str, errors)))
        existing = {s.name: s for s in await self._store.list_services()}
        plan = plan_apply(request.services, existing, self._clock.now(), self._new_id)
        if plan.puts and not request.dry_run:
            try:
                await self._store.commit(plan.puts)
            except ConflictError:
                await _abort(context, grpc.StatusCode.ABORTED, "services: changed concurrently; apply again")
        return cpb.ApplyServiceResponse(results=plan.results)

    async def GetService(self, request: cpb.GetServiceRequest, context: Context) -> pb.Service:
        """Returns one service by name or id."""
        return await self._service(request.name, context)

    async def ListServices(self, request: cpb.ListServicesRequest, context: Context) -> cpb.ListServicesResponse:
        """Returns every service."""
        return cpb.ListServicesResponse(services=await self._store.list_services())

    async def DeleteService(self, request: cpb.DeleteServiceRequest, context: Context) -> cpb.DeleteServiceResponse:
        """Deletes a service; the orchestrator then stops and removes its tasks."""
        service = await self._service(request.name, context)
        try:
            await self._store.commit([Delete(Kind.SERVICE, service.id, expect_version=service.version)])
        except ConflictError:
            await _abort(context, grpc.StatusCode.ABORTED, f"name: service {request.name!r} changed; try again")
        return cpb.DeleteServiceResponse(service=service)

    async def ScaleService(self, request: cpb.ScaleServiceRequest, context: Context) -> pb.Service:
        """Sets a service's replica count as a new revision."""
        problem = replicas_error(request.replicas)
        if problem:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(problem))
        service = await self._service(request.name, context)
        if service.spec.mode == pb.SERVICE_MODE_GLOBAL:
            await _abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"name: {service.name!r} is a global service (one task per eligible node); it cannot be scaled",
            )
        if service.spec.replicas == request.replicas:
            return service
        scaled = pb.Service()
        scaled.CopyFrom(service)
        scaled.spec.replicas = request.replicas
        scaled.revision += 1
        scaled.updated_at.CopyFrom(to_timestamp(self._clock.now()))
        try:
            await self._store.commit([Put(scaled, expect_version=service.version)])
        except ConflictError:
            await _abort(context, grpc.StatusCode.ABORTED, f"name: service {request.name!r} changed; try again")
        return scaled

    async def ListNodes(self, request: cpb.ListNodesRequest, context: Context) -> cpb.ListNodesResponse:
        """Returns every node."""
        return cpb.ListNodesResponse(nodes=await self._store.list_nodes())

    async def ListTasks(self, request: cpb.ListTasksRequest, context: Context) -> cpb.ListTasksResponse:
        """Returns tasks, by service and node; finished ones only when asked for."""
        service_id = (await self._service(request.service, context)).id if request.service else None
        tasks = await self._store.list_tasks(service_id=service_id, node_id=request.node_id or None)
        if not request.include_finished:
            tasks = [t for t in tasks if t.desired_state == pb.DESIRED_STATE_RUNNING or not is_terminal(t.status.state)]
        return cpb.ListTasksResponse(tasks=tasks)

    async def UpdateNode(self, request: cpb.UpdateNodeRequest, context: Context) -> pb.Node:
        """Sets a node's availability and operator labels; the orchestrator and scheduler react."""
        problems = node_label_errors(request.set_labels, request.remove_labels)
        if problems:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "\n".join(map(str, problems)))
        node = await self._node(request.node, context)
        changed = pb.Node()
        changed.CopyFrom(node)
        if request.availability:
            changed.availability = request.availability
        for key in request.remove_labels:
            changed.labels.pop(key, None)
        changed.labels.update(request.set_labels)
        if changed == node:
            return node
        try:
            await self._store.commit([Put(changed, expect_version=node.version)])
        except ConflictError:
            await _abort(context, grpc.StatusCode.ABORTED, f"node: {request.node!r} changed concurrently; try again")
        return changed

    async def RemoveNode(self, request: cpb.RemoveNodeRequest, context: Context) -> cpb.RemoveNodeResponse:
        """Forgets a node; its tasks count as lost and move. A ready node needs force."""
        node = await self._node(request.node, context)
        if node.status == pb.NODE_STATUS_READY and not request.force:
            await _abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"node: {request.node!r} is ready; drain it and stop its agent first, or force the removal",
            )
        try:
            await self._store.commit([Delete(Kind.NODE, node.id, expect_version=node.version)])
        except ConflictError:
            await _abort(context, grpc.StatusCode.ABORTED, f"node: {request.node!r} changed concurrently; try again")
        return cpb.RemoveNodeResponse(node=node)

    async def _node(self, name: str, context: Context) -> pb.Node:
        if not name:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "node: is required; give a node id or host name")
        nodes = await self._store.list_nodes()
        by_id = [n for n in nodes if n.id == name]
        if by_id:
            return by_id[0]
        by_name = [n for n in nodes if n.description.hostname == name]
        if len(by_name) > 1:
            ids = ", ".join(n.id for n in by_name)
            await _abort(
                context, grpc.StatusCode.INVALID_ARGUMENT, f"node: {name!r} names several nodes ({ids}); use an id"
            )
        if not by_name:
            await _abort(context, grpc.StatusCode.NOT_FOUND, f"node: {name!r} not found; see `dockyard nodes`")
        return by_name[0]

    async def _service(self, name: str, context: Context) -> pb.Service:
        if not name:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "name: is required; give a service name or id")
        service = await self._store.get_service(name)
        if service is None:
            await _abort(context, grpc.StatusCode.NOT_FOUND, f"name: service {name!r} not found")
        return service


async def _abort(context: Context, code: grpc.StatusCode, message: str) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("context.abort returned")  # abort always raises; this satisfies the type checker
