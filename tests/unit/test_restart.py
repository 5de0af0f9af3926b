"""The restart policy: exponential backoff, the attempt a replacement carries, host faults and jobs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.orchestrator.restart import (
    MAX_AVOIDED,
    RESET_FLOOR_SECONDS,
    Successor,
    Verdict,
    decide_restart,
    delay_seconds,
    reset_after,
    successor,
)
from dockyard.spec import schema
from dockyard.timestamps import duration, to_timestamp
from dockyard.v1 import types_pb2 as pb

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
TASK = pb.TaskStatus.CAUSE_TASK
UNHEALTHY = pb.TaskStatus.CAUSE_UNHEALTHY
HOST = pb.TaskStatus.CAUSE_HOST
UNSPECIFIED = pb.TaskStatus.CAUSE_UNSPECIFIED


def policy(delay: float = 1.0, max_delay: float | None = 60.0, **fields: object) -> pb.RestartPolicy:
    p = pb.RestartPolicy(delay=duration(delay), **fields)  # type: ignore[arg-type]
    if max_delay is not None:
        p.max_delay.CopyFrom(duration(max_delay))
    return p


def stopped(
    state: int = pb.TASK_STATE_FAILED,
    cause: int = TASK,
    attempt: int = 0,
    stopped_ago: float = 0.0,
    lived: float = 2.0,
    node: str = "n1",
    generation: int = 5,
    task_id: str = "t",
    avoid: tuple[str, ...] = (),
) -> pb.Task:
    """A task of slot 1 that stopped stopped_ago seconds before NOW after living `lived` seconds."""
    end = NOW - timedelta(seconds=stopped_ago)
    t = pb.Task(id=task_id, slot=1, node_id=node, attempt=attempt, generation=generation, avoid_node_ids=avoid)
    t.status.state = state  # type: ignore[assignment]
    t.status.cause = cause  # type: ignore[assignment]
    t.status.timestamp.CopyFrom(to_timestamp(end))
    t.created_at.CopyFrom(to_timestamp(end - timedelta(seconds=lived)))
    return t


# The delay.


@pytest.mark.parametrize(("attempt", "expected"), [(0, 1), (1, 2), (2, 4), (5, 32), (6, 60), (40, 60), (2**32 - 1, 60)])
def test_the_delay_doubles_with_the_attempt_up_to_the_cap(attempt: int, expected: float) -> None:
    assert delay_seconds(policy(1, 60), attempt) == expected


def test_unset_delay_and_cap_are_the_tables_defaults() -> None:
    bare = pb.RestartPolicy()
    assert delay_seconds(bare, 0) == schema.RESTART_DELAY.default_seconds
    assert delay_seconds(bare, 30) == schema.RESTART_MAX_DELAY.default_seconds


def test_a_cap_equal_to_the_delay_is_a_fixed_delay_and_one_below_it_counts_as_the_delay() -> None:
    assert {delay_seconds(policy(5, 5), a) for a in range(10)} == {5}
    assert {delay_seconds(policy(5, 1), a) for a in range(10)} == {5}
    assert {delay_seconds(policy(0, 60), a) for a in range(10)} == {0}


@given(
    delay=st.integers(0, 3600),
    cap=st.integers(0, 3600),
    attempt=st.integers(0, 2**32 - 1),
)
def test_the_delay_is_min_of_doubling_and_cap_and_never_shrinks(delay: int, cap: int, attempt: int) -> None:
    p = policy(delay, cap)
    got = delay_seconds(p, attempt)
    # 3600 * 2**12 is past any cap, so a larger exponent changes nothing (and would be a huge integer here).
    assert got == min(delay * 2 ** min(attempt, 12), max(cap, delay))
    assert delay_seconds(p, attempt + 1) >= got


def test_a_crash_loop_waits_longer_after_every_failure() -> None:
    p = policy(1, 60)
    waits = []
    for attempt in range(8):
        decision = decide_restart(p, stopped(attempt=attempt), [], NOW)
        assert decision.verdict is Verdict.WAIT
        assert decision.at is not None
        waits.append((decision.at - NOW).total_seconds())
    assert waits == [1, 2, 4, 8, 16, 32, 60, 60]


def test_the_replacement_is_due_once_the_delay_has_passed() -> None:
    p = policy(1, 60)
    assert decide_restart(p, stopped(attempt=3, stopped_ago=7.9), [], NOW).verdict is Verdict.WAIT
    assert decide_restart(p, stopped(attempt=3, stopped_ago=8), [], NOW).verdict is Verdict.REPLACE


def test_a_long_run_before_the_failure_waits_only_the_delay() -> None:
    p = policy(1, 60)
    long_run = stopped(attempt=7, lived=reset_after(p))
    assert decide_restart(p, long_run, [], NOW).at == NOW + timedelta(seconds=1)


@pytest.mark.parametrize("state", [pb.TASK_STATE_COMPLETE, pb.TASK_STATE_SHUTDOWN])
def test_a_task_that_did_not_fail_waits_only_the_delay(state: int) -> None:
    p = policy(1, 60, condition=pb.RestartPolicy.CONDITION_ANY)
    done = stopped(state, attempt=6)
    assert decide_restart(p, done, [], NOW).at == NOW + timedelta(seconds=1)


# Conditions, max_attempts and jobs.


def test_conditions_are_kept() -> None:
    never = policy(condition=pb.RestartPolicy.CONDITION_NONE)
    assert decide_restart(never, stopped(stopped_ago=999), [], NOW).verdict is Verdict.LEAVE
    on_failure = policy(condition=pb.RestartPolicy.CONDITION_ON_FAILURE)
    assert (
        decide_restart(on_failure, stopped(pb.TASK_STATE_COMPLETE, stopped_ago=999), [], NOW).verdict is Verdict.LEAVE
    )
    any_stop = policy(condition=pb.RestartPolicy.CONDITION_ANY)
    assert (
        decide_restart(any_stop, stopped(pb.TASK_STATE_COMPLETE, stopped_ago=999), [], NOW).verdict is Verdict.REPLACE
    )


@pytest.mark.parametrize(
    "condition",
    [
        pb.RestartPolicy.CONDITION_UNSPECIFIED,
        pb.RestartPolicy.CONDITION_NONE,
        pb.RestartPolicy.CONDITION_ON_FAILURE,
        pb.RestartPolicy.CONDITION_ANY,
    ],
)
def test_a_completed_job_task_is_never_replaced(condition: pb.RestartPolicy.Condition.ValueType) -> None:
    p = policy(0, condition=condition)
    done = stopped(pb.TASK_STATE_COMPLETE, stopped_ago=999)
    assert decide_restart(p, done, [done], NOW, mode=pb.SERVICE_MODE_JOB).verdict is Verdict.LEAVE


def test_a_failed_job_task_is_replaced_under_the_policy() -> None:
    failed = stopped(attempt=1, stopped_ago=1)
    decision = decide_restart(policy(1, 60), failed, [failed], NOW, mode=pb.SERVICE_MODE_JOB)
    assert decision == decide_restart(policy(1, 60), failed, [failed], NOW)
    assert decision.at == NOW + timedelta(seconds=1)


def test_host_faults_do_not_count_toward_max_attempts() -> None:
    p = policy(0, max_attempts=2, condition=pb.RestartPolicy.CONDITION_ANY)
    crashes = [stopped(generation=g, task_id=f"c{g}") for g in (1, 2)]
    host = [stopped(cause=HOST, generation=g, task_id=f"h{g}") for g in (3, 4)]
    last = stopped(generation=5, task_id="last")
    assert decide_restart(p, last, [*crashes, *host, last], NOW).verdict is Verdict.LEAVE, "three crashes"
    assert decide_restart(p, last, [crashes[0], *host, last], NOW).verdict is Verdict.REPLACE, "two crashes"


# Host faults.


@pytest.mark.parametrize(
    "condition",
    [pb.RestartPolicy.CONDITION_NONE, pb.RestartPolicy.CONDITION_ON_FAILURE, pb.RestartPolicy.CONDITION_ANY],
)
@pytest.mark.parametrize(
    ("state", "cause"),
    [
        (pb.TASK_STATE_FAILED, HOST),
        (pb.TASK_STATE_REJECTED, HOST),
        (pb.TASK_STATE_LOST, UNSPECIFIED),
        (pb.TASK_STATE_ORPHANED, UNSPECIFIED),
    ],
)
def test_a_host_fault_is_replaced_at_once_whatever_the_policy(
    condition: pb.RestartPolicy.Condition.ValueType, state: int, cause: int
) -> None:
    p = policy(30, 60, condition=condition, max_attempts=1)
    history = [stopped(generation=g, task_id=f"c{g}") for g in (1, 2, 3)]  # max_attempts used up long ago
    fault = stopped(state, cause, attempt=9)
    assert decide_restart(p, fault, [*history, fault], NOW).verdict is Verdict.REPLACE


def test_a_host_fault_right_after_another_waits_the_plain_delay() -> None:
    """An image no node can pull fails on every node in turn: each retry must not follow at once."""
    p = policy(3, 60)
    first = stopped(cause=HOST, generation=4, task_id="first", stopped_ago=50)
    second = stopped(cause=HOST, attempt=6, generation=5, task_id="second", stopped_ago=1)
    assert decide_restart(p, second, [first, second], NOW).at == NOW + timedelta(seconds=2)
    after_crash = [stopped(generation=4, task_id="crash"), second]
    assert decide_restart(p, second, after_crash, NOW).verdict is Verdict.REPLACE
    lost = stopped(pb.TASK_STATE_LOST, UNSPECIFIED, generation=5, task_id="lost", stopped_ago=1)
    assert decide_restart(p, lost, [first, lost], NOW).verdict is Verdict.REPLACE, "a node that went down"


# The successor.


def test_a_first_task_starts_at_attempt_zero_avoiding_nothing() -> None:
    assert successor(None, NOW) == Successor(0, ())


@pytest.mark.parametrize("cause", [TASK, UNHEALTHY, UNSPECIFIED])
def test_a_quick_failure_of_the_task_adds_one_attempt(cause: int) -> None:
    assert successor(stopped(cause=cause, attempt=3), NOW) == Successor(4, ())
    assert successor(stopped(pb.TASK_STATE_REJECTED, cause, attempt=3), NOW) == Successor(4, ())


def test_the_attempt_saturates_at_the_wire_maximum() -> None:
    assert successor(stopped(attempt=2**32 - 1), NOW).attempt == 2**32 - 1


def test_a_failure_after_a_long_enough_run_resets_the_attempt() -> None:
    p = policy(1, 60)
    assert reset_after(p) == 60
    assert successor(stopped(attempt=5, lived=60), NOW, policy=p) == Successor(0, ())
    assert successor(stopped(attempt=5, lived=59.9), NOW, policy=p) == Successor(6, ())


def test_a_tiny_cap_still_needs_the_floor_to_reset() -> None:
    p = policy(0.1, 0.5)
    assert reset_after(p) == RESET_FLOOR_SECONDS
    assert successor(stopped(attempt=2, lived=RESET_FLOOR_SECONDS - 1), NOW, policy=p).attempt == 3
    assert successor(stopped(attempt=2, lived=RESET_FLOOR_SECONDS), NOW, policy=p).attempt == 0


def test_without_a_policy_the_default_cap_decides_a_long_run() -> None:
    cap = schema.RESTART_MAX_DELAY.default_seconds
    assert successor(stopped(attempt=2, lived=cap), NOW).attempt == 0
    assert successor(stopped(attempt=2, lived=cap - 1), NOW).attempt == 3


@pytest.mark.parametrize("state", [pb.TASK_STATE_COMPLETE, pb.TASK_STATE_SHUTDOWN])
def test_a_completed_or_shut_down_task_resets_the_attempt(state: int) -> None:
    assert successor(stopped(state, attempt=7), NOW) == Successor(0, ())


def test_a_host_fault_keeps_the_attempt_and_avoids_its_node() -> None:
    assert successor(stopped(cause=HOST, attempt=3, node="n2"), NOW) == Successor(3, ("n2",))
    assert successor(stopped(pb.TASK_STATE_LOST, UNSPECIFIED, attempt=1, node="n4"), NOW) == Successor(1, ("n4",))
    unplaced = stopped(pb.TASK_STATE_REJECTED, HOST, node="")
    assert successor(unplaced, NOW) == Successor(0, ())


def test_host_faults_in_a_row_avoid_each_of_their_nodes_newest_first_up_to_a_bound() -> None:
    second = stopped(cause=HOST, node="n2", avoid=("n1",))
    assert successor(second, NOW).avoid_node_ids == ("n2", "n1")
    again = stopped(cause=HOST, node="n1", avoid=("n2", "n1"))
    assert successor(again, NOW).avoid_node_ids == ("n1", "n2")
    many = stopped(cause=HOST, node="n0", avoid=tuple(f"n{i}" for i in range(1, 20)))
    assert successor(many, NOW).avoid_node_ids == tuple(f"n{i}" for i in range(MAX_AVOIDED))


def test_a_task_failure_after_host_faults_avoids_nothing() -> None:
    assert successor(stopped(attempt=1, avoid=("n1", "n2")), NOW) == Successor(2, ())


# Stamps that cannot be trusted.

UNTRUSTED = [
    pytest.param(int(NOW.timestamp()) - 2, -1, id="nanos-negative"),
    pytest.param(int(NOW.timestamp()) - 2, 10**9, id="nanos-too-large"),
    pytest.param(2**62, 0, id="seconds-past-9999"),
    pytest.param(-(2**62), 0, id="seconds-before-year-1"),
    pytest.param(int((NOW + timedelta(days=365)).timestamp()), 0, id="a-year-ahead"),
    pytest.param(0, 0, id="unset"),
]


def restamped(t: pb.Task, field: str, seconds: int, nanos: int) -> pb.Task:
    stamp = getattr(t.status, "timestamp") if field == "stop" else t.created_at  # noqa: B009
    stamp.seconds, stamp.nanos = seconds, nanos
    return pb.Task.FromString(t.SerializeToString())


@pytest.mark.parametrize(("seconds", "nanos"), UNTRUSTED)
def test_an_untrusted_stop_time_neither_raises_nor_delays_and_never_resets(seconds: int, nanos: int) -> None:
    p = policy(1, 60)
    bad = restamped(stopped(attempt=4, lived=3600), "stop", seconds, nanos)
    assert decide_restart(p, bad, [bad], NOW).verdict is Verdict.REPLACE
    assert successor(bad, NOW, policy=p).attempt == 5, "an unknown life is not a long one"


@pytest.mark.parametrize(("seconds", "nanos"), UNTRUSTED)
def test_an_untrusted_creation_time_never_resets(seconds: int, nanos: int) -> None:
    p = policy(1, 60)
    bad = restamped(stopped(attempt=4, stopped_ago=0.5), "created", seconds, nanos)
    assert successor(bad, NOW, policy=p).attempt == 5
    assert decide_restart(p, bad, [bad], NOW).at == NOW + timedelta(seconds=15.5)


@given(
    state=st.sampled_from([s for s in pb.TaskState.values() if s >= pb.TASK_STATE_COMPLETE]),
    cause=st.sampled_from(list(pb.TaskStatus.Cause.values())),
    attempt=st.integers(0, 2**32 - 1),
    stop=st.tuples(st.integers(-(2**63), 2**63 - 1), st.integers(-(2**31), 2**31 - 1)),
    created=st.tuples(st.integers(-(2**63), 2**63 - 1), st.integers(-(2**31), 2**31 - 1)),
    condition=st.sampled_from(list(pb.RestartPolicy.Condition.values())),
    mode=st.sampled_from(list(pb.ServiceMode.values())),
)
def test_any_stopped_task_gets_a_decision_and_a_successor_without_raising(
    state: int,
    cause: int,
    attempt: int,
    stop: tuple[int, int],
    created: tuple[int, int],
    condition: pb.RestartPolicy.Condition.ValueType,
    mode: pb.ServiceMode.ValueType,
) -> None:
    t = restamped(restamped(stopped(state, cause, attempt), "stop", *stop), "created", *created)
    p = policy(1, 60, condition=condition, max_attempts=2)
    decision = decide_restart(p, t, [t], NOW, mode=mode)
    if decision.verdict is Verdict.WAIT:
        assert decision.at is not None
        assert NOW < decision.at <= NOW + timedelta(seconds=60)
    after = successor(t, NOW, policy=p)
    assert 0 <= after.attempt <= 2**32 - 1
    assert len(after.avoid_node_ids) <= MAX_AVOIDED
