"""Lists and reads over real gRPC: pages under the message limit, task views, services at past revisions."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from controller.api.paging import MAX_PAGE_BYTES, MAX_PAGE_SIZE
from controller.store.base import Put
from dockyard.client import ApiError
from dockyard.timestamps import to_timestamp
from dockyard.v1 import controller_pb2 as cpb
from dockyard.v1 import controller_pb2_grpc as cpb_grpc
from dockyard.v1 import types_pb2 as pb
from tests.component.harness import ApiUnderTest

GRPC_DEFAULT_LIMIT = 4 * 1024 * 1024
START = datetime(2026, 3, 1, tzinfo=UTC)


async def put_service(api: ApiUnderTest, spec: pb.ServiceSpec, previous: pb.Service | None = None) -> pb.Service:
    """Writes a service (a new revision of `previous`) straight to the store, bypassing validation."""
    service = pb.Service(id="svc-big", name=spec.name, revision=1, spec_revision=1)
    if previous is not None:
        service.CopyFrom(previous)
        service.revision += 1
        service.spec_revision = service.revision
    service.spec.CopyFrom(spec)
    await api.store.commit([Put(service)])
    return service


async def put_tasks(api: ApiUnderTest, service: pb.Service, slots: range) -> None:
    tasks = []
    for slot in slots:
        task = pb.Task(
            id=f"task-{slot:04}",
            service_id=service.id,
            service_name=service.name,
            slot=slot,
            revision=service.revision,
            desired_state=pb.DESIRED_STATE_RUNNING,
        )
        task.status.state = pb.TASK_STATE_PENDING
        task.created_at.CopyFrom(to_timestamp(START + timedelta(seconds=slot)))
        tasks.append(Put(task))
    await api.store.commit(tasks)


def big_spec(marker: str) -> pb.ServiceSpec:
    spec = pb.ServiceSpec(name="big", image=f"app:{marker}", replicas=420)
    for i in range(120):
        spec.env[f"VAR_{i:03}"] = marker * 1024  # 120 KiB of environment
    return spec


async def test_paging_through_50_mb_of_full_tasks_keeps_every_page_under_the_limit(api: ApiUnderTest) -> None:
    first = await put_service(api, big_spec("a"))
    await put_tasks(api, first, range(1, 211))
    second = await put_service(api, big_spec("b"), previous=first)
    await put_tasks(api, second, range(211, 421))

    seen: list[str] = []
    sizes: list[int] = []
    total = 0
    started = time.monotonic()
    request = cpb.ListTasksRequest(view=cpb.TASK_VIEW_FULL, page_size=MAX_PAGE_SIZE)
    async with api.channel() as channel:
        stub = cpb_grpc.ControllerServiceStub(channel)
        while True:
            page = await stub.ListTasks(request, timeout=30)
            sizes.append(page.ByteSize())
            total += page.ByteSize()
            for task in page.tasks:
                seen.append(task.id)
                assert task.spec.image == ("app:a" if task.revision == 1 else "app:b")
                assert len(task.spec.env) == 120
            if not page.next_page_token:
                break
            request.page_token = page.next_page_token
    print(
        f"{len(sizes)} pages, {total / 1e6:.1f} MB, largest page {max(sizes)} bytes, {time.monotonic() - started:.1f}s"
    )
    assert total > 50 * 1000 * 1000
    assert sorted(seen) == [f"task-{slot:04}" for slot in range(1, 421)]
    assert len(seen) == len(set(seen))
    assert max(sizes) <= MAX_PAGE_BYTES < GRPC_DEFAULT_LIMIT // 2

    async with api.client() as client:  # the client follows the same pages
        tasks = await client.list_tasks(full=True)
        basic = await client.list_tasks()
    assert len(tasks) == 420
    assert [t.id for t in basic] == [t.id for t in tasks]
    assert not any(t.HasField("spec") for t in basic)


async def test_services_and_nodes_page_by_name(api: ApiUnderTest) -> None:
    for name in ["e", "c", "a", "d", "b"]:
        await api.store.commit(
            [Put(pb.Service(id=f"id-{name}", name=name, revision=1, spec=pb.ServiceSpec(name=name)))]
        )
        node = pb.Node(id=f"n-{name}")
        node.description.hostname = f"host-{name}"
        await api.store.commit([Put(node)])
    async with api.channel() as channel:
        stub = cpb_grpc.ControllerServiceStub(channel)
        names: list[list[str]] = []
        token = ""
        while True:
            page = await stub.ListServices(cpb.ListServicesRequest(page_size=2, page_token=token), timeout=10)
            names.append([s.name for s in page.services])
            token = page.next_page_token
            if not token:
                break
        hosts = await stub.ListNodes(cpb.ListNodesRequest(page_size=3), timeout=10)
    assert names == [["a", "b"], ["c", "d"], ["e"]]
    assert [n.description.hostname for n in hosts.nodes] == ["host-a", "host-b", "host-c"]
    assert hosts.next_page_token


@pytest.mark.parametrize("token", ["garbage!", "eyJ4IjoxfQ", "A" * 10_000])
async def test_a_page_token_that_does_not_decode_is_invalid_argument(api: ApiUnderTest, token: str) -> None:
    async with api.channel() as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await cpb_grpc.ControllerServiceStub(channel).ListTasks(cpb.ListTasksRequest(page_token=token), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (caught.value.details() or "").startswith("page_token: ")
    bad_request = error_details_pb2.BadRequest()
    rpc_status.from_call(caught.value).details[0].Unpack(bad_request)
    assert [v.field for v in bad_request.field_violations] == ["page_token"]


async def test_a_token_from_another_list_is_refused(api: ApiUnderTest) -> None:
    for name in "abc":
        await api.store.commit([Put(pb.Service(id=f"id-{name}", name=name, revision=1))])
    async with api.channel() as channel:
        stub = cpb_grpc.ControllerServiceStub(channel)
        token = (await stub.ListServices(cpb.ListServicesRequest(page_size=1), timeout=10)).next_page_token
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ListNodes(cpb.ListNodesRequest(page_token=token), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "another list" in (caught.value.details() or "")


async def test_get_service_at_a_past_revision(api: ApiUnderTest) -> None:
    async with api.client() as client:
        await client.apply([pb.ServiceSpec(name="web", image="app:1", replicas=1)])
        await client.apply([pb.ServiceSpec(name="web", image="app:2", replicas=1)])
        await client.scale("web", 4)
        await client.scale("web", 5)
        now = await client.get_service("web")
        assert (now.revision, now.spec_revision, now.spec.image) == (4, 2, "app:2")
        past = {r: await client.get_service("web", revision=r) for r in (1, 2, 3, 4)}
        assert [(s.revision, s.spec_revision, s.spec.image, s.spec.replicas) for s in past.values()] == [
            (1, 1, "app:1", 1),
            (2, 2, "app:2", 1),
            (3, 2, "app:2", 4),
            (4, 2, "app:2", 5),
        ]
        with pytest.raises(ApiError) as caught:
            await client.get_service("web", revision=9)
    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    assert str(caught.value) == "revision: service 'web' has no revision 9 (it is at revision 4)"


async def test_spec_revision_of_a_past_scale_walks_back_to_the_last_spec_change(api: ApiUnderTest) -> None:
    async with api.client() as client:
        await client.apply([pb.ServiceSpec(name="web", image="app:1", replicas=1)])
        await client.scale("web", 2)
        await client.scale("web", 3)
        await client.apply([pb.ServiceSpec(name="web", image="app:2", replicas=3)])
        past = await client.get_service("web", revision=3)
    assert (past.revision, past.spec_revision, past.spec.image, past.spec.replicas) == (3, 1, "app:1", 3)


async def test_specs_for_reads_each_revision_once_and_skips_gone_services(api: ApiUnderTest) -> None:
    first = await put_service(api, pb.ServiceSpec(name="big", image="app:1"))
    await put_tasks(api, first, range(1, 4))
    second = await put_service(api, pb.ServiceSpec(name="big", image="app:2"), previous=first)
    await put_tasks(api, second, range(4, 6))
    async with api.client() as client:
        tasks = await client.list_tasks()
        orphan = pb.Task(id="x", service_id="deleted", revision=1)
        specs = await client.specs_for([*tasks, orphan])
    assert {key: spec.image for key, spec in specs.items()} == {("svc-big", 1): "app:1", ("svc-big", 2): "app:2"}


async def test_finished_tasks_do_not_shorten_pages(api: ApiUnderTest) -> None:
    """Nine in ten tasks finished: a page still holds page_size live ones; include_finished lists all."""
    service = await put_service(api, pb.ServiceSpec(name="big", image="app:1"))
    tasks = []
    for slot in range(1, 301):
        task = pb.Task(id=f"task-{slot:04}", service_id=service.id, slot=slot, revision=1, node_id=f"n{slot % 3}")
        live = slot % 10 == 0
        task.desired_state = pb.DESIRED_STATE_RUNNING if live else pb.DESIRED_STATE_SHUTDOWN
        task.status.state = pb.TASK_STATE_RUNNING if live else pb.TASK_STATE_COMPLETE
        task.created_at.CopyFrom(to_timestamp(START))
        tasks.append(Put(task))
    await api.store.commit(tasks)

    async def pages(request: cpb.ListTasksRequest) -> list[list[str]]:
        found: list[list[str]] = []
        async with api.channel() as channel:
            stub = cpb_grpc.ControllerServiceStub(channel)
            while True:
                page = await stub.ListTasks(request, timeout=10)
                found.append([t.id for t in page.tasks])
                if not page.next_page_token:
                    return found
                request.page_token = page.next_page_token

    live = await pages(cpb.ListTasksRequest(page_size=7))
    assert [len(p) for p in live] == [7, 7, 7, 7, 2]
    assert [i for p in live for i in p] == [f"task-{slot:04}" for slot in range(10, 301, 10)]
    everything = await pages(cpb.ListTasksRequest(page_size=100, include_finished=True))
    assert [len(p) for p in everything] == [100, 100, 100]
    on_node = await pages(cpb.ListTasksRequest(page_size=4, node_id="n1", service="big"))
    assert [i for p in on_node for i in p] == [f"task-{slot:04}" for slot in range(10, 301, 10) if slot % 3 == 1]
    assert all(len(p) == 4 for p in on_node[:-1])
