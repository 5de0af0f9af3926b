"""How the CLI judges a deploy: pure verdicts from services and tasks (dockyard.cli.rollout), the exit codes,
the plain progress lines, and a wait that looks again on time alone (the grace of unplaced tasks)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence

import pytest

from dockyard.cli.deploying import PlainDisplay, notes_of
from dockyard.cli.exitcodes import ExitCode, Failed
from dockyard.cli.following import Mirror, wait_until
from dockyard.cli.rollout import (
    UNPLACED_GRACE,
    Progress,
    UnplacedClock,
    at_timeout,
    failure_text,
    judge,
    progress,
    unbalanced,
)
from dockyard.client import Client
from dockyard.clock import FakeClock
from dockyard.v1 import controller_pb2 as cpb
from dockyard.v1 import types_pb2 as pb

S = pb.UpdateStatus


def service(
    replicas: int = 2,
    spec_revision: int = 5,
    state: pb.UpdateStatus.State.ValueType = S.STATE_UNSPECIFIED,
    to_revision: int = 0,
    message: str = "",
    mode: pb.ServiceMode.ValueType = pb.SERVICE_MODE_REPLICATED,
) -> pb.Service:
    result = pb.Service(id="svc", name="web", revision=spec_revision, spec_revision=spec_revision)
    result.spec.name = "web"
    result.spec.replicas = replicas
    result.spec.mode = mode
    result.update_status.state = state
    result.update_status.to_revision = to_revision
    result.update_status.message = message
    return result


def task(
    slot: int,
    revision: int = 5,
    state: pb.TaskState.ValueType = pb.TASK_STATE_RUNNING,
    desired: pb.DesiredState.ValueType = pb.DESIRED_STATE_RUNNING,
    node: str = "n1",
    message: str = "",
    attempt: int = 0,
    task_id: str = "",
) -> pb.Task:
    result = pb.Task(
        id=task_id or f"t{slot}-{revision}-{state}-{attempt}",
        service_id="svc",
        service_name="web",
        slot=slot,
        revision=revision,
        node_id=node,
        desired_state=desired,
        attempt=attempt,
    )
    result.status.state = state
    result.status.message = message
    return result


def verdict_of(svc: pb.Service, tasks: Sequence[pb.Task], target: int = 0) -> ExitCode | None:
    found = judge([progress(svc, tasks, target=target)], {})
    return None if found is None else found.code


# --- convergence ----------------------------------------------------------------------------------------


def test_a_completed_rollout_with_every_task_healthy_at_the_new_revision_is_ok() -> None:
    svc = service(state=S.STATE_COMPLETED, to_revision=5)
    verdict = judge([progress(svc, [task(1), task(2)], target=5)], {})
    assert verdict is not None and verdict.code == ExitCode.OK
    assert verdict.reason == "web: 2/2 updated, 2 healthy (rollout completed)"


def test_a_rollout_still_updating_is_not_done_even_when_every_task_runs() -> None:
    svc = service(state=S.STATE_UPDATING, to_revision=5)
    assert verdict_of(svc, [task(1), task(2)], target=5) is None


def test_a_status_of_an_older_rollout_is_ignored_until_the_orchestrator_starts_this_one() -> None:
    # The last deploy rolled back (to revision 4); this apply wrote spec revision 5 a moment ago.
    svc = service(state=S.STATE_ROLLBACK_COMPLETED, to_revision=4)
    assert verdict_of(svc, [task(1, revision=4), task(2, revision=4)], target=5) is None  # stale tasks
    assert verdict_of(svc, [task(1), task(2)], target=5) == ExitCode.OK  # no rollout status for 5: tasks decide


def test_healthy_means_running_a_starting_task_is_not_counted() -> None:
    svc = service(state=S.STATE_COMPLETED, to_revision=5)
    result = progress(svc, [task(1), task(2, state=pb.TASK_STATE_STARTING)], target=5)
    assert (result.updated, result.running, result.starting) == (2, 1, 1)
    assert judge([result], {}) is None


def test_a_rollback_of_the_revision_waited_for_is_a_failure_even_when_everything_runs() -> None:
    """docker/cli#6752: a deploy that rolled back must not report success."""
    svc = service(spec_revision=6, state=S.STATE_ROLLBACK_COMPLETED, to_revision=6, message="2 of 2 tasks failed")
    tasks = [task(1, revision=6), task(2, revision=6)]
    result = progress(svc, tasks, target=5)
    assert result.rolled_back and result.running == 2
    verdict = judge([result], {})
    assert verdict is not None and verdict.code == ExitCode.ROLLED_BACK
    assert verdict.reason == "web: rolled back: 2 of 2 tasks failed"


def test_a_rollback_under_way_is_waited_for_and_counts_as_rolled_back_at_the_timeout() -> None:
    svc = service(spec_revision=6, state=S.STATE_ROLLBACK_STARTED, to_revision=6)
    svc.change_cause = "rollback to revision 4: 2 of 2 tasks failed"
    result = progress(svc, [task(1, revision=6)], target=5)
    assert judge([result], {}) is None
    timed_out = at_timeout([result], 30)
    assert timed_out.code == ExitCode.ROLLED_BACK
    assert "rollback to revision 4: 2 of 2 tasks failed" in timed_out.reason


def test_a_rollback_that_paused_is_rolled_back() -> None:
    svc = service(spec_revision=6, state=S.STATE_ROLLBACK_PAUSED, to_revision=6, message="rollback failed too")
    assert verdict_of(svc, [], target=5) == ExitCode.ROLLED_BACK


def test_waiting_for_a_requested_rollback_its_completion_is_success() -> None:
    # `dockyard rollback` waits for the spec revision the rollback wrote.
    svc = service(spec_revision=6, state=S.STATE_ROLLBACK_COMPLETED, to_revision=6)
    assert verdict_of(svc, [task(1, revision=6), task(2, revision=6)], target=6) == ExitCode.OK
    svc.update_status.state = S.STATE_ROLLBACK_PAUSED
    assert verdict_of(svc, [task(1, revision=6), task(2, revision=6)], target=6) == ExitCode.PAUSED


def test_a_later_apply_that_is_no_rollback_is_judged_at_its_own_spec() -> None:
    svc = service(spec_revision=7, state=S.STATE_COMPLETED, to_revision=7)
    assert verdict_of(svc, [task(1, revision=7), task(2, revision=7)], target=5) == ExitCode.OK


def test_a_paused_rollout_ends_the_wait_with_its_message() -> None:
    svc = service(state=S.STATE_PAUSED, to_revision=5, message="update paused: 1 of 2 tasks failed")
    verdict = judge([progress(svc, [task(1)], target=5)], {})
    assert verdict is not None and verdict.code == ExitCode.PAUSED
    assert verdict.reason == "web: rollout paused: update paused: 1 of 2 tasks failed"


def test_tasks_moving_start_first_or_stopping_keep_the_wait_going() -> None:
    svc = service(state=S.STATE_COMPLETED, to_revision=5)
    moving = task(3)
    moving.replaced = True
    assert verdict_of(svc, [task(1), task(2), moving]) is None
    stopping = task(3, desired=pb.DESIRED_STATE_SHUTDOWN)
    assert verdict_of(svc, [task(1), task(2), stopping]) is None
    gone = task(3, state=pb.TASK_STATE_SHUTDOWN, desired=pb.DESIRED_STATE_SHUTDOWN)
    assert verdict_of(svc, [task(1), task(2), gone]) == ExitCode.OK


def test_a_task_of_a_revision_a_rollback_returned_to_runs_the_current_spec() -> None:
    svc = service(spec_revision=6, state=S.STATE_COMPLETED, to_revision=6)
    svc.also_current_from, svc.also_current_to = 3, 4
    assert verdict_of(svc, [task(1, revision=4), task(2, revision=6)], target=6) == ExitCode.OK


# --- unplaced tasks -------------------------------------------------------------------------------------


def test_unplaced_tasks_fail_only_after_the_grace() -> None:
    svc = service()
    unplaced = task(2, state=pb.TASK_STATE_PENDING, node="", message="no suitable node: 1 node: lacks memory")
    result = progress(svc, [task(1), unplaced])
    assert list(result.unplaced) == [unplaced.id]
    clock = UnplacedClock()
    assert judge([result], clock.seen(result.unplaced, now=100.0)) is None
    assert judge([result], clock.seen(result.unplaced, now=100.0 + UNPLACED_GRACE - 0.5)) is None
    verdict = judge([result], clock.seen(result.unplaced, now=100.0 + UNPLACED_GRACE))
    assert verdict is not None and verdict.code == ExitCode.UNPLACED
    assert verdict.reason == "cannot place 1 task(s): web.2: no suitable node: 1 node: lacks memory"


def test_a_task_placed_in_between_starts_its_grace_again() -> None:
    clock = UnplacedClock()
    assert clock.seen({"t1"}, now=0.0) == {"t1": 0.0}
    assert clock.seen(set(), now=5.0) == {}
    assert clock.seen({"t1"}, now=8.0) == {"t1": 0.0}
    assert clock.seen({"t1"}, now=9.5) == {"t1": 1.5}


def test_a_task_waiting_for_a_dependency_is_not_unplaced() -> None:
    waiting = task(1, state=pb.TASK_STATE_PENDING, node="", message="waiting for db (service_healthy)")
    result = progress(service(replicas=1), [waiting])
    assert result.unplaced == {}
    assert result.waiting == ["web.1: waiting for db (service_healthy)"]
    assert judge([result], {waiting.id: 1000.0}) is None


def refused(slot: int, seconds: int, cause: pb.TaskStatus.Cause.ValueType = pb.TaskStatus.CAUSE_HOST) -> pb.Task:
    result = task(slot, state=pb.TASK_STATE_REJECTED, desired=pb.DESIRED_STATE_SHUTDOWN, task_id=f"r{seconds}")
    result.created_at.seconds = seconds
    result.status.cause = cause
    result.status.error = "refused by this host's policy: host port 80/tcp is not allowed"
    return result


def test_a_slot_its_hosts_refused_three_times_in_a_row_cannot_be_placed() -> None:
    svc = service(replicas=1)
    retry = task(1, state=pb.TASK_STATE_PENDING, node="", task_id="live")
    retry.created_at.seconds = 99
    assert verdict_of(svc, [refused(1, 1), refused(1, 2), retry]) is None  # twice: retried
    verdict = judge([progress(svc, [refused(1, 1), refused(1, 2), refused(1, 3), retry])], {})
    assert verdict is not None and verdict.code == ExitCode.UNPLACED
    assert verdict.reason == (
        "cannot place 1 task(s): web.1: refused 3 times in a row: "
        "rejected (host fault): refused by this host's policy: host port 80/tcp is not allowed"
    )
    # The task's own failure in between starts the count again.
    own = refused(1, 2, cause=pb.TaskStatus.CAUSE_TASK)
    assert verdict_of(svc, [refused(1, 1), own, refused(1, 3), refused(1, 4), retry]) is None


# --- jobs -----------------------------------------------------------------------------------------------


def test_a_job_is_done_when_each_slot_exited_0_at_the_current_spec() -> None:
    job = service(replicas=2, mode=pb.SERVICE_MODE_JOB)
    done = [
        task(1, state=pb.TASK_STATE_COMPLETE, desired=pb.DESIRED_STATE_SHUTDOWN),
        task(2, state=pb.TASK_STATE_COMPLETE),
    ]
    assert verdict_of(job, done) == ExitCode.OK
    assert verdict_of(job, [done[0], task(2)]) is None  # still running
    old_run = task(2, revision=4, state=pb.TASK_STATE_COMPLETE)
    assert verdict_of(job, [done[0], old_run]) is None  # a new spec runs the job again
    assert progress(job, done).line() == "web: 2/2 exited 0, 0 running"


def test_a_job_fails_once_its_restart_policy_gives_up() -> None:
    job = service(replicas=1, mode=pb.SERVICE_MODE_JOB)
    job.spec.restart.max_attempts = 3
    failed = task(1, state=pb.TASK_STATE_FAILED, attempt=1)
    failed.status.exit_code = 2
    failed.status.error = "exited with code 2"
    assert verdict_of(job, [failed]) is None  # a third try comes
    last = task(1, state=pb.TASK_STATE_FAILED, attempt=2)
    last.status.exit_code = 2
    last.status.error = "exited with code 2"
    verdict = judge([progress(job, [failed, last])], {})
    assert verdict is not None and verdict.code == ExitCode.JOB_FAILED
    assert verdict.reason == "web: job failed: web.1: failed (exit 2, attempt 3): exited with code 2"
    retried = task(1, state=pb.TASK_STATE_COMPLETE, attempt=3)
    assert verdict_of(job, [failed, last, retried]) == ExitCode.OK  # the newest task of the slot counts


def test_a_job_with_restart_none_fails_at_its_first_failure_but_a_host_fault_is_retried() -> None:
    job = service(replicas=1, mode=pb.SERVICE_MODE_JOB)
    job.spec.restart.condition = pb.RestartPolicy.CONDITION_NONE
    host = task(1, state=pb.TASK_STATE_FAILED)
    host.status.cause = pb.TaskStatus.CAUSE_HOST
    assert verdict_of(job, [host]) is None
    own = task(1, state=pb.TASK_STATE_FAILED, attempt=1)
    assert verdict_of(job, [host, own]) == ExitCode.JOB_FAILED


def test_a_service_task_its_restart_policy_gives_up_on_ends_the_wait_unless_a_rollout_decides() -> None:
    svc = service(replicas=1)
    svc.spec.restart.condition = pb.RestartPolicy.CONDITION_NONE
    refused = task(1, state=pb.TASK_STATE_REJECTED)
    refused.status.error = "refused by this host's policy: host port 80/tcp is not allowed"
    verdict = judge([progress(svc, [refused])], {})
    assert verdict is not None and verdict.code == ExitCode.ERROR
    assert "web.1: rejected: refused by this host's policy: host port 80/tcp is not allowed" in verdict.reason
    svc.update_status.state, svc.update_status.to_revision = S.STATE_UPDATING, 5
    assert judge([progress(svc, [refused])], {}) is None  # the rollout pauses or rolls back on its own
    svc.spec.restart.condition = pb.RestartPolicy.CONDITION_ON_FAILURE
    svc.update_status.state = S.STATE_UNSPECIFIED
    assert judge([progress(svc, [refused])], {}) is None  # it is replaced


# --- timeouts, texts, codes -----------------------------------------------------------------------------


def test_the_timeout_verdict_says_what_was_missing() -> None:
    pending = task(2, state=pb.TASK_STATE_PENDING, node="", message="no suitable node: no nodes")
    result = progress(service(state=S.STATE_UPDATING, to_revision=5), [task(1), pending])
    verdict = at_timeout([result], 60)
    assert verdict.code == ExitCode.TIMEOUT
    assert verdict.reason == (
        "timed out after 60s: web: 2/2 updated, 1 healthy (rollout updating); web.2: no suitable node: no nodes"
    )


@pytest.mark.parametrize(
    ("cause", "exit_code", "attempt", "text"),
    [
        (pb.TaskStatus.CAUSE_TASK, 3, 0, "failed (exit 3): boom"),
        (pb.TaskStatus.CAUSE_UNHEALTHY, 137, 2, "failed (exit 137, unhealthy, attempt 3): boom"),
        (pb.TaskStatus.CAUSE_HOST, 0, 0, "failed (host fault): boom"),
        (pb.TaskStatus.CAUSE_UNSPECIFIED, 0, 0, "failed: boom"),
    ],
)
def test_failure_text(cause: pb.TaskStatus.Cause.ValueType, exit_code: int, attempt: int, text: str) -> None:
    failed = task(1, state=pb.TASK_STATE_FAILED, attempt=attempt)
    failed.status.cause = cause
    failed.status.exit_code = exit_code
    failed.status.error = "boom"
    assert failure_text(failed) == text


def test_the_exit_codes_keep_their_numbers() -> None:
    assert {code.label: int(code) for code in ExitCode} == {
        "ok": 0,
        "error": 1,
        "changes": 2,
        "rolled_back": 3,
        "paused": 4,
        "unplaced": 5,
        "timeout": 6,
        "job_failed": 7,
    }
    failed = Failed(ExitCode.PAUSED, "web: rollout paused")
    assert (failed.exit_code, failed.format_message()) == (4, "web: rollout paused")


def test_plain_display_prints_a_line_only_when_it_changes() -> None:
    lines: list[str] = []
    display = PlainDisplay(lines.append)
    first = Progress("web", 2, updated=1, running=1)
    display.show([first], ["web.2: pending"])
    display.show([first], ["web.2: pending"])
    display.show([Progress("web", 2, updated=2, running=2)], [])
    assert lines == ["web: 1/2 updated, 1 healthy", "  web.2: pending", "web: 2/2 updated, 2 healthy"]


def test_notes_name_failures_pending_tasks_and_why_a_rollout_stopped() -> None:
    paused = Progress(
        "web", 2, rollout="paused", rollout_message="1 of 2 failed", failures=["web.1: failed (exit 1): x"]
    )
    assert notes_of([paused], ["web: to move: host-a holds 3 > 2"]) == [
        "web: to move: host-a holds 3 > 2",
        "web: 1 of 2 failed",
        "web.1: failed (exit 1): x",
    ]


def test_unbalanced_until_the_counts_on_eligible_nodes_differ_by_at_most_one() -> None:
    svc = service(replicas=4)
    nodes = [pb.Node(id=n) for n in ("n1", "n2", "n3")]
    for node in nodes:
        node.description.hostname = f"host-{node.id}"
    tasks = [task(1, node="n1"), task(2, node="n1"), task(3, node="n1"), task(4, node="n2")]
    assert unbalanced(svc, tasks, nodes, {"n1", "n2"}) == ["host-n1 holds 3", "host-n2 holds 1"]
    assert unbalanced(svc, tasks, nodes, {"n1", "n2", "n3"}) == ["host-n1 holds 3", "host-n3 holds 0"]
    two_two = [task(1, node="n1"), task(2, node="n1"), task(3, node="n2"), task(4, node="n2")]
    assert unbalanced(svc, two_two, nodes, {"n1", "n2", "n3"}) == [
        "host-n1 holds 2",
        "host-n2 holds 2",
        "host-n3 holds 0",
    ]
    moved = [task(1, node="n1"), task(2, node="n1"), task(3, node="n3"), task(4, node="n2")]
    assert unbalanced(svc, moved, nodes, {"n1", "n2", "n3"}) == []
    assert unbalanced(svc, tasks, nodes, set()) == []
    assert unbalanced(svc, tasks, nodes, {"n1"}) == []  # tasks on a node that is not eligible: draining's business


# --- a wait that looks again on time alone ---------------------------------------------------------------


class Silent(Client):
    """A client whose watch opens and then says nothing."""

    def __init__(self) -> None:
        super().__init__("127.0.0.1:1")

    async def watch(
        self, since: int = 0, kinds: Sequence[int] = (), services: Sequence[str] = ()
    ) -> AsyncGenerator[cpb.WatchResponse, None]:
        yield cpb.WatchResponse(revision=5)
        await asyncio.Event().wait()
        yield cpb.WatchResponse(revision=6)  # never reached


async def test_a_wait_with_recheck_decides_on_time_alone_while_the_watch_is_silent() -> None:
    clock = FakeClock()

    async def nothing() -> tuple[list[pb.Service], list[pb.Task]]:
        return [], []

    def after_three_seconds(mirror: Mirror) -> str | None:
        return "decided" if clock.monotonic() >= 3 else None

    async with Silent() as client:
        waiter = asyncio.ensure_future(
            wait_until(client, nothing, after_three_seconds, within=60, waiting_for=lambda: "", clock=clock, recheck=1)
        )
        await clock.advance(4, step=1)
        assert await waiter == "decided"
