"""A node reporting on another node's task loses its session, and nothing it reported about that task is written."""

from __future__ import annotations

import grpc

from dockyard.v1 import agent_pb2 as apb
from dockyard.v1 import types_pb2 as pb
from tests.unit.test_dispatcher_load import WINDOW, Rig, place, rig, settle  # noqa: F401


async def test_a_report_on_another_nodes_task_ends_the_session_and_changes_nothing(rig: Rig) -> None:  # noqa: F811
    [theirs] = await place(rig.store, "n2", 1)
    [mine] = await place(rig.store, "n1", 1)
    stream = await rig.connect("n1")
    await rig.clock.advance(WINDOW)
    await settle(lambda: rig.store.commits_of(pb.Node))
    before = await rig.store.get_task(theirs)
    stream.send(
        status=apb.StatusUpdate(
            updates=[
                apb.TaskStatusUpdate(task_id=theirs, status=pb.TaskStatus(state=pb.TASK_STATE_FAILED)),
                apb.TaskStatusUpdate(task_id=mine, status=pb.TaskStatus(state=pb.TASK_STATE_RUNNING)),
            ]
        )
    )
    await settle(lambda: rig.dispatcher._committer.pending == 2)
    await rig.clock.advance(WINDOW)
    await settle(lambda: stream.aborted is not None)
    assert stream.aborted == (grpc.StatusCode.PERMISSION_DENIED, f"status for task {theirs}: not assigned to this node")
    assert await rig.store.get_task(theirs) == before
    own = await rig.store.get_task(mine)
    assert own is not None and own.status.state == pb.TASK_STATE_RUNNING
