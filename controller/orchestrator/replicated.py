"""Reconciles one replicated service: the right tasks in slots 1..replicas, at the current spec.

Pure: it takes the service, its tasks and the time and returns a Plan. Updates are stop-first with
parallelism one: a slot gets its new task only after the old one has stopped, so a service never has
more tasks running than it asks for.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import datetime

from controller.orchestrator.plan import Plan
from controller.orchestrator.restart import Verdict, decide_restart
from dockyard.task_state import is_terminal
from dockyard.timestamps import to_timestamp
from dockyard.v1 import types_pb2 as pb

HISTORY_PER_SLOT = 3
UPDATE_PARALLELISM = 1


def reconcile_service(
    service: pb.Service | None,
    tasks: Sequence[pb.Task],
    now: datetime,
    new_id: Callable[[], str],
) -> Plan:
    """Returns the writes that move a service's tasks toward its spec; service None means it was deleted."""
    plan = Plan()
    if service is None:
        _remove_all(tasks, now, plan)
        return plan
    by_slot: dict[int, list[pb.Task]] = defaultdict(list)
    for task in tasks:
        by_slot[task.slot].append(task)
    replicas = service.spec.replicas
    updating = sum(1 for slot_tasks in by_slot.values() if _slot_in_flux(slot_tasks))
    for slot in sorted(set(by_slot) | set(range(1, replicas + 1))):
        slot_tasks = by_slot.get(slot, [])
        if slot > replicas:
            _retire_slot(slot_tasks, now, plan)
            continue
        updating += _reconcile_slot(service, slot, slot_tasks, now, new_id, plan, updating)
        _prune_history(service, slot_tasks, plan)
    for task in tasks:
        _settle_unplaced(task, now, plan)
    return plan


def _reconcile_slot(
    service: pb.Service,
    slot: int,
    slot_tasks: list[pb.Task],
    now: datetime,
    new_id: Callable[[], str],
    plan: Plan,
    updating: int,
) -> int:
    """Fixes one slot; returns how many updates it started."""
    live = sorted(
        (t for t in slot_tasks if t.desired_state == pb.DESIRED_STATE_RUNNING),
        key=lambda t: (
            not is_terminal(t.status.state),
            t.status.state == pb.TASK_STATE_RUNNING,
            t.created_at.seconds,
            t.id,
        ),
    )
    # Keep the best live task; any other is a duplicate (for example from a lost write) and goes.
    for extra in live[:-1]:
        _shut_down(extra, now, "duplicate task in slot", plan)
    draining = any(
        not is_terminal(t.status.state) and (t.desired_state != pb.DESIRED_STATE_RUNNING or t in live[:-1])
        for t in slot_tasks
    )
    if not live:
        if not draining:
            plan.create.append(_new_task(service, slot, now, new_id()))
            return 1
        return 0
    task = live[-1]
    if is_terminal(task.status.state):
        decision = decide_restart(task, slot_tasks, now)
        if decision.verdict is Verdict.LEAVE and _outdated(service, task):
            # A finished task stays finished, but a new spec deserves a run of its own.
            _shut_down(task, now, f"updating to revision {service.revision}", plan)
            if not draining:
                plan.create.append(_new_task(service, slot, now, new_id()))
            return 0
        if decision.verdict is Verdict.WAIT:
            plan.wake_no_later_than(decision.at)
        elif decision.verdict is Verdict.REPLACE:
            _shut_down(task, now, "replaced after it stopped", plan)
            if not draining:
                plan.create.append(_new_task(service, slot, now, new_id()))
        return 0
    if _outdated(service, task) and (updating < UPDATE_PARALLELISM or task.status.state < pb.TASK_STATE_ASSIGNED):
        _shut_down(task, now, f"updating to revision {service.revision}", plan)
        return 1
    return 0


def _slot_in_flux(slot_tasks: list[pb.Task]) -> bool:
    """Tells whether a slot is changing: a task still stopping, or its live task not yet running."""
    for task in slot_tasks:
        if is_terminal(task.status.state):
            continue
        if task.desired_state != pb.DESIRED_STATE_RUNNING or task.status.state < pb.TASK_STATE_RUNNING:
            return True
    return False


def _outdated(service: pb.Service, task: pb.Task) -> bool:
    """Tells whether a task runs another spec than the service's, ignoring the replica count."""
    current = pb.ServiceSpec()
    current.CopyFrom(service.spec)
    current.replicas = 0
    running = pb.ServiceSpec()
    running.CopyFrom(task.spec)
    running.replicas = 0
    return current != running


def _retire_slot(slot_tasks: list[pb.Task], now: datetime, plan: Plan) -> None:
    """Shuts down a slot above the replica count and forgets its stopped tasks."""
    for task in slot_tasks:
        if task.desired_state == pb.DESIRED_STATE_RUNNING:
            _shut_down(task, now, "scaled down", plan)
        elif is_terminal(task.status.state):
            plan.delete.append(task)


def _remove_all(tasks: Sequence[pb.Task], now: datetime, plan: Plan) -> None:
    """Shuts down every task of a deleted service and forgets the ones that stopped."""
    for task in tasks:
        if task.desired_state == pb.DESIRED_STATE_RUNNING:
            _shut_down(task, now, "service removed", plan)
        elif is_terminal(task.status.state):
            plan.delete.append(task)
        else:
            _settle_unplaced(task, now, plan)


def _prune_history(service: pb.Service, slot_tasks: list[pb.Task], plan: Plan) -> None:
    """Forgets the oldest stopped tasks of a slot beyond what history and restart counting need."""
    keep = max(HISTORY_PER_SLOT, service.spec.restart.max_attempts + 1)
    old = sorted(
        (t for t in slot_tasks if t.desired_state != pb.DESIRED_STATE_RUNNING and is_terminal(t.status.state)),
        key=lambda t: (t.created_at.seconds, t.created_at.nanos, t.id),
    )
    plan.delete.extend(old[: max(0, len(old) - keep)])


def _settle_unplaced(task: pb.Task, now: datetime, plan: Plan) -> None:
    """Marks a never-placed task that should stop as shut down: no agent will ever report on it."""
    if task.node_id or task.desired_state == pb.DESIRED_STATE_RUNNING or is_terminal(task.status.state):
        return
    for pending in plan.update:
        if pending.id == task.id:
            task = pending
            break
    else:
        task = _copy(task)
        plan.update.append(task)
    task.status.state = pb.TASK_STATE_SHUTDOWN
    task.status.message = "stopped before it was placed"
    task.status.timestamp.CopyFrom(to_timestamp(now))


def _shut_down(task: pb.Task, now: datetime, why: str, plan: Plan) -> None:
    """Sets a task's desired state to shutdown; never-placed tasks are settled at once."""
    changed = _copy(task)
    changed.desired_state = pb.DESIRED_STATE_SHUTDOWN
    changed.updated_at.CopyFrom(to_timestamp(now))
    if not changed.node_id and not is_terminal(changed.status.state):
        changed.status.state = pb.TASK_STATE_SHUTDOWN
        changed.status.message = f"stopped before it was placed: {why}"
        changed.status.timestamp.CopyFrom(to_timestamp(now))
    elif not is_terminal(changed.status.state):
        changed.status.message = f"shutting down: {why}"
    plan.update.append(changed)


def _new_task(service: pb.Service, slot: int, now: datetime, task_id: str) -> pb.Task:
    """Builds a pending task for a slot at the service's current revision."""
    task = pb.Task(
        id=task_id,
        service_id=service.id,
        service_name=service.name,
        slot=slot,
        revision=service.revision,
        desired_state=pb.DESIRED_STATE_RUNNING,
        generation=1,
    )
    task.spec.CopyFrom(service.spec)
    task.status.state = pb.TASK_STATE_PENDING
    task.status.message = "waiting for a node"
    stamp = to_timestamp(now)
    task.status.timestamp.CopyFrom(stamp)
    task.created_at.CopyFrom(stamp)
    task.updated_at.CopyFrom(stamp)
    return task


def _copy(task: pb.Task) -> pb.Task:
    copy = pb.Task()
    copy.CopyFrom(task)
    return copy
