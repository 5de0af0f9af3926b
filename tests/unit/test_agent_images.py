"""Images on the agent: pull with credentials, wait for a push when pushable, and load pushed pieces."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.commands import CommandHandlers, CommandRunner
from agent.images import PULL_RETRY_SECONDS, ImageLoader, Images, ImageUnavailable, ImageWaiting, waiting_message
from agent.runtime.base import RegistryAuth
from agent.runtime.fake import FakeRuntime
from dockyard.clock import FakeClock
from dockyard.images import names_registry, normalize_image, normalize_registry, registry_of
from dockyard.v1 import agent_pb2 as apb
from dockyard.v1 import types_pb2 as pb
from tests.unit.test_worker import bare, make_rig, make_task

PRIVATE = "registry.example.com/team/app:1"


def _assignments(
    *, pushable: tuple[str, ...] = (), full: bool = False, auths: tuple[apb.RegistryAuth, ...] = ()
) -> apb.Assignments:
    kind = apb.Assignments.KIND_FULL if full else apb.Assignments.KIND_INCREMENTAL
    return apb.Assignments(kind=kind, pushable_images=pushable, registry_auths=auths)


def test_references_are_read_as_docker_lists_them() -> None:
    assert normalize_image("nginx") == "nginx:latest"
    assert normalize_image("docker.io/library/nginx:1.25") == "nginx:1.25"
    assert normalize_image("localhost:5000/app") == "localhost:5000/app:latest"
    assert normalize_image("app@sha256:ab") == "app@sha256:ab"
    assert registry_of("nginx") == "docker.io"
    assert registry_of("localhost:5000/app") == "localhost:5000"
    assert registry_of(PRIVATE) == "registry.example.com"


@pytest.mark.parametrize(
    ("image", "registry"),
    [
        ("nginx", "docker.io"),
        ("library/nginx:1", "docker.io"),
        ("docker.io/library/nginx", "docker.io"),
        ("index.docker.io/library/nginx", "docker.io"),
        ("registry-1.docker.io/team/app", "docker.io"),
        ("Registry.Example.com/x", "registry.example.com"),
        ("Registry.Example.com:5000/team/x:1", "registry.example.com:5000"),
        ("MyHost/x", "myhost"),  # an upper-case first component is a host to Docker too
        ("localhost:5000/app", "localhost:5000"),
    ],
)
def test_an_image_names_its_registry_as_credentials_are_kept(image: str, registry: str) -> None:
    # One rule for the API's servers and the images' registries, so a credential is found however either is spelt.
    assert registry_of(image) == registry
    assert normalize_registry(registry) == registry
    assert names_registry(image) == (image.partition("/")[0].lower() not in ("nginx", "library"))


def test_a_registry_server_is_normalized_as_docker_login_spells_it() -> None:
    assert normalize_registry("https://index.docker.io/v1/") == "docker.io"
    assert normalize_registry(" https://Registry.Example.com:5000/v2/ ") == "registry.example.com:5000"
    assert normalize_registry("registry.hub.docker.com") == "docker.io"


async def test_a_private_pull_gets_the_credentials_of_its_registry_only() -> None:
    auth = RegistryAuth("registry.example.com", "ci", "s3cret")
    fake = FakeRuntime(private={PRIVATE: auth})
    images = Images(fake, FakeClock())
    with pytest.raises(ImageUnavailable, match="unauthorized"):
        await images.obtain(PRIVATE)
    images.note(
        _assignments(
            auths=(
                apb.RegistryAuth(server="registry.example.com", username="ci", password="s3cret"),
                apb.RegistryAuth(server="other.example.com", username="x", password="y"),
            )
        )
    )
    await images.obtain(PRIVATE)
    assert fake.pull_auths[-1] == (PRIVATE, auth)
    images.note(_assignments(full=True))
    assert images.auth_for(PRIVATE) is None, "a full set replaces what earlier messages said"


async def test_a_missing_image_waits_when_pushable_and_fails_with_the_pull_error_otherwise() -> None:
    clock = FakeClock()
    fake = FakeRuntime()
    images = Images(fake, clock)
    with pytest.raises(ImageUnavailable, match=r"'app:dev' is not on this host and could not be pulled: pull access"):
        await images.obtain("app:dev")
    images.note(_assignments(pushable=("app:dev",)))
    with pytest.raises(ImageWaiting) as waiting:
        await images.obtain("app:dev")
    assert waiting.value.message.startswith(
        "waiting for image app:dev to be pushed (dockyard image push app:dev): pull access denied"
    )
    pulls = len(fake.pull_auths)
    with pytest.raises(ImageWaiting):
        await images.obtain("app:dev")
    assert len(fake.pull_auths) == pulls, "no pull again within the retry period"
    await clock.advance(PULL_RETRY_SECONDS)
    with pytest.raises(ImageWaiting):
        await images.obtain("app:dev")
    assert len(fake.pull_auths) == pulls + 1


async def _push(archive: bytes, piece: int, image: str, image_id: str = "") -> list[apb.Command]:
    pieces = [archive[i : i + piece] for i in range(0, len(archive), piece)] or [b""]
    return [
        apb.Command(
            command_id="push-1",
            image_load=apb.ImageLoad(
                image=image,
                image_id=image_id,
                data=data,
                offset=i * piece,
                total=len(archive),
                last=i == len(pieces) - 1,
            ),
        )
        for i, data in enumerate(pieces)
    ]


async def _archive(image: str) -> tuple[bytes, str]:
    source = FakeRuntime(images=[image])
    data = b"".join([chunk async for chunk in source.save_image(image)])
    image_id = await source.image_id(image)
    assert image_id is not None
    return data, image_id


def _runner(runtime: FakeRuntime, images: Images) -> CommandRunner:
    handlers = CommandHandlers()
    handlers.register("image_load", ImageLoader(runtime, images, FakeClock()))
    return CommandRunner(handlers)


async def test_pushed_pieces_are_loaded_acked_one_by_one_and_wake_the_waiting_task() -> None:
    archive, image_id = await _archive("app:dev")
    target = FakeRuntime()
    images = Images(target, FakeClock())
    woken: list[str] = []
    images.wake_on_load("app:dev", "t1", lambda: woken.append("t1"))
    runner = _runner(target, images)
    commands = await _push(archive, 1000, "app:dev", image_id)
    assert len(commands) > 3
    acks: list[apb.CommandResult] = []
    for command in commands:
        runner.submit(command)
        acks.append(await asyncio.wait_for(runner.next_result(), 1.0))
    assert [int(a.data) for a in acks[:-1]] == [min((i + 1) * 1000, len(archive)) for i in range(len(commands) - 1)]
    assert acks[-1].done and acks[-1].error == "" and b"app:dev" in acks[-1].data
    assert await target.image_id("app:dev") == image_id
    assert woken == ["t1"]


async def test_an_image_already_present_is_answered_present_on_the_first_piece() -> None:
    archive, image_id = await _archive("app:dev")
    target = FakeRuntime()
    first = (await _push(archive, 1000, "app:dev", image_id))[0]
    await target.load_image(_chunks(archive))
    runner = _runner(target, Images(target, FakeClock()))
    runner.submit(first)
    result = await asyncio.wait_for(runner.next_result(), 1.0)
    assert result.done and result.data == b"present" and not result.error


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def test_a_piece_out_of_order_or_a_bad_archive_fails_the_load() -> None:
    target = FakeRuntime()
    runner = _runner(target, Images(target, FakeClock()))
    commands = await _push(b"x" * 3000, 1000, "app:dev")
    runner.submit(commands[0])
    await asyncio.wait_for(runner.next_result(), 1.0)
    runner.submit(commands[2])
    result = await asyncio.wait_for(runner.next_result(), 1.0)
    assert result.done and "piece at offset 2000, expected 1000" in result.error
    for command in await _push(b"not a tar archive" * 10, 1000, "bad:1"):
        command.command_id = "push-2"
        runner.submit(command)
    result = await asyncio.wait_for(runner.next_result(), 1.0)
    assert result.done and "invalid image archive" in result.error
    assert await target.image_id("bad:1") is None


async def test_a_push_that_stops_sending_is_abandoned_after_the_piece_wait() -> None:
    clock = FakeClock()
    target = FakeRuntime()
    handlers = CommandHandlers()
    handlers.register("image_load", ImageLoader(target, Images(target, clock), clock, piece_wait=5.0))
    runner = CommandRunner(handlers)
    runner.submit((await _push(b"x" * 3000, 1000, "app:dev"))[0])
    await asyncio.wait_for(runner.next_result(), 1.0)
    await clock.advance(5.1)
    result = await asyncio.wait_for(runner.next_result(), 1.0)
    assert result.done and "no piece for 5s after 1000 bytes" in result.error
    assert runner.running == 0


async def test_a_task_waits_in_preparing_for_a_pushable_image_and_runs_once_it_is_loaded(tmp_path: Path) -> None:
    rig = make_rig(tmp_path)
    rig.worker.images.note(_assignments(pushable=("app:dev",)))
    task, spec = bare(make_task(image="app:dev"))
    rig.assign(task, [spec])
    await rig.eventually(lambda: rig.state("t1") == pb.TASK_STATE_PREPARING, "t1 waiting")
    await rig.quiet()
    status = rig.status("t1")
    assert status.state == pb.TASK_STATE_PREPARING
    assert status.message.startswith(waiting_message("app:dev", "")), status.message
    assert rig.reporter.states("t1") == [pb.TASK_STATE_PREPARING]
    archive, _ = await _archive("app:dev")
    loaded = await rig.fake.load_image(_chunks(archive))
    rig.worker.images.loaded(loaded)
    await rig.eventually(lambda: rig.state("t1") == pb.TASK_STATE_RUNNING, "t1 running")
    await rig.worker.close()


async def test_a_task_whose_image_nobody_can_push_fails_as_the_hosts_fault(tmp_path: Path) -> None:
    rig = make_rig(tmp_path)
    task, spec = bare(make_task(image="app:dev"))
    rig.assign(task, [spec])
    await rig.eventually(lambda: rig.state("t1") == pb.TASK_STATE_REJECTED, "t1 rejected")
    status = rig.status("t1")
    assert status.cause == pb.TaskStatus.CAUSE_HOST
    assert "'app:dev' is not on this host and could not be pulled: pull access denied" in status.error
    await rig.worker.close()
