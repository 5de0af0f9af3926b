"""The command channel: the controller's calls on sessions and the agent's runner, with their bounds."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator

import grpc
import pytest

from agent.commands import PARTS_PER_COMMAND, RESULTS_WAITING, CommandHandlers, CommandRunner, Incoming
from controller.dispatcher.commands import (
    RESULTS_PER_CALL,
    CommandCall,
    CommandChannel,
    CommandFailed,
    CommandOutbox,
    NodeUnavailable,
)
from controller.dispatcher.dispatcher import Dispatcher
from controller.dispatcher.session import AgentSession
from controller.store.sqlite import SqliteStore
from dockyard.clock import FakeClock
from dockyard.limits import COMMAND_RESULT_BYTES
from dockyard.v1 import agent_pb2 as apb


def _channel(*sessions: AgentSession, clock: FakeClock | None = None, **kw: float) -> CommandChannel:
    table = {s.node_id: s for s in sessions}
    return CommandChannel(table.get, clock or FakeClock(), **kw)  # type: ignore[arg-type]


def _session(node_id: str = "n1") -> AgentSession:
    session = AgentSession(node_id=node_id, session_id=f"s-{node_id}")
    session.backlog = None
    return session


def _volume(name: str = "v") -> apb.Command:
    return apb.Command(volume_remove=apb.VolumeRemove(name=name))


def _written(session: AgentSession) -> list[apb.Command]:
    return [m.command for m in session.take() if m.HasField("command")]


async def _collect(call: AsyncIterable[apb.CommandResult]) -> list[apb.CommandResult]:
    return [r async for r in call]


async def test_a_node_without_a_session_is_refused_at_once() -> None:
    with pytest.raises(NodeUnavailable, match="node n9 is not connected"):
        _channel(_session()).open("n9", _volume())


async def test_a_command_is_written_and_its_results_come_back_in_order_until_done() -> None:
    session = _session()
    channel = _channel(session)
    call = channel.open("n1", _volume("data"))
    [sent] = _written(session)
    assert sent.command_id == call.command_id and sent.volume_remove.name == "data"
    channel.deliver(session, apb.CommandResult(command_id=call.command_id, data=b"1"))
    channel.deliver(session, apb.CommandResult(command_id=call.command_id, data=b"2", done=True))
    channel.deliver(session, apb.CommandResult(command_id=call.command_id, data=b"late"))
    assert [r.data for r in await _collect(call)] == [b"1", b"2"]
    assert channel.open_calls("n1") == 0


async def test_a_result_from_another_nodes_session_is_not_taken() -> None:
    mine, other = _session("n1"), _session("n2")
    channel = _channel(mine, other)
    call = channel.open("n1", _volume())
    channel.deliver(other, apb.CommandResult(command_id=call.command_id, done=True, error="forged"))
    channel.deliver(mine, apb.CommandResult(command_id=call.command_id, done=True))
    [result] = await _collect(call)
    assert result.error == ""


async def test_a_session_that_ends_fails_its_calls_with_the_reason() -> None:
    session = _session()
    channel = _channel(session)
    call = channel.open("n1", _volume())
    reader = asyncio.create_task(_collect(call))
    await asyncio.sleep(0)
    session.close(grpc.StatusCode.UNAVAILABLE, "no heartbeat for 3.0s")
    channel.session_ended(session)
    with pytest.raises(CommandFailed, match=r"node n1: session ended \(no heartbeat for 3.0s\)"):
        await reader
    assert channel.open_calls("n1") == 0


async def test_a_stream_that_ends_without_a_close_reason_still_fails_the_waiting_reader() -> None:
    session = _session()
    channel = _channel(session)
    call = channel.open("n1", _volume())
    channel.deliver(session, apb.CommandResult(command_id=call.command_id, data=b"part"))
    channel.session_ended(session)
    results: list[bytes] = []

    async def read() -> None:
        async for result in call:
            results.append(result.data)

    with pytest.raises(CommandFailed, match="session ended"):
        await read()
    assert results == [b"part"], "what arrived before the drop is still read"


async def test_a_result_larger_than_the_limit_fails_the_call() -> None:
    session = _session()
    channel = _channel(session)
    call = channel.open("n1", _volume())
    channel.deliver(session, apb.CommandResult(command_id=call.command_id, data=b"x" * (COMMAND_RESULT_BYTES + 1)))
    with pytest.raises(CommandFailed, match=r"answered with \d+ bytes"):
        await _collect(call)


async def test_a_reader_that_falls_behind_has_its_call_failed_not_the_session_blocked() -> None:
    session = _session()
    channel = _channel(session)
    call = channel.open("n1", _volume())
    for i in range(RESULTS_PER_CALL + 5):
        channel.deliver(session, apb.CommandResult(command_id=call.command_id, data=str(i).encode()))
    read: list[apb.CommandResult] = []

    async def read_all() -> None:
        async for result in call:
            read.append(result)

    with pytest.raises(CommandFailed, match="waited unread"):
        await read_all()
    assert len(read) == RESULTS_PER_CALL


async def test_an_agent_silent_past_the_idle_timeout_fails_the_call() -> None:
    clock = FakeClock()
    session = _session()
    call = _channel(session, clock=clock, idle_timeout=5.0).open("n1", _volume())
    reader = asyncio.create_task(_collect(call))
    await clock.advance(4.9)
    assert not reader.done()
    await clock.advance(0.2)
    with pytest.raises(CommandFailed, match="sent nothing for 5s"):
        await reader


async def test_calls_per_node_are_bounded() -> None:
    session = _session()
    channel = _channel(session, calls_per_node=2)
    channel.open("n1", _volume())
    second = channel.open("n1", _volume())
    with pytest.raises(CommandFailed, match="2 commands running"):
        channel.open("n1", _volume())
    second.close()
    channel.open("n1", _volume())


def _second_part_into_a_full_outbox() -> tuple[AgentSession, CommandCall, asyncio.Task[None]]:
    """A call whose first part fills its session's outbox (100 bytes), and the task sending its second part."""
    session = _session()
    session.commands = CommandOutbox(limit=100)
    piece = apb.ImageLoad(image="a", data=b"x" * 80)
    call = _channel(session).open("n1", apb.Command(image_load=piece))
    sender = asyncio.create_task(call.send(apb.Command(image_load=piece)))
    return session, call, sender


async def test_a_second_part_waits_for_room_in_the_outbox_until_the_writer_takes() -> None:
    session, call, sender = _second_part_into_a_full_outbox()
    for _ in range(5):
        await asyncio.sleep(0)
    assert not sender.done(), "the outbox is full: the part must wait"
    assert len(_written(session)) == 1
    await sender
    assert [c.command_id for c in _written(session)] == [call.command_id]


async def test_a_sender_waiting_for_room_fails_when_the_session_ends() -> None:
    session, _, sender = _second_part_into_a_full_outbox()
    await asyncio.sleep(0)
    session.close(grpc.StatusCode.RESOURCE_EXHAUSTED, "the agent read nothing for 10s")
    with pytest.raises(CommandFailed, match="read nothing"):
        await sender


async def test_the_dispatcher_routes_results_to_its_channel() -> None:
    """The session reader hands command results to the channel (read path of the real dispatcher)."""
    async with SqliteStore(":memory:") as store:
        await _routed(Dispatcher(store, FakeClock()))


async def _routed(dispatcher: Dispatcher) -> None:
    session = _session()
    dispatcher._sessions["n1"] = session
    call = dispatcher.commands.open("n1", _volume())
    messages = [apb.AgentMessage(command_result=apb.CommandResult(command_id=call.command_id, done=True, data=b"ok"))]

    class _Context:
        def __init__(self) -> None:
            self.left = list(messages)

        async def read(self) -> object:
            return self.left.pop(0) if self.left else grpc.aio.EOF

    await dispatcher._read(session, _Context())  # type: ignore[arg-type]
    assert [r.data for r in await _collect(call)] == [b"ok"]


# The agent's runner.


async def _results(runner: CommandRunner, count: int) -> list[apb.CommandResult]:
    return [await asyncio.wait_for(runner.next_result(), 1.0) for _ in range(count)]


async def test_an_unknown_kind_is_answered_by_an_error() -> None:
    runner = CommandRunner(CommandHandlers())
    runner.submit(apb.Command(command_id="c1", logs=apb.LogsRequest(task_id="t")))
    runner.submit(apb.Command(command_id="c2"))
    first, second = await _results(runner, 2)
    assert first.command_id == "c1" and first.done and "unknown command kind 'logs'" in first.error
    assert second.command_id == "c2" and second.done and "unknown command kind '(none)'" in second.error


async def test_registering_a_kind_the_protocol_lacks_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown command kind 'shell'"):
        CommandHandlers().register("shell", lambda incoming: _nothing())


async def _nothing() -> None:
    return None


async def test_a_generator_handler_reads_further_parts_and_its_results_are_stamped() -> None:
    handlers = CommandHandlers()
    seen: list[bytes] = []

    async def load(incoming: Incoming) -> AsyncIterator[apb.CommandResult]:
        piece = incoming.first
        while True:
            seen.append(piece.image_load.data)
            yield apb.CommandResult(data=str(len(seen)).encode())
            if piece.image_load.last:
                return
            piece = await incoming.next_part()

    handlers.register("image_load", load)
    runner = CommandRunner(handlers)
    runner.submit(apb.Command(command_id="c", image_load=apb.ImageLoad(data=b"a")))
    runner.submit(apb.Command(command_id="c", image_load=apb.ImageLoad(data=b"b", last=True)))
    results = await _results(runner, 3)
    assert seen == [b"a", b"b"]
    assert [(r.command_id, r.data, r.done) for r in results] == [
        ("c", b"1", False),
        ("c", b"2", False),
        ("c", b"", True),
    ]
    runner.submit(apb.Command(command_id="c", image_load=apb.ImageLoad(data=b"stray")))
    await asyncio.sleep(0)
    assert runner.running == 0, "a part of an ended command does not start a new one"


async def test_a_function_handler_answers_once_and_an_exception_becomes_the_error() -> None:
    handlers = CommandHandlers()

    async def remove(incoming: Incoming) -> apb.CommandResult:
        if incoming.first.volume_remove.name == "busy":
            raise RuntimeError("volume busy is in use by container abc")
        return apb.CommandResult(data=b"removed")

    handlers.register("volume_remove", remove)
    runner = CommandRunner(handlers)
    runner.submit(apb.Command(command_id="a", volume_remove=apb.VolumeRemove(name="free")))
    runner.submit(apb.Command(command_id="b", volume_remove=apb.VolumeRemove(name="busy")))
    results = {r.command_id: r for r in await _results(runner, 2)}
    assert results["a"].done and results["a"].data == b"removed" and not results["a"].error
    assert results["b"].done and results["b"].error == "volume busy is in use by container abc"


async def test_commands_past_the_limit_are_answered_busy_and_parts_past_theirs_fail_the_command() -> None:
    handlers = CommandHandlers()
    release = asyncio.Event()

    async def hold(incoming: Incoming) -> None:
        await release.wait()

    handlers.register("image_load", hold)
    runner = CommandRunner(handlers, limit=2)
    for command_id in ("a", "b", "c"):
        runner.submit(apb.Command(command_id=command_id, image_load=apb.ImageLoad()))
    [busy] = await _results(runner, 1)
    assert busy.command_id == "c" and "busy" in busy.error
    for _ in range(PARTS_PER_COMMAND + 1):
        runner.submit(apb.Command(command_id="a", image_load=apb.ImageLoad()))
    [flood] = await _results(runner, 1)
    assert flood.command_id == "a" and flood.done and "parts waited unread" in flood.error
    assert runner.running == 1
    await runner.close()
    assert runner.running == 0


async def test_a_handler_producing_faster_than_the_link_writes_waits_for_room() -> None:
    handlers = CommandHandlers()
    produced = 0

    async def chatty(incoming: Incoming) -> AsyncIterator[apb.CommandResult]:
        nonlocal produced
        for _ in range(RESULTS_WAITING * 3):
            produced += 1
            yield apb.CommandResult(data=b".")

    handlers.register("logs", chatty)
    runner = CommandRunner(handlers)
    runner.submit(apb.Command(command_id="l", logs=apb.LogsRequest()))
    for _ in range(50):
        await asyncio.sleep(0)
    assert produced <= RESULTS_WAITING + 1
    results = await _results(runner, RESULTS_WAITING * 3 + 1)
    assert results[-1].done and produced == RESULTS_WAITING * 3
