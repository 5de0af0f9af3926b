"""A new session's full set and the changes that arrive while it is read: nothing overtakes the full set."""

from __future__ import annotations

from controller.dispatcher.dispatcher import Dispatcher
from controller.dispatcher.session import AgentSession
from controller.store.base import Put
from controller.store.sqlite import SqliteStore
from dockyard.clock import FakeClock
from dockyard.v1 import agent_pb2 as apb
from dockyard.v1 import types_pb2 as pb


def task(task_id: str, revision: int = 1, desired: int = pb.DESIRED_STATE_RUNNING) -> pb.Task:
    t = pb.Task(id=task_id, service_id="svc", service_name="web", slot=1, revision=revision, node_id="n1")
    t.desired_state = desired  # type: ignore[assignment]
    t.status.state = pb.TASK_STATE_ASSIGNED
    return t


def sent(session: AgentSession) -> list[apb.Assignments]:
    return [message.assignments for message in session.take()]


async def test_changes_held_during_the_snapshot_follow_it_and_old_ones_are_dropped() -> None:
    async with SqliteStore(":memory:") as store:
        service = pb.Service(id="svc", name="web", revision=1, spec_revision=1)
        service.spec.name, service.spec.image = "web", "img:1"
        await store.commit([Put(service), Put(task("a"))])
        dispatcher = Dispatcher(store, FakeClock())
        session = AgentSession(node_id="n1", session_id="s1")
        assert session.backlog == [], "a new session holds changes until its full set is queued"
        snapshot = store.revision
        # Seen by the feed while the set was being read: one the snapshot already holds, two after it.
        stale = task("a")
        session.backlog.append((snapshot, stale, False))
        session.backlog.append((snapshot + 1, task("b"), False))
        session.backlog.append((snapshot + 2, task("a", desired=pb.DESIRED_STATE_SHUTDOWN), False))

        await dispatcher._send_full(session)

        full, later = sent(session)
        assert full.kind == apb.Assignments.KIND_FULL and [t.id for t in full.tasks] == ["a"]
        assert [s.spec.image for s in full.specs] == ["img:1"]
        # The replayed changes go out together, after the full set: "b" added, "a" told to stop.
        assert later.kind == apb.Assignments.KIND_INCREMENTAL and list(later.specs) == []
        assert [(t.id, t.desired_state) for t in later.tasks] == [
            ("b", pb.DESIRED_STATE_RUNNING),
            ("a", pb.DESIRED_STATE_SHUTDOWN),
        ]
        assert session.backlog is None, "after the replay, changes flow straight through"
