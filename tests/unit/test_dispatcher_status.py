"""The dispatcher's pure parts: judging reported statuses, choosing assignments, and what a session sends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest

from controller.dispatcher.assignment import belongs, fingerprint
from controller.dispatcher.session import AgentSession
from controller.dispatcher.status import AGENT_STATES, judge_status
from dockyard.task_state import is_terminal
from dockyard.timestamps import to_timestamp
from dockyard.v1 import agent_pb2 as apb
from dockyard.v1 import types_pb2 as pb

EARLIER = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
LATER = datetime(2026, 5, 1, 12, 5, tzinfo=UTC)
# When the controller received the report: the only time a written status carries.
ARRIVED = datetime(2026, 5, 1, 12, 7, tzinfo=UTC)
ALL_STATES: list[pb.TaskState.ValueType] = list(pb.TaskState.values())
SPECS = {("svc", rev): pb.ServiceSpec(name="web", image=f"dockyard-test:{rev}") for rev in (1, 2)}


def make_task(
    task_id: str = "t1",
    node: str = "n1",
    state: pb.TaskState.ValueType = pb.TASK_STATE_ASSIGNED,
    desired: pb.DesiredState.ValueType = pb.DESIRED_STATE_RUNNING,
    revision: int = 1,
    generation: int = 1,
) -> pb.Task:
    task = pb.Task(
        id=task_id,
        service_id="svc",
        service_name="web",
        slot=1,
        revision=revision,
        node_id=node,
        desired_state=desired,
        generation=generation,
        version=4,
    )
    task.status.state = state
    task.status.message = "assigned to n1"
    task.status.timestamp.CopyFrom(to_timestamp(EARLIER))
    task.updated_at.CopyFrom(to_timestamp(EARLIER))
    return task


def report(
    state: pb.TaskState.ValueType,
    message: str = "",
    error: str = "",
    exit_code: int = 0,
    container_id: str = "",
    when: datetime = LATER,
) -> pb.TaskStatus:
    status = pb.TaskStatus(state=state, message=message, error=error, exit_code=exit_code, container_id=container_id)
    status.timestamp.CopyFrom(to_timestamp(when))
    return status


def state_id(state: int) -> str:
    return pb.TaskState.Name(state).removeprefix("TASK_STATE_").lower()  # type: ignore[arg-type]


# --- judge_status ---------------------------------------------------------------------------------------


def test_an_unknown_task_is_refused_quietly() -> None:
    """A task deleted while its report was on the way: a race, not a forgery."""
    verdict = judge_status(None, "n1", report(pb.TASK_STATE_RUNNING), ARRIVED)
    assert verdict.task is None
    assert verdict.refused == "no such task"
    assert not verdict.forged


def test_a_report_on_another_nodes_task_is_a_forgery() -> None:
    verdict = judge_status(make_task(node="n2"), "n1", report(pb.TASK_STATE_FAILED), ARRIVED)
    assert verdict.task is None
    assert verdict.refused == "task is assigned to node n2, not n1"
    assert verdict.forged


def test_a_report_on_an_unplaced_task_is_a_forgery() -> None:
    verdict = judge_status(make_task(node=""), "n1", report(pb.TASK_STATE_RUNNING), ARRIVED)
    assert verdict.task is None
    assert verdict.refused == "task is assigned to node (none), not n1"
    assert verdict.forged


@pytest.mark.parametrize(
    "state",
    [pb.TASK_STATE_UNSPECIFIED, pb.TASK_STATE_NEW, pb.TASK_STATE_PENDING, pb.TASK_STATE_ORPHANED, pb.TASK_STATE_LOST],
    ids=state_id,
)
def test_a_state_only_the_controller_sets_is_refused(state: pb.TaskState.ValueType) -> None:
    """Placement is the controller's, and so is lost (replaced whatever the restart policy says)."""
    verdict = judge_status(make_task(), "n1", report(state), ARRIVED)
    assert verdict.task is None
    assert verdict.refused == f"an agent cannot report state {state_id(state)}"
    assert not verdict.forged


@pytest.mark.parametrize("state", [-1, 13, 999])
def test_a_state_outside_the_enum_is_refused(state: int) -> None:
    """The wire carries any number for an open enum; none outside it may reach the store."""
    status = pb.TaskStatus.FromString(pb.TaskStatus(state=state).SerializeToString())  # type: ignore[arg-type]
    verdict = judge_status(make_task(), "n1", status, ARRIVED)
    assert verdict.task is None
    assert verdict.refused == f"an agent cannot report state {state} (not a task state)"


def malformed(seconds: int, nanos: int) -> pb.TaskStatus:
    """A FAILED report whose timestamp the agent set as it liked (parsed from the wire, as the controller sees it)."""
    status = report(pb.TASK_STATE_FAILED, error="exited with code 1", exit_code=1)
    status.timestamp.seconds, status.timestamp.nanos = seconds, nanos
    return pb.TaskStatus.FromString(status.SerializeToString())


@pytest.mark.parametrize(
    "status",
    [
        malformed(1_700_000_000, -1),
        malformed(1_700_000_000, 1_000_000_000),
        malformed(2**62, 0),
        malformed(-(2**62), 0),
        malformed(int((LATER + timedelta(days=365)).timestamp()), 0),
        malformed(0, 0),
    ],
    ids=["nanos-negative", "nanos-too-large", "seconds-past-9999", "seconds-before-year-1", "a-year-ahead", "unset"],
)
def test_the_written_time_is_the_arrival_whatever_the_agent_stamped(status: pb.TaskStatus) -> None:
    verdict = judge_status(make_task(state=pb.TASK_STATE_RUNNING), "n1", status, ARRIVED)
    assert verdict.task is not None
    assert verdict.task.status.timestamp == to_timestamp(ARRIVED)
    assert verdict.task.updated_at == to_timestamp(ARRIVED)
    assert verdict.task.status.timestamp.ToDatetime(tzinfo=UTC) == ARRIVED, "a readable time"


@pytest.mark.parametrize(
    ("current", "reported"),
    [
        (pb.TASK_STATE_RUNNING, pb.TASK_STATE_STARTING),
        (pb.TASK_STATE_RUNNING, pb.TASK_STATE_ASSIGNED),
        (pb.TASK_STATE_STARTING, pb.TASK_STATE_PREPARING),
    ],
    ids=state_id,
)
def test_a_backwards_move_is_ignored_without_refusal(
    current: pb.TaskState.ValueType, reported: pb.TaskState.ValueType
) -> None:
    verdict = judge_status(make_task(state=current), "n1", report(reported), ARRIVED)
    assert verdict.task is None
    assert verdict.refused == ""


@pytest.mark.parametrize(
    "current",
    [s for s in ALL_STATES if is_terminal(s)],
    ids=state_id,
)
def test_a_terminal_state_never_changes(current: pb.TaskState.ValueType) -> None:
    task = make_task(state=current)
    for reported in ALL_STATES:
        if reported not in AGENT_STATES:
            continue
        verdict = judge_status(task, "n1", report(reported, message="late news", container_id="c9"), ARRIVED)
        assert verdict.task is None, state_id(reported)
        assert verdict.refused == "", state_id(reported)


def test_an_identical_status_is_ignored_even_with_a_new_timestamp() -> None:
    task = make_task(state=pb.TASK_STATE_RUNNING)
    task.status.CopyFrom(report(pb.TASK_STATE_RUNNING, "started", container_id="c1", when=EARLIER))
    status = report(pb.TASK_STATE_RUNNING, "started", container_id="c1", when=LATER)
    verdict = judge_status(task, "n1", status, ARRIVED)
    assert verdict.task is None
    assert verdict.refused == ""


def test_news_within_a_state_is_applied_and_keeps_the_time_the_state_began() -> None:
    task = make_task(state=pb.TASK_STATE_RUNNING)
    began = task.status.timestamp
    status = report(pb.TASK_STATE_RUNNING, "running", container_id="c1")
    status.health.state = pb.TaskHealth.STATE_UNHEALTHY
    status.health.output = "connection refused"
    status.health.failing_streak = 2

    verdict = judge_status(task, "n1", status, ARRIVED)

    assert verdict.task is not None
    assert verdict.task.status.health == status.health
    assert verdict.task.status.timestamp == began  # a rollout's monitor counts from when it began running
    assert verdict.task.updated_at == to_timestamp(ARRIVED)
    # The same report again changes nothing.
    assert judge_status(verdict.task, "n1", status, ARRIVED).task is None


@pytest.mark.parametrize(
    ("current", "status"),
    [
        (pb.TASK_STATE_ASSIGNED, report(pb.TASK_STATE_PREPARING, "image ready")),
        (pb.TASK_STATE_ASSIGNED, report(pb.TASK_STATE_RUNNING, "running", container_id="c1")),
        (pb.TASK_STATE_RUNNING, report(pb.TASK_STATE_FAILED, error="exited with code 3", exit_code=3)),
        (pb.TASK_STATE_RUNNING, report(pb.TASK_STATE_SHUTDOWN, "stopped and removed", container_id="c1")),
        (pb.TASK_STATE_PREPARING, report(pb.TASK_STATE_REJECTED, error="image not found")),
    ],
    ids=lambda v: state_id(v.state) if isinstance(v, pb.TaskStatus) else state_id(v),
)
def test_a_forward_move_is_applied_stamped_with_its_arrival(
    current: pb.TaskState.ValueType, status: pb.TaskStatus
) -> None:
    task = make_task(state=current)
    original = task.SerializeToString()

    verdict = judge_status(task, "n1", status, ARRIVED)

    assert verdict.refused == ""
    assert verdict.task is not None
    stamped = pb.TaskStatus()
    stamped.CopyFrom(status)
    stamped.timestamp.CopyFrom(to_timestamp(ARRIVED))  # the agent's own time (LATER) is not kept
    assert verdict.task.status == stamped
    assert verdict.task.updated_at == to_timestamp(ARRIVED)
    # Everything else is the stored task's, including the version the write must expect.
    expected = make_task(state=current)
    expected.status.CopyFrom(stamped)
    expected.updated_at.CopyFrom(to_timestamp(ARRIVED))
    assert verdict.task == expected
    assert verdict.task.version == 4
    assert task.SerializeToString() == original, "judge_status must not modify the stored task"


# --- belongs and fingerprint ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "expected"),
    [
        (make_task(), True),
        (make_task(state=pb.TASK_STATE_FAILED), True),  # still wanted: the orchestrator decides
        (make_task(state=pb.TASK_STATE_RUNNING, desired=pb.DESIRED_STATE_SHUTDOWN), True),  # must be stopped
        (make_task(state=pb.TASK_STATE_SHUTDOWN, desired=pb.DESIRED_STATE_SHUTDOWN), False),
        (make_task(state=pb.TASK_STATE_FAILED, desired=pb.DESIRED_STATE_SHUTDOWN), False),
        (make_task(node="n2"), False),
        (make_task(node=""), False),
    ],
)
def test_belongs(task: pb.Task, expected: bool) -> None:
    assert belongs(task, "n1") is expected


def test_fingerprint_covers_what_the_agent_acts_on_and_nothing_else() -> None:
    base = fingerprint(make_task())
    assert fingerprint(make_task(desired=pb.DESIRED_STATE_SHUTDOWN)) != base
    assert fingerprint(make_task(revision=2)) != base
    assert fingerprint(make_task(generation=2)) != base
    assert not make_task().HasField("spec"), "a task names its spec by revision; the revision is the news"
    # The status is what the agent itself reported: not news to it.
    reported = make_task(state=pb.TASK_STATE_RUNNING)
    reported.status.message = "started"
    reported.version = 9
    assert fingerprint(reported) == base


# --- AgentSession ---------------------------------------------------------------------------------------


def drain(session: AgentSession) -> list[apb.Assignments]:
    sent: list[apb.Assignments] = []
    for message in session.take():
        assert message.WhichOneof("msg") == "assignments"
        sent.append(message.assignments)
    return sent


def test_send_full_sends_only_this_nodes_tasks_that_belong() -> None:
    session = AgentSession(node_id="n1", session_id="s1")
    tasks = [
        make_task("mine"),
        make_task("stopping", state=pb.TASK_STATE_RUNNING, desired=pb.DESIRED_STATE_SHUTDOWN),
        make_task("stopped", state=pb.TASK_STATE_SHUTDOWN, desired=pb.DESIRED_STATE_SHUTDOWN),
        make_task("theirs", node="n2"),
    ]

    session.send_full(tasks, SPECS)

    [full] = drain(session)
    assert full.kind == apb.Assignments.KIND_FULL
    assert [t.id for t in full.tasks] == ["mine", "stopping"]
    assert list(full.removed_task_ids) == []
    assert full.sequence == 1
    assert set(session.sent) == {"mine", "stopping"}


def test_send_full_replaces_what_was_sent_before() -> None:
    session = AgentSession(node_id="n1", session_id="s1")
    session.send_full([make_task("a"), make_task("b")], SPECS)
    session.on_task(make_task("c"), deleted=False, specs=SPECS)
    session.send_full([make_task("b")], SPECS)
    [only] = drain(session)
    assert [t.id for t in only.tasks] == ["b"], "a full set not yet written is replaced, with the changes after it"
    assert set(session.sent) == {"b"}
    assert only.sequence == 1
    # "a" was never re-sent after the second full set, so its deletion is not news.
    session.on_task(make_task("a"), deleted=True, specs=SPECS)
    assert drain(session) == []


def test_an_empty_full_set_is_still_sent() -> None:
    session = AgentSession(node_id="n1", session_id="s1")
    session.send_full([make_task("theirs", node="n2")], SPECS)
    [full] = drain(session)
    assert full.kind == apb.Assignments.KIND_FULL
    assert list(full.tasks) == []


def test_on_task_sends_a_new_task_then_only_fingerprint_changes() -> None:
    session = AgentSession(node_id="n1", session_id="s1")
    session.send_full([], SPECS)
    drain(session)

    session.on_task(make_task("a"), deleted=False, specs=SPECS)
    [added] = drain(session)
    assert added.kind == apb.Assignments.KIND_INCREMENTAL
    assert [t.id for t in added.tasks] == ["a"]

    # The agent's own status coming back is not news.
    echoed = make_task("a", state=pb.TASK_STATE_RUNNING)
    echoed.version = 9
    session.on_task(echoed, deleted=False, specs=SPECS)
    assert drain(session) == []

    session.on_task(make_task("a", state=pb.TASK_STATE_RUNNING, revision=2), deleted=False, specs=SPECS)
    [updated] = drain(session)
    assert updated.kind == apb.Assignments.KIND_INCREMENTAL
    assert updated.tasks[0].revision == 2
    assert list(updated.removed_task_ids) == []


def test_on_task_ignores_other_nodes_tasks() -> None:
    session = AgentSession(node_id="n1", session_id="s1")
    session.on_task(make_task("theirs", node="n2"), deleted=False, specs=SPECS)
    session.on_task(make_task("theirs", node="n2"), deleted=True, specs=SPECS)
    assert drain(session) == []
    assert session.sequence == 0


def test_a_task_that_stops_belonging_is_removed_once() -> None:
    session = AgentSession(node_id="n1", session_id="s1")
    session.send_full([make_task("a", state=pb.TASK_STATE_RUNNING)], SPECS)
    drain(session)

    session.on_task(
        make_task("a", state=pb.TASK_STATE_RUNNING, desired=pb.DESIRED_STATE_SHUTDOWN), deleted=False, specs=SPECS
    )
    [told] = drain(session)
    assert told.tasks[0].desired_state == pb.DESIRED_STATE_SHUTDOWN

    stopped = make_task("a", state=pb.TASK_STATE_SHUTDOWN, desired=pb.DESIRED_STATE_SHUTDOWN)
    session.on_task(stopped, deleted=False, specs=SPECS)
    [removal] = drain(session)
    assert removal.kind == apb.Assignments.KIND_INCREMENTAL
    assert list(removal.tasks) == []
    assert list(removal.removed_task_ids) == ["a"]

    session.on_task(stopped, deleted=False, specs=SPECS)
    session.on_task(stopped, deleted=True, specs=SPECS)
    assert drain(session) == []
    assert "a" not in session.sent


def test_a_deleted_task_is_removed_once() -> None:
    session = AgentSession(node_id="n1", session_id="s1")
    session.send_full([make_task("a")], SPECS)
    drain(session)
    session.on_task(make_task("a"), deleted=True, specs=SPECS)
    session.on_task(make_task("a"), deleted=True, specs=SPECS)
    [removal] = drain(session)
    assert list(removal.removed_task_ids) == ["a"]


def test_a_task_moved_to_another_node_is_removed() -> None:
    session = AgentSession(node_id="n1", session_id="s1")
    session.send_full([make_task("a")], SPECS)
    drain(session)
    session.on_task(make_task("a", node="n2"), deleted=False, specs=SPECS)
    [removal] = drain(session)
    assert list(removal.removed_task_ids) == ["a"]


def test_sequence_numbers_grow_across_full_and_incremental_sends() -> None:
    session = AgentSession(node_id="n1", session_id="s1")
    session.send_full([make_task("a")], SPECS)
    session.on_task(make_task("b"), deleted=False, specs=SPECS)
    sequences = [a.sequence for a in drain(session)]
    session.on_task(make_task("a", revision=2), deleted=False, specs=SPECS)
    sequences += [a.sequence for a in drain(session)]
    session.on_task(make_task("b"), deleted=True, specs=SPECS)
    session.send_full([make_task("a", revision=2)], SPECS)
    sequences += [a.sequence for a in drain(session)]
    assert sequences == [1, 2, 3, 4]
    assert session.sequence == 4


def test_changes_to_one_task_coalesce_and_a_burst_goes_as_one_message() -> None:
    session = AgentSession(node_id="n1", session_id="s1")
    session.send_full([make_task("a"), make_task("b")], SPECS)
    drain(session)
    session.on_task(make_task("a", revision=2), deleted=False, specs=SPECS)
    session.on_task(make_task("c"), deleted=False, specs=SPECS)
    session.on_task(make_task("a", revision=2, desired=pb.DESIRED_STATE_SHUTDOWN), deleted=False, specs=SPECS)
    session.on_task(make_task("b"), deleted=True, specs=SPECS)
    [burst] = drain(session)
    assert burst.kind == apb.Assignments.KIND_INCREMENTAL
    assert [(t.id, t.desired_state) for t in burst.tasks] == [
        ("a", pb.DESIRED_STATE_SHUTDOWN),
        ("c", pb.DESIRED_STATE_RUNNING),
    ], "the latest change per task, once"
    assert list(burst.removed_task_ids) == ["b"]
    assert [s.revision for s in burst.specs] == [2]


def test_only_the_latest_heartbeat_ack_waits_and_the_welcome_goes_first() -> None:
    session = AgentSession(node_id="n1", session_id="s1")
    session.ack(EARLIER)
    session.ack(LATER)
    session.send_full([make_task("a")], SPECS)
    session.welcome(apb.Welcome(node_id="n1", session_id="s1"))
    kinds = [m.WhichOneof("msg") for m in session.take()]
    assert kinds == ["welcome", "assignments", "heartbeat_ack"]
    session.ack(EARLIER)
    session.ack(LATER)
    [ack] = session.take()
    assert ack.heartbeat_ack.received_at == to_timestamp(LATER)
    assert session.take() == []


def test_a_large_burst_is_cut_into_messages_each_with_the_specs_it_needs(monkeypatch: pytest.MonkeyPatch) -> None:
    import controller.dispatcher.session as session_module

    monkeypatch.setattr(session_module, "ASSIGNMENTS_CHUNK_BYTES", 400)
    session = AgentSession(node_id="n1", session_id="s1")
    session.send_full([], SPECS)
    drain(session)
    for i in range(20):
        session.on_task(make_task(f"t{i:02}", revision=1 + i % 2), deleted=False, specs=SPECS)
    messages = drain(session)
    assert len(messages) > 2
    assert [t.id for m in messages for t in m.tasks] == [f"t{i:02}" for i in range(20)]
    for message in messages:
        carried = {s.revision for m in messages[: messages.index(message) + 1] for s in m.specs}
        assert {t.revision for t in message.tasks} <= carried, "a spec travels with or before its first task"
    assert sorted(s.revision for m in messages for s in m.specs) == [1, 2]


def test_a_session_past_its_outbox_bound_is_closed_not_grown(monkeypatch: pytest.MonkeyPatch) -> None:
    import controller.dispatcher.session as session_module

    monkeypatch.setattr(session_module, "OUTBOX_BYTES", 2_000)
    session = AgentSession(node_id="n1", session_id="s1")
    session.send_full([], SPECS)
    for i in range(100):
        session.on_task(make_task(f"t{i:03}", revision=5 + i), deleted=False, specs=SPECS)
        if session.closed.is_set():
            break
    assert session.closed.is_set()
    assert session.close_code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert session.pending_bytes <= 2_000 + make_task("t000").ByteSize() + 20


def test_each_revision_spec_travels_once_per_session() -> None:
    session = AgentSession(node_id="n1", session_id="s1")
    session.send_full([make_task("a"), make_task("b")], SPECS)
    session.on_task(make_task("c"), deleted=False, specs=SPECS)
    full, added = drain(session)
    session.on_task(make_task("a", revision=2), deleted=False, specs=SPECS)
    [first_at_2] = drain(session)
    session.on_task(make_task("b", revision=2), deleted=False, specs=SPECS)
    [second_at_2] = drain(session)
    assert [(s.service_id, s.revision, s.spec.image) for s in full.specs] == [("svc", 1, "dockyard-test:1")]
    assert not any(t.HasField("spec") for t in full.tasks), "specs travel beside the tasks, once each"
    assert list(added.specs) == [], "revision 1 was already sent in this session"
    assert [s.revision for s in first_at_2.specs] == [2]
    assert list(second_at_2.specs) == []
    # A new full set starts a new record: the agent may have restarted its session state.
    session.send_full([make_task("a", revision=2)], SPECS)
    [again] = drain(session)
    assert [s.revision for s in again.specs] == [2]


def test_a_task_whose_spec_is_gone_is_sent_without_one() -> None:
    session = AgentSession(node_id="n1", session_id="s1")
    session.send_full([make_task("a", revision=7)], SPECS)
    [full] = drain(session)
    assert [t.id for t in full.tasks] == ["a"]
    assert list(full.specs) == []
    assert not session.sent_specs


def test_wants_tells_news_apart() -> None:
    session = AgentSession(node_id="n1", session_id="s1")
    session.send_full([make_task("a")], SPECS)
    assert not session.wants(make_task("a", state=pb.TASK_STATE_RUNNING), deleted=False)
    assert session.wants(make_task("a", revision=2), deleted=False)
    assert session.wants(make_task("a"), deleted=True)
    assert not session.wants(make_task("theirs", node="n2"), deleted=False)
    assert session.wants(make_task("new"), deleted=False)


def test_status_text_from_an_agent_is_bounded() -> None:
    from controller.dispatcher.committer import bound_status_text
    from dockyard.limits import STATUS_TEXT_BYTES

    status = report(pb.TASK_STATE_FAILED, message="m" * 3_000_000, error="é" * 100_000)
    bound_status_text(status)
    assert len(status.message.encode()) <= STATUS_TEXT_BYTES
    assert len(status.error.encode()) <= STATUS_TEXT_BYTES
    assert status.message.endswith("[truncated]") and status.error.startswith("éé")
    short = report(pb.TASK_STATE_FAILED, message="exited", error="code 1")
    bound_status_text(short)
    assert (short.message, short.error) == ("exited", "code 1")


def test_host_facts_from_an_agent_are_bounded_and_bad_labels_dropped() -> None:
    from controller.dispatcher.dispatcher import bound_description
    from dockyard.limits import NODE_LABELS, NODE_TEXT_BYTES

    description = pb.NodeDescription(hostname="h" * 5000, os="linux\x00")
    description.labels.update({f"k{i:03}": "v" for i in range(NODE_LABELS + 10)})
    description.labels["bad"] = "a\x00b"
    description.labels["dockyard.node.id"] = "someone-else"
    dropped = bound_description(description)
    assert len(description.hostname.encode()) <= NODE_TEXT_BYTES
    assert len(description.labels) == NODE_LABELS
    assert "bad" not in description.labels and "dockyard.node.id" not in description.labels
    assert len(dropped) == 12 and any("NUL" in d for d in dropped) and any("reserved" in d for d in dropped)
