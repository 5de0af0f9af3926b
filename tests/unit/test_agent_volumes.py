"""The agent's volumes against the FakeRuntime: what the hello lists, and the VolumeRemove handler."""

from __future__ import annotations

from datetime import UTC, datetime

from agent.commands import Incoming
from agent.runtime.base import ContainerSpec, MountSpec
from agent.runtime.fake import FakeRuntime
from agent.volumes import Volumes
from dockyard import labels
from dockyard.clock import FakeClock
from dockyard.v1 import agent_pb2 as apb

IMAGE = "dockyard-test:latest"
OURS = {labels.MANAGED: "true"}


def removal(name: str) -> Incoming:
    return Incoming(apb.Command(command_id="c1", volume_remove=apb.VolumeRemove(name=name)))


def volumes(fake: FakeRuntime) -> Volumes:
    return Volumes(fake, FakeClock(datetime(2026, 1, 1, tzinfo=UTC)))


async def test_the_hello_lists_only_the_volumes_the_agent_made_by_name() -> None:
    fake = FakeRuntime(images=[IMAGE])
    await fake.ensure_volume("shop_db-data", {**OURS, labels.VOLUME: "shop_db-data", labels.STACK: "shop"})
    await fake.ensure_volume("cache", {**OURS, labels.VOLUME: "cache"})
    await fake.ensure_volume("someone-elses", {"owner": "ops"})
    await fake.ensure_volume("managed-but-no-name", OURS)
    assert await volumes(fake).names() == ["cache", "shop_db-data"]


async def test_the_hello_lists_none_while_docker_is_away() -> None:
    fake = FakeRuntime(images=[IMAGE])
    await fake.ensure_volume("cache", {**OURS, labels.VOLUME: "cache"})
    fake.set_available(False)
    assert await volumes(fake).names() == []


async def test_remove_removes_ours_and_is_done_for_a_missing_one() -> None:
    fake = FakeRuntime(images=[IMAGE])
    await fake.ensure_volume("cache", {**OURS, labels.VOLUME: "cache"})
    handler = volumes(fake)
    assert await handler.remove(removal("cache")) is None
    assert await fake.list_volumes({}) == []
    assert await handler.remove(removal("cache")) is None, "already gone is done"


async def test_remove_refuses_a_volume_in_use_and_one_that_is_not_ours() -> None:
    fake = FakeRuntime(images=[IMAGE])
    await fake.ensure_volume("db", {**OURS, labels.VOLUME: "db"})
    await fake.ensure_volume("theirs", {"owner": "ops"})
    user = await fake.create(ContainerSpec(name="db-user", image=IMAGE, mounts=(MountSpec("volume", "db", "/d"),)))
    handler = volumes(fake)

    in_use = await handler.remove(removal("db"))
    assert in_use is not None and in_use.done and in_use.command_id == "c1"
    assert in_use.error.startswith("volume db is in use on this host: ")
    stranger = await handler.remove(removal("theirs"))
    assert stranger is not None
    assert (
        stranger.error == f"volume theirs on this host was not made by Dockyard (no {labels.VOLUME} label); not removed"
    )
    empty = await handler.remove(removal(""))
    assert empty is not None and empty.error.startswith("volume_remove.name: ")
    assert [v.name for v in await fake.list_volumes({})] == ["db", "theirs"]

    await fake.remove(user)
    assert await handler.remove(removal("db")) is None
    assert [v.name for v in await fake.list_volumes({})] == ["theirs"]
