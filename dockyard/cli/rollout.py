"""How far a deploy is, and whether it is over: pure functions of services and tasks, for every waiting command.

`progress(service, tasks, target=...)` counts one service's tasks against the spec revision the command
waits for; `judge(...)` turns the counts of every waited-for service into a verdict (an exit code and its
reason) or None (keep waiting); `at_timeout(...)` is the verdict when --timeout passes. The rules
(docs/operations.md, "How apply decides"):

* Converged: the service is at the revision waited for (or a later one applied since), its rollout is
  COMPLETED (or there was none), exactly the desired tasks run at the current spec
  (dockyard.task_state.runs_current_spec; RUNNING already means healthy), and nothing is stopping or moving.
  A job converges when each of its slots has a task of the current spec that exited 0.
* Rolled back: the spec moved past the revision waited for by a rollback (update_status ROLLBACK_*). That is
  a failure even when every task runs (docker/cli#6752). A status of an older rollout is ignored.
* Paused: the rollout to the current spec is PAUSED (or ROLLBACK_PAUSED).
* Unplaced: a task of the current spec that the scheduler found no node for, seen so for UNPLACED_GRACE
  seconds in a row (a node freeing up during a stop-first update is not a failure); or a slot its hosts
  refused HOST_FAULT_LIMIT times in a row (host faults are retried, preferably elsewhere, for ever).
* A job failed: a task of the current spec failed by its own fault and the restart policy runs it no more.
  The same of a service's task is an error (exit 1): the service cannot converge (a task refused by the
  host's policy under `restart: {condition: none}`), unless a rollout under way decides what happens.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from dockyard.cli.exitcodes import ExitCode
from dockyard.task_state import HOST_FAULT_LIMIT, UNPLACED_PREFIX, is_terminal, runs_current_spec, state_name
from dockyard.v1 import types_pb2 as pb

__all__ = [
    "HOST_FAULT_LIMIT",
    "UNPLACED_GRACE",
    "Progress",
    "UnplacedClock",
    "Verdict",
    "at_timeout",
    "failure_text",
    "judge",
    "progress",
    "rollout_name",
    "unbalanced",
]

# How long a task may stay unplaced before a waiting command gives up with ExitCode.UNPLACED.
UNPLACED_GRACE: Final = 10.0
# A slot its hosts refused HOST_FAULT_LIMIT (dockyard.task_state) times in a row is ExitCode.UNPLACED.

_S = pb.UpdateStatus
_ROLLBACK_STATES: Final = frozenset({_S.STATE_ROLLBACK_STARTED, _S.STATE_ROLLBACK_PAUSED, _S.STATE_ROLLBACK_COMPLETED})
_OWN_FAULTS: Final = frozenset(
    {pb.TaskStatus.CAUSE_UNSPECIFIED, pb.TaskStatus.CAUSE_TASK, pb.TaskStatus.CAUSE_UNHEALTHY}
)


def rollout_name(state: int) -> str:
    """Returns an update status as the CLI shows it ("rollback_completed"; "" when there was no rollout)."""
    if state == _S.STATE_UNSPECIFIED:
        return ""
    return _S.State.Name(state).removeprefix("STATE_").lower()  # type: ignore[arg-type]


@dataclass
class Progress:
    """Where one service stands: counts of its tasks at the current spec, its rollout, and what went wrong."""

    name: str
    desired: int
    job: bool = False
    updated: int = 0  # live tasks at the current spec
    running: int = 0  # of those, RUNNING (a task with a health check is RUNNING only once healthy)
    starting: int = 0  # of those, STARTING (a container runs, not yet healthy)
    completed: int = 0  # jobs: slots whose task of the current spec exited 0
    failed: int = 0  # tasks of the current spec that failed or were refused
    stale: int = 0  # live tasks still on an older spec
    stopping: int = 0  # tasks told to stop that still run
    moving: int = 0  # tasks whose successor starts first (replaced by an update or a rebalance)
    rollout: str = ""  # update_status of the rollout to the current spec ("" when none)
    rollout_message: str = ""
    rolled_back: bool = False  # a rollback replaced the revision waited for
    failures: list[str] = field(default_factory=list)  # "web.2: exit 1 (attempt 3): ..." for current-spec tasks
    waiting: list[str] = field(default_factory=list)  # pending tasks of the current spec and why
    unplaced: dict[str, str] = field(default_factory=dict)  # task id -> why no node fits
    job_failures: list[str] = field(default_factory=list)  # job tasks that will not run again
    # Failed tasks of a service (not a job) that the restart policy runs no more: the service cannot converge.
    given_up: list[str] = field(default_factory=list)
    # Slots refused by their hosts HOST_FAULT_LIMIT times in a row (a host policy, an image no host can pull).
    refused: list[str] = field(default_factory=list)

    @property
    def converged(self) -> bool:
        """Tells whether the service is done: the right tasks run (or exited 0) at the current spec, nothing else."""
        if self.rolled_back or self.rollout in ("updating", "paused", "rollback_started", "rollback_paused"):
            return False
        if self.stale or self.stopping or self.moving:
            return False
        if self.job:
            return self.completed >= self.desired and self.updated == 0
        return self.running == self.desired and self.updated == self.desired

    @property
    def done(self) -> bool:
        """Same as converged (the name the waits used before rollouts)."""
        return self.converged

    def line(self) -> str:
        """Returns a one-line summary: "web: 2/3 updated, 2 healthy, 1 failed (rollout updating)"."""
        if self.job:
            text = f"{self.name}: {self.completed}/{self.desired} exited 0, {self.running} running"
        else:
            text = f"{self.name}: {self.updated}/{self.desired} updated, {self.running} healthy"
            if self.starting:
                text += f", {self.starting} starting"
        if self.failed:
            text += f", {self.failed} failed"
        if self.stopping:
            text += f", {self.stopping} stopping"
        if self.moving:
            text += f", {self.moving} moving"
        if self.stale:
            text += f", {self.stale} to update"
        if self.rolled_back:
            text += f" (rolled back: {self.rollout or 'rollback pending'})"
        elif self.rollout:
            text += f" (rollout {self.rollout})"
        return text

    def as_dict(self) -> dict[str, object]:
        """Returns the counts and problems as --output json shows them."""
        return {
            "service": self.name,
            "desired": self.desired,
            "job": self.job,
            "updated": self.updated,
            "healthy": self.running,
            "starting": self.starting,
            "completed": self.completed,
            "failed": self.failed,
            "stale": self.stale,
            "stopping": self.stopping,
            "moving": self.moving,
            "rollout": self.rollout or None,
            "rollout_message": self.rollout_message or None,
            "rolled_back": self.rolled_back,
            "converged": self.converged,
            "problems": [*self.job_failures, *self.given_up, *self.refused, *self.failures[-5:], *self.waiting[:5]],
        }


def progress(service: pb.Service, tasks: Iterable[pb.Task], *, target: int = 0) -> Progress:
    """Summarises one service against the spec revision `target` (0: its current spec_revision).

    A spec_revision past target by a rollback marks the service rolled back; past target otherwise (a later
    apply) the current spec is what counts. A rollout status for an older spec revision is ignored: the
    orchestrator has not started this rollout yet.
    """
    job = service.spec.mode == pb.SERVICE_MODE_JOB
    result = Progress(service.name, service.spec.replicas, job=job)
    status = service.update_status
    target = target or service.spec_revision
    if service.spec_revision > target and status.state in _ROLLBACK_STATES:
        result.rolled_back = True
    if result.rolled_back or status.to_revision >= service.spec_revision:
        result.rollout = rollout_name(status.state)
        result.rollout_message = status.message or (service.change_cause if result.rolled_back else "")
    mine = [t for t in tasks if t.service_id == service.id]
    if service.spec.mode == pb.SERVICE_MODE_GLOBAL:
        # One task per eligible node: the orchestrator's live tasks are the target.
        result.desired = sum(1 for t in mine if t.desired_state == pb.DESIRED_STATE_RUNNING)
    slots: dict[int, list[pb.Task]] = {}  # slot -> its tasks of the current spec
    for task in mine:
        current = runs_current_spec(service, task)
        if current and task.slot:
            slots.setdefault(task.slot, []).append(task)
        _count(result, service.name, task, current)
    for slot_tasks in slots.values():
        slot_tasks.sort(key=_age, reverse=True)
    newest = {slot: slot_tasks[0] for slot, slot_tasks in slots.items()}
    for slot, slot_tasks in sorted(slots.items()):
        refusals = _host_faults_in_a_row(slot_tasks)
        if len(refusals) >= HOST_FAULT_LIMIT:
            result.refused.append(
                f"{service.name}.{slot}: refused {len(refusals)} times in a row: {failure_text(refusals[0])}"
            )
    given_up = [
        f"{service.name}.{t.slot}: {failure_text(t)}"
        for t in newest.values()
        if t.status.state in (pb.TASK_STATE_FAILED, pb.TASK_STATE_REJECTED) and _gives_up(service, t)
    ]
    if job:
        result.completed = sum(1 for t in newest.values() if t.status.state == pb.TASK_STATE_COMPLETE)
        result.job_failures = given_up
    else:
        result.given_up = given_up
    return result


def _count(result: Progress, name: str, task: pb.Task, current: bool) -> None:
    """Adds one task to the counts of its service (current: it runs the service's current spec)."""
    label = f"{name}.{task.slot}" if task.slot else f"{name}@{task.node_id or '?'}"
    state = task.status.state
    failed = current and state in (pb.TASK_STATE_FAILED, pb.TASK_STATE_REJECTED)
    if failed:
        result.failed += 1
        result.failures.append(f"{label}: {failure_text(task)}")
    if task.desired_state != pb.DESIRED_STATE_RUNNING:
        if not is_terminal(state) and task.node_id:
            result.stopping += 1
        return
    if not current:
        if not is_terminal(state):
            # Tasks name the revision they run; scaling moves revision but not spec_revision.
            result.stale += 1
        return
    if is_terminal(state):
        return  # failed (counted above), complete (a job's, counted by slot) or lost: replaced as needed
    if task.replaced:
        result.moving += 1
        return
    result.updated += 1
    if state == pb.TASK_STATE_RUNNING:
        result.running += 1
    elif state == pb.TASK_STATE_STARTING:
        result.starting += 1
    elif state in (pb.TASK_STATE_NEW, pb.TASK_STATE_PENDING):
        result.waiting.append(f"{label}: {task.status.message or 'pending'}")
        if task.status.message.startswith(UNPLACED_PREFIX):
            result.unplaced[task.id] = f"{label}: {task.status.message}"


def failure_text(task: pb.Task) -> str:
    """Says how a task ended, whose fault it was and which attempt it was: "failed (exit 3, attempt 2): <error>"."""
    parts = []
    if task.status.exit_code:
        parts.append(f"exit {task.status.exit_code}")
    cause = task.status.cause
    if cause == pb.TaskStatus.CAUSE_UNHEALTHY:
        parts.append("unhealthy")
    elif cause == pb.TaskStatus.CAUSE_HOST:
        parts.append("host fault")
    if task.attempt:
        parts.append(f"attempt {task.attempt + 1}")
    state = state_name(task.status.state)
    what = task.status.error or task.status.message or "no reason given"
    return f"{state} ({', '.join(parts)}): {what}" if parts else f"{state}: {what}"


def _age(task: pb.Task) -> tuple[int, int, int, str]:
    """Orders a slot's tasks oldest first: by creation (a replacement after a long run is attempt 0 again)."""
    return (task.created_at.seconds, task.created_at.nanos, task.attempt, task.id)


def _host_faults_in_a_row(newest_first: Sequence[pb.Task]) -> list[pb.Task]:
    """The slot's latest failures that were all the host's fault, newest first (a live successor skipped)."""
    ended = [t for t in newest_first if is_terminal(t.status.state)]
    if len(ended) < len(newest_first) - 1:
        return []  # more than one live task: a start-first successor, not a string of refusals
    run: list[pb.Task] = []
    for task in ended:
        if task.status.state not in (pb.TASK_STATE_FAILED, pb.TASK_STATE_REJECTED):
            break
        if task.status.cause != pb.TaskStatus.CAUSE_HOST:
            break
        run.append(task)
    return run


def _gives_up(service: pb.Service, task: pb.Task) -> bool:
    """Tells whether the restart policy runs a failed task no more: its own fault, and no attempts left.

    The window of max_attempts is not applied (the CLI does not see the slot's history), so with a window
    this may wait until --timeout where the orchestrator already gave up; it never gives up early.
    """
    if task.status.cause not in _OWN_FAULTS:
        return False  # the host's fault: retried elsewhere, not counted
    policy = service.spec.restart
    if policy.condition == pb.RestartPolicy.CONDITION_NONE:
        return True
    return policy.max_attempts > 0 and task.attempt + 1 >= policy.max_attempts


@dataclass(frozen=True)
class Verdict:
    """How a wait ends: the exit code and the reason printed with it."""

    code: ExitCode
    reason: str


class UnplacedClock:
    """Remembers since when each task has been unplaced, so that a verdict can give it UNPLACED_GRACE."""

    def __init__(self) -> None:
        """Starts with no unplaced tasks."""
        self._since: dict[str, float] = {}

    def seen(self, unplaced: Collection[str], now: float) -> dict[str, float]:
        """Takes the ids unplaced now (at monotonic time now); returns each one's seconds unplaced in a row."""
        self._since = {task_id: self._since.get(task_id, now) for task_id in unplaced}
        return {task_id: now - since for task_id, since in self._since.items()}


def judge(
    progresses: Sequence[Progress], unplaced_for: Mapping[str, float], grace: float = UNPLACED_GRACE
) -> Verdict | None:
    """Returns the verdict once every service converged or one failed for good; None while it may still come.

    Failures win over convergence, in this order: rolled back, paused, a job failed, tasks unplaced for
    `grace` seconds (`unplaced_for`: task id -> seconds seen unplaced in a row).
    """
    for p in progresses:
        if p.rolled_back and p.rollout in ("rollback_completed", "rollback_paused"):
            state = "rolled back" if p.rollout == "rollback_completed" else "rolled back, and the rollback paused"
            return Verdict(ExitCode.ROLLED_BACK, f"{p.name}: {state}: {p.rollout_message or 'the rollout failed'}")
    for p in progresses:
        if p.rollout in ("paused", "rollback_paused"):
            return Verdict(ExitCode.PAUSED, f"{p.name}: rollout paused: {p.rollout_message or 'tasks failed'}")
    for p in progresses:
        if p.job_failures:
            return Verdict(ExitCode.JOB_FAILED, f"{p.name}: job failed: {'; '.join(p.job_failures[:3])}")
    for p in progresses:
        # A rollout under way decides for itself (pause or roll back); otherwise nothing will replace them.
        if p.given_up and p.rollout not in ("updating", "rollback_started"):
            return Verdict(ExitCode.ERROR, f"not restarted (restart policy): {'; '.join(p.given_up[:3])}")
    stuck = [why for p in progresses for task_id, why in p.unplaced.items() if unplaced_for.get(task_id, 0) >= grace]
    stuck += [why for p in progresses for why in p.refused]
    if stuck:
        return Verdict(ExitCode.UNPLACED, f"cannot place {len(stuck)} task(s): {'; '.join(stuck[:3])}")
    if all(p.converged for p in progresses):
        return Verdict(ExitCode.OK, ", ".join(p.line() for p in progresses) or "nothing to wait for")
    return None


def at_timeout(progresses: Sequence[Progress], waited: float) -> Verdict:
    """The verdict when --timeout passed first: a rollback under way is still a rollback; else a timeout."""
    for p in progresses:
        if p.rolled_back:
            return Verdict(
                ExitCode.ROLLED_BACK,
                f"{p.name}: rolling back (not finished after {waited:g}s): {p.rollout_message or 'the rollout failed'}",
            )
    behind = [p for p in progresses if not p.converged]
    problems = [text for p in behind for text in (*p.failures[-2:], *p.waiting[:2])]
    parts = [p.line() for p in behind] + problems[:5]
    return Verdict(ExitCode.TIMEOUT, f"timed out after {waited:g}s" + (f": {'; '.join(parts)}" if parts else ""))


def unbalanced(
    service: pb.Service, tasks: Iterable[pb.Task], nodes: Iterable[pb.Node], eligible: Collection[str]
) -> list[str]:
    """Names the eligible nodes whose live task counts of the service differ by more than one; [] when the
    spread holds.

    The rule of the controller's rebalance (controller/orchestrator/rebalance.py): counts on the eligible
    nodes differ by at most one. What `dockyard service rebalance` waits to see (with the moves done); tasks on
    nodes outside `eligible` are draining's business, not a rebalance's.
    """
    live = [t for t in tasks if t.service_id == service.id and t.desired_state == pb.DESIRED_STATE_RUNNING]
    counts = dict.fromkeys(eligible, 0)
    for task in live:
        if task.node_id in counts and not task.replaced and not is_terminal(task.status.state):
            counts[task.node_id] += 1
    if not counts or max(counts.values()) - min(counts.values()) <= 1:
        return []
    names = {n.id: n.description.hostname or n.id for n in nodes}
    most, least = max(counts.values()), min(counts.values())
    return [
        f"{names.get(node, node)} holds {count}"
        for node, count in sorted(counts.items(), key=lambda item: (-item[1], names.get(item[0], item[0])))
        if count in (most, least)
    ]
