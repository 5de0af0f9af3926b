"""The API's errors over real gRPC: bounded INVALID_ARGUMENT with BadRequest details, bad bytes, sizes."""

from __future__ import annotations

import base64
import socket
from collections.abc import AsyncGenerator
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from controller.api.handlers import add_controller_api
from controller.api.servicer import ControllerApi
from controller.api.status import MAX_VIOLATIONS
from controller.errors import StoreDamaged
from controller.ids import new_id
from controller.store.base import Event
from controller.store.sqlite import SqliteStore
from dockyard.client import ApiError, Client
from dockyard.clock import SystemClock
from dockyard.v1 import controller_pb2 as cpb
from dockyard.v1 import controller_pb2_grpc as cpb_grpc
from dockyard.v1 import types_pb2 as pb
from tests.component.harness import ApiUnderTest

APPLY = "/dockyard.v1.ControllerService/ApplyService"
WATCH = "/dockyard.v1.ControllerService/Watch"
METADATA_LIMIT = 8 * 1024


def invalid(count: int) -> cpb.ApplyServiceRequest:
    """Services without an image, and with an impossible replica count: at least two problems each."""
    return cpb.ApplyServiceRequest(services=[pb.ServiceSpec(name=f"svc-{i:04}", replicas=10**6) for i in range(count)])


def wire_size(call: grpc.aio.AioRpcError) -> int:
    """Bytes of the error's metadata as sent: grpc-message percent-encoded, binary trailers base64."""
    message = call.details() or ""
    size = sum(1 if 0x20 <= b <= 0x7E and b != 0x25 else 3 for b in message.encode())
    for key, value in call.trailing_metadata() or ():
        raw = value if isinstance(value, bytes) else value.encode()
        size += len(key) + (len(base64.b64encode(raw)) if key.endswith("-bin") else len(raw))
    return size


@pytest.mark.parametrize("count", [200, 1000])
async def test_many_invalid_services_give_a_bounded_message_and_readable_details(api: ApiUnderTest, count: int) -> None:
    async with api.channel() as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await cpb_grpc.ControllerServiceStub(channel).ApplyService(invalid(count), timeout=10)
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    lines = (error.details() or "").split("\n")
    assert lines[0].startswith("services.svc-0000.")
    assert lines[-1].startswith("... and ") and lines[-1].endswith(" more")
    assert len(lines) <= 10
    size = wire_size(error)
    print(f"{count} invalid services: error metadata {size} bytes, message {len(error.details() or '')} chars")
    assert size < METADATA_LIMIT * 5 // 8  # 5 KiB: room for the other headers

    status = rpc_status.from_call(error)
    assert status is not None
    bad_request = error_details_pb2.BadRequest()
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(bad_request)
    assert status.details[1].Unpack(info)
    violations = bad_request.field_violations
    assert 10 <= len(violations) <= MAX_VIOLATIONS
    assert violations[0].field.startswith("services.svc-0000.")
    assert violations[0].description
    assert info.reason == "VIOLATIONS_TRUNCATED"
    assert int(info.metadata["total"]) >= 2 * count
    assert int(info.metadata["listed"]) == len(violations)


async def test_a_few_problems_are_all_listed_without_a_count(api: ApiUnderTest) -> None:
    async with api.channel() as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await cpb_grpc.ControllerServiceStub(channel).ApplyService(invalid(1), timeout=10)
    status = rpc_status.from_call(caught.value)
    assert status is not None
    assert len(status.details) == 1
    bad_request = error_details_pb2.BadRequest()
    status.details[0].Unpack(bad_request)
    assert [f"{v.field}: {v.description}" for v in bad_request.field_violations] == (
        caught.value.details() or ""
    ).split("\n")


async def raw_call(api: ApiUnderTest, body: bytes, method: str = APPLY) -> grpc.aio.AioRpcError:
    async with api.channel() as channel:
        call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(body, timeout=10)
    return caught.value


async def test_invalid_utf8_is_invalid_argument_naming_the_request(api: ApiUnderTest) -> None:
    name = b"\x0a\x01\xff"  # ServiceSpec.name = one byte that is not UTF-8
    error = await raw_call(api, b"\x0a" + bytes([len(name)]) + name)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "request: not a valid dockyard.v1.ApplyServiceRequest: String field had bad UTF-8"


async def test_nesting_past_the_recursion_limit_is_invalid_argument(api: ApiUnderTest) -> None:
    groups = b"\x7b" * 200 + b"\x7c" * 200  # unknown field 15 as groups inside groups, 200 deep
    error = await raw_call(api, groups, "/dockyard.v1.ControllerService/ListTasks")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.details() or "").startswith("request: not a valid dockyard.v1.ListTasksRequest: ")


async def test_a_request_over_the_receive_limit_stays_resource_exhausted(api: ApiUnderTest) -> None:
    spec = pb.ServiceSpec(name="big", image="x", env={"BLOB": "x" * (5 * 1024 * 1024)})
    error = await raw_call(api, cpb.ApplyServiceRequest(services=[spec]).SerializeToString())
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_good_bytes_through_the_seam_still_work(api: ApiUnderTest) -> None:
    async with api.channel() as channel:
        call = channel.unary_unary(
            "/dockyard.v1.ControllerService/ListServices", request_serializer=None, response_deserializer=None
        )
        raw = await call(cpb.ListServicesRequest().SerializeToString(), timeout=10)
    assert cpb.ListServicesResponse.FromString(raw) == cpb.ListServicesResponse()


async def test_other_errors_are_bounded_too(api: ApiUnderTest) -> None:
    async with api.client() as client:
        with pytest.raises(ApiError) as caught:
            await client.get_service("x" * 100_000)
    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    assert len(str(caught.value)) < 300


class DamagedStore(SqliteStore):
    """A store whose pages turned bad after it opened."""

    async def list_services_page(self, after: str | None, limit: int) -> list[pb.Service]:
        raise StoreDamaged("/var/lib/dockyard/controller.db: page 7 is damaged; restore it with ...")


async def test_a_damaged_store_is_unavailable_with_its_message(tmp_path: Path) -> None:
    store = DamagedStore(tmp_path / "damaged.db")
    await store.open()
    server = grpc.aio.server()
    add_controller_api(ControllerApi(store, SystemClock(), new_id), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with Client(f"127.0.0.1:{port}") as client:
            with pytest.raises(ApiError) as caught:
                await client.list_services()
            assert (await client.list_nodes()) == []  # what does not touch the damage still answers
    finally:
        await server.stop(None)
        await store.close()
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert str(caught.value) == "/var/lib/dockyard/controller.db: page 7 is damaged; restore it with ..."


class DamagedWatchStore(SqliteStore):
    """A store that finds damage while a watch replays its events."""

    async def watch(self, since: int) -> AsyncGenerator[Event, None]:
        raise StoreDamaged("/var/lib/dockyard/controller.db: page 9 is damaged; restore it with ...")
        yield  # an async generator, as the real one


async def test_a_watch_goes_through_the_same_seam(tmp_path: Path) -> None:
    store = DamagedWatchStore(tmp_path / "damaged.db")
    await store.open()
    server = grpc.aio.server()
    add_controller_api(ControllerApi(store, SystemClock(), new_id), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_stream(WATCH, request_serializer=None, response_deserializer=None)
            with pytest.raises(grpc.aio.AioRpcError) as bad_bytes:
                await call(b"\x1a\x01\xff").read()  # services[0]: one byte that is not UTF-8
        async with Client(f"127.0.0.1:{port}") as client:
            responses = client.watch(since=0)
            assert (await anext(responses)).revision == 0
            with pytest.raises(ApiError) as damaged:
                await anext(responses)
    finally:
        await server.stop(None)
        await store.close()
    assert bad_bytes.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_bytes.value.details() == "request: not a valid dockyard.v1.WatchRequest: String field had bad UTF-8"
    # The first response (the revision now) went out; then the damage ends the stream, and the client does
    # not retry an UNAVAILABLE that the API sent with its details.
    assert damaged.value.code == grpc.StatusCode.UNAVAILABLE
    assert str(damaged.value) == "/var/lib/dockyard/controller.db: page 9 is damaged; restore it with ..."


async def test_a_controller_that_is_not_there_is_reported_as_such() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with Client(f"127.0.0.1:{port}", deadline=5) as client:
        with pytest.raises(ApiError) as caught:
            await client.list_services()
    assert str(caught.value).startswith(f"cannot reach the controller at 127.0.0.1:{port}")
