"""A small async client for the public API: deadlines, one-line errors, lists that follow every page, and
a watch that resumes where it left off.

Lists retry a page refused with RESOURCE_EXHAUSTED (the controller caps expensive reads at once) a few
times, after a jittered pause. `watch` reconnects after a dropped stream or UNAVAILABLE from the last
revision it saw, a bounded number of times in a row; OUT_OF_RANGE (the revision is no longer kept) ends it.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Final, Protocol, TypeVar

import grpc

from dockyard import pki
from dockyard.addresses import is_loopback
from dockyard.backoff import Backoff
from dockyard.channels import open_channel
from dockyard.clock import Clock, SystemClock
from dockyard.task_state import SpecKey, spec_key
from dockyard.v1 import controller_pb2 as cpb
from dockyard.v1 import controller_pb2_grpc as cpb_grpc
from dockyard.v1 import types_pb2 as pb

__all__ = [
    "DEFAULT_DEADLINE",
    "LIST_TRIES",
    "PAGE_SIZE",
    "PUSH_DEADLINE",
    "WATCH_TRIES",
    "ApiError",
    "Client",
    "SpecKey",
]

T = TypeVar("T")
R = TypeVar("R", bound="_Paged")

DEFAULT_DEADLINE = 10.0
# An image push streams the whole archive in one call: its deadline is that of the transfer.
PUSH_DEADLINE: Final = 3600.0
PAGE_SIZE = 1000  # the server's maximum; it may return fewer (its byte budget per page)

# A page refused because the controller serves its most lists at once is asked for again, at most this many
# times in all, after pauses of about 0.1, 0.2, 0.4 s: the cap frees up as fast as pages are read.
LIST_TRIES: Final = 4
_LIST_BACKOFF_BASE: Final = 0.1
# A watch reconnects after a dropped stream at most this many times in a row (a response resets the count),
# after pauses doubling from 0.2 s up to 2 s (jittered): 4.5 to 9 s in all, for a restarting controller.
WATCH_TRIES: Final = 8
_WATCH_BACKOFF_BASE: Final = 0.2
_WATCH_BACKOFF_CAP: Final = 2.0
# Codes after which a watch reconnects: a dropped connection, a stopping controller, a full cap on streams.
_RESUMABLE: Final = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED}
)

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

    def __init__(
        self,
        address: str,
        deadline: float = DEFAULT_DEADLINE,
        clock: Clock | None = None,
        credentials: pki.Credentials | None = None,
    ) -> None:
        """Connects lazily to `address`; each RPC (each page of a list) gets `deadline` seconds.

        `credentials` (admin) make it mutual TLS; without, plaintext to a controller run with --insecure.
        `clock` times the pauses before retries (a FakeClock in tests).
        """
        self.address = address
        self._deadline = deadline
        self._clock = clock or SystemClock()
        if credentials is None and not is_loopback(address):
            # Plaintext would hand specs (and their env) to whoever answers on the path: only to loopback,
            # where a controller may run --insecure.
            raise ApiError(
                f"no admin credentials for {address}: pass --credentials DIR (admin credentials from "
                "`dockyard-controller admin-cert`); plaintext goes only to a loopback controller run --insecure"
            )
        self._secure = credentials is not None
        self._channel = open_channel(address, credentials)
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
            raise ApiError(_describe(exc, self.address, self._secure), _code(exc)) from None

    async def _pages(self, fn: Callable[..., Awaitable[R]], request: _PageRequest) -> list[R]:
        """Calls a list RPC for every page, passing each next_page_token back, and returns the responses."""
        request.page_size = PAGE_SIZE
        responses: list[R] = []
        seen: set[str] = set()
        while True:
            response = await self._page(fn, request)
            responses.append(response)
            if not response.next_page_token:
                return responses
            if response.next_page_token in seen:
                # A server that hands back a token twice would keep this loop going for ever.
                raise ApiError("the controller repeated a page token; the list is incomplete")
            seen.add(response.next_page_token)
            request.page_token = response.next_page_token

    async def _page(self, fn: Callable[..., Awaitable[R]], request: _PageRequest) -> R:
        """Calls a list RPC once, asking again after a pause while the controller's cap on lists is full."""
        backoff = Backoff(base=_LIST_BACKOFF_BASE)
        for _ in range(LIST_TRIES - 1):
            try:
                return await self._call(fn, request)
            except ApiError as exc:
                if exc.code != grpc.StatusCode.RESOURCE_EXHAUSTED:
                    raise
            await self._clock.sleep(backoff.next_delay())
        return await self._call(fn, request)

    async def watch(
        self, since: int = 0, kinds: Sequence[int] = (), services: Sequence[str] = ()
    ) -> AsyncGenerator[cpb.WatchResponse, None]:
        """Yields the Watch responses after revision `since` (0: from now) for ever, resuming after a drop.

        Each change is yielded exactly once, also across reconnections. Raises ApiError: with OUT_OF_RANGE
        when the controller no longer keeps the revision to resume from (list again, then watch anew), at
        once for any other error but UNAVAILABLE and RESOURCE_EXHAUSTED, and once WATCH_TRIES reconnections
        in a row failed.
        """
        resume = since
        # Events of a revision larger than one response that were already yielded, by (revision, kind, id,
        # action): a resume from the revision before sends them again. Cleared once the revision is complete.
        partial: collections.Counter[tuple[int, str, str, int]] = collections.Counter()
        backoff = Backoff(base=_WATCH_BACKOFF_BASE, cap=_WATCH_BACKOFF_CAP)
        failures = 0
        while True:
            request = cpb.WatchRequest(since_revision=resume, kinds=kinds, services=services)  # type: ignore[arg-type]
            call = self._stub.Watch(request)
            try:
                async for response in call:
                    failures = 0
                    backoff.reset()
                    fresh = [e for e in response.events if not _seen(partial, e)]
                    partial = +partial  # drops the zero counts left by _seen
                    if partial and response.revision >= max(key[0] for key in partial):
                        partial.clear()
                    partial.update(_event_key(e) for e in fresh if e.revision > response.revision)
                    resume = response.revision
                    del response.events[:]
                    response.events.extend(fresh)
                    yield response
                error = ApiError(f"the watch on {self.address} ended", grpc.StatusCode.UNAVAILABLE)
            except grpc.aio.AioRpcError as exc:
                error = ApiError(_describe(exc, self.address, self._secure), _code(exc))
                if exc.code() not in _RESUMABLE or _answered(exc) or _handshake_refused(exc):
                    raise error from None  # an UNAVAILABLE with details is a damaged store: no use retrying
            finally:
                call.cancel()
            failures += 1
            if failures >= WATCH_TRIES:
                raise ApiError(f"{error} (gave up watching after {failures} tries)", error.code)
            await self._clock.sleep(backoff.next_delay())

    async def apply(
        self,
        specs: list[pb.ServiceSpec],
        dry_run: bool = False,
        if_revision: Mapping[str, int] | None = None,
        if_state_revision: int = 0,
        prune: bool = False,
        extras: cpb.ApplyServiceRequest | None = None,
    ) -> cpb.ApplyServiceResponse:
        """Creates or updates services atomically; `if_revision` (name -> revision, 0: new) makes it conditional.

        `if_state_revision` (a plan's state revision; 0: no check) refuses the apply when a service of the
        request (or one prune would remove) changed since; `prune` also deletes every service not in `specs`.
        `extras` (Deployment.extras()) adds the stack and the networks, volumes, secrets and configs to create.
        """
        request = cpb.ApplyServiceRequest(
            services=specs,
            dry_run=dry_run,
            if_revision=dict(if_revision or {}),
            if_state_revision=if_state_revision,
            prune=prune,
        )
        if extras is not None:
            request.MergeFrom(extras)
        return await self._call(self._stub.ApplyService, request)

    async def plan(
        self, specs: list[pb.ServiceSpec], prune: bool = False, extras: cpb.ApplyServiceRequest | None = None
    ) -> cpb.PlanApplyResponse:
        """Returns what applying `specs` (with `extras`, as apply takes them) would do now; writes nothing."""
        request = cpb.PlanApplyRequest(services=specs, prune=prune)
        if extras is not None:
            request.stack = extras.stack
            request.networks.extend(extras.networks)
            request.volumes.extend(extras.volumes)
            request.secrets.extend(extras.secrets)
            request.configs.extend(extras.configs)
        return await self._call(self._stub.PlanApply, request)

    async def history(self, service: str) -> list[cpb.ServiceRevision]:
        """Returns the kept revisions of a service (name or id), newest first."""
        request = cpb.ListServiceHistoryRequest(service=service)
        return list((await self._call(self._stub.ListServiceHistory, request)).revisions)

    async def rollback(self, service: str, to_revision: int = 0, if_revision: int | None = None) -> pb.Service:
        """Makes an earlier revision's spec current again (0: the one before); returns the service as written."""
        request = cpb.RollbackServiceRequest(service=service, to_revision=to_revision, if_revision=if_revision)
        return await self._call(self._stub.RollbackService, request)

    async def rebalance(self, service: str) -> pb.Service:
        """Asks the orchestrator to move tasks until the service's spread holds; returns the service as written."""
        request = cpb.RebalanceServiceRequest(service=service)
        return await self._call(self._stub.RebalanceService, request)

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

    async def join_token(self, rotate: bool = False) -> cpb.JoinTokenResponse:
        """Returns the cluster's join token and join port; rotate replaces the token first."""
        return await self._call(self._stub.GetJoinToken, cpb.GetJoinTokenRequest(rotate=rotate))

    async def push_image(
        self,
        image: str,
        image_id: str,
        total: int,
        pieces: AsyncIterable[bytes],
        nodes: Sequence[str] = (),
        *,
        deadline: float = PUSH_DEADLINE,
    ) -> AsyncGenerator[cpb.PushImageProgress, None]:
        """Streams a `docker save` archive of `total` bytes to the nodes (none named: every ready one).

        `pieces` are sent as they come (each at most dockyard.limits.IMAGE_PIECE_BYTES); yields each node's
        progress, its last with done set. The whole push has `deadline` seconds.
        """

        call = self._stub.PushImage(timeout=deadline)
        accepted = asyncio.Event()
        finished = asyncio.Event()  # every node is done: the controller wants no more pieces

        async def write() -> None:
            first = cpb.PushImageRequest(image=image, image_id=image_id, total=total, nodes=nodes)
            held: cpb.PushImageRequest | None = None
            async for piece in pieces:
                if finished.is_set():
                    break
                # Held back one: the last piece must say so, and only the next one (or the end) tells.
                if held is None:
                    first.data = piece
                    held = first
                    continue
                await call.write(held)
                if held is first:
                    await accepted.wait()  # the rest only once the controller took the request
                held = cpb.PushImageRequest(data=piece)
            else:
                held = held or first
                held.last = True
                await call.write(held)
            await call.done_writing()

        writer = asyncio.create_task(write())
        targets: set[str] = set()
        finals: set[str] = set()
        try:
            while True:
                message = await call.read()
                if message is grpc.aio.EOF:
                    break
                assert isinstance(message, cpb.PushImageProgress)
                accepted.set()
                targets.add(message.node_id)
                if message.done:
                    finals.add(message.node_id)
                    if finals >= targets:
                        finished.set()
                yield message
            if writer.done() and not writer.cancelled() and writer.exception() is not None:
                raise writer.exception()  # type: ignore[misc]
        except grpc.aio.AioRpcError as exc:
            raise ApiError(_describe(exc, self.address, self._secure), _code(exc)) from None
        finally:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
            call.cancel()

    # --- secrets, configs, registry credentials, stacks ---

    async def create_secret(self, name: str, data: bytes, labels: Mapping[str, str] | None = None) -> pb.Secret:
        """Stores a secret (sealed by the controller); returns it without data."""
        spec = cpb.FileSpec(name=name, data=data, labels=dict(labels or {}))
        return await self._call(self._stub.CreateSecret, cpb.CreateSecretRequest(secret=spec))

    async def list_secrets(self) -> list[pb.Secret]:
        """Returns every secret, without data."""
        return list((await self._call(self._stub.ListSecrets, cpb.ListSecretsRequest())).secrets)

    async def remove_secret(self, name: str) -> pb.Secret:
        """Deletes a secret (refused while a service uses it); returns what it was."""
        return (await self._call(self._stub.RemoveSecret, cpb.RemoveSecretRequest(name=name))).secret

    async def create_config(self, name: str, data: bytes, labels: Mapping[str, str] | None = None) -> pb.Config:
        """Stores a config; returns it."""
        spec = cpb.FileSpec(name=name, data=data, labels=dict(labels or {}))
        return await self._call(self._stub.CreateConfig, cpb.CreateConfigRequest(config=spec))

    async def list_configs(self) -> list[pb.Config]:
        """Returns every config, without data."""
        return list((await self._call(self._stub.ListConfigs, cpb.ListConfigsRequest())).configs)

    async def get_config(self, name: str) -> pb.Config:
        """Returns one config with its data."""
        return await self._call(self._stub.GetConfig, cpb.GetConfigRequest(name=name))

    async def remove_config(self, name: str) -> pb.Config:
        """Deletes a config (refused while a service uses it); returns what it was."""
        return (await self._call(self._stub.RemoveConfig, cpb.RemoveConfigRequest(name=name))).config

    async def set_registry_credential(self, server: str, username: str, password: str) -> pb.RegistryCredential:
        """Gives the controller the credentials of a registry (replacing any); returns them without the password."""
        request = cpb.SetRegistryCredentialRequest(server=server, username=username, password=password)
        return await self._call(self._stub.SetRegistryCredential, request)

    async def list_registry_credentials(self) -> list[pb.RegistryCredential]:
        """Returns every registry's server and username."""
        request = cpb.ListRegistryCredentialsRequest()
        return list((await self._call(self._stub.ListRegistryCredentials, request)).credentials)

    async def remove_registry_credential(self, server: str) -> pb.RegistryCredential:
        """Forgets a registry's credentials; returns what they were (without the password)."""
        request = cpb.RemoveRegistryCredentialRequest(server=server)
        return (await self._call(self._stub.RemoveRegistryCredential, request)).credential

    async def create_network(
        self, name: str, labels: Mapping[str, str] | None = None, internal: bool = False
    ) -> pb.Network:
        """Makes a network of no stack; returns it (its subnets come as tasks joining it are placed)."""
        spec = cpb.NetworkSpec(name=name, labels=dict(labels or {}), internal=internal)
        return await self._call(self._stub.CreateNetwork, cpb.CreateNetworkRequest(network=spec))

    async def list_networks(self) -> list[pb.Network]:
        """Returns every network with its subnets, by name."""
        return list((await self._call(self._stub.ListNetworks, cpb.ListNetworksRequest())).networks)

    async def remove_network(self, name: str) -> pb.Network:
        """Deletes a network (refused while a service joins it); returns what it was."""
        return (await self._call(self._stub.RemoveNetwork, cpb.RemoveNetworkRequest(name=name))).network

    async def list_volumes(self, node_id: str = "") -> list[pb.Volume]:
        """Returns every volume record by name, or those on one node."""
        return list((await self._call(self._stub.ListVolumes, cpb.ListVolumesRequest(node_id=node_id))).volumes)

    async def remove_volume(self, name: str, *, force: bool = False) -> pb.Volume:
        """Removes a volume from its node, then its record (refused while a service mounts it); returns it.

        force forgets the record when its node is down or gone (the data stays on that host).
        """
        request = cpb.RemoveVolumeRequest(name=name, force=force)
        return (await self._call(self._stub.RemoveVolume, request)).volume

    async def list_stacks(self) -> list[cpb.Stack]:
        """Returns every stack with its services and objects."""
        return list((await self._call(self._stub.ListStacks, cpb.ListStacksRequest())).stacks)

    async def remove_stack(self, name: str) -> cpb.Stack:
        """Deletes a stack's services and its unused networks, secrets and configs; returns them (volumes: kept)."""
        return (await self._call(self._stub.RemoveStack, cpb.RemoveStackRequest(name=name))).stack


def _event_key(event: cpb.WatchEvent) -> tuple[int, str, str, int]:
    kind = event.WhichOneof("object") or ""
    obj = getattr(event, kind) if kind else None
    return (event.revision, kind, obj.id if obj is not None else "", event.action)


def _seen(partial: collections.Counter[tuple[int, str, str, int]], event: cpb.WatchEvent) -> bool:
    """Tells whether a resumed watch sent this event before (and counts it off)."""
    key = _event_key(event)
    if partial[key] > 0:
        partial[key] -= 1
        return True
    return False


class _PageRequest(Protocol):
    page_size: int
    page_token: str


def _answered(exc: grpc.aio.AioRpcError) -> bool:
    """Tells whether the API itself sent the error with details (a transport error has none)."""
    return any(key == _DETAILS_KEY for key, _ in exc.trailing_metadata() or ())


def _handshake_refused(exc: grpc.aio.AioRpcError) -> bool:
    """Whether this side gave up the TLS handshake: the server's certificate is not of this client's cluster
    CA, or the client's own key cannot be used. (A controller refusing the client's certificate just closes
    the connection, which reads as an UNAVAILABLE like any other; see _describe.)"""
    details = exc.details() or ""
    return exc.code() == grpc.StatusCode.UNAVAILABLE and ("andshake" in details or "SSL" in details)


def _code(exc: grpc.aio.AioRpcError) -> grpc.StatusCode:
    """The call's status; a failed TLS handshake counts as UNAUTHENTICATED: the peer is not who it should be."""
    return grpc.StatusCode.UNAUTHENTICATED if _handshake_refused(exc) else exc.code()


def _describe(exc: grpc.aio.AioRpcError, address: str, secure: bool = True) -> str:
    code = exc.code()
    if _handshake_refused(exc):
        return (
            f"the TLS handshake with {address} failed: the server's certificate is not signed by the cluster CA "
            "of these credentials (is it the controller of that cluster?), or their key is unusable; check "
            "--credentials DIR (ca.crt, admin.crt, admin.key)"
        )
    if code == grpc.StatusCode.UNAVAILABLE and not _answered(exc):
        # No details: the transport's own UNAVAILABLE, not one the API sent (a damaged store is sent with details).
        if not secure:
            # A TLS controller closes a plaintext connection without a word; that looks the same as a
            # controller that is not there, so say both.
            return (
                f"cannot reach the controller at {address} without credentials: is it running, and if it serves "
                "TLS (the default), pass --credentials DIR (admin credentials from `dockyard-controller admin-cert`)"
            )
        return (
            f"cannot reach the controller at {address}: is it running? (dockyard up, or set --controller); "
            "or it refused this client's certificate (expired, or not signed by its cluster's CA)"
        )
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"the controller at {address} did not answer in time"
    return exc.details() or code.name
