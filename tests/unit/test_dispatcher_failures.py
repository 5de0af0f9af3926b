"""The group committer outlasts a write the store refuses for a reason other than a conflict."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence

from controller.dispatcher.committer import GroupCommitter
from controller.store.base import Op, Put
from controller.store.sqlite import SqliteStore
from dockyard.clock import FakeClock
from dockyard.logs import Throttle
from dockyard.v1 import types_pb2 as pb
from tests.polling import eventually


class FailingOnce(SqliteStore):
    """The real store, whose first commit fails as a full disk would make it."""

    def __init__(self) -> None:
        super().__init__(":memory:")
        self.failures = 1

    async def commit(self, ops: Sequence[Op]) -> int:
        if self.failures:
            self.failures -= 1
            raise sqlite3.OperationalError("database or disk is full")
        return await super().commit(ops)


async def test_a_refused_write_keeps_the_batch_and_the_committer_running() -> None:
    clock = FakeClock()
    async with FailingOnce() as store:
        store.failures = 0
        task = pb.Task(id="t1", service_id="s", node_id="n1", desired_state=pb.DESIRED_STATE_RUNNING)
        task.status.state = pb.TASK_STATE_ASSIGNED
        await store.commit([Put(task)])
        store.failures = 1
        committer = GroupCommitter(store, clock, Throttle(clock), window=0)
        running = asyncio.create_task(committer.run())
        try:
            committer.add_statuses("n1", [("t1", pb.TaskStatus(state=pb.TASK_STATE_RUNNING))])

            async def failed() -> bool:
                return store.failures == 0 and committer.pending == 1  # refused, and put back

            async def committed() -> bool:
                # Not pending alone: a batch taken for its commit is no longer pending, yet not written.
                stored = await store.get_task("t1")
                return committer.pending == 0 and stored is not None and stored.version > 1

            await eventually(failed, what="the first commit to fail")
            assert not running.done(), "the committer ended on a refused write"
            await clock.advance(5.0, step=0.1)  # past the retry pause
            await eventually(committed, what="the batch to be committed on retry")
            stored = await store.get_task("t1")
            assert stored is not None and stored.status.state == pb.TASK_STATE_RUNNING
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
