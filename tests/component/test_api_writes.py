"""Conditional writes over real gRPC: if_revision and if_version refuse stale callers and change nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from controller.api.handlers import add_controller_api
from controller.api.servicer import ControllerApi
from controller.ids import new_id
from controller.store.base import Op, Put
from controller.store.sqlite import SqliteStore
from dockyard.client import ApiError, Client
from dockyard.clock import SystemClock
from dockyard.v1 import controller_pb2 as cpb
from dockyard.v1 import controller_pb2_grpc as cpb_grpc
from dockyard.v1 import types_pb2 as pb
from tests.component.harness import ApiUnderTest


def spec(name: str = "web", image: str = "app:1", replicas: int = 1) -> pb.ServiceSpec:
    return pb.ServiceSpec(name=name, image=image, replicas=replicas)


async def refused(call: object, code: grpc.StatusCode = grpc.StatusCode.FAILED_PRECONDITION) -> ApiError:
    with pytest.raises(ApiError) as caught:
        await call  # type: ignore[misc]
    assert caught.value.code == code, str(caught.value)
    return caught.value


async def test_apply_with_the_current_revision_writes(api: ApiUnderTest) -> None:
    async with api.client() as client:
        await client.apply([spec()])
        response = await client.apply([spec(image="app:2")], if_revision={"web": 1})
    assert response.results[0].action == cpb.ApplyResult.ACTION_UPDATED
    assert response.results[0].service.revision == 2


async def test_apply_with_a_stale_revision_is_refused_and_changes_nothing(api: ApiUnderTest) -> None:
    async with api.client() as client:
        await client.apply([spec()])
        await client.apply([spec(image="app:2")])  # someone else's change: revision 2
        error = await refused(client.apply([spec(image="app:3")], if_revision={"web": 1}))
        assert str(error) == "services.web: revision is 2, not 1 as expected; read it again and retry"
        assert (await client.get_service("web")).spec.image == "app:2"


async def test_the_stale_revision_is_also_a_precondition_failure_detail(api: ApiUnderTest) -> None:
    async with api.client() as client:
        await client.apply([spec()])
    async with api.channel() as channel:
        stub = cpb_grpc.ControllerServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ScaleService(cpb.ScaleServiceRequest(name="web", replicas=3, if_revision=7), timeout=10)
    status = rpc_status.from_call(caught.value)
    failure = error_details_pb2.PreconditionFailure()
    assert status.details[0].Unpack(failure)
    [violation] = failure.violations
    assert (violation.type, violation.subject, violation.description) == (
        "REVISION",
        "services.web",
        "revision is 1, not 7 as expected",
    )


async def test_revision_zero_means_the_service_must_not_exist_yet(api: ApiUnderTest) -> None:
    async with api.client() as client:
        created = await client.apply([spec()], if_revision={"web": 0})
        assert created.results[0].action == cpb.ApplyResult.ACTION_CREATED
        error = await refused(client.apply([spec(image="app:2")], if_revision={"web": 0}))
        assert str(error) == "services.web: exists at revision 1, expected it not to exist; read it again and retry"
        error = await refused(client.apply([spec("db")], if_revision={"db": 4}))
        assert str(error) == "services.db: does not exist, expected revision 4; read it again and retry"
        assert [s.name for s in await client.list_services()] == ["web"]


async def test_a_multi_service_apply_with_one_stale_revision_changes_nothing(api: ApiUnderTest) -> None:
    async with api.client() as client:
        await client.apply([spec("web"), spec("db")])
        await client.scale("db", 2)  # db moves to revision 2
        error = await refused(
            client.apply(
                [spec("web", image="app:2"), spec("db", image="db:2"), spec("cache")],
                if_revision={"web": 1, "db": 1, "cache": 0},
            )
        )
        assert str(error) == "services.db: revision is 2, not 1 as expected; read it again and retry"
        services = {s.name: s for s in await client.list_services()}
        assert set(services) == {"web", "db"}
        assert (services["web"].revision, services["web"].spec.image) == (1, "app:1")
        fresh = await client.apply(
            [spec("web", image="app:2"), spec("db", image="db:2", replicas=2), spec("cache")],
            if_revision={"web": 1, "db": 2, "cache": 0},
        )
    assert [r.action for r in fresh.results] == [
        cpb.ApplyResult.ACTION_UPDATED,
        cpb.ApplyResult.ACTION_UPDATED,
        cpb.ApplyResult.ACTION_CREATED,
    ]


async def test_a_stale_dry_run_is_refused_too(api: ApiUnderTest) -> None:
    async with api.client() as client:
        await client.apply([spec()])
        await refused(client.apply([spec(image="app:2")], dry_run=True, if_revision={"web": 3}))


async def test_if_revision_must_name_a_service_of_the_request(api: ApiUnderTest) -> None:
    async with api.client() as client:
        error = await refused(client.apply([spec()], if_revision={"wbe": 0}), grpc.StatusCode.INVALID_ARGUMENT)
    assert str(error).startswith("if_revision.wbe: names no service of this request")


async def test_scale_and_delete_honour_if_revision(api: ApiUnderTest) -> None:
    async with api.client() as client:
        await client.apply([spec()])
        await refused(client.scale("web", 3, if_revision=2))
        scaled = await client.scale("web", 3, if_revision=1)
        assert (scaled.revision, scaled.spec_revision, scaled.spec.replicas) == (2, 1, 3)
        await refused(client.delete_service("web", if_revision=1))
        await refused(client.delete_service("web", if_revision=0))
        assert (await client.get_service("web")).revision == 2
        await client.delete_service("web", if_revision=2)
        assert await client.list_services() == []


async def test_node_writes_honour_if_version(api: ApiUnderTest) -> None:
    node = pb.Node(id="n1", status=pb.NODE_STATUS_DOWN)
    node.description.hostname = "host-a"
    await api.store.commit([Put(node)])
    async with api.client() as client:
        [current] = await client.list_nodes()
        error = await refused(client.update_node("host-a", set_labels={"zone": "a"}, if_version=current.version + 5))
        expected = f"version is {current.version}, not {current.version + 5} as expected"
        assert str(error) == f"nodes.host-a: {expected}; read it again and retry"
        changed = await client.update_node("host-a", set_labels={"zone": "a"}, if_version=current.version)
        await refused(client.remove_node("host-a", if_version=current.version))
        await client.remove_node("host-a", if_version=changed.version)
        assert await client.list_nodes() == []


class RacingStore(SqliteStore):
    """A store in which another writer changes the service between the API's read and its commit."""

    race = False

    async def commit(self, ops: Sequence[Op]) -> int:
        if self.race:
            self.race = False
            service = await self.get_service("web")
            assert service is not None
            service.spec.image = "someone-else:1"
            service.revision += 1
            await super().commit([Put(service, expect_version=service.version)])
        return await super().commit(ops)


@pytest.fixture
async def racing(tmp_path: Path) -> AsyncIterator[tuple[RacingStore, str]]:
    store = RacingStore(tmp_path / "race.db")
    await store.open()
    server = grpc.aio.server()
    add_controller_api(ControllerApi(store, SystemClock(), new_id), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield store, f"127.0.0.1:{port}"
    finally:
        await server.stop(None)
        await store.close()


@pytest.mark.parametrize(
    ("if_revision", "code"),
    [({"web": 1}, grpc.StatusCode.FAILED_PRECONDITION), ({}, grpc.StatusCode.ABORTED)],
)
async def test_a_write_between_read_and_commit_is_caught_by_the_transaction(
    racing: tuple[RacingStore, str], if_revision: dict[str, int], code: grpc.StatusCode
) -> None:
    store, address = racing
    async with Client(address) as client:
        await client.apply([spec()])
        store.race = True
        error = await refused(client.apply([spec(image="app:2")], if_revision=if_revision), code)
        assert str(error).startswith("services.web: changed while this request ran; ")
        assert (await client.get_service("web")).spec.image == "someone-else:1"
