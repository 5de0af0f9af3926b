"""The restart policy for a slot whose task has stopped, and what its replacement carries: pure, given the time.

Backoff. `Task.attempt` counts the slot's failures in a row before a task. The delay before replacing a failed
task is `min(delay * 2**attempt, max_delay)` with the failed task's attempt, so a crash loop waits `delay`,
then twice that, and so on up to the cap. The replacement's attempt is one more, except that:

- a task that completed (exit 0) resets the count to 0, and waits only `delay` if it is restarted at all;
- a task that ran long enough before it failed (its life reached `reset_after(policy)`: the cap, but at least
  RESET_FLOOR_SECONDS) also resets it: the slot had recovered, so its failure starts a new streak and waits
  only `delay`. A task's life is read from its own record: from `created_at` to the timestamp of its terminal
  status. That bounds the time it ran from above (it also covers waiting for a node, pulling and starting),
  so the error can only reset a streak early, after a try that took at least the cap from its creation to
  its failure: a slot that fails that way fails at most once per cap, which is all the backoff is for;
- a host fault (`cause == CAUSE_HOST`, or a task LOST or ORPHANED with its node) is not the task's: it is
  replaced at once, is not counted toward `max_attempts`, keeps the attempt, and the replacement avoids the
  node (with the nodes of the host faults just before it, up to MAX_AVOIDED). Only a host fault that follows
  another one in the slot waits, the plain `delay`: an image that no node can pull must not spin.

Job mode: a job's task that completed is never replaced, whatever the condition (a new spec runs the job
again, which the reconciler decides).

A stop time is read from the stored task, which may predate the controller stamping statuses itself (an
agent's clock, or a forged or malformed stamp): one that cannot be read, or lies after now, is unknown. It
never raises and never holds a slot back: an unknown stop time does not delay a restart, and an unknown
life never resets a streak.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from dockyard.spec import schema
from dockyard.spec.units import NANOS_PER_SECOND
from dockyard.task_state import is_terminal
from dockyard.timestamps import from_timestamp, seconds
from dockyard.v1 import types_pb2 as pb

DEFAULT_DELAY = schema.RESTART_DELAY.default_seconds  # what an unset delay means (schema.restart_delay_nanos)

# A task must have lived at least this long for its failure to reset the count, however small max_delay is:
# with a fixed delay of 1s, a task that dies after 3s is crash looping, not recovering.
RESET_FLOOR_SECONDS = 10.0

# How many nodes a replacement avoids at most (the newest host faults first); Task messages stay small, and
# beyond a handful of nodes the scheduler's fallback to an avoided node is the likely outcome anyway.
MAX_AVOIDED = 8

# Task.attempt is a uint32 on the wire.
_MAX_ATTEMPT = 2**32 - 1
# 2**63 times any delay is past any cap; a larger exponent would only overflow the float.
_MAX_EXPONENT = 63

_HOST_LOST = frozenset({pb.TASK_STATE_LOST, pb.TASK_STATE_ORPHANED})


class Verdict(enum.Enum):
    """What to do with a slot whose live task has stopped."""

    REPLACE = "replace"
    WAIT = "wait"
    LEAVE = "leave"


@dataclass(frozen=True)
class RestartDecision:
    """A verdict, and the time at which to look again: for WAIT when the delay ends, for LEAVE (max attempts
    reached inside a window) when enough attempts have aged out of it; None when only a change can help."""

    verdict: Verdict
    at: datetime | None = None


@dataclass(frozen=True)
class Successor:
    """What a task created in place of a stopped one carries: its attempt and the nodes it should avoid."""

    attempt: int = 0
    avoid_node_ids: tuple[str, ...] = ()


def is_host_fault(task: pb.Task) -> bool:
    """Tells whether a stopped task ended by its host's fault (CAUSE_HOST, or lost with its node), not its own."""
    state = task.status.state
    if state in _HOST_LOST:
        return True
    return state in (pb.TASK_STATE_FAILED, pb.TASK_STATE_REJECTED) and task.status.cause == pb.TaskStatus.CAUSE_HOST


def decide_restart(
    policy: pb.RestartPolicy,
    stopped: pb.Task,
    slot_history: Sequence[pb.Task],
    now: datetime,
    *,
    mode: pb.ServiceMode.ValueType = pb.SERVICE_MODE_UNSPECIFIED,
) -> RestartDecision:
    """Decides whether a stopped task gets a replacement now, later, or never, under the service's policy.

    slot_history is every task of the slot (stopped may be among them); mode is the service's (a job's
    completed task is never replaced). A host fault is replaced whatever the condition and max_attempts say.
    """
    succeeded = stopped.status.state == pb.TASK_STATE_COMPLETE
    if succeeded and mode == pb.SERVICE_MODE_JOB:
        return RestartDecision(Verdict.LEAVE)
    at = stopped_at(stopped, now)
    if is_host_fault(stopped):
        # Not the task's doing, so neither the condition nor max_attempts applies: it never ran its course.
        previous = _previous(stopped, slot_history)
        if previous is None or not is_host_fault(previous) or stopped.status.state in _HOST_LOST:
            return RestartDecision(Verdict.REPLACE)
        return _after(at, delay_seconds(policy, 0), now)
    condition = policy.condition or schema.RESTART_CONDITION.default
    if condition == pb.RestartPolicy.CONDITION_NONE or (
        condition == pb.RestartPolicy.CONDITION_ON_FAILURE and succeeded
    ):
        return RestartDecision(Verdict.LEAVE)
    if policy.max_attempts:
        attempts = _attempts_at(slot_history, policy, now)
        if len(attempts) > policy.max_attempts:
            return RestartDecision(Verdict.LEAVE, _ages_out(attempts, policy))
    return _after(at, delay_seconds(policy, _streak(policy, stopped, now)), now)


def successor(stopped: pb.Task | None, now: datetime, *, policy: pb.RestartPolicy | None = None) -> Successor:
    """Returns the attempt and avoided nodes of the task created in place of stopped (None: a slot's first task).

    policy is the service's restart policy (None: the defaults); its cap sets how long a task must have run
    for its failure to reset the count. A task stopped by the controller (shut down for an update, a scale or
    a drain) or completed gives attempt 0, a failure of its own attempt + 1 (0 after a long enough run), a
    host fault the same attempt and its node to avoid.
    """
    if stopped is None:
        return Successor()
    if is_host_fault(stopped):
        avoided = [stopped.node_id] if stopped.node_id else []
        # The nodes of the host faults right before it are still in its own list: keep avoiding them too.
        avoided += [node for node in stopped.avoid_node_ids if node and node not in avoided]
        return Successor(stopped.attempt, tuple(avoided[:MAX_AVOIDED]))
    if stopped.status.state not in (pb.TASK_STATE_FAILED, pb.TASK_STATE_REJECTED):
        return Successor()
    if _ran_long(policy if policy is not None else pb.RestartPolicy(), stopped, now):
        return Successor()
    return Successor(min(stopped.attempt + 1, _MAX_ATTEMPT))


def delay_seconds(policy: pb.RestartPolicy, attempt: int) -> float:
    """Returns how long a slot waits after a failure with this attempt: min(delay * 2**attempt, max_delay)."""
    delay = schema.restart_delay_nanos(policy) / NANOS_PER_SECOND
    if delay <= 0:
        return 0.0
    cap = _cap_seconds(policy)
    if attempt >= _MAX_EXPONENT:
        return cap
    return min(delay * 2.0**attempt, cap)


def reset_after(policy: pb.RestartPolicy) -> float:
    """Returns, in seconds, how long a task must have lived for its failure to start a new streak (attempt 0)."""
    return max(_cap_seconds(policy), RESET_FLOOR_SECONDS)


def stopped_at(task: pb.Task, now: datetime) -> datetime | None:
    """Returns when a task's status last changed, or None when unset, unreadable or after `now`."""
    at = from_timestamp(task.status.timestamp)  # None for malformed ones too
    if at is None or at > now:
        return None
    return at


def _cap_seconds(policy: pb.RestartPolicy) -> float:
    """Returns the cap of the delay; one below delay (validation refuses it) counts as delay: a fixed delay."""
    nanos = max(schema.restart_max_delay_nanos(policy), schema.restart_delay_nanos(policy), 0)
    return nanos / NANOS_PER_SECOND


def _after(at: datetime | None, delay: float, now: datetime) -> RestartDecision:
    """Returns REPLACE once `delay` seconds have passed since `at`, else WAIT until then."""
    # An unknown stop time cannot start a delay: counted from now it would move with every pass and hold the
    # slot for good. Statuses are stamped by the controller, so only an old or damaged record gets here.
    if at is None or delay <= 0:
        return RestartDecision(Verdict.REPLACE)
    due = at + timedelta(microseconds=round(delay * 1e6))
    if now < due:
        return RestartDecision(Verdict.WAIT, due)
    return RestartDecision(Verdict.REPLACE)


def _streak(policy: pb.RestartPolicy, stopped: pb.Task, now: datetime) -> int:
    """Returns the failures in a row that the delay after stopped doubles for: its attempt after a failure of
    its own, 0 after anything else (completed, shut down) or a long enough run."""
    if stopped.status.state not in (pb.TASK_STATE_FAILED, pb.TASK_STATE_REJECTED) or _ran_long(policy, stopped, now):
        return 0
    return stopped.attempt


def _ran_long(policy: pb.RestartPolicy, stopped: pb.Task, now: datetime) -> bool:
    """Tells whether the task lived at least reset_after(policy); False when either end of its life is unknown."""
    end = stopped_at(stopped, now)
    start = from_timestamp(stopped.created_at)
    if end is None or start is None or start > end:
        return False
    return (end - start) >= timedelta(microseconds=round(reset_after(policy) * 1e6))


def _previous(stopped: pb.Task, slot_history: Sequence[pb.Task]) -> pb.Task | None:
    """Returns the slot's task right before stopped (the highest lower generation), or None."""
    before = [t for t in slot_history if t.generation < stopped.generation and is_terminal(t.status.state)]
    return max(before, key=lambda t: (t.generation, t.id), default=None)


def _ages_out(attempts: list[datetime | None], policy: pb.RestartPolicy) -> datetime | None:
    """Returns when enough attempts will have left the window for max_attempts to allow a restart again.

    None without a window, or when too many attempts have no time (they never age out).
    """
    window = seconds(policy.window)
    times = sorted(t for t in attempts if t is not None)
    must_go = len(attempts) - policy.max_attempts
    if not window or must_go > len(times):
        return None
    # An attempt counts while now - stopped_at <= window, so it is gone just after stopped_at + window.
    return times[must_go - 1] + timedelta(seconds=window, microseconds=1)


def _attempts_at(slot_history: Sequence[pb.Task], policy: pb.RestartPolicy, now: datetime) -> list[datetime | None]:
    """Returns when each of the slot's stopped tasks stopped (None: unknown), only those inside the window if set.

    Host faults are not the task's attempts and are left out.
    """
    window = seconds(policy.window)
    stops: list[datetime | None] = []
    for task in slot_history:
        if not is_terminal(task.status.state) or is_host_fault(task):
            continue
        at = stopped_at(task, now)
        if window and at is not None and now - at > timedelta(seconds=window):
            continue
        stops.append(at)
    return stops
