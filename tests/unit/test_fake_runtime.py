"""The FakeRuntime's test controls: what they do to containers, the events they emit, and the call log."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from agent.runtime.base import (
    ContainerNotFound,
    ContainerSpec,
    ContainerState,
    ImageNotFound,
    NetworkAttachment,
    RegistryAuth,
    RuntimeEvent,
    RuntimeFailure,
    RuntimeUnavailable,
)
from agent.runtime.fake import FakeRuntime

IMAGE = "dockyard-test:latest"
NODE_LABELS = {"dockyard.node.id": "n1"}
CLOCK = datetime(2026, 6, 7, 8, 9, 10, tzinfo=UTC)
WAIT = 1.0

Action = tuple[str, int | None]


def make_spec(
    name: str = "web.1.t1", command: tuple[str, ...] = (), labels: Mapping[str, str] | None = None
) -> ContainerSpec:
    return ContainerSpec(
        name=name, image=IMAGE, command=command, labels=dict(NODE_LABELS if labels is None else labels)
    )


@pytest.fixture
def fake() -> FakeRuntime:
    return FakeRuntime(images=[IMAGE], clock=lambda: CLOCK)


async def start_one(fake: FakeRuntime, name: str = "web.1.t1", command: tuple[str, ...] = ()) -> str:
    container_id = await fake.create(make_spec(name, command))
    await fake.start(container_id)
    return container_id


@asynccontextmanager
async def subscribed(fake: FakeRuntime, labels: Mapping[str, str]) -> AsyncIterator[AsyncIterator[RuntimeEvent]]:
    """An events() stream, closed on the way out."""
    stream = fake.events(labels)
    try:
        yield stream
    finally:
        assert isinstance(stream, AsyncGenerator)
        await stream.aclose()


async def next_actions(stream: AsyncIterator[RuntimeEvent], count: int) -> list[Action]:
    return [(e.action, e.exit_code) for e in [await asyncio.wait_for(anext(stream), WAIT) for _ in range(count)]]


async def assert_nothing_else(fake: FakeRuntime, stream: AsyncIterator[RuntimeEvent]) -> None:
    """Proves no further event is queued: the next one is a marker container's create."""
    marker = await fake.create(make_spec("marker"))
    event = await asyncio.wait_for(anext(stream), WAIT)
    assert (event.container_id, event.action) == (marker, "create")


# --- crash, kill, oom -----------------------------------------------------------------------------------


async def test_crash_exits_a_running_container_with_the_code_and_emits_die(fake: FakeRuntime) -> None:
    container_id = await start_one(fake)
    async with subscribed(fake, NODE_LABELS) as stream:
        fake.crash(container_id, 3)
        assert await next_actions(stream, 1) == [("die", 3)]
        await assert_nothing_else(fake, stream)
    info = await fake.inspect(container_id)
    assert (info.state, info.exit_code, info.oom_killed, info.finished_at) == (ContainerState.EXITED, 3, False, CLOCK)


async def test_crash_events_carry_the_container_id_and_labels(fake: FakeRuntime) -> None:
    container_id = await start_one(fake)
    async with subscribed(fake, NODE_LABELS) as stream:
        fake.crash(container_id, 1)
        event = await asyncio.wait_for(anext(stream), WAIT)
    assert event == RuntimeEvent(container_id, "die", NODE_LABELS, 1)


async def test_kill_behind_back_emits_kill_then_die_137(fake: FakeRuntime) -> None:
    container_id = await start_one(fake)
    async with subscribed(fake, NODE_LABELS) as stream:
        fake.kill_behind_back(container_id)
        assert await next_actions(stream, 2) == [("kill", None), ("die", 137)]
        await assert_nothing_else(fake, stream)
    info = await fake.inspect(container_id)
    assert (info.state, info.exit_code, info.oom_killed) == (ContainerState.EXITED, 137, False)


async def test_oom_kill_emits_oom_then_die_137_and_marks_the_container(fake: FakeRuntime) -> None:
    container_id = await start_one(fake)
    async with subscribed(fake, NODE_LABELS) as stream:
        fake.oom_kill(container_id)
        assert await next_actions(stream, 2) == [("oom", None), ("die", 137)]
        await assert_nothing_else(fake, stream)
    info = await fake.inspect(container_id)
    assert (info.state, info.exit_code, info.oom_killed) == (ContainerState.EXITED, 137, True)


async def test_a_restart_clears_the_oom_mark_and_exit_code(fake: FakeRuntime) -> None:
    container_id = await start_one(fake)
    fake.oom_kill(container_id)
    await fake.start(container_id)
    info = await fake.inspect(container_id)
    assert (info.state, info.exit_code, info.oom_killed) == (ContainerState.RUNNING, 0, False)


@pytest.mark.parametrize(
    "control",
    [
        pytest.param(lambda f, c: f.crash(c, 1), id="crash"),
        pytest.param(lambda f, c: f.kill_behind_back(c), id="kill_behind_back"),
        pytest.param(lambda f, c: f.oom_kill(c), id="oom_kill"),
    ],
)
async def test_death_controls_refuse_a_container_that_is_not_running(
    fake: FakeRuntime, control: Callable[[FakeRuntime, str], None]
) -> None:
    created = await fake.create(make_spec("created"))
    exited = await start_one(fake, "exited", ("sh", "-c", "exit 0"))
    for container_id in (created, exited):
        with pytest.raises(RuntimeFailure, match="not running"):
            control(fake, container_id)
    with pytest.raises(ContainerNotFound):
        control(fake, "no-such-container")


async def test_controls_accept_a_unique_id_prefix_or_the_name(fake: FakeRuntime) -> None:
    first = await start_one(fake, "first")
    second = await start_one(fake, "second")
    fake.crash(first[:12], 4)
    fake.kill_behind_back("second")
    assert (await fake.inspect(first)).exit_code == 4
    assert (await fake.inspect(second)).exit_code == 137


# --- remove behind the back -----------------------------------------------------------------------------


async def test_remove_behind_back_of_a_running_container_kills_and_destroys_it(fake: FakeRuntime) -> None:
    container_id = await start_one(fake)
    async with subscribed(fake, NODE_LABELS) as stream:
        fake.remove_behind_back(container_id)
        assert await next_actions(stream, 3) == [("kill", None), ("die", 137), ("destroy", None)]
        await assert_nothing_else(fake, stream)
    with pytest.raises(ContainerNotFound):
        await fake.inspect(container_id)
    assert [c.name for c in await fake.list({})] == ["marker"]


async def test_remove_behind_back_of_a_stopped_container_only_destroys_it(fake: FakeRuntime) -> None:
    container_id = await start_one(fake, command=("sh", "-c", "exit 1"))
    async with subscribed(fake, NODE_LABELS) as stream:
        fake.remove_behind_back(container_id)
        assert await next_actions(stream, 1) == [("destroy", None)]
        await assert_nothing_else(fake, stream)


async def test_remove_behind_back_of_an_unknown_container_raises(fake: FakeRuntime) -> None:
    with pytest.raises(ContainerNotFound):
        fake.remove_behind_back("no-such-container")


async def test_the_name_is_free_again_after_a_removal_behind_the_back(fake: FakeRuntime) -> None:
    container_id = await start_one(fake)
    fake.remove_behind_back(container_id)
    again = await fake.create(make_spec())
    assert again != container_id


# --- availability ---------------------------------------------------------------------------------------


async def test_an_unavailable_daemon_fails_every_call_and_logs_none(fake: FakeRuntime) -> None:
    container_id = await start_one(fake)
    calls_before = list(fake.calls)
    fake.set_available(False)
    attempts: list[Callable[[], Awaitable[object]]] = [
        fake.host_facts,
        lambda: fake.has_image(IMAGE),
        lambda: fake.pull(IMAGE),
        lambda: fake.create(make_spec("other")),
        lambda: fake.start(container_id),
        lambda: fake.stop(container_id, 10),
        lambda: fake.remove(container_id),
        lambda: fake.inspect(container_id),
        lambda: fake.list({}),
    ]
    for attempt in attempts:
        with pytest.raises(RuntimeUnavailable):
            await attempt()
    assert fake.calls == calls_before
    # The containers themselves are untouched.
    fake.set_available(True)
    assert (await fake.inspect(container_id)).state is ContainerState.RUNNING


async def test_going_down_breaks_an_open_event_stream(fake: FakeRuntime) -> None:
    async with subscribed(fake, NODE_LABELS) as stream:
        fake.set_available(False)
        with pytest.raises(RuntimeUnavailable):
            await asyncio.wait_for(anext(stream), WAIT)


async def test_a_stream_opened_while_down_fails_at_once(fake: FakeRuntime) -> None:
    fake.set_available(False)
    async with subscribed(fake, NODE_LABELS) as stream:
        with pytest.raises(RuntimeUnavailable):
            await asyncio.wait_for(anext(stream), WAIT)


async def test_a_stream_opened_after_coming_back_delivers_events(fake: FakeRuntime) -> None:
    fake.set_available(False)
    fake.set_available(True)
    async with subscribed(fake, NODE_LABELS) as stream:
        container_id = await fake.create(make_spec())
        event = await asyncio.wait_for(anext(stream), WAIT)
    assert (event.container_id, event.action) == (container_id, "create")


async def test_controls_work_while_the_daemon_is_down(fake: FakeRuntime) -> None:
    container_id = await start_one(fake)
    fake.set_available(False)
    fake.crash(container_id, 9)
    fake.set_available(True)
    assert (await fake.inspect(container_id)).exit_code == 9


# --- calls and count ------------------------------------------------------------------------------------


async def test_calls_log_every_served_protocol_call_in_order(fake: FakeRuntime) -> None:
    await fake.has_image(IMAGE)
    container_id = await fake.create(make_spec())
    await fake.start(container_id)
    await fake.inspect(container_id)
    await fake.list(NODE_LABELS)
    await fake.stop(container_id, 2.5)
    await fake.remove(container_id)
    assert fake.calls == [
        ("has_image", IMAGE),
        ("create", "web.1.t1"),
        ("start", container_id),
        ("inspect", container_id),
        ("list", "dockyard.node.id=n1"),
        ("stop", container_id, "2.5"),
        ("remove", container_id),
    ]


async def test_count_counts_calls_by_operation_and_not_controls(fake: FakeRuntime) -> None:
    assert fake.count("create") == 0
    first = await start_one(fake, "first")
    await start_one(fake, "second")
    await fake.inspect(first)
    await fake.inspect(first)
    fake.crash(first, 1)
    fake.remove_behind_back(first)
    assert (fake.count("create"), fake.count("start"), fake.count("inspect")) == (2, 2, 2)
    assert fake.count("crash") == fake.count("remove_behind_back") == fake.count("remove") == 0


async def test_failed_calls_are_logged_too(fake: FakeRuntime) -> None:
    with pytest.raises(ContainerNotFound):
        await fake.inspect("missing")
    assert fake.calls == [("inspect", "missing")]


# --- events of protocol calls and filtering -------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ((), [("kill", None), ("die", 143), ("stop", None)]),
        (("sleep", "1000"), [("kill", None), ("kill", None), ("die", 137), ("stop", None)]),
    ],
    ids=["honours-sigterm", "ignores-sigterm"],
)
async def test_stop_events(fake: FakeRuntime, command: tuple[str, ...], expected: list[Action]) -> None:
    container_id = await start_one(fake, command=command)
    async with subscribed(fake, NODE_LABELS) as stream:
        await fake.stop(container_id, 10)
        assert await next_actions(stream, len(expected)) == expected
        await fake.stop(container_id, 10)  # already stopped: nothing happens
        await assert_nothing_else(fake, stream)


async def test_create_start_and_a_self_exit_emit_their_events(fake: FakeRuntime) -> None:
    async with subscribed(fake, NODE_LABELS) as stream:
        await start_one(fake, command=("sh", "-c", "exit 5"))
        assert await next_actions(stream, 3) == [("create", None), ("start", None), ("die", 5)]


async def test_events_are_filtered_by_labels(fake: FakeRuntime) -> None:
    async with (
        subscribed(fake, {"dockyard.node.id": "n2"}) as other_node,
        subscribed(fake, {}) as everything,
    ):
        container_id = await start_one(fake)
        fake.crash(container_id, 1)
        assert await next_actions(everything, 3) == [("create", None), ("start", None), ("die", 1)]
        stranger = await fake.create(make_spec("stranger", labels={"dockyard.node.id": "n2"}))
        event = await asyncio.wait_for(anext(other_node), WAIT)
        assert (event.container_id, event.action) == (stranger, "create")


# --- what only the fake's controls show ----------------------------------------------------------------


async def test_a_private_image_pulls_only_with_its_credentials_and_every_pull_records_them() -> None:
    auth = RegistryAuth("registry.example.com", "ci", "s3cret")
    fake = FakeRuntime(private={"registry.example.com/app:1": auth})
    with pytest.raises(ImageNotFound, match="unauthorized"):
        await fake.pull("registry.example.com/app:1")
    with pytest.raises(ImageNotFound, match="unauthorized"):
        await fake.pull("registry.example.com/app:1", RegistryAuth("registry.example.com", "ci", "wrong"))
    await fake.pull("registry.example.com/app:1", auth)
    assert await fake.has_image("registry.example.com/app:1")
    assert [a for _, a in fake.pull_auths] == [None, RegistryAuth("registry.example.com", "ci", "wrong"), auth]


async def test_networks_remember_masquerade_and_refuse_a_bridge_name_longer_than_linux_allows() -> None:
    fake = FakeRuntime()
    await fake.ensure_network("a", "10.1.0.0/24", "10.1.0.1", "dky-a", {}, masquerade=False)
    await fake.ensure_network("b", "10.1.1.0/24", "10.1.1.1", "dky-b", {}, masquerade=True)
    assert (fake.network_masquerades("a"), fake.network_masquerades("b")) == (False, True)
    with pytest.raises(RuntimeFailure, match="longer than 15"):
        await fake.ensure_network("c", "10.1.2.0/24", "10.1.2.1", "dky-0123456789ab", {}, masquerade=False)
    with pytest.raises(RuntimeFailure, match="gateway"):
        await fake.ensure_network("d", "10.1.3.0/24", "10.9.9.1", "dky-d", {}, masquerade=False)


async def test_addresses_are_handed_out_lowest_first_and_freed_when_a_container_exits() -> None:
    fake = FakeRuntime(images=["img"])
    await fake.ensure_network("n", "10.2.0.0/29", "10.2.0.1", "dky-n", {}, masquerade=False)
    spec = ContainerSpec(name="c-x", image="img", networks=(NetworkAttachment("n"),))
    first = await fake.create(spec)
    second = await fake.create(replace(spec, name="c-y"))
    await fake.start(first)
    await fake.start(second)
    assert (await fake.inspect(first)).addresses == {"n": "10.2.0.2"}
    assert (await fake.inspect(second)).addresses == {"n": "10.2.0.3"}
    await fake.stop(first, 0)
    third = await fake.create(replace(spec, name="c-z"))
    await fake.start(third)
    assert (await fake.inspect(third)).addresses == {"n": "10.2.0.2"}, "the exited container's address is free"
