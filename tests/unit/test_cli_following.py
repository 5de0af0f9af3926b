"""A CLI wait whose watch fell behind what the controller keeps starts over instead of failing."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence

import grpc
import pytest

from dockyard.cli.following import Mirror, wait_until
from dockyard.client import ApiError, Client
from dockyard.v1 import controller_pb2 as cpb
from dockyard.v1 import types_pb2 as pb


class BehindOnce(Client):
    """A client whose first watch falls behind (OUT_OF_RANGE after it opened) and whose later ones work."""

    def __init__(self, behind: int) -> None:
        super().__init__("127.0.0.1:1")
        self.behind = behind
        self.watches = 0

    async def watch(
        self, since: int = 0, kinds: Sequence[int] = (), services: Sequence[str] = ()
    ) -> AsyncGenerator[cpb.WatchResponse, None]:
        self.watches += 1
        yield cpb.WatchResponse(revision=5)
        if self.behind:
            self.behind -= 1
            raise ApiError("since_revision 5 is older than the controller keeps", grpc.StatusCode.OUT_OF_RANGE)
        task = pb.Task(id="t1", version=7)
        task.status.state = pb.TASK_STATE_RUNNING
        yield cpb.WatchResponse(revision=7, events=[cpb.WatchEvent(revision=7, task=task)])


def running(mirror: Mirror) -> bool | None:
    task = mirror.tasks.get("t1")
    return True if task is not None and task.status.state == pb.TASK_STATE_RUNNING else None


async def nothing_listed() -> tuple[list[pb.Service], list[pb.Task]]:
    return [], []


async def test_a_watch_that_fell_behind_is_opened_again_and_the_wait_goes_on() -> None:
    client = BehindOnce(behind=1)
    async with client:
        assert await wait_until(client, nothing_listed, running, within=5, waiting_for=lambda: "t1") is True
        assert client.watches == 2


async def test_a_watch_that_keeps_falling_behind_ends_the_wait_with_the_error() -> None:
    client = BehindOnce(behind=100)
    async with client:
        with pytest.raises(ApiError) as caught:
            await wait_until(client, nothing_listed, running, within=5, waiting_for=lambda: "t1")
        assert caught.value.code == grpc.StatusCode.OUT_OF_RANGE
        assert client.watches == 5
