"""ListVolumes and RemoveVolume through the real API over gRPC, with a fake command channel standing for the
agents; and PlanApply's reason for a task whose volume lives on a node that is down."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner

from controller.api.apply import ObjectsView, plan_objects
from controller.commands import CommandFailed, NodeUnavailable
from controller.store.base import Check, Kind, Put
from dockyard.cli.main import cli
from dockyard.client import ApiError
from dockyard.v1 import agent_pb2 as apb
from dockyard.v1 import controller_pb2 as cpb
from dockyard.v1 import types_pb2 as pb
from tests.component.harness import ApiInThread, ApiUnderTest, after_first_read, start_api

DATA = "shop_db-data"
NOW = datetime(2025, 1, 1, tzinfo=UTC)


@dataclass
class FakeCall:
    """A command call that answers with the results it was given, or fails as told."""

    command_id: str
    node_id: str
    results: list[apb.CommandResult]
    failure: str | None = None
    closed: bool = False

    async def send(self, command: apb.Command) -> None:
        raise AssertionError("a volume removal has one part")

    def fail(self, reason: str) -> None:
        self.failure = reason

    def close(self) -> None:
        self.closed = True

    def __aiter__(self) -> AsyncIterator[apb.CommandResult]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[apb.CommandResult]:
        for result in self.results:
            yield result
        if self.failure is not None:
            raise CommandFailed(self.failure)


@dataclass
class FakeSender:
    """The command channel as the API sees it: which nodes are connected and how each answers."""

    connected: set[str] = field(default_factory=set)
    answers: dict[str, apb.CommandResult] = field(default_factory=dict)  # node id -> its final result
    sent: list[tuple[str, apb.Command]] = field(default_factory=list)
    calls: list[FakeCall] = field(default_factory=list)

    def open(self, node_id: str, command: apb.Command, *, idle_timeout: float | None = None) -> FakeCall:
        if node_id not in self.connected:
            raise NodeUnavailable(f"node {node_id} is not connected")
        self.sent.append((node_id, command))
        answer = self.answers.get(node_id, apb.CommandResult(done=True))
        call = FakeCall("c1", node_id, [answer])
        self.calls.append(call)
        return call


def node(node_id: str, hostname: str, status: pb.NodeStatus.ValueType = pb.NODE_STATUS_READY) -> pb.Node:
    result = pb.Node(id=node_id, status=status, availability=pb.NODE_AVAILABILITY_ACTIVE)
    result.description.hostname = hostname
    result.description.cpus = 2
    result.description.memory_bytes = 1 << 30
    return result


def mounting(name: str, volume: str) -> pb.ServiceSpec:
    spec = pb.ServiceSpec(name=name, image="postgres:16", replicas=1)
    spec.mounts.append(pb.Mount(type=pb.Mount.TYPE_VOLUME, source=volume, target="/var/lib/postgresql/data"))
    return spec


@pytest.fixture
def sender() -> FakeSender:
    return FakeSender(connected={"n1"})


@pytest.fixture
async def api(tmp_path: Path, sender: FakeSender) -> AsyncIterator[ApiUnderTest]:
    server = await start_api(tmp_path, commands=sender)
    await server.store.commit([Put(node("n1", "h1")), Put(node("n2", "h2", pb.NODE_STATUS_DOWN))])
    try:
        yield server
    finally:
        await server.close()


async def refused(call: object, code: grpc.StatusCode) -> str:
    with pytest.raises(ApiError) as caught:
        await call  # type: ignore[misc]
    assert caught.value.code == code, str(caught.value)
    return str(caught.value)


async def volume_on(api: ApiUnderTest, name: str, node_id: str = "", vid: str = "") -> pb.Volume:
    volume = pb.Volume(id=vid or f"id-{name}", name=name, node_id=node_id, stack="shop")
    await api.store.commit([Put(volume)])
    return volume


async def test_list_volumes_all_or_of_one_node(api: ApiUnderTest) -> None:
    await volume_on(api, "b-vol", "n1")
    await volume_on(api, "a-vol", "n2")
    await volume_on(api, "c-vol")
    async with api.client() as client:
        assert [v.name for v in await client.list_volumes()] == ["a-vol", "b-vol", "c-vol"]
        assert [v.name for v in await client.list_volumes("n1")] == ["b-vol"]


async def test_removal_asks_the_node_then_forgets_the_record(api: ApiUnderTest, sender: FakeSender) -> None:
    await volume_on(api, DATA, "n1")
    async with api.client() as client:
        removed = await client.remove_volume(DATA)
    assert removed.name == DATA
    assert [(n, c.volume_remove.name) for n, c in sender.sent] == [("n1", DATA)]
    assert sender.calls[0].closed
    assert await api.store.get_object(Kind.VOLUME, DATA) is None


async def test_a_node_that_refuses_leaves_the_record_and_says_why(api: ApiUnderTest, sender: FakeSender) -> None:
    volume = await volume_on(api, DATA, "n1")
    sender.answers["n1"] = apb.CommandResult(done=True, error=f"volume {DATA} is in use on this host: container x")
    async with api.client() as client:
        message = await refused(client.remove_volume(DATA), grpc.StatusCode.FAILED_PRECONDITION)
    assert "node h1" in message and "in use on this host" in message
    kept = await api.store.get_object(Kind.VOLUME, DATA)
    assert isinstance(kept, pb.Volume) and kept.node_id == "n1" and not kept.removing
    assert kept.version > volume.version  # marked removing, then unmarked


async def test_a_volume_mounted_by_a_service_is_not_removed(api: ApiUnderTest, sender: FakeSender) -> None:
    await volume_on(api, DATA, "n1")
    await api.store.commit(
        [
            Put(pb.Service(id="s1", name="shop_db", spec=mounting("shop_db", DATA))),
            Put(pb.Service(id="s2", name="backup", spec=mounting("backup", DATA))),
        ]
    )
    async with api.client() as client:
        message = await refused(client.remove_volume(DATA), grpc.StatusCode.FAILED_PRECONDITION)
    assert "mounted by service(s) backup, shop_db" in message
    assert sender.sent == []
    assert await api.store.get_object(Kind.VOLUME, DATA) is not None


async def test_a_volume_never_placed_goes_at_once(api: ApiUnderTest, sender: FakeSender) -> None:
    await volume_on(api, DATA)
    async with api.client() as client:
        await client.remove_volume(DATA)
    assert sender.sent == []
    assert await api.store.get_object(Kind.VOLUME, DATA) is None


async def test_a_volume_on_a_down_node_needs_force(api: ApiUnderTest, sender: FakeSender) -> None:
    await volume_on(api, DATA, "n2")
    async with api.client() as client:
        message = await refused(client.remove_volume(DATA), grpc.StatusCode.FAILED_PRECONDITION)
        assert "on node h2, which is down" in message and "--force" in message
        assert await api.store.get_object(Kind.VOLUME, DATA) is not None
        await client.remove_volume(DATA, force=True)
    assert sender.sent == []
    assert await api.store.get_object(Kind.VOLUME, DATA) is None


async def test_a_volume_on_a_node_not_connected_needs_force(api: ApiUnderTest, sender: FakeSender) -> None:
    sender.connected.clear()
    await volume_on(api, DATA, "n1")
    async with api.client() as client:
        message = await refused(client.remove_volume(DATA), grpc.StatusCode.FAILED_PRECONDITION)
        assert "node h1: not connected" in message
        kept = await api.store.get_object(Kind.VOLUME, DATA)
        assert isinstance(kept, pb.Volume) and not kept.removing
        await client.remove_volume(DATA, force=True)
    assert await api.store.get_object(Kind.VOLUME, DATA) is None


async def test_unknown_and_unnamed_volumes(api: ApiUnderTest) -> None:
    async with api.client() as client:
        assert "not found" in await refused(client.remove_volume("nope"), grpc.StatusCode.NOT_FOUND)
        assert "name" in await refused(client.remove_volume(""), grpc.StatusCode.INVALID_ARGUMENT)


async def test_plan_names_the_volume_of_an_unplaceable_task(api: ApiUnderTest) -> None:
    await volume_on(api, DATA, "n2")
    async with api.client() as client:
        plan = await client.plan([mounting("db", DATA)])
    (task,) = plan.services[0].tasks
    assert task.kind == cpb.PlannedTask.KIND_UNPLACED
    assert f"1 lacks volume {DATA} (it is on node h2, which is down)" in task.reason, task.reason


async def test_plan_keeps_a_new_volume_s_replicas_together(api: ApiUnderTest) -> None:
    await api.store.commit([Put(node("n3", "h3"))])
    async with api.client() as client:
        spec = mounting("db", "fresh")
        spec.replicas = 2
        plan = await client.plan([spec])
    nodes = {t.node_name for t in plan.services[0].tasks}
    assert len(nodes) == 1 and nodes <= {"h1", "h3"}, nodes


async def test_an_apply_landing_after_the_first_read_of_users_stops_the_removal(
    api: ApiUnderTest, sender: FakeSender
) -> None:
    await volume_on(api, DATA, "n1")
    async with api.client() as client:
        after_first_read(api, lambda: client.apply([mounting("db", DATA)]))
        message = await refused(client.remove_volume(DATA), grpc.StatusCode.FAILED_PRECONDITION)
    assert "mounted by service(s) db;" in message
    assert sender.sent == [], "the node was never asked"
    kept = await api.store.get_object(Kind.VOLUME, DATA)
    assert isinstance(kept, pb.Volume) and not kept.removing


async def test_a_service_given_the_mount_during_the_removal_keeps_the_record(
    api: ApiUnderTest, sender: FakeSender
) -> None:
    await volume_on(api, DATA, "n1")
    await api.store.commit([Put(pb.Service(id="s1", name="backup", spec=mounting("backup", "other")))])
    opened = sender.open

    def open_and_race(node_id: str, command: apb.Command, *, idle_timeout: float | None = None) -> FakeCall:
        # While the node removes the volume, a write that is not an apply (a rollback) gives a service the mount.
        call = opened(node_id, command)
        answer = call._iterate

        async def racing() -> AsyncIterator[apb.CommandResult]:
            await api.store.commit([Put(pb.Service(id="s1", name="backup", spec=mounting("backup", DATA)))])
            async for result in answer():
                yield result

        call._iterate = racing  # type: ignore[method-assign]
        return call

    sender.open = open_and_race  # type: ignore[method-assign]
    async with api.client() as client:
        message = await refused(client.remove_volume(DATA), grpc.StatusCode.FAILED_PRECONDITION)
    assert "mounted by service(s) backup (its data on node h1 is removed already)" in message
    kept = await api.store.get_object(Kind.VOLUME, DATA)
    assert isinstance(kept, pb.Volume) and not kept.removing


async def test_an_interrupted_removal_s_mark_is_cleared_by_a_refused_one(api: ApiUnderTest, sender: FakeSender) -> None:
    await api.store.commit(
        [
            Put(pb.Volume(id="v1", name=DATA, node_id="n1", removing=True)),
            Put(pb.Service(id="s1", name="shop_db", spec=mounting("shop_db", DATA))),
        ]
    )
    async with api.client() as client:
        await refused(client.remove_volume(DATA), grpc.StatusCode.FAILED_PRECONDITION)
    kept = await api.store.get_object(Kind.VOLUME, DATA)
    assert isinstance(kept, pb.Volume) and not kept.removing and sender.sent == []


async def test_apply_refuses_a_volume_being_removed_and_checks_one_it_newly_mounts(api: ApiUnderTest) -> None:
    await api.store.commit([Put(pb.Volume(id="v1", name=DATA, node_id="n1", removing=True))])
    async with api.client() as client:
        message = await refused(client.apply([mounting("db", DATA)]), grpc.StatusCode.INVALID_ARGUMENT)
    assert message.startswith(f"services.db.mounts[0].source: volume '{DATA}' is being removed; ")
    assert await api.store.list_services() == []
    # A volume not being removed: a new mount of it is Checked, a mount the stored service had already is not.
    view = ObjectsView({}, {"kept": pb.Volume(id="v2", name="kept", version=7)}, {}, {})
    stored = {"b": pb.Service(name="b", spec=mounting("b", "kept"))}
    specs = [mounting("a", "kept"), mounting("b", "kept")]
    plan = plan_objects(cpb.ApplyServiceRequest(services=specs), specs, view, NOW, lambda: "x", None, {})
    assert plan.ops == [Check(Kind.VOLUME, "v2", 7)]
    again = plan_objects(cpb.ApplyServiceRequest(services=specs[1:]), specs[1:], view, NOW, lambda: "x", None, stored)
    assert again.ops == []


@pytest.fixture
def threaded(tmp_path: Path) -> Iterator[ApiInThread]:
    server = ApiInThread(tmp_path)
    try:
        yield server
    finally:
        server.close()


def test_cli_volume_ls_and_rm(threaded: ApiInThread) -> None:
    store = threaded.api.store
    threaded.run(store.commit([Put(node("n2", "h2", pb.NODE_STATUS_DOWN))]))
    threaded.run(store.commit([Put(pb.Volume(id="v1", name=DATA, stack="shop", node_id="n2"))]))

    def dockyard(*args: str) -> tuple[int, str]:
        base = ["--credentials", str(threaded.api.credentials_dir)]
        result = CliRunner().invoke(cli, [*base, *args, "--controller", threaded.api.address], catch_exceptions=False)
        return result.exit_code, result.output

    code, out = dockyard("volume", "ls", "--output", "json")
    assert code == 0, out
    (row,) = json.loads(out)
    assert (row["name"], row["stack"], row["node"], row["state"]) == (DATA, "shop", "h2", "placed")
    code, out = dockyard("volume", "ls")
    assert code == 0 and DATA in out and "h2" in out
    code, out = dockyard("volume", "rm", DATA)
    assert code != 0 and "which is down" in out
    code, out = dockyard("volume", "rm", DATA, "--force", "--output", "json")
    assert code == 0, out
    # The API runs in this process: its log line about the forgotten volume shares stdout with the CLI.
    lines = out.splitlines()
    printed = "\n".join(lines[lines.index("[") :])
    assert [r["name"] for r in json.loads(printed)] == [DATA]
    code, out = dockyard("volume", "ls", "--output", "json")
    assert json.loads(out) == []
