"""Secrets and configs from the API to the containers that use them, over the real controller and agents.

The agents run on fake runtimes whose scripted shell reads the bind-mounted files (agent.runtime.fake), and
keep their files on a tmpfs under /dev/shm.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.files import is_tmpfs
from dockyard.client import Client
from dockyard.timestamps import duration
from dockyard.v1 import types_pb2 as pb
from tests.component.harness import IMAGE, FakeCluster
from tests.polling import eventually

SECRET = "hunter2-in-transit-only"
# What the container checks for: part of the secret, so the spec (kept on disk by the agent) never holds it whole.
SECRET_TAIL = SECRET[8:]
SHM = Path("/dev/shm")
pytestmark = pytest.mark.skipif(not SHM.is_dir() or not is_tmpfs(SHM), reason="no tmpfs at /dev/shm")


@pytest.fixture
async def shm() -> AsyncIterator[Path]:
    root = SHM / f"dockyard-test-{uuid.uuid4().hex[:12]}"
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def service(name: str, host: str, command: list[str], **fields: object) -> pb.ServiceSpec:
    spec = pb.ServiceSpec(name=name, image=IMAGE, command=command, replicas=1, **fields)  # type: ignore[arg-type]
    spec.placement.constraints.append(f"node.hostname=={host}")
    spec.stop_grace_period.CopyFrom(duration(0))
    return spec


def files_under(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} if root.exists() else {}


async def task_state(client: Client, name: str) -> int:
    tasks = await client.list_tasks(name, include_finished=True)
    return tasks[0].status.state if tasks else 0


async def test_a_secret_reaches_only_the_containers_that_use_it_and_no_disk(
    fake_cluster: FakeCluster, shm: Path
) -> None:
    h1 = await fake_cluster.start_agent("h1", files_dir=shm / "h1")
    h2 = await fake_cluster.start_agent("h2", files_dir=shm / "h2")
    async with fake_cluster.client() as client:
        await eventually(lambda: _ready(client, 2), what="two ready nodes")
        await client.create_secret("db_password", SECRET.encode())
        await client.create_config("app_conf", b"mode=prod")
        # A job that exits 0 only when it reads both files at their targets; a long runner beside it on h1,
        # and a service without secrets on h2.
        check = service(
            "check",
            "h1",
            ["sh", "-c", f"grep -qF {SECRET_TAIL} /run/secrets/db_password && grep -qF mode=prod /etc/app.conf"],
            secrets=[pb.FileRef(name="db_password")],
            configs=[pb.FileRef(name="app_conf", target="/etc/app.conf")],
            mode=pb.SERVICE_MODE_JOB,
        )
        keeper = service("keeper", "h1", ["sleep", "3600"], secrets=[pb.FileRef(name="db_password", mode=0o400)])
        plain = service("plain", "h2", ["sh", "-c", "test -e /run/secrets/db_password"], mode=pb.SERVICE_MODE_JOB)
        await client.apply([check, keeper, plain])
        assert await eventually(lambda: _ended(client, "check"), what="check ended") == pb.TASK_STATE_COMPLETE
        assert await eventually(lambda: _ended(client, "plain"), what="plain ended") == pb.TASK_STATE_FAILED
        await eventually(lambda: _running(client, "keeper"), what="keeper running")

        on_h1 = files_under(shm / "h1")
        assert SECRET.encode() in on_h1.values()  # the keeper's file, on the tmpfs
        assert files_under(shm / "h2") == {}  # h2 runs nothing that uses a file: it got nothing
        for state_dir in (h1.state_dir, h2.state_dir, fake_cluster.root / "controller"):
            for path, content in files_under(state_dir).items():
                assert SECRET.encode() not in content, path

        # Gone with the last task that uses it: the keeper's files leave the tmpfs.
        await client.delete_service("keeper")
        await client.delete_service("check")
        await eventually(lambda: _no_secret_files(shm / "h1"), within=15, what="h1's files swept")


async def test_a_new_session_sends_the_data_ahead_of_its_full_set_and_later_tasks_read_it(
    fake_cluster: FakeCluster, shm: Path
) -> None:
    await fake_cluster.start_agent("h1", files_dir=shm / "h1")
    async with fake_cluster.client() as client:
        await eventually(lambda: _ready(client, 1), what="a ready node")
        await client.create_secret("db_password", SECRET.encode())
        reader = service(
            "reader",
            "h1",
            ["sh", "-c", f"grep -qF {SECRET_TAIL} /run/secrets/db_password && sleep 3600"],
            secrets=[pb.FileRef(name="db_password")],
        )
        await client.apply([reader])
        await eventually(lambda: _running_count(client, "reader", 1), what="one reader running")
    # A new session: the full set comes with the secret's data in a message of its own ahead of it.
    await fake_cluster.stop_controller()
    await fake_cluster.start_controller()
    async with fake_cluster.client() as client:
        await eventually(lambda: _ready(client, 1), what="h1 back")
        # The agent has the spec and the data from that session: a second task of it reads the secret too.
        await client.scale("reader", 2)
        await eventually(lambda: _running_count(client, "reader", 2), what="two readers running")


async def _running_count(client: Client, name: str, count: int) -> bool:
    tasks = await client.list_tasks(name)
    return len([t for t in tasks if t.status.state == pb.TASK_STATE_RUNNING]) == count


async def _ready(client: Client, count: int) -> bool:
    nodes = await client.list_nodes()
    return len([n for n in nodes if n.status == pb.NODE_STATUS_READY]) == count


async def _ended(client: Client, name: str) -> int | None:
    state = await task_state(client, name)
    return state if state in (pb.TASK_STATE_COMPLETE, pb.TASK_STATE_FAILED, pb.TASK_STATE_REJECTED) else None


async def _running(client: Client, name: str) -> bool:
    return await task_state(client, name) == pb.TASK_STATE_RUNNING


async def _no_secret_files(root: Path) -> bool:
    return SECRET.encode() not in files_under(root).values()
