"""The worker's create path for real applications, against the FakeRuntime in virtual time: named volumes,
the host policy on bind mounts, the network and file preparers, and the addresses a running task reports."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.policy import HostPolicy
from agent.preparers import Attachments
from agent.runtime.base import MountSpec, NetworkAttachment, RuntimeFailure
from agent.runtime.fake import FakeRuntime
from agent.task_book import TaskBook
from agent.worker import Worker
from dockyard import labels
from dockyard.clock import FakeClock
from dockyard.v1 import agent_pb2 as apb
from dockyard.v1 import types_pb2 as pb
from tests.unit.test_worker import IMAGE, NODE, NOW, RecordingReporter, Rig, bare, make_task

DOCKER_NETWORK = "dky-net-dockyard"


class ScriptedNetworks:
    """A NetworkPreparer whose node has no subnet until `ready`; then the cluster network on the fake's Docker."""

    def __init__(self, fake: FakeRuntime) -> None:
        self.fake = fake
        self.ready = False
        self.prepared: list[str] = []

    async def prepare(self, task: pb.Task) -> Attachments:
        self.prepared.append(task.id)
        if not self.ready:
            raise RuntimeFailure("network dockyard has no subnet on this node yet")
        await self.fake.ensure_network(
            DOCKER_NETWORK, "10.128.3.0/24", "10.128.3.1", "dky-0a1b2c3d", {labels.MANAGED: "true"}, False
        )
        return Attachments((NetworkAttachment(DOCKER_NETWORK),), ("10.128.3.1",), ("dockyard",))

    def network_name(self, docker_name: str) -> str | None:
        return "dockyard" if docker_name == DOCKER_NETWORK else None


class ScriptedFiles:
    """A FilePreparer whose data arrives when `data` is set."""

    def __init__(self) -> None:
        self.data: tuple[MountSpec, ...] | None = None

    async def mounts(self, task: pb.Task) -> tuple[MountSpec, ...]:
        if self.data is None:
            raise RuntimeFailure("secret db_password has not arrived yet")
        return self.data


def make_rig(
    tmp_path: Path,
    *,
    policy: HostPolicy | None = None,
    networks: ScriptedNetworks | None = None,
    files: ScriptedFiles | None = None,
    fake: FakeRuntime | None = None,
) -> Rig:
    clock = FakeClock(NOW)
    fake = fake or FakeRuntime(images=[IMAGE], clock=clock.now)
    book = TaskBook(tmp_path / "tasks.pb", clock=clock)
    reporter = RecordingReporter()
    worker = Worker(fake, book, reporter, NODE, clock=clock, policy=policy, networks=networks, files=files)
    return Rig(fake, book, reporter, worker, tmp_path / "tasks.pb", clock)


@pytest.fixture
async def rigs() -> AsyncIterator[list[Rig]]:
    """Closes every rig a test made."""
    made: list[Rig] = []
    yield made
    for rig in made:
        await rig.worker.close()


def with_mounts(task: pb.Task, *mounts: pb.Mount) -> pb.Task:
    task.spec.mounts.extend(mounts)
    return task


async def test_a_named_volume_is_created_with_its_labels_and_outlives_the_container(
    tmp_path: Path, rigs: list[Rig]
) -> None:
    rig = make_rig(tmp_path)
    rigs.append(rig)
    task = make_task(command=("sh", "-c", "echo kept > /data/f && exit 0"))
    task.spec.stack = "shop"
    mount = pb.Mount(type=pb.Mount.TYPE_VOLUME, source="shop_db-data", target="/data", volume_labels={"tier": "db"})
    rig.assign(*_split(with_mounts(task, mount)))
    await rig.eventually(lambda: rig.state("t1") == pb.TASK_STATE_COMPLETE, "t1 complete")

    [volume] = await rig.fake.list_volumes({labels.VOLUME: "shop_db-data"})
    assert volume.labels == {"tier": "db", labels.MANAGED: "true", labels.VOLUME: "shop_db-data", labels.STACK: "shop"}
    calls = [call[0] for call in rig.fake.calls]
    assert calls.index("ensure_volume") < calls.index("create"), "the volume exists, labelled, before the container"
    # A replacement task (a new container) finds the data.
    again = make_task("t2", command=("sh", "-c", "grep -qxF kept /data/f"))
    rig.assign(*_split(with_mounts(again, mount)))
    await rig.eventually(lambda: rig.state("t2") == pb.TASK_STATE_COMPLETE, "t2 complete, its grep found the data")
    assert rig.fake.volume_files("shop_db-data") == {"f": "kept\n"}


async def test_another_tools_volume_of_the_name_is_never_mounted_and_the_task_moves(
    tmp_path: Path, rigs: list[Rig]
) -> None:
    rig = make_rig(tmp_path)
    rigs.append(rig)
    await rig.fake.ensure_volume("shop_db-data", {"com.docker.compose.project": "shop"})
    mount = pb.Mount(type=pb.Mount.TYPE_VOLUME, source="shop_db-data", target="/data")
    rig.assign(*_split(with_mounts(make_task(), mount)))
    await rig.eventually(lambda: rig.state("t1") == pb.TASK_STATE_REJECTED, "t1 rejected")
    await rig.quiet()

    status = rig.status("t1")
    assert status.error == (
        f"volume shop_db-data exists on this host and is not Dockyard's (no {labels.MANAGED} label); remove or "
        "rename it on this host, or keep the service off this host with a placement constraint"
    )
    assert status.cause == pb.TaskStatus.CAUSE_HOST, "another host may run it"
    assert "create" not in [call[0] for call in rig.fake.calls], "no container mounts the stranger's data"
    [volume] = await rig.fake.list_volumes({})
    assert volume.labels == {"com.docker.compose.project": "shop"}, "left as it was"


def _split(task: pb.Task) -> tuple[pb.Task, list[apb.ServiceRevisionSpec]]:
    without, spec = bare(task)
    return without, [spec]


async def test_a_bind_mount_is_rejected_by_default_naming_the_mount_and_the_setting(
    tmp_path: Path, rigs: list[Rig]
) -> None:
    rig = make_rig(tmp_path)
    rigs.append(rig)
    task = with_mounts(make_task(), pb.Mount(type=pb.Mount.TYPE_BIND, source=str(tmp_path), target="/host"))
    rig.assign(*_split(task))
    await rig.eventually(lambda: rig.state("t1") == pb.TASK_STATE_REJECTED, "t1 rejected")
    await rig.quiet()

    status = rig.status("t1")
    assert status.error.startswith("refused by this host's policy: services.web.mounts[0].source: bind mount of ")
    assert "--allow-bind-paths" in status.error
    assert status.cause == pb.TaskStatus.CAUSE_HOST
    assert rig.fake.calls == [], "nothing pulled, created or started"


async def test_a_bind_mount_under_an_allowed_path_runs_read_only_and_a_tmpfs_needs_no_setting(
    tmp_path: Path, rigs: list[Rig]
) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "app.ini").write_text("mode=prod\n")
    rig = make_rig(tmp_path, policy=HostPolicy.from_settings(bind_paths=str(tmp_path)))
    rigs.append(rig)
    # Reads the bound file, then tries to write beside it (refused: read-only), so exits 1.
    task = make_task(command=("sh", "-c", "grep -qxF mode=prod /conf/app.ini && touch /scratch/x && touch /conf/new"))
    task = with_mounts(
        task,
        pb.Mount(type=pb.Mount.TYPE_BIND, source=str(tmp_path / "conf"), target="/conf", read_only=True),
        pb.Mount(type=pb.Mount.TYPE_TMPFS, target="/scratch", tmpfs_size_bytes=1 << 20),
    )
    rig.assign(*_split(task))
    await rig.eventually(lambda: rig.state("t1") == pb.TASK_STATE_FAILED, "t1 failed on the read-only write")
    assert rig.status("t1").exit_code == 1
    assert not (tmp_path / "conf" / "new").exists()


async def test_a_bind_source_missing_on_the_host_rejects_the_task_as_the_hosts_fault(
    tmp_path: Path, rigs: list[Rig]
) -> None:
    rig = make_rig(tmp_path, policy=HostPolicy.from_settings(bind_paths=str(tmp_path)))
    rigs.append(rig)
    task = with_mounts(make_task(), pb.Mount(type=pb.Mount.TYPE_BIND, source=str(tmp_path / "gone"), target="/g"))
    rig.assign(*_split(task))
    await rig.eventually(lambda: rig.state("t1") == pb.TASK_STATE_REJECTED, "t1 rejected")
    status = rig.status("t1")
    assert "bind source path does not exist" in status.error
    assert str(tmp_path / "gone") in status.error
    assert status.cause == pb.TaskStatus.CAUSE_HOST


async def test_a_task_waits_in_preparing_for_its_network_and_files_then_reports_its_address(
    tmp_path: Path, rigs: list[Rig]
) -> None:
    fake = FakeRuntime(images=[IMAGE])
    networks = ScriptedNetworks(fake)
    files = ScriptedFiles()
    rig = make_rig(tmp_path, networks=networks, files=files, fake=fake)
    rigs.append(rig)
    task = make_task()
    task.spec.stack = "shop"
    task.spec.name = "shop_web"
    rig.assign(*_split(task))
    await rig.eventually(lambda: len(networks.prepared) >= 3, "the worker to try again and again")
    assert rig.state("t1") == pb.TASK_STATE_PREPARING
    assert rig.status("t1").message == "waiting: network dockyard has no subnet on this node yet"
    assert rig.fake.count("create") == 0

    networks.ready = True
    await rig.eventually(lambda: rig.fake.count("create") == 0 and len(networks.prepared) >= 5, "more tries")
    assert rig.state("t1") == pb.TASK_STATE_PREPARING, "still waiting for the files"
    assert rig.status("t1").message == "waiting: secret db_password has not arrived yet"
    secret = MountSpec("bind", str(tmp_path), "/run/secrets/db_password", read_only=True)
    files.data = (secret,)
    await rig.eventually(lambda: rig.state("t1") == pb.TASK_STATE_RUNNING, "t1 running")

    waits = [s.message for t, s in rig.reporter.history if s.message.startswith("waiting: ")]
    assert waits == [
        "waiting: network dockyard has no subnet on this node yet",
        "waiting: secret db_password has not arrived yet",
    ], "each wait reported once, not at every try"
    status = rig.status("t1")
    assert dict(status.addresses) == {"dockyard": "10.128.3.2"}
    info = await rig.fake.inspect(status.container_id)
    assert info.addresses == {DOCKER_NETWORK: "10.128.3.2"}
    # No alias: Docker's embedded DNS would answer the short name with this host's containers only.
    assert rig.fake.aliases(info.id)[DOCKER_NETWORK] == (info.id[:12],)
    [created] = [c for c in rig.fake.calls if c[0] == "create"]
    assert created == ("create", info.name)

    rig.fake.crash(info.id, 1)
    rig.worker.wake(["t1"], stale=True)
    await rig.eventually(lambda: rig.state("t1") == pb.TASK_STATE_FAILED, "t1 failed")
    assert dict(rig.status("t1").addresses) == {}, "an ended task has no address to be found at"


async def test_addresses_on_networks_that_are_not_the_clusters_are_not_reported(
    tmp_path: Path, rigs: list[Rig]
) -> None:
    rig = make_rig(tmp_path)
    rigs.append(rig)
    rig.assign(*_split(make_task()))
    await rig.eventually(lambda: rig.state("t1") == pb.TASK_STATE_RUNNING, "t1 running")
    info = await rig.fake.inspect(rig.status("t1").container_id)
    assert list(info.addresses) == ["bridge"]
    assert dict(rig.status("t1").addresses) == {}
