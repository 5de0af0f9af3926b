"""PushImage's pacing over a fake command channel: every target in step, never more than the window ahead."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from controller.api.images import PUSH_CALLER_IDLE_SECONDS, ImagePushes
from controller.commands import CommandFailed, NodeUnavailable
from controller.images import ImageRegistry
from controller.store.base import Put
from controller.store.sqlite import SqliteStore
from dockyard.clock import FakeClock
from dockyard.limits import IMAGE_PIECES_IN_FLIGHT
from dockyard.v1 import agent_pb2 as apb
from dockyard.v1 import controller_pb2 as cpb
from dockyard.v1 import types_pb2 as pb


class FakeCall:
    """A call whose results the test (or a fake agent) delivers."""

    def __init__(self, node_id: str, first: apb.Command) -> None:
        self.command_id = "c-" + node_id
        self.node_id = node_id
        self.sent = [first]
        self.results: asyncio.Queue[apb.CommandResult | Exception] = asyncio.Queue()
        self.closed = False

    async def send(self, command: apb.Command) -> None:
        self.sent.append(command)

    def fail(self, reason: str) -> None:
        self.results.put_nowait(CommandFailed(reason))

    def close(self) -> None:
        self.closed = True

    def __aiter__(self) -> AsyncIterator[apb.CommandResult]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[apb.CommandResult]:
        while True:
            result = await self.results.get()
            if isinstance(result, Exception):
                raise result
            yield result
            if result.done:
                return


class FakeSender:
    def __init__(self, offline: set[str]) -> None:
        self.calls: dict[str, FakeCall] = {}
        self.offline = offline

    def open(self, node_id: str, command: apb.Command, *, idle_timeout: float | None = None) -> FakeCall:
        if node_id in self.offline:
            raise NodeUnavailable(f"node {node_id} is not connected")
        call = self.calls[node_id] = FakeCall(node_id, command)
        return call


class FakeContext:
    async def abort(self, code: object, message: str) -> None:
        raise AssertionError(f"aborted: {message}")

    async def abort_with_status(self, status: object) -> None:
        raise AssertionError(f"aborted: {status}")


def _node(node_id: str, ready: bool = True) -> pb.Node:
    node = pb.Node(id=node_id, status=pb.NODE_STATUS_READY if ready else pb.NODE_STATUS_DOWN)
    node.description.hostname = f"host-{node_id}"
    return node


async def _requests(pieces: int, size: int = 10) -> AsyncIterator[cpb.PushImageRequest]:
    total = pieces * size
    yield cpb.PushImageRequest(image="app:1", image_id="sha256:ab", total=total, data=b"x" * size, last=pieces == 1)
    for index in range(1, pieces):
        yield cpb.PushImageRequest(data=b"x" * size, last=index == pieces - 1)


async def _settle() -> None:
    for _ in range(30):
        await asyncio.sleep(0)


async def test_pieces_go_to_every_loading_target_in_step_within_the_window() -> None:
    async with SqliteStore(":memory:") as store:
        await store.commit([Put(_node(n)) for n in ("a", "b", "c")] + [Put(_node("down", ready=False))])
        sender = FakeSender(offline={"c"})
        registry = ImageRegistry()
        pushes = ImagePushes(store, sender, registry)
        stream = pushes.push(_requests(10), FakeContext())  # type: ignore[arg-type]
        seen: list[cpb.PushImageProgress] = []
        reader = asyncio.create_task(_collect(stream, seen))
        await _settle()
        a, b = sender.calls["a"], sender.calls["b"]
        assert "down" not in sender.calls, "only ready nodes are targets"
        assert len(a.sent) == len(b.sent) == 1, "nothing more before the first piece is answered"
        b.results.put_nowait(apb.CommandResult(done=True, data=b"present"))
        a.results.put_nowait(apb.CommandResult(data=b"10"))
        await _settle()
        for acked in range(1, 10):
            # As many as the window allows, and no more: the push goes at the pace of the acks.
            assert len(a.sent) == min(10, acked + IMAGE_PIECES_IN_FLIGHT), (acked, len(a.sent))
            a.results.put_nowait(apb.CommandResult(data=str(10 * (acked + 1)).encode()))
            await _settle()
        assert len(b.sent) == 1, "a target that has the image gets no more than the first piece"
        assert [c.image_load.offset for c in a.sent] == [10 * i for i in range(10)]
        assert a.sent[-1].image_load.last and not any(c.image_load.last for c in a.sent[:-1])
        a.results.put_nowait(apb.CommandResult(done=True, data=b"app:1"))
        await asyncio.wait_for(reader, 1.0)
    finals = {p.node_id: p for p in seen if p.done}
    assert finals["a"].error == "" and finals["a"].bytes_done == 100
    assert finals["b"].already_present
    assert finals["c"].error == "node c is not connected"
    assert registry.holders("app:1") == ["a", "b"]
    assert not registry.pushable("other") and a.closed


async def test_a_target_that_fails_mid_push_is_reported_and_the_others_go_on() -> None:
    async with SqliteStore(":memory:") as store:
        await store.commit([Put(_node(n)) for n in ("a", "b")])
        sender = FakeSender(offline=set())
        pushes = ImagePushes(store, sender, ImageRegistry())
        seen: list[cpb.PushImageProgress] = []
        reader = asyncio.create_task(_collect(pushes.push(_requests(3), FakeContext()), seen))  # type: ignore[arg-type]
        await _settle()
        a, b = sender.calls["a"], sender.calls["b"]
        a.results.put_nowait(apb.CommandResult(data=b"10"))
        b.fail("node b: session ended (no heartbeat for 3.0s)")
        await _settle()
        assert len(b.sent) == 1
        a.results.put_nowait(apb.CommandResult(data=b"20"))
        a.results.put_nowait(apb.CommandResult(data=b"30"))
        await _settle()
        a.results.put_nowait(apb.CommandResult(done=True))
        await asyncio.wait_for(reader, 1.0)
    finals = {p.node_id: p for p in seen if p.done}
    assert finals["a"].error == ""
    assert finals["b"].error == "node b: session ended (no heartbeat for 3.0s)"


async def _collect(stream: AsyncIterator[cpb.PushImageProgress], into: list[cpb.PushImageProgress]) -> None:
    async for progress in stream:
        into.append(progress)


@pytest.mark.parametrize(
    ("first", "problem"),
    [
        (cpb.PushImageRequest(image_id="sha256:ab", total=10), "image: is required"),
        (cpb.PushImageRequest(image="a:1", image_id="ab", total=10), "image_id: must be"),
        (cpb.PushImageRequest(image="a:1", image_id="sha256:ab"), "total: must be"),
        (cpb.PushImageRequest(image="a:1", image_id="sha256:ab", total=5, data=b"123456"), "data: 6 bytes"),
        (cpb.PushImageRequest(image="a:1", image_id="sha256:ab", total=9, data=b"1", last=True), "last: set after"),
    ],
)
def test_a_bad_first_request_names_its_field(first: cpb.PushImageRequest, problem: str) -> None:
    from controller.api.images import _first_issues

    assert any(str(issue).startswith(problem) for issue in _first_issues(first)), _first_issues(first)


class Aborted(Exception):
    pass


class RecordingContext:
    def __init__(self) -> None:
        self.aborted: tuple[object, str] | None = None

    async def abort(self, code: object, message: str) -> None:
        self.aborted = (code, message)
        raise Aborted(message)

    async def abort_with_status(self, status: object) -> None:
        self.aborted = (status.code, status.details)  # type: ignore[attr-defined]
        raise Aborted(status.details)  # type: ignore[attr-defined]


async def _stalled_after(pieces: int) -> AsyncIterator[cpb.PushImageRequest]:
    """A caller that sends `pieces` of a longer archive, then nothing (its stream stays open)."""
    yield cpb.PushImageRequest(image="app:1", image_id="sha256:ab", total=100, data=b"x" * 10)
    for _ in range(1, pieces):
        yield cpb.PushImageRequest(data=b"x" * 10)
    await asyncio.Event().wait()
    yield cpb.PushImageRequest()  # never reached


@pytest.mark.parametrize("pieces", [1, 3])
async def test_a_caller_that_stalls_ends_the_push_and_frees_its_slot(pieces: int) -> None:
    clock = FakeClock()
    async with SqliteStore(":memory:") as store:
        await store.commit([Put(_node("a"))])
        sender = FakeSender(offline=set())
        pushes = ImagePushes(store, sender, ImageRegistry(), at_once=1, clock=clock)
        context = RecordingContext()
        seen: list[cpb.PushImageProgress] = []
        reader = asyncio.create_task(_collect(pushes.push(_stalled_after(pieces), context), seen))  # type: ignore[arg-type]
        await _settle()
        a = sender.calls["a"]
        for acked in range(1, pieces + 1):
            a.results.put_nowait(apb.CommandResult(data=str(10 * acked).encode()))
        await _settle()
        assert len(a.sent) == pieces and not reader.done()
        await clock.advance(PUSH_CALLER_IDLE_SECONDS - 1)
        assert not reader.done(), "a caller within the idle timeout keeps its push"
        await clock.advance(1)
        with pytest.raises(Aborted):
            await asyncio.wait_for(reader, 1.0)
        assert context.aborted is not None
        code, message = context.aborted
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert f"the caller sent nothing for {PUSH_CALLER_IDLE_SECONDS:g} s" in message and "push again" in message
        assert a.closed, "the target's load is ended"
        # The one slot is free again: the next push is accepted.
        again = pushes.push(_requests(1), FakeContext())  # type: ignore[arg-type]
        first = await asyncio.wait_for(anext(again), 1.0)
        assert first.node_id == "a" and not first.done
        await again.aclose()


async def test_a_caller_that_never_sends_its_first_request_is_ended() -> None:
    clock = FakeClock()

    async def silent() -> AsyncIterator[cpb.PushImageRequest]:
        await asyncio.Event().wait()
        yield cpb.PushImageRequest()

    async with SqliteStore(":memory:") as store:
        pushes = ImagePushes(store, FakeSender(offline=set()), ImageRegistry(), clock=clock)
        context = RecordingContext()
        reader = asyncio.create_task(_collect(pushes.push(silent(), context), []))  # type: ignore[arg-type]
        await clock.advance(PUSH_CALLER_IDLE_SECONDS)
        with pytest.raises(Aborted):
            await asyncio.wait_for(reader, 1.0)
    assert context.aborted is not None and context.aborted[0] == grpc.StatusCode.DEADLINE_EXCEEDED
