"""The restart policy decision for a slot whose task has stopped: pure, given the time.

A stop time is read from the stored task, which may predate the controller stamping statuses itself (an
agent's clock, or a forged or malformed stamp): one that cannot be read, or lies after now, is unknown. It
never raises and never holds a slot back: an unknown stop time does not delay a restart.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from dockyard.spec import schema
from dockyard.task_state import is_terminal
from dockyard.timestamps import from_timestamp, seconds
from dockyard.v1 import types_pb2 as pb

DEFAULT_DELAY = schema.RESTART_DELAY.default_seconds


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


def decide_restart(
    policy: pb.RestartPolicy, stopped: pb.Task, slot_history: Sequence[pb.Task], now: datetime
) -> RestartDecision:
    """Decides whether a stopped task gets a replacement now, later, or never, under the service's policy."""
    condition = policy.condition or schema.RESTART_CONDITION.default
    succeeded = stopped.status.state == pb.TASK_STATE_COMPLETE
    if condition == pb.RestartPolicy.CONDITION_NONE or (
        condition == pb.RestartPolicy.CONDITION_ON_FAILURE and succeeded
    ):
        return RestartDecision(Verdict.LEAVE)
    if policy.max_attempts:
        attempts = _attempts_at(slot_history, policy, now)
        if len(attempts) > policy.max_attempts:
            return RestartDecision(Verdict.LEAVE, _ages_out(attempts, policy))
    delay = seconds(policy.delay) if policy.HasField("delay") else DEFAULT_DELAY
    at = stopped_at(stopped, now)
    # An unknown stop time cannot start a delay: counted from now it would move with every pass and hold the
    # slot for good. Statuses are stamped by the controller, so only an old or damaged record gets here.
    if at is None:
        return RestartDecision(Verdict.REPLACE)
    due = at + timedelta(seconds=delay)
    if now < due:
        return RestartDecision(Verdict.WAIT, due)
    return RestartDecision(Verdict.REPLACE)


def stopped_at(task: pb.Task, now: datetime) -> datetime | None:
    """Returns when a task's status last changed, or None when unset, unreadable or after `now`."""
    at = from_timestamp(task.status.timestamp)  # None for malformed ones too
    if at is None or at > now:
        return None
    return at


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
    """Returns when each of the slot's stopped tasks stopped (None: unknown), only those inside the window if set."""
    window = seconds(policy.window)
    stops: list[datetime | None] = []
    for task in slot_history:
        if not is_terminal(task.status.state):
            continue
        at = stopped_at(task, now)
        if window and at is not None and now - at > timedelta(seconds=window):
            continue
        stops.append(at)
    return stops
