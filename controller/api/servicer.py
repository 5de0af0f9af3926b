"""The public ControllerService: validates each request and writes desired state to the store.

Every error goes through controller.api.status (bounded message and details), every write through
controller.api.writes.commit_or_abort, every list through controller.api.paging, Watch through
controller.api.watch. List pages and Watch streams are capped in number (controller.api.bounds). Requests
arrive already parsed by controller.api.handlers, which also turns a damaged store into UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import Final, Protocol

import grpc
import structlog

from controller.api.apply import (
    plan_apply,
    plan_objects,
    pruned_of_stack,
    read_objects,
    request_stack,
    scale_cause,
    with_stack,
)
from controller.api.bounds import Gate, ReadCaps
from controller.api.files import FilesApi
from controller.api.history import Resume, history_response, rollback_target
from controller.api.images import ImagePushes
from controller.api.networks import NetworksApi
from controller.api.paging import (
    Key,
    PageLimits,
    PageTokenError,
    decode_token,
    encode_token,
    filtered_source,
    read_page,
)
from controller.api.planning import PLAN_ROUNDS, planned_tasks, simulate
from controller.api.stacks import StacksApi
from controller.api.status import Context, Stale, abort, abort_invalid, abort_stale
from controller.api.validation import (
    apply_errors,
    dependency_errors,
    dependency_graph,
    enum_error,
    node_update_errors,
    replicas_error,
    scale_errors,
)
from controller.api.volumes import VolumesApi
from controller.api.watch import KINDS, WatchClosed, WatchFilter, WatchLimits, watch_responses
from controller.api.writes import commit_or_abort, revision_stale, version_stale
from controller.commands import CommandSender
from controller.orchestrator import rollout
from controller.scheduler.model import holds_resources, is_pending
from controller.sealing import Sealer
from controller.store.base import Check, Delete, Kind, NodeKey, Op, Put, Store, TaskKey, WatchExpired
from controller.store.specs import SpecCache
from controller.volumes import pinned_nodes, volume_records
from dockyard.clock import Clock
from dockyard.logs import Throttle
from dockyard.spec.dependencies import start_order
from dockyard.spec.diff import same_task_spec, spec_changes
from dockyard.spec.issues import Issue, key_path, service_path
from dockyard.task_state import is_terminal
from dockyard.timestamps import to_timestamp
from dockyard.v1 import controller_pb2 as cpb
from dockyard.v1 import types_pb2 as pb

__all__ = ["ControllerApi"]

log = structlog.get_logger("controller.api")


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


class ControllerApi(FilesApi, StacksApi, NetworksApi, VolumesApi):
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
        scheduler_seed: int = 0,
        images: ImagePushes | None = None,
        sealer: Sealer | None = None,
        commands: CommandSender | None = None,
    ) -> None:
        """Serves from `store`; `page_limits` bounds every list response, `caps` the expensive reads at once.

        scheduler_seed is the scheduler role's tie-break seed: PlanApply places tasks with it, as the role will.
        sealer seals secrets and registry passwords (None: those are refused).
        """
        self._sealer = sealer
        self._store = store
        self._join_tokens = join_tokens
        self._images = images  # None: no agent sessions to push through (PushImage is refused)
        self._commands = commands  # None: no agent sessions (RemoveVolume of a placed volume needs --force)
        self._clock = clock
        self._new_id = new_id
        self._limits = page_limits or PageLimits()
        self._watch_limits = watch_limits or WatchLimits()
        self._specs = SpecCache(store)
        caps = caps or ReadCaps()
        self._lists = Gate.with_clock("list calls", caps.lists, clock)
        self._watches = Gate.with_clock("watch streams", caps.watches, clock)
        self._plans = Gate.with_clock("plans", caps.plans, clock)
        self._seed = scheduler_seed
        # A caller decides what it plans, so the note that a plan stopped at its bound is rate-limited.
        self._plan_notes = Throttle(clock)

    async def ApplyService(self, request: cpb.ApplyServiceRequest, context: Context) -> cpb.ApplyServiceResponse:
        """Creates or updates every service (prune: deletes the others) in one transaction, or writes nothing.

        if_state_revision refuses the whole request (FAILED_PRECONDITION naming each service) when a service
        it applies or prunes was created, changed in spec or replicas, or deleted after that store revision.
        """
        existing = {s.name: s for s in await self._store.list_services()}
        specs = with_stack(request.services, request.stack)
        stack = request_stack(request.stack, specs)
        removed = pruned_of_stack(specs, existing, stack) if request.prune else []
        await self._check_apply(specs, existing, removed, context)
        objects = plan_objects(
            request, specs, await read_objects(self._store), self._clock.now(), self._new_id, self._sealer, existing
        )
        if objects.issues:
            await abort_invalid(context, objects.issues)
        names = {spec.name for spec in specs}
        issues = [
            Issue(key_path("if_revision", name), "names no service of this request; name one that it applies")
            for name in sorted(request.if_revision)
            if name not in names
        ]
        if issues:
            await abort_invalid(context, issues)
        expected = dict(request.if_revision)
        stale = [
            problem
            for name in sorted(expected)
            if (problem := revision_stale(service_path(name), expected[name], existing.get(name))) is not None
        ]
        if request.if_state_revision:
            moved = [*names, *(s.name for s in removed)]
            stale.extend(await self._moved_since(request.if_state_revision, moved, existing, context))
        if stale:
            await abort_stale(context, stale)
        plan = plan_apply(specs, existing, self._clock.now(), self._new_id)
        deletes: list[Op] = [Delete(Kind.SERVICE, s.id, expect_version=s.version) for s in removed]
        made = [op for op in objects.ops if isinstance(op, Put)]
        if (plan.puts or deletes or made) and not request.dry_run:
            written = {put.obj.id for put in plan.puts if isinstance(put.obj, pb.Service)}
            # A conditioned service that stays unchanged still conditions the whole batch.
            checks: list[Op] = [
                Check(Kind.SERVICE, existing[name].id, existing[name].version)
                for name in expected
                if name in existing and existing[name].id not in written
            ]
            subject = service_path(request.services[0].name) if len(request.services) == 1 else "services"
            conditional = bool(expected) or bool(request.if_state_revision)
            ops = [*plan.puts, *objects.ops, *deletes, *checks]
            await commit_or_abort(self._store, context, ops, subject, conditional)
        results = [*plan.results]
        results.extend(cpb.ApplyResult(service=s, action=cpb.ApplyResult.ACTION_REMOVED) for s in removed)
        return cpb.ApplyServiceResponse(results=results)

    async def _check_apply(
        self,
        specs: Sequence[pb.ServiceSpec],
        existing: Mapping[str, pb.Service],
        removed: Sequence[pb.Service],
        context: Context,
    ) -> None:
        """Ends the RPC with INVALID_ARGUMENT when the specs are invalid, or their depends_on across the cluster."""
        issues = apply_errors(specs, existing)
        if not issues:
            issues = dependency_errors(specs, existing, {s.name for s in removed})
        if issues:
            await abort_invalid(context, issues)

    async def _moved_since(
        self, since: int, names: Iterable[str], existing: Mapping[str, pb.Service], context: Context
    ) -> list[Stale]:
        """Returns a Stale for each named service created, changed (spec or replicas) or deleted after `since`."""
        current = self._store.revision
        if since > current:
            await abort_invalid(
                context,
                [
                    Issue(
                        "if_state_revision",
                        f"{since} is beyond the controller's revision {current} (was its store restored?); plan again",
                    )
                ],
            )
        stale: list[Stale] = []
        absent: set[str] = set()
        for name in sorted(set(names)):
            service = existing.get(name)
            if service is None:
                absent.add(name)
                continue
            newest = await self._store.list_service_history(service.id, limit=1)
            written_at = newest[0].store_revision if newest else service.version
            if written_at > since:
                stale.append(
                    Stale(service_path(name), f"changed at store revision {written_at}, after {since} (planned)")
                )
        if absent:
            try:
                deleted = await self._store.deleted_services(since)
            except WatchExpired:
                stale.extend(
                    Stale(service_path(name), f"cannot tell whether it was deleted after store revision {since}")
                    for name in sorted(absent)
                )
                return stale
            for revision, name in deleted:
                if name in absent:
                    absent.discard(name)
                    stale.append(
                        Stale(service_path(name), f"deleted at store revision {revision}, after {since} (planned)")
                    )
        return stale

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
        """Returns the revision at which what tasks of `revision` run last changed (diff.same_task_spec)."""
        if service.spec_revision <= revision:
            return service.spec_revision  # only controller-only fields changed since, so it was already this
        at = revision
        while at > 1:
            earlier = await self._specs.get(service.id, at - 1)
            if earlier is None or not same_task_spec(earlier, spec):
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
        scaled.change_cause = scale_cause(request.replicas)
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

    async def PushImage(
        self, requests: AsyncIterator[cpb.PushImageRequest], context: Context
    ) -> AsyncIterator[cpb.PushImageProgress]:
        """Sends an image archive through the agents' sessions, with per-node progress (controller.api.images)."""
        if self._images is None:
            await abort(
                context, grpc.StatusCode.FAILED_PRECONDITION, "this controller has no agent sessions to push through"
            )
        async for progress in self._images.push(requests, context):
            yield progress

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

    async def _service(self, name: str, context: Context, field: str = "name") -> pb.Service:
        """Returns the service of that name or id; the errors name the request's field."""
        if not name:
            await abort_invalid(context, [Issue(field, "is required; give a service name or id")])
        service = await self._store.get_service(name)
        if service is None:
            await abort(context, grpc.StatusCode.NOT_FOUND, f"{field}: service {name!r} not found")
        return service

    # --- history, rollback, rebalance, plan -------------------------------------------------------------

    async def ListServiceHistory(
        self, request: cpb.ListServiceHistoryRequest, context: Context
    ) -> cpb.ListServiceHistoryResponse:
        """Returns the kept revisions of a service, newest first, as many as fit in a list page's bytes."""
        async with self._lists.hold(context, "ListServiceHistory"):
            service = await self._service(request.service, context, "service")
            revisions = await self._store.list_service_history(service.id)
            return history_response(service, revisions, self._limits.max_bytes)

    async def RollbackService(self, request: cpb.RollbackServiceRequest, context: Context) -> pb.Service:
        """Writes an earlier revision's spec as a new revision, as the orchestrator's automatic rollback does.

        to_revision 0 means the revision before the current spec (after a rollback: before the spec it left,
        never that one; history.rollback_target). It must be kept and run other tasks than the current spec:
        INVALID_ARGUMENT (to_revision) or FAILED_PRECONDITION (service); except that a target with the current
        spec resumes a paused rollout (rollout.resumed, at the same revision), as applying that spec does.
        """
        service = await self._service(request.service, context, "service")
        expected = request.if_revision if request.HasField("if_revision") else None
        await self._check_revision(service, expected, context)
        revisions = await self._store.list_service_history(service.id)
        target = rollback_target(service, revisions, request.to_revision)
        if isinstance(target, Issue):
            if target.path == "to_revision":
                await abort_invalid(context, [target])
            await abort(context, grpc.StatusCode.FAILED_PRECONDITION, str(target))
        if isinstance(target, Resume):
            again = rollout.resumed(service, self._clock.now())
            await commit_or_abort(
                self._store,
                context,
                [Put(again, expect_version=service.version)],
                service_path(service.name),
                conditional=expected is not None,
            )
            return again
        existing = {s.name: s for s in await self._store.list_services()}
        unmet = dependency_errors([target.spec], existing)
        if unmet:
            problems = "; ".join(i.message for i in unmet)
            await abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"to_revision: revision {target.revision}'s depends_on no longer holds in the cluster "
                f"({problems}); apply a spec instead",
            )
        service_id = service.id

        async def spec_at(revision: int) -> pb.ServiceSpec | None:
            return await self._store.get_service_spec(service_id, revision)

        # The same target, range and write as the orchestrator's automatic rollback, over the same live tasks.
        live = {
            t.revision
            for t in await self._store.list_tasks(service_id=service_id)
            if t.desired_state == pb.DESIRED_STATE_RUNNING
        }
        found = await rollout.find_rollback_target(service, target.revision, spec_at, live_revisions=live)
        if found is None:
            await abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"to_revision: revision {target.revision} of {service.name!r} was forgotten while this request ran; "
                "list the history again",
            )
        now = self._clock.now()
        rolled = rollout.rollback_service(service, found, now, rollout.requested_cause(target.revision))
        await commit_or_abort(
            self._store,
            context,
            [Put(rolled, expect_version=service.version)],
            service_path(service.name),
            conditional=expected is not None,
        )
        return rolled

    async def RebalanceService(self, request: cpb.RebalanceServiceRequest, context: Context) -> pb.Service:
        """Asks the orchestrator to move tasks until the spread holds (rebalance_generation + 1; no new revision)."""
        service = await self._service(request.service, context, "service")
        refusal = _REBALANCE_REFUSED.get(service.spec.mode)
        if refusal is not None:
            await abort(context, grpc.StatusCode.FAILED_PRECONDITION, f"service: {service.name!r} {refusal}")
        bumped = pb.Service()
        bumped.CopyFrom(service)
        bumped.rebalance_generation += 1
        await commit_or_abort(
            self._store,
            context,
            [Put(bumped, expect_version=service.version)],
            service_path(service.name),
            conditional=False,
        )
        return bumped

    async def PlanApply(self, request: cpb.PlanApplyRequest, context: Context) -> cpb.PlanApplyResponse:
        """Returns what applying the specs would do now, from the real reconciler and scheduler; writes nothing."""
        async with self._plans.hold(context, "PlanApply"):
            return await self._plan(request, context)

    async def _volume_sites(self) -> dict[str, str]:
        """Returns volume name -> node id of the volumes that live on a node, as the scheduler reads them."""
        return pinned_nodes(volume_records(await self._store.list_objects(Kind.VOLUME)))

    async def _plan(self, request: cpb.PlanApplyRequest, context: Context) -> cpb.PlanApplyResponse:
        # One revision: SqliteStore answers these reads from memory without awaiting in between.
        state_revision = self._store.revision
        services = await self._store.list_services()
        tasks = await self._store.list_tasks()
        nodes = await self._store.list_nodes()
        existing = {s.name: s for s in services}
        specs = with_stack(request.services, request.stack)
        stack = request_stack(request.stack, specs)
        removed = pruned_of_stack(specs, existing, stack) if request.prune else []
        await self._check_apply(specs, existing, removed, context)
        now = self._clock.now()
        # The objects the apply would make are checked as the apply checks them (references, immutability).
        extras = cpb.ApplyServiceRequest(
            stack=request.stack,
            networks=request.networks,
            volumes=request.volumes,
            secrets=request.secrets,
            configs=request.configs,
        )
        view = await read_objects(self._store)
        objects = plan_objects(extras, specs, view, now, self._new_id, self._sealer, existing)
        if objects.issues:
            await abort_invalid(context, objects.issues)
        applied = plan_apply(specs, existing, now, self._new_id)
        planned: dict[str, pb.Service | None] = {r.service.id: r.service for r in applied.results}
        planned.update((s.id, None) for s in removed)
        # The specs of the revisions tasks run now, for what they hold on their nodes.
        old_specs = await self._specs.for_tasks(
            (t for t in tasks if holds_resources(t) or is_pending(t)), {s.id: s for s in services}
        )
        others = [s for s in services if s.id not in planned]
        simulation = await asyncio.to_thread(
            functools.partial(simulate, others=others, max_rounds=PLAN_ROUNDS, volumes=await self._volume_sites()),
            planned,
            tasks,
            nodes,
            old_specs,
            now,
            self._seed,
        )
        if not simulation.settled:
            suppressed = self._plan_notes.allow("unsettled")
            if suppressed is not None:
                log.info(
                    "plan stopped at its bound; the rollout is reported as far as it got",
                    rounds=simulation.rounds,
                    tasks=len(tasks),
                    suppressed=suppressed,
                )
        names = {n.id: n.description.hostname or n.id for n in nodes}
        order = start_order(dependency_graph(specs, existing, {s.name for s in removed}))
        plans: list[cpb.ServicePlan] = []
        for result in applied.results:
            service = result.service
            plan = cpb.ServicePlan(
                name=service.name,
                action=_PLAN_ACTIONS[result.action],
                revision=service.revision,
                tasks=planned_tasks(simulation, service.id, names, removed=False),
                depends_on=sorted(service.spec.depends_on),
                start_order=order.get(service.name, 0),
            )
            if result.action == cpb.ApplyResult.ACTION_UPDATED:
                plan.changes.extend(spec_changes(existing[service.name].spec, service.spec))
            plans.append(plan)
        for service in removed:
            plans.append(
                cpb.ServicePlan(
                    name=service.name,
                    action=cpb.ServicePlan.ACTION_REMOVE,
                    revision=service.revision,
                    tasks=planned_tasks(simulation, service.id, names, removed=True),
                    start_order=order.get(service.name, 0),
                )
            )
        plans.sort(key=lambda p: (p.start_order, p.name))
        return cpb.PlanApplyResponse(state_revision=state_revision, services=plans)


_PLAN_ACTIONS: Final = {
    cpb.ApplyResult.ACTION_CREATED: cpb.ServicePlan.ACTION_CREATE,
    cpb.ApplyResult.ACTION_UPDATED: cpb.ServicePlan.ACTION_UPDATE,
    cpb.ApplyResult.ACTION_UNCHANGED: cpb.ServicePlan.ACTION_UNCHANGED,
}

# Why a service of this mode has nothing to rebalance.
_REBALANCE_REFUSED: Final = {
    pb.SERVICE_MODE_GLOBAL: "is a global service (one task per eligible node); it has nothing to rebalance",
    pb.SERVICE_MODE_JOB: "is a job (its tasks run to completion where they started); it has nothing to rebalance",
}
