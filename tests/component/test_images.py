"""PushImage against the real controller and real agents on fake runtimes, and tasks that wait for a push.

Agents are the product's own (agent.agent.Agent over real gRPC with mutual TLS) on FakeRuntimes, so the
command channel, the ImageLoad handler, the hello's images and the worker's wait all run as on a host.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import grpc
import pytest
from click.testing import CliRunner

from agent.images import waiting_message
from agent.runtime.fake import FakeRuntime
from dockyard.cli.main import cli
from dockyard.client import ApiError, Client
from dockyard.v1 import controller_pb2 as cpb
from dockyard.v1 import types_pb2 as pb
from tests.component.harness import IMAGE, FakeCluster
from tests.polling import eventually

APP = "app:dev"
PIECE = 512


async def _archive(image: str = APP) -> tuple[bytes, str]:
    source = FakeRuntime(images=[image])
    data = b"".join([chunk async for chunk in source.save_image(image)])
    image_id = await source.image_id(image)
    assert image_id is not None
    return data, image_id


async def _ready(client: Client, count: int) -> list[pb.Node]:
    async def check() -> list[pb.Node]:
        nodes = await client.list_nodes()
        ready = [n for n in nodes if n.status == pb.NODE_STATUS_READY]
        return ready if len(ready) == count else []

    return await eventually(check, what=f"{count} ready nodes")


async def _pieces(data: bytes, before: dict[int, asyncio.Event] | None = None) -> AsyncIterator[bytes]:
    """The archive in small pieces; before piece i, waits for `before[i]` if given."""
    for index, start in enumerate(range(0, len(data), PIECE)):
        if before and index in before:
            await before[index].wait()
        yield data[start : start + PIECE]


async def test_a_push_loads_where_missing_skips_where_present_and_survives_a_node_that_drops(
    fake_cluster: FakeCluster,
) -> None:
    data, image_id = await _archive()
    assert len(data) > 6 * PIECE, "the archive must span several pieces"
    await fake_cluster.start_agent("h1")
    h2 = await fake_cluster.start_agent("h2", FakeRuntime(images=[IMAGE, APP]))
    h3 = await fake_cluster.start_agent("h3")
    dropped = asyncio.Event()
    h3_acked = asyncio.Event()
    final: dict[str, cpb.PushImageProgress] = {}
    async with fake_cluster.client() as client:
        await _ready(client, 3)

        async def drop_h3() -> None:
            await h3_acked.wait()
            await fake_cluster.stop_agent("h3")  # as a host dying in the middle of the push
            dropped.set()

        dropper = asyncio.create_task(drop_h3())
        async for progress in client.push_image(APP, image_id, len(data), _pieces(data, {6: dropped})):
            if progress.hostname == "h3" and progress.bytes_done >= 2 * PIECE:
                h3_acked.set()
            assert progress.total == len(data)
            if progress.done:
                assert progress.hostname not in final, "one final report per node"
                final[progress.hostname] = progress
        await dropper
    assert sorted(final) == ["h1", "h2", "h3"]
    assert final["h1"].error == "" and not final["h1"].already_present and final["h1"].bytes_done == len(data)
    assert final["h2"].already_present and final["h2"].error == ""
    assert "session ended" in final["h3"].error
    host1 = fake_cluster.hosts["h1"].runtime
    assert await host1.image_id(APP) == image_id
    assert h2.runtime.count("load_image") == 0, "a node that has the image gets no more than the first piece"
    assert await h3.runtime.image_id(APP) is None


async def test_named_nodes_only_and_a_name_that_is_no_node_is_refused(fake_cluster: FakeCluster) -> None:
    data, image_id = await _archive()
    await fake_cluster.start_agent("h1")
    await fake_cluster.start_agent("h2")
    async with fake_cluster.client() as client:
        await _ready(client, 2)
        with pytest.raises(ApiError, match=r"nodes\[1\]: 'nope' is no node") as refused:
            async for _ in client.push_image(APP, image_id, len(data), _pieces(data), ["h2", "nope"]):
                pass
        assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
        done = [p async for p in client.push_image(APP, image_id, len(data), _pieces(data), ["h2"]) if p.done]
        assert [(p.hostname, p.error, p.already_present) for p in done] == [("h2", "", False)]
        # Again: h2 has it now, answers the first piece "present", and the push ends without the rest.
        again = [p async for p in client.push_image(APP, image_id, len(data), _pieces(data), ["h2"]) if p.done]
        assert [(p.hostname, p.error, p.already_present) for p in again] == [("h2", "", True)]
        assert await client.list_nodes()  # the connection outlived the early end
    assert await fake_cluster.hosts["h2"].runtime.image_id(APP) == image_id
    assert await fake_cluster.hosts["h1"].runtime.image_id(APP) is None


async def test_a_stream_that_lies_about_its_size_is_refused_naming_the_field(fake_cluster: FakeCluster) -> None:
    data, image_id = await _archive()
    await fake_cluster.start_agent("h1")
    async with fake_cluster.client() as client:
        await _ready(client, 1)
        with pytest.raises(ApiError, match=r"data: the pieces add up to more than the total"):
            async for _ in client.push_image(APP, image_id, len(data) - 10, _pieces(data)):
                pass
        with pytest.raises(ApiError, match=r"image_id: must be the image's id"):
            async for _ in client.push_image(APP, "abc", len(data), _pieces(data)):
                pass
    assert await fake_cluster.hosts["h1"].runtime.image_id(APP) is None


async def _task_on(client: Client, hostname: str, service: str) -> pb.Task | None:
    nodes = {n.id: n.description.hostname for n in await client.list_nodes()}
    for task in await client.list_tasks(service=service):
        if nodes.get(task.node_id) == hostname and task.desired_state == pb.DESIRED_STATE_RUNNING:
            return task
    return None


async def test_a_task_whose_image_another_node_has_waits_for_the_push_and_then_runs(fake_cluster: FakeCluster) -> None:
    data, image_id = await _archive()
    await fake_cluster.start_agent("h1", FakeRuntime(images=[IMAGE, APP]))
    await fake_cluster.start_agent("h2")
    async with fake_cluster.client() as client:
        await _ready(client, 2)
        spec = pb.ServiceSpec(name="web", image=APP, replicas=2)
        await client.apply([spec])

        async def waiting() -> pb.Task | None:
            task = await _task_on(client, "h2", "web")
            return task if task is not None and task.status.message.startswith("waiting for image") else None

        task = await eventually(waiting, what="h2's task waiting for the push")
        assert task is not None
        assert task.status.state == pb.TASK_STATE_PREPARING
        assert task.status.message.startswith(waiting_message(APP, "pull access denied"))
        done = [p async for p in client.push_image(APP, image_id, len(data), _pieces(data)) if p.done]
        assert {p.hostname: p.already_present for p in done} == {"h1": True, "h2": False}

        async def running_on_h2() -> pb.Task | None:
            task = await _task_on(client, "h2", "web")
            return task if task is not None and task.status.state == pb.TASK_STATE_RUNNING else None

        running = await eventually(running_on_h2, what="h2's task running after the push")
        assert running is not None
        assert running.id == task.id, "the same task ran once its image came: it was never failed"


def _ps(fake_cluster: FakeCluster) -> list[dict[str, object]]:
    result = CliRunner().invoke(
        cli,
        [
            "--credentials",
            str(fake_cluster.credentials_dir),
            "ps",
            "--all",
            "-o",
            "json",
            "--controller",
            f"127.0.0.1:{fake_cluster.port}",
        ],
    )
    assert result.exit_code == 0, result.output
    rows: list[dict[str, object]] = json.loads(result.output)
    return rows


async def test_an_image_nobody_can_pull_or_push_moves_the_task_with_the_reason_in_ps(fake_cluster: FakeCluster) -> None:
    await fake_cluster.start_agent("h1")
    await fake_cluster.start_agent("h2")
    async with fake_cluster.client() as client:
        nodes = {n.description.hostname: n.id for n in await _ready(client, 2)}
        await client.apply([pb.ServiceSpec(name="ghost", image="ghost:1", replicas=1)])

        async def moved() -> list[pb.Task]:
            tasks = await client.list_tasks(service="ghost", include_finished=True)
            return [t for t in tasks if t.avoid_node_ids] if len(tasks) >= 2 else []

        successors = await eventually(moved, what="a successor that avoids the failed node")
        tasks = await client.list_tasks(service="ghost", include_finished=True)
    failed = [t for t in tasks if t.status.state == pb.TASK_STATE_REJECTED]
    assert failed, "the first task was refused by its host"
    first = failed[0]
    assert first.status.cause == pb.TaskStatus.CAUSE_HOST
    assert "'ghost:1' is not on this host and could not be pulled" in first.status.error
    assert first.node_id in successors[0].avoid_node_ids
    assert set(nodes.values()) >= set(successors[0].avoid_node_ids)
    rows = await asyncio.to_thread(_ps, fake_cluster)
    assert any("could not be pulled" in json.dumps(row) for row in rows), rows
