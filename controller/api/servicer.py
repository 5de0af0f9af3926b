"""The public ControllerService: validates each request and writes desired state to the store.

Every error goes through controller.api.status (bounded message and details), every write through
controller.api.writes.commit_or_abort, every list through controller.api.paging, Watch through
controller.api.watch. List pages and Watch streams are capped in number (controller.api.bounds). Requests
arrive already parsed by controller.api.handlers, which also turns a damaged store into UNAVAILABLE.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Protocol

import grpc

from controller.api.apply import plan_apply, same_apart_from_replicas
from controller.api.bounds import Gate, ReadCaps
from controller.api.paging import (
    Key,
    PageLimits,
    PageTokenError,
    decode_token,
    encode_token,
    filtered_source,
    read_page,
)
from controller.api.status import Context, Stale, abort, abort_invalid, abort_stale
from controller.api.validation import apply_errors, enum_error, node_update_errors, replicas_error, scale_errors
from controller.api.watch import KINDS, WatchClosed, WatchFilter, WatchLimits, watch_responses
from controller.api.writes import commit_or_abort, revision_stale, version_stale
from controller.store.base import Check, Delete, Kind, NodeKey, Op, Put, Store, TaskKey, WatchExpired
from controller.store.specs import SpecCache
from dockyard.clock import Clock
from dockyard.spec.issues import Issue, key_path, service_path
from dockyard.task_state import is_terminal
from dockyard.timestamps import to_timestamp
from dockyard.v1 import controller_pb2 as cpb
from dockyard.v1 import types_pb2 as pb

__all__ = ["ControllerApi"]


def _service_key(service: pb.Service) -> Key:
    return (service.name,)


def _node_key(node: pb.Node) -> Key:
    return (node.description.hostname, node.id)


def _task_key(task: pb.Task) -> Key:
    created_ns = task.created_at.seconds * 1_000_000_000 + task.created_at.nanos
    return (task.service_id, task.slot, created_ns, task.id)


_SERVICE_KEY_SHAPE = (str,)
_NODE_KEY_SHAPE = (str, str)
_TASK_KEY_SHAPE = (str, int, int, str)


# A key comes from decode_token (which checked it against the shape above) or from an item of the list, so
# these conversions only restate its types for the store.
def _node_after(key: Key | None) -> NodeKey | None:
    if key is None:
        return None
    hostname, node_id = key
    return str(hostname), str(node_id)


def _task_after(key: Key | None) -> TaskKey | None:
    if key is None:
        return None
    service_id, slot, created_ns, task_id = key
    return str(service_id), int(slot), int(created_ns), str(task_id)


def _live(task: pb.Task) -> bool:
    """Tells whether a task is listed without include_finished: meant to run, or not yet finished."""
    return task.desired_state == pb.DESIRED_STATE_RUNNING or not is_terminal(task.status.state)


def _node_subject(node: pb.Node) -> str:
    return key_path("nodes", node.description.hostname or node.id)


class JoinTokens(Protocol):
    """Where the join token lives (the controller's CA); the API only hands it to admins."""

    def join_token(self, rotate: bool) -> tuple[str, int]:
        """Returns the token (rotated first if asked) and the join port; ValueError when there is none."""
        ...


class ControllerApi:
    """Validates, then writes services; reads nodes and tasks. It never talks to the other roles.

    Its methods have the ControllerService signatures; controller.api.handlers registers them.
    """

    def __init__(
        self,
        store: Store,
        clock: Clock,
        new_id: Callable[[], str],
        page_limits: PageLimits | None = None,
        *,
        caps: ReadCaps | None = None,
        watch_limits: WatchLimits | None = None,
        join_tokens: JoinTokens | None = None,
    ) -> None:
        """Serves from `store`; `page_limits` bounds every list response, `caps` the expensive reads at once."""
        self._store = store
        self._join_tokens = join_tokens
        self._clock = clock
        self._new_id = new_id
        self._limits = page_limits or PageLimits()
        self._watch_limits = watch_limits or WatchLimits()
        self._specs = SpecCache(store)
        caps = caps or ReadCaps()
        self._lists = Gate.with_clock("list calls", caps.lists, clock)
        self._watches = Gate.with_clock("watch streams", caps.watches, clock)

    async def ApplyService(self, request: cpb.ApplyServiceRequest, context: Context) -> cpb.ApplyServiceResponse:
        """Creates or updates every service in one transaction; an invalid or stale request writes nothing."""
        existing = {s.name: s for s in await self._store.list_services()}
        issues = apply_errors(request.services, existing)
        names = {spec.name for spec in request.services}
        issues.extend(
            Issue(key_path("if_revision", name), "names no service of this request; name one that it applies")
            for name in sorted(request.if_revision)
            if name not in names
        )
        if issues:
            await abort_invalid(context, issues)
        expected = dict(request.if_revision)
        stale = [
            problem
            for name in sorted(expected)
            if (problem := revision_stale(service_path(name), expected[name], existing.get(name))) is not None
        ]
        if stale:
            await abort_stale(context, stale)
        plan = plan_apply(request.services, existing, self._clock.now(), self._new_id)
        if plan.puts and not request.dry_run:
            written = {put.obj.id for put in plan.puts}
            # A conditioned service that stays unchanged still conditions the whole batch.
            checks: list[Op] = [
                Check(Kind.SERVICE, existing[name].id, existing[name].version)
                for name in expected
                if name in existing and existing[name].id not in written
            ]
            subject = service_path(plan.results[0].service.name) if len(request.services) == 1 else "services"
            await commit_or_abort(self._store, context, [*plan.puts, *checks], subject, conditional=bool(expected))
        return cpb.ApplyServiceResponse(results=plan.results)

    async def GetService(self, request: cpb.GetServiceRequest, context: Context) -> pb.Service:
        """Returns one service by name or id: as it is now, or with the spec it had at `revision`."""
        service = await self._service(request.name, context)
        if request.revision in (0, service.revision):
            return service
        spec = await self._specs.get(service.id, request.revision) if request.revision < service.revision else None
        if spec is None:
            await abort(
                context,
                grpc.StatusCode.NOT_FOUND,
                f"revision: service {service.name!r} has no revision {request.revision} "
                f"(it is at revision {service.revision})",
            )
        past = pb.Service()
        past.CopyFrom(service)
        past.revision = request.revision
        past.spec.CopyFrom(spec)
        past.spec_revision = await self._spec_revision_at(service, request.revision, spec)
        return past

    async def _spec_revision_at(self, service: pb.Service, revision: int, spec: pb.ServiceSpec) -> int:
        """Returns the revision at which the spec of `revision` last changed apart from replicas."""
        if service.spec_revision <= revision:
            return service.spec_revision  # nothing but replicas changed since, so it was already this
        at = revision
        while at > 1:
            earlier = await self._specs.get(service.id, at - 1)
            if earlier is None or not same_apart_from_replicas(earlier, spec):
                break
            at -= 1
        return at

    async def ListServices(self, request: cpb.ListServicesRequest, context: Context) -> cpb.ListServicesResponse:
        """Returns one page of services, by name."""
        async with self._lists.hold(context, "ListServices"):
            return await self._list_services(request, context)

    async def _list_services(self, request: cpb.ListServicesRequest, context: Context) -> cpb.ListServicesResponse:
        after = await self._after(request.page_token, "services", "", _SERVICE_KEY_SHAPE, context)

        async def services(after: Key | None, limit: int) -> list[pb.Service]:
            return await self._store.list_services_page(None if after is None else str(after[0]), limit)

        page = await read_page(
            services,
            _service_key,
            after=after,
            size=self._limits.size(request.page_size),
            max_bytes=self._limits.max_bytes,
            token_for=lambda key: encode_token("services", "", key),
        )
        return cpb.ListServicesResponse(services=page.items, next_page_token=page.next_token)

    async def DeleteService(self, request: cpb.DeleteServiceRequest, context: Context) -> cpb.DeleteServiceResponse:
        """Deletes a service; the orchestrator then stops and removes its tasks."""
        service = await self._service(request.name, context)
        expected = request.if_revision if request.HasField("if_revision") else None
        await self._check_revision(service, expected, context)
        await commit_or_abort(
            self._store,
            context,
            [Delete(Kind.SERVICE, service.id, expect_version=service.version)],
            service_path(service.name),
            conditional=expected is not None,
        )
        return cpb.DeleteServiceResponse(service=service)

    async def ScaleService(self, request: cpb.ScaleServiceRequest, context: Context) -> pb.Service:
        """Sets a service's replica count as a new revision (its spec_revision stays)."""
        problem = replicas_error(request.replicas)
        if problem:
            await abort_invalid(context, [problem])
        service = await self._service(request.name, context)
        expected = request.if_revision if request.HasField("if_revision") else None
        await self._check_revision(service, expected, context)
        if service.spec.mode == pb.SERVICE_MODE_GLOBAL:
            await abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"name: {service.name!r} is a global service (one task per eligible node); it cannot be scaled",
            )
        if service.spec.replicas == request.replicas:
            return service
        over = scale_errors(service, request.replicas, {s.name: s for s in await self._store.list_services()})
        if over:
            await abort_invalid(context, over)
        scaled = pb.Service()
        scaled.CopyFrom(service)
        scaled.spec.replicas = request.replicas
        scaled.revision += 1
        scaled.updated_at.CopyFrom(to_timestamp(self._clock.now()))
        await commit_or_abort(
            self._store,
            context,
            [Put(scaled, expect_version=service.version)],
            service_path(service.name),
            conditional=expected is not None,
        )
        return scaled

    async def ListNodes(self, request: cpb.ListNodesRequest, context: Context) -> cpb.ListNodesResponse:
        """Returns one page of nodes, by hostname then id."""
        async with self._lists.hold(context, "ListNodes"):
            return await self._list_nodes(request, context)

    async def _list_nodes(self, request: cpb.ListNodesRequest, context: Context) -> cpb.ListNodesResponse:
        after = await self._after(request.page_token, "nodes", "", _NODE_KEY_SHAPE, context)

        async def nodes(after: Key | None, limit: int) -> list[pb.Node]:
            return await self._store.list_nodes_page(_node_after(after), limit)

        page = await read_page(
            nodes,
            _node_key,
            after=after,
            size=self._limits.size(request.page_size),
            max_bytes=self._limits.max_bytes,
            token_for=lambda key: encode_token("nodes", "", key),
        )
        return cpb.ListNodesResponse(nodes=page.items, next_page_token=page.next_token)

    async def ListTasks(self, request: cpb.ListTasksRequest, context: Context) -> cpb.ListTasksResponse:
        """Returns one page of tasks, by service, slot and age; finished ones only when asked for.

        TASK_VIEW_FULL fills each task's spec from the service history; otherwise tasks have none.
        """
        async with self._lists.hold(context, "ListTasks"):
            return await self._list_tasks(request, context)

    async def _list_tasks(self, request: cpb.ListTasksRequest, context: Context) -> cpb.ListTasksResponse:
        view_problem = enum_error("view", request.view, cpb.TaskView.DESCRIPTOR, "a task view")
        if view_problem:
            await abort_invalid(context, [view_problem])
        service_id = (await self._service(request.service, context)).id if request.service else ""
        query = f"{service_id}\0{request.node_id}\0{int(request.include_finished)}"
        after = await self._after(request.page_token, "tasks", query, _TASK_KEY_SHAPE, context)

        async def tasks(after: Key | None, limit: int) -> list[pb.Task]:
            return await self._store.list_tasks_page(
                service_id or None, request.node_id or None, _task_after(after), limit
            )

        full = request.view == cpb.TASK_VIEW_FULL

        async def finish(task: pb.Task) -> pb.Task:
            task.ClearField("spec")
            if full:
                spec = await self._specs.get(task.service_id, task.revision)
                if spec is not None:
                    task.spec.CopyFrom(spec)
            return task

        page = await read_page(
            tasks if request.include_finished else filtered_source(tasks, _task_key, _live),
            _task_key,
            after=after,
            size=self._limits.size(request.page_size),
            max_bytes=self._limits.max_bytes,
            token_for=lambda key: encode_token("tasks", query, key),
            finish=finish,
        )
        return cpb.ListTasksResponse(tasks=page.items, next_page_token=page.next_token)

    async def UpdateNode(self, request: cpb.UpdateNodeRequest, context: Context) -> pb.Node:
        """Sets a node's availability and operator labels; the orchestrator and scheduler react."""
        problems = node_update_errors(request.availability, request.set_labels, request.remove_labels)
        if problems:
            await abort_invalid(context, problems)
        node = await self._node(request.node, context)
        expected = request.if_version if request.HasField("if_version") else None
        await self._check_version(node, expected, context)
        changed = pb.Node()
        changed.CopyFrom(node)
        if request.availability:
            changed.availability = request.availability
        for key in request.remove_labels:
            changed.labels.pop(key, None)
        changed.labels.update(request.set_labels)
        if changed == node:
            return node
        await commit_or_abort(
            self._store,
            context,
            [Put(changed, expect_version=node.version)],
            _node_subject(node),
            conditional=expected is not None,
        )
        return changed

    async def RemoveNode(self, request: cpb.RemoveNodeRequest, context: Context) -> cpb.RemoveNodeResponse:
        """Forgets a node; its tasks count as lost and move. A ready node needs force."""
        node = await self._node(request.node, context)
        expected = request.if_version if request.HasField("if_version") else None
        await self._check_version(node, expected, context)
        if node.status == pb.NODE_STATUS_READY and not request.force:
            await abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"node: {request.node!r} is ready; drain it and stop its agent first, or force the removal",
            )
        await commit_or_abort(
            self._store,
            context,
            [Delete(Kind.NODE, node.id, expect_version=node.version)],
            _node_subject(node),
            conditional=expected is not None,
        )
        return cpb.RemoveNodeResponse(node=node)

    async def GetJoinToken(self, request: cpb.GetJoinTokenRequest, context: Context) -> cpb.JoinTokenResponse:
        """Returns the join token; rotate replaces it first. FAILED_PRECONDITION when the controller has none."""
        try:
            if self._join_tokens is None:
                raise ValueError("this controller issues no join tokens")
            token, port = self._join_tokens.join_token(request.rotate)
        except ValueError as exc:
            await abort(context, grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        return cpb.JoinTokenResponse(token=token, join_port=port)

    async def Watch(self, request: cpb.WatchRequest, context: Context) -> AsyncIterator[cpb.WatchResponse]:
        """Streams the changes after since_revision (0: from now), filtered by kind and service, batched.

        OUT_OF_RANGE when since_revision is older than the events the store keeps, or newer than its revision.
        """
        async with self._watches.hold(context, "Watch"):
            keep = await self._watch_filter(request, context)
            current = self._store.revision
            if request.since_revision > current:
                await abort(
                    context,
                    grpc.StatusCode.OUT_OF_RANGE,
                    f"since_revision: {request.since_revision} is beyond the controller's revision {current} "
                    "(was its store restored?); list again, then watch from 0",
                )
            try:
                async for response in watch_responses(
                    self._store, self._clock, request.since_revision, keep, self._watch_limits
                ):
                    yield response
            except WatchExpired as exc:
                await abort(
                    context,
                    grpc.StatusCode.OUT_OF_RANGE,
                    f"since_revision: {request.since_revision} is older than the controller keeps ({exc}); "
                    "list again, then watch from a revision read before the listing",
                )
            except WatchClosed:
                await abort(
                    context,
                    grpc.StatusCode.UNAVAILABLE,
                    "the controller is stopping; watch again from the last revision seen",
                )

    async def _watch_filter(self, request: cpb.WatchRequest, context: Context) -> WatchFilter:
        """Returns the filter of a WatchRequest: its kinds, and its services resolved to ids (NOT_FOUND if unknown)."""
        issues = [
            Issue(f"kinds[{i}]", "is not a kind of object; give OBJECT_KIND_SERVICE, _NODE or _TASK")
            for i, kind in enumerate(request.kinds)
            if kind not in KINDS
        ]
        if issues:
            await abort_invalid(context, issues)
        service_ids: set[str] | None = None
        if request.services:
            service_ids = set()
            for i, name in enumerate(request.services):
                service = await self._store.get_service(name) if name else None
                if service is None:
                    await abort(context, grpc.StatusCode.NOT_FOUND, f"services[{i}]: service {name!r} not found")
                service_ids.add(service.id)
        return WatchFilter(
            frozenset(KINDS[kind] for kind in request.kinds),
            None if service_ids is None else frozenset(service_ids),
        )

    async def _check_revision(self, service: pb.Service, expected: int | None, context: Context) -> None:
        stale = revision_stale(service_path(service.name), expected, service)
        if stale is not None:
            await abort_stale(context, [stale])

    async def _check_version(self, node: pb.Node, expected: int | None, context: Context) -> None:
        stale: Stale | None = version_stale(_node_subject(node), expected, node)
        if stale is not None:
            await abort_stale(context, [stale])

    async def _after(self, token: str, kind: str, query: str, shape: tuple[type, ...], context: Context) -> Key | None:
        """Returns the key a page token continues after (None without a token); INVALID_ARGUMENT for a bad one."""
        if not token:
            return None
        try:
            return decode_token(token, kind, query, shape)
        except PageTokenError as exc:
            await abort_invalid(
                context, [Issue("page_token", f"{exc}; pass next_page_token of the previous page, or none")]
            )

    async def _node(self, name: str, context: Context) -> pb.Node:
        if not name:
            await abort_invalid(context, [Issue("node", "is required; give a node id or host name")])
        nodes = await self._store.list_nodes()
        by_id = [n for n in nodes if n.id == name]
        if by_id:
            return by_id[0]
        by_name = [n for n in nodes if n.description.hostname == name]
        if len(by_name) > 1:
            ids = ", ".join(n.id for n in by_name)
            await abort_invalid(context, [Issue("node", f"{name!r} names several nodes ({ids}); use an id")])
        if not by_name:
            await abort(context, grpc.StatusCode.NOT_FOUND, f"node: {name!r} not found; see `dockyard nodes`")
        return by_name[0]

    async def _service(self, name: str, context: Context) -> pb.Service:
        if not name:
            await abort_invalid(context, [Issue("name", "is required; give a service name or id")])
        service = await self._store.get_service(name)
        if service is None:
            await abort(context, grpc.StatusCode.NOT_FOUND, f"name: service {name!r} not found")
        return service
