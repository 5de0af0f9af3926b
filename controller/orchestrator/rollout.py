"""Rolling updates and rollbacks: where a service's rollout stands and what it may do next. Pure.

Everything is derived from the store: the service's `update_status` (written by the orchestrator, or by the
API for a requested rollback) and its tasks with their status timestamps. So a controller that restarts in
the middle of a rollout resumes it where the store says it stands.

- A rollout starts when `spec_revision` moves past `update_status.to_revision` while a live task runs an
  older spec (or an earlier rollout was recorded): UPDATING(from, to = spec_revision, started_at = now).
  `from` is the spec the rollout would roll back to: the previous rollout's target when that one finished
  (or was a rollback), its own `from` when it was still updating or paused (its target never proved good),
  and for a service's first rollout the newest revision its live tasks run.
- It is *active* while UPDATING or ROLLBACK_STARTED at the current spec_revision: slots then change in
  batches (see reconciler.py). PAUSED and ROLLBACK_PAUSED change no slot until the API writes the service
  again (a new spec, a rollback, or UPDATING again with a new started_at to resume).
- Failures: a task that runs the current spec, was created at or after started_at, and FAILED or was
  REJECTED at or after started_at by its own fault (cause TASK or UNHEALTHY, not HOST) counts. So does a
  slot whose tasks since started_at its hosts refused HOST_FAULT_LIMIT times in a row (once per slot): host
  faults are retried elsewhere for ever, and an image no node can pull would otherwise never fail a rollout. The store
  keeps when a task entered its current state, not when a failed task had started running, so `monitor`
  is a window at the end of the rollout (see `Rollout.finished_at`) rather than per task: a failure of an
  updated task anywhere between the start and the end of that window counts.
- When failures > max_failure_ratio * (slots the rollout covers), the failure action applies: continue,
  pause (PAUSED/ROLLBACK_PAUSED with the reason), or rollback (a rollback of a rollback is a pause).
- A rollback writes the service with the spec of `from_revision` (`rollback_service`), which then rolls out
  under `spec.rollback` (unset: as `update` but failure_action pause) and ends ROLLBACK_COMPLETED.
- It completes (COMPLETED / ROLLBACK_COMPLETED, completed_at) once every slot settled at the current spec
  and `monitor` has passed since the last updated task started running.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from controller.orchestrator.restart import stopped_at
from dockyard.spec import schema
from dockyard.spec.diff import same_task_spec
from dockyard.task_state import HOST_FAULT_LIMIT, is_terminal, runs_current_spec
from dockyard.timestamps import from_timestamp, seconds, to_timestamp
from dockyard.v1 import types_pb2 as pb

CONTINUE = pb.UpdateConfig.FAILURE_ACTION_CONTINUE
ROLLBACK = pb.UpdateConfig.FAILURE_ACTION_ROLLBACK

ACTIVE_STATES = frozenset({pb.UpdateStatus.STATE_UPDATING, pb.UpdateStatus.STATE_ROLLBACK_STARTED})
ROLLBACK_STATES = frozenset(
    {
        pb.UpdateStatus.STATE_ROLLBACK_STARTED,
        pb.UpdateStatus.STATE_ROLLBACK_PAUSED,
        pb.UpdateStatus.STATE_ROLLBACK_COMPLETED,
    }
)
# A task failing for these reasons is the spec's fault; a host's fault (CAUSE_HOST) says nothing about it.
_OWN_FAULT = frozenset({pb.TaskStatus.CAUSE_UNSPECIFIED, pb.TaskStatus.CAUSE_TASK, pb.TaskStatus.CAUSE_UNHEALTHY})
_FAILED_STATES = frozenset({pb.TASK_STATE_FAILED, pb.TASK_STATE_REJECTED})


@dataclass(frozen=True)
class Policy:
    """How a rollout proceeds: the update (or rollback) settings with every default filled in."""

    parallelism: int  # slots changing at once; 0: all
    delay: timedelta
    start_first: bool
    monitor: timedelta
    max_failure_ratio: float
    failure_action: pb.UpdateConfig.FailureAction.ValueType

    def may_start(self, changing: int) -> bool:
        """Tells whether one more slot may start changing while `changing` slots change."""
        return self.parallelism == 0 or changing < self.parallelism


def policy(spec: pb.ServiceSpec, rolling_back: bool) -> Policy:
    """Returns the settings a rollout of this spec uses: schema.update_config, or for a rollback
    schema.rollback_config (unset: as update with failure_action pause). A rollback never rolls back again:
    its failure action rollback is a pause (spec validation refuses it; an older stored spec may hold it)."""
    config = schema.rollback_config(spec) if rolling_back else schema.update_config(spec)
    action = config.failure_action
    if rolling_back and action == pb.UpdateConfig.FAILURE_ACTION_ROLLBACK:
        action = pb.UpdateConfig.FAILURE_ACTION_PAUSE
    return Policy(
        parallelism=config.parallelism,
        delay=timedelta(seconds=seconds(config.delay)),
        start_first=config.order == pb.UpdateConfig.ORDER_START_FIRST,
        monitor=timedelta(seconds=seconds(config.monitor)),
        max_failure_ratio=config.max_failure_ratio,
        failure_action=action,
    )


def is_active(service: pb.Service) -> bool:
    """Tells whether the service's rollout may change slots now: updating or rolling back, to its current spec."""
    status = service.update_status
    return status.state in ACTIVE_STATES and status.to_revision == service.spec_revision


def is_rolling_back(service: pb.Service) -> bool:
    """Tells whether the service's current spec came from a rollback (its rollout uses the rollback settings)."""
    return service.update_status.state in ROLLBACK_STATES and service.update_status.to_revision == service.spec_revision


def begin(service: pb.Service, tasks: Iterable[pb.Task], now: datetime) -> pb.UpdateStatus | None:
    """Returns the status of a rollout that starts now, or None when none starts.

    One starts when spec_revision moved past the last rollout's target and a task desired running runs an
    older spec, or a rollout was recorded before (so `to_revision` keeps up with the spec once there has been one).
    """
    status = service.update_status
    if service.spec_revision <= status.to_revision:
        return None
    # A task still desired running (a job's that completed too: a new spec runs it again) is one to update.
    outdated = [
        t.revision for t in tasks if t.desired_state == pb.DESIRED_STATE_RUNNING and not runs_current_spec(service, t)
    ]
    if not outdated and status.state == pb.UpdateStatus.STATE_UNSPECIFIED:
        return None
    if status.state in (pb.UpdateStatus.STATE_UPDATING, pb.UpdateStatus.STATE_PAUSED):
        back_to = status.from_revision
    elif status.state != pb.UpdateStatus.STATE_UNSPECIFIED:
        back_to = status.to_revision
    else:
        back_to = max(outdated, default=0)
    started = pb.UpdateStatus(
        state=pb.UpdateStatus.STATE_UPDATING, from_revision=back_to, to_revision=service.spec_revision
    )
    started.started_at.CopyFrom(to_timestamp(now))
    return started


@dataclass(frozen=True)
class Failures:
    """The updated tasks of the rollout that failed by their own fault, and the newest one's error."""

    count: int
    last_error: str


def counted_failures(service: pb.Service, tasks: Iterable[pb.Task], now: datetime) -> list[pb.Task]:
    """Returns the updated tasks of the service's rollout that failed by their own fault since it started."""
    started = from_timestamp(service.update_status.started_at)
    return [
        task
        for task in tasks
        if task.status.state in _FAILED_STATES
        and task.status.cause in _OWN_FAULT
        and _updated(service, task, started)
        and not _before(stopped_at(task, now), started)
    ]


def failures(service: pb.Service, tasks: Iterable[pb.Task], now: datetime) -> Failures:
    """Counts the failures of the service's active rollout (see the module docstring): each updated task that
    failed by its own fault, and each slot its hosts refused HOST_FAULT_LIMIT times in a row since it started
    (a host fault alone says nothing about the spec, but no node taking it, e.g. an image no node can pull, does)."""
    tasks = list(tasks)
    failed: list[tuple[datetime | None, pb.Task]] = [
        (stopped_at(t, now), t) for t in counted_failures(service, tasks, now)
    ]
    count = len(failed)
    for refusals in _refused_slots(service, tasks, now):
        count += 1
        failed.append((stopped_at(refusals[0], now), refusals[0]))
    last: tuple[datetime | None, pb.Task] | None = None
    for entry in failed:
        if last is None or (entry[0] is not None and (last[0] is None or entry[0] >= last[0])):
            last = entry
    last_error = ""
    if last is not None:
        task = last[1]
        last_error = task.status.error or task.status.message or pb.TaskState.Name(task.status.state)
    return Failures(count, last_error)


def _updated(service: pb.Service, task: pb.Task, started: datetime | None) -> bool:
    """Tells whether the rollout made the task: it runs the current spec and was created since the rollout
    started (or resumed)."""
    if not runs_current_spec(service, task):
        return False
    if started is None:
        return True
    created = from_timestamp(task.created_at)
    return created is not None and created >= started


def _before(at: datetime | None, started: datetime | None) -> bool:
    return started is not None and at is not None and at < started


def _refused_slots(service: pb.Service, tasks: Iterable[pb.Task], now: datetime) -> list[list[pb.Task]]:
    """Returns, per group (slot, or node of a global service), the host refusals in a row of its newest updated
    tasks, newest first, where there are at least HOST_FAULT_LIMIT; a task still on its way to running is
    skipped (the next try), one that ran or stopped otherwise ends the run."""
    started = from_timestamp(service.update_status.started_at)
    groups: dict[int | str, list[pb.Task]] = defaultdict(list)
    for task in tasks:
        if _updated(service, task, started):
            groups[task.slot or task.node_id].append(task)
    result = []
    for group in groups.values():
        group.sort(key=lambda t: (t.created_at.seconds, t.created_at.nanos, t.id), reverse=True)
        run: list[pb.Task] = []
        for task in group:
            if not is_terminal(task.status.state) and task.status.state < pb.TASK_STATE_RUNNING:
                continue
            refused = task.status.state in _FAILED_STATES and task.status.cause == pb.TaskStatus.CAUSE_HOST
            if not refused or _before(stopped_at(task, now), started):
                break
            run.append(task)
        if len(run) >= HOST_FAULT_LIMIT:
            result.append(run)
    return result


def too_many(policy_: Policy, found: Failures, slots: int) -> bool:
    """Tells whether the failures exceed what max_failure_ratio allows over the rollout's slots."""
    return found.count > 0 and found.count > policy_.max_failure_ratio * slots


def failure_message(found: Failures, slots: int) -> str:
    """Says why a rollout stopped: "<k> of <m> updated tasks failed: <last error>"."""
    return f"{found.count} of {slots} updated tasks failed: {found.last_error}"


def paused(status: pb.UpdateStatus, message: str) -> pb.UpdateStatus:
    """Returns the status of a rollout paused for `message` (a rollback pauses as ROLLBACK_PAUSED)."""
    result = pb.UpdateStatus()
    result.CopyFrom(status)
    rolling_back = status.state in ROLLBACK_STATES
    result.state = pb.UpdateStatus.STATE_ROLLBACK_PAUSED if rolling_back else pb.UpdateStatus.STATE_PAUSED
    result.message = message
    return result


def completed(status: pb.UpdateStatus, now: datetime) -> pb.UpdateStatus:
    """Returns the status of a rollout that completed now."""
    result = pb.UpdateStatus()
    result.CopyFrom(status)
    rolling_back = status.state in ROLLBACK_STATES
    result.state = pb.UpdateStatus.STATE_ROLLBACK_COMPLETED if rolling_back else pb.UpdateStatus.STATE_COMPLETED
    result.completed_at.CopyFrom(to_timestamp(now))
    result.message = ""
    return result


def resumed(service: pb.Service, now: datetime) -> pb.Service:
    """Returns the service with its paused rollout going again (for the API: apply again): failures count
    anew from now. A service whose rollout is not paused comes back unchanged."""
    result = pb.Service()
    result.CopyFrom(service)
    status = result.update_status
    if status.state == pb.UpdateStatus.STATE_PAUSED:
        status.state = pb.UpdateStatus.STATE_UPDATING
    elif status.state == pb.UpdateStatus.STATE_ROLLBACK_PAUSED:
        status.state = pb.UpdateStatus.STATE_ROLLBACK_STARTED
    else:
        return result
    status.started_at.CopyFrom(to_timestamp(now))
    status.message = ""
    return result


def finished_at(service: pb.Service, tasks: Iterable[pb.Task]) -> datetime | None:
    """Returns when the newest task the rollout started began running (None: none runs yet)."""
    started = from_timestamp(service.update_status.started_at)
    newest: datetime | None = None
    for task in tasks:
        if task.status.state != pb.TASK_STATE_RUNNING or task.desired_state != pb.DESIRED_STATE_RUNNING:
            continue
        if not runs_current_spec(service, task):
            continue
        created = from_timestamp(task.created_at)
        if started is not None and (created is None or created < started):
            continue
        at = from_timestamp(task.status.timestamp)
        if at is not None and (newest is None or at > newest):
            newest = at
    return newest


# --- rollback: shared by the orchestrator (failure_action rollback) and the API (`dockyard rollback`) ---------


@dataclass(frozen=True)
class RollbackTarget:
    """The revision a rollback returns to, its spec, and the revisions whose tasks run that spec."""

    revision: int
    spec: pb.ServiceSpec
    also_current_from: int
    also_current_to: int


async def find_rollback_target(
    service: pb.Service,
    revision: int,
    spec_at: Callable[[int], Awaitable[pb.ServiceSpec | None]],
    *,
    live_revisions: Collection[int] = (),
) -> RollbackTarget | None:
    """Reads the target of a rollback to `revision` through spec_at (e.g. store.get_service_spec for the
    service); None when that revision is not kept.

    The range of revisions that ran the same spec is walked outward from `revision` while the kept specs equal it
    (apart from controller-only fields: diff.same_task_spec), never reaching the current spec_revision: tasks in it
    are not touched by the rollback. A revision not kept ends the walk, which can only make the range smaller (safe:
    a task outside it is replaced, never wrongly kept). live_revisions (those the service's live tasks run) widens
    it to cover every live revision with the same spec that it can reach without covering a live revision of another
    spec (an earlier rollback to this spec left tasks of an older revision running it); a revision of another spec
    that no live task runs may lie inside (no task is ever made at an old revision).
    """
    if revision <= 0:
        return None
    spec = await spec_at(revision)
    if spec is None:
        return None
    low = revision
    while low > 1:
        earlier = await spec_at(low - 1)
        if earlier is None or not same_task_spec(spec, earlier):
            break
        low -= 1
    high = revision
    while high + 1 < service.spec_revision:
        later = await spec_at(high + 1)
        if later is None or not same_task_spec(spec, later):
            break
        high += 1
    same: list[int] = []
    other: list[int] = []
    for live in sorted(set(live_revisions)):
        if low <= live <= high or live <= 0 or live >= service.spec_revision:
            continue
        found = await spec_at(live)
        (same if found is not None and same_task_spec(spec, found) else other).append(live)
    floor = max((r for r in other if r < low), default=0)
    ceiling = min((r for r in other if r > high), default=service.spec_revision)
    low = min([low, *(r for r in same if r > floor)])
    high = max([high, *(r for r in same if r < ceiling)])
    return RollbackTarget(revision, spec, low, high)


def rollback_service(service: pb.Service, target: RollbackTarget, now: datetime, cause: str) -> pb.Service:
    """Returns the service rolled back to target's spec, to commit guarded by service.version.

    The spec is target's with the current replica count (a rollback undoes a change of spec, not a scale);
    revision + 1, spec_revision = that new revision, also_current_from/to = target's range (tasks of those
    revisions run the spec already and are left alone), change_cause = cause, update_status =
    ROLLBACK_STARTED(from = the spec_revision left, to = the new revision, started_at = now).
    """
    result = pb.Service()
    result.CopyFrom(service)
    result.spec.CopyFrom(target.spec)
    result.spec.replicas = service.spec.replicas
    result.revision = service.revision + 1
    result.spec_revision = result.revision
    result.also_current_from = target.also_current_from
    result.also_current_to = target.also_current_to
    result.change_cause = cause
    stamp = to_timestamp(now)
    result.updated_at.CopyFrom(stamp)
    status = pb.UpdateStatus(
        state=pb.UpdateStatus.STATE_ROLLBACK_STARTED,
        from_revision=service.spec_revision,
        to_revision=result.revision,
        message=cause,
    )
    status.started_at.CopyFrom(stamp)
    result.update_status.CopyFrom(status)
    return result


def failure_cause(revision: int, found: Failures, slots: int) -> str:
    """The change_cause of an automatic rollback: "rollback to revision N: <k> of <m> updated tasks failed: ..."."""
    return f"rollback to revision {revision}: {failure_message(found, slots)}"


def requested_cause(revision: int) -> str:
    """The change_cause of a rollback a user asked for: "rollback to revision N (requested)"."""
    return f"rollback to revision {revision} (requested)"
