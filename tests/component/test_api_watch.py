"""Watch over real gRPC (from now, from a revision, resumed after a drop, trimmed, filtered, batched), and
the caps on expensive reads: RESOURCE_EXHAUSTED beyond them while other calls answer, and the client's retry."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from controller.api.bounds import ReadCaps
from controller.api.handlers import SERVICE_NAME, add_controller_api
from controller.api.servicer import ControllerApi
from controller.api.watch import WatchLimits
from controller.ids import new_id
from controller.store.base import Delete, Kind, Put
from controller.store.sqlite import SqliteStore
from dockyard.client import ApiError, Client
from dockyard.clock import FakeClock, SystemClock
from dockyard.v1 import controller_pb2 as cpb
from dockyard.v1 import controller_pb2_grpc as cpb_grpc
from dockyard.v1 import types_pb2 as pb


@dataclass
class Served:
    """A store served by the API on a loopback port; the server can be stopped and started again on it."""

    store: SqliteStore
    port: int
    server: grpc.aio.Server

    limits: WatchLimits | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def restart(self) -> None:
        """Drops every connection (as a controller restart does) and serves the same store on the same port."""
        await self.server.stop(None)
        self.server, _ = await serve(self.store, self.port, self.limits)


async def serve(store: SqliteStore, port: int = 0, limits: WatchLimits | None = None) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    add_controller_api(ControllerApi(store, SystemClock(), new_id, watch_limits=limits), server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server, bound


@contextlib.asynccontextmanager
async def serving(path: Path, limits: WatchLimits | None = None, keep_events: int = 10_000) -> AsyncIterator[Served]:
    """A new store under `path`, served until the block ends."""
    async with SqliteStore(path, keep_events=keep_events) as store:
        server, port = await serve(store, 0, limits)
        served = Served(store, port, server, limits)
        try:
            yield served
        finally:
            await served.server.stop(None)


class FakeClockThatRuns(FakeClock):
    """A FakeClock whose sleeps return at once (moving it on): the client's pauses cost the test nothing."""

    async def sleep(self, seconds: float) -> None:
        await self.advance(seconds)


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    async with serving(tmp_path / "watch.db", keep_events=50) as served:
        yield served


def service(name: str, replicas: int = 1) -> pb.Service:
    return pb.Service(id=f"svc-{name}", name=name, revision=1, spec=pb.ServiceSpec(name=name, replicas=replicas))


def task(owner: pb.Service, slot: int, state: int = pb.TASK_STATE_PENDING) -> pb.Task:
    t = pb.Task(id=f"{owner.name}-{slot}", service_id=owner.id, service_name=owner.name, slot=slot, revision=1)
    t.desired_state = pb.DESIRED_STATE_RUNNING
    t.status.state = state  # type: ignore[assignment]
    t.spec.image = "carried-by-the-store"
    return t


def described(event: cpb.WatchEvent) -> tuple[int, str, str, str]:
    kind = event.WhichOneof("object") or ""
    return (event.revision, cpb.WatchEvent.Action.Name(event.action), kind, getattr(event, kind).id)


async def collect(responses: AsyncIterator[cpb.WatchResponse], upto: int) -> list[cpb.WatchResponse]:
    """Reads responses until one promises revision `upto`."""
    seen: list[cpb.WatchResponse] = []
    async with asyncio.timeout(20):
        async for response in responses:
            seen.append(response)
            if response.revision >= upto:
                return seen
    raise AssertionError("the watch ended")


async def test_from_now_the_first_response_is_the_current_revision_then_changes_follow(served: Served) -> None:
    web = service("web")
    await served.store.commit([Put(web)])
    async with Client(served.address) as client:
        responses = client.watch()
        first = await anext(responses)
        assert (first.revision, list(first.events)) == (served.store.revision, [])
        revision = await served.store.commit([Put(task(web, 1))])
        [response] = await collect(responses, revision)
        await responses.aclose()
    assert [described(e) for e in response.events] == [(revision, "ACTION_PUT", "task", "web-1")]
    assert not response.events[0].task.HasField("spec")  # TASK_VIEW_BASIC


async def test_from_a_revision_sends_every_later_change_in_order(served: Served) -> None:
    web = service("web")
    first = await served.store.commit([Put(web)])
    second = await served.store.commit([Put(task(web, 1)), Put(task(web, 2))])
    third = await served.store.commit([Delete(Kind.TASK, "web-1")])
    async with Client(served.address) as client:
        responses = client.watch(since=first)
        seen = await collect(responses, third)
        await responses.aclose()
    events = [described(e) for r in seen for e in r.events]
    assert events == [
        (second, "ACTION_PUT", "task", "web-1"),
        (second, "ACTION_PUT", "task", "web-2"),
        (third, "ACTION_DELETE", "task", "web-1"),
    ]


async def test_a_resumed_watch_sees_every_change_exactly_once(served: Served) -> None:
    web = service("web")
    await served.store.commit([Put(web)])
    written: list[tuple[int, str, str, str]] = []

    async def write(count: int) -> None:
        for slot in range(count):
            t = task(web, slot % 5)
            revision = await served.store.commit([Put(t)])
            written.append((revision, "ACTION_PUT", "task", t.id))

    async with Client(served.address) as client:
        responses = client.watch()
        await anext(responses)
        await write(10)
        seen = await collect(responses, written[-1][0])
        await served.restart()  # the stream drops mid-way; the client resumes from the last revision seen
        await write(10)
        seen += await collect(responses, written[-1][0])
        await responses.aclose()
    assert [described(e) for r in seen for e in r.events] == written


class SplittingWatch:
    """A controller whose first watch stream sends part of a split revision and drops; the next sends it all."""

    def __init__(self) -> None:
        self.requests: list[int] = []

    async def Watch(
        self, request: cpb.WatchRequest, context: grpc.aio.ServicerContext[cpb.WatchRequest, cpb.WatchResponse]
    ) -> AsyncIterator[cpb.WatchResponse]:
        self.requests.append(request.since_revision)
        events = [
            cpb.WatchEvent(revision=6, action=cpb.WatchEvent.ACTION_PUT, task=pb.Task(id=f"t{i}")) for i in range(5)
        ]
        yield cpb.WatchResponse(revision=5, events=events[:2])  # revision 6 spans three responses
        if len(self.requests) == 1:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "dropped")
        yield cpb.WatchResponse(revision=5, events=events[2:4])
        yield cpb.WatchResponse(revision=6, events=events[4:])


async def test_a_resumed_watch_skips_what_it_saw_of_a_revision_split_across_responses() -> None:
    fake = SplittingWatch()
    server = grpc.aio.server()
    watch = grpc.unary_stream_rpc_method_handler(
        fake.Watch,
        request_deserializer=cpb.WatchRequest.FromString,
        response_serializer=cpb.WatchResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE_NAME, {"Watch": watch})])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with Client(f"127.0.0.1:{port}", clock=FakeClockThatRuns()) as client:
            responses = client.watch(since=5)
            seen = await collect(responses, 6)
            await responses.aclose()
    finally:
        await server.stop(None)
    assert fake.requests == [5, 5]
    assert [e.task.id for r in seen for e in r.events] == ["t0", "t1", "t2", "t3", "t4"]


async def test_a_revision_no_longer_kept_is_out_of_range(served: Served) -> None:
    web = service("web")
    old = await served.store.commit([Put(web)])
    for slot in range(60):  # keep_events=50: the events after `old` are trimmed
        await served.store.commit([Put(task(web, slot))])
    async with Client(served.address) as client:
        with pytest.raises(ApiError) as caught:
            await anext(client.watch(since=old))
    assert caught.value.code == grpc.StatusCode.OUT_OF_RANGE
    assert f"since_revision: {old} is older than the controller keeps" in str(caught.value)
    assert "list again" in str(caught.value)


async def test_a_revision_beyond_the_store_is_out_of_range(served: Served) -> None:
    async with Client(served.address) as client:
        with pytest.raises(ApiError) as caught:
            await anext(client.watch(since=served.store.revision + 5))
    assert caught.value.code == grpc.StatusCode.OUT_OF_RANGE


async def test_filters_by_kind_and_service_and_follow_a_deleted_service_by_id(served: Served) -> None:
    web, db = service("web"), service("db")
    since = await served.store.commit([Put(web), Put(db)])
    async with Client(served.address) as client:
        with pytest.raises(ApiError) as caught:
            await anext(client.watch(services=["nope"]))
        assert caught.value.code == grpc.StatusCode.NOT_FOUND
        assert "services[0]: service 'nope' not found" in str(caught.value)

        tasks_of_web = client.watch(kinds=[cpb.OBJECT_KIND_TASK], services=["web"])
        await anext(tasks_of_web)
        await served.store.commit([Put(task(db, 1)), Put(task(web, 1))])
        await served.store.commit([Delete(Kind.SERVICE, web.id)])
        last = await served.store.commit([Put(task(db, 2)), Put(task(web, 2, pb.TASK_STATE_SHUTDOWN))])
        seen = await collect(tasks_of_web, last)
        await tasks_of_web.aclose()

        services_only = client.watch(since=since, kinds=[cpb.OBJECT_KIND_SERVICE])
        only = await collect(services_only, last)
        await services_only.aclose()
    assert [e.task.id for r in seen for e in r.events] == ["web-1", "web-2"]
    assert [described(e)[1:] for r in only for e in r.events] == [("ACTION_DELETE", "service", web.id)]


async def test_an_unknown_kind_is_invalid(served: Served) -> None:
    async with grpc.aio.insecure_channel(served.address) as channel:
        call = cpb_grpc.ControllerServiceStub(channel).Watch(cpb.WatchRequest(kinds=[7]))  # type: ignore[list-item]
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call.read()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "kinds[0]" in (caught.value.details() or "")


async def test_a_commit_of_10000_tasks_arrives_in_a_few_responses(tmp_path: Path) -> None:
    async with serving(tmp_path / "big.db") as served:
        web = service("web", replicas=10_000)
        since = await served.store.commit([Put(web)])
        revision = await served.store.commit([Put(task(web, slot)) for slot in range(10_000)])
        async with Client(served.address) as client:
            responses = client.watch(since=since)
            seen = await collect(responses, revision)
            await responses.aclose()
    assert sum(len(r.events) for r in seen) == 10_000
    assert len(seen) <= 5, [len(r.events) for r in seen]
    assert all(r.ByteSize() < 2 * 1024 * 1024 for r in seen)


class HeldStore(SqliteStore):
    """A store whose task pages wait until the test lets them go: list calls in flight, on demand."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.release = asyncio.Event()
        self.entered = asyncio.Event()
        self.held = 0

    async def list_tasks_page(
        self, service_id: str | None, node_id: str | None, after: tuple[str, int, int, str] | None, limit: int
    ) -> list[pb.Task]:
        self.held += 1
        self.entered.set()
        await self.release.wait()
        return await super().list_tasks_page(service_id, node_id, after, limit)


async def test_lists_beyond_the_cap_are_refused_at_once_while_other_calls_answer(tmp_path: Path) -> None:
    async with HeldStore(tmp_path / "held.db") as store:
        await store.commit([Put(service("web"))])
        server = grpc.aio.server()
        add_controller_api(ControllerApi(store, SystemClock(), new_id, caps=ReadCaps(lists=4, watches=2)), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = cpb_grpc.ControllerServiceStub(channel)
                flood = [asyncio.ensure_future(stub.ListTasks(cpb.ListTasksRequest(), timeout=20)) for _ in range(20)]
                async with asyncio.timeout(20):
                    while sum(call.done() for call in flood) < 16 or store.held < 4:
                        pending = [call for call in flood if not call.done()]
                        await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED, timeout=0.05)
                # While four lists are held inside the store, the other sixteen were refused, and a read answers.
                refused = [call for call in flood if call.done()]
                assert store.held == 4
                assert len(refused) == 16
                errors = [call.exception() for call in refused]
                assert {e.code() for e in errors if isinstance(e, grpc.aio.AioRpcError)} == {
                    grpc.StatusCode.RESOURCE_EXHAUSTED
                }
                error = errors[0]
                assert isinstance(error, grpc.aio.AioRpcError)
                assert error.details() == (
                    "ListTasks: 4 list calls are already being served, the most this controller serves at once; "
                    "retry shortly"
                )
                assert (await stub.GetService(cpb.GetServiceRequest(name="web"), timeout=20)).name == "web"
                assert not any(call.done() for call in flood if call not in refused)

                # Watch streams have their own cap, which the held lists do not touch.
                watches = [stub.Watch(cpb.WatchRequest()) for _ in range(2)]
                for watch in watches:
                    await watch.read()
                third = stub.Watch(cpb.WatchRequest())
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await third.read()
                assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "2 watch streams are already being served" in (caught.value.details() or "")

                store.release.set()
                served = [await call for call in flood if call not in refused]
                assert len(served) == 4
                watches[0].cancel()
                again = stub.Watch(cpb.WatchRequest())
                reopened = await again.read()
                assert isinstance(reopened, cpb.WatchResponse)
                assert reopened.revision == store.revision  # the freed place is taken again
                for watch in [*watches, again]:
                    watch.cancel()
        finally:
            await server.stop(None)


class ReleasingClock(FakeClockThatRuns):
    """A clock whose first pause lets the held lists go: the cap frees while the client waits to retry."""

    def __init__(self, store: HeldStore) -> None:
        super().__init__()
        self.store = store
        self.pauses = 0

    async def sleep(self, seconds: float) -> None:
        self.pauses += 1
        self.store.release.set()
        await super().sleep(seconds)


async def test_the_client_retries_a_list_refused_by_the_cap(tmp_path: Path) -> None:
    async with HeldStore(tmp_path / "retry.db") as store:
        server = grpc.aio.server()
        add_controller_api(ControllerApi(store, SystemClock(), new_id, caps=ReadCaps(lists=1)), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            address = f"127.0.0.1:{port}"
            async with grpc.aio.insecure_channel(address) as channel:
                held = cpb_grpc.ControllerServiceStub(channel).ListTasks(cpb.ListTasksRequest(), timeout=20)
                await store.entered.wait()
                async with Client(address, clock=FakeClockThatRuns()) as client:
                    with pytest.raises(ApiError) as caught:
                        await client.list_tasks()
                assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "1 list calls are already being served" in str(caught.value)
                assert store.held == 1  # every try was refused before reaching the store

                clock = ReleasingClock(store)
                async with Client(address, clock=clock) as client:
                    assert await client.list_tasks() == []
                assert clock.pauses == 1
                await held
        finally:
            await server.stop(None)
