"""Reconciles one service: the right tasks in each group, at the current spec.

A group is a slot (1..replicas) of a replicated service or a node of a global one. Pure: it takes the
service, its tasks, the nodes and the time, and returns a Plan. Updates are stop-first with parallelism
one: a group gets its new task only after the old one has stopped, so a service never runs more tasks
than it asks for. Draining is the one exception, and deliberately start-first: a task on a draining
node stops only once its replacement runs elsewhere.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from controller.orchestrator.edits import mark_lost, new_task, next_generation, settle_unplaced, shut_down
from controller.orchestrator.nodes import NodeFacts
from controller.orchestrator.plan import Plan
from controller.orchestrator.restart import Verdict, decide_restart
from dockyard.task_state import is_terminal, runs_current_spec
from dockyard.v1 import types_pb2 as pb

HISTORY_PER_GROUP = 3
UPDATE_PARALLELISM = 1

GroupKey = int | str  # a slot number, or a node id for global services


@dataclass
class _Pass:
    """What one reconcile pass shares between groups."""

    service: pb.Service
    nodes: NodeFacts
    now: datetime
    new_id: Callable[[], str]
    plan: Plan
    updating: int = 0


def reconcile_service(
    service: pb.Service | None,
    tasks: Sequence[pb.Task],
    nodes: NodeFacts,
    now: datetime,
    new_id: Callable[[], str],
) -> Plan:
    """Returns the writes that move a service's tasks toward its spec; service None means it was deleted."""
    plan = Plan()
    for task in tasks:
        placed = task.node_id and task.status.state >= pb.TASK_STATE_ASSIGNED
        if placed and not is_terminal(task.status.state) and nodes.lost(task.node_id):
            mark_lost(task, now, nodes.name(task.node_id), plan)
    current = [plan.current(t) for t in tasks]
    if service is None:
        for task in current:
            _retire(task, now, "service removed", plan)
        return plan
    is_global = service.spec.mode == pb.SERVICE_MODE_GLOBAL
    groups: dict[GroupKey, list[pb.Task]] = defaultdict(list)
    for task in current:
        groups[task.node_id if is_global else task.slot].append(task)
    wanted = _wanted_groups(service, nodes, groups, is_global)
    state = _Pass(service, nodes, now, new_id, plan)
    state.updating = sum(1 for group in groups.values() if _in_flux(group))
    for key in sorted(set(groups) | set(wanted), key=str):
        group = groups.get(key, [])
        if key not in wanted:
            for task in group:
                _retire(task, now, "no longer wanted here", plan)
            continue
        _reconcile_group(state, key, wanted[key], group)
        _prune_history(service, group, plan)
    for task in current:
        settle_unplaced(task, now, plan)
    return plan


def waits_for_running(service: pb.Service | None, tasks: Iterable[pb.Task], nodes: NodeFacts) -> bool:
    """Tells whether the service's next step waits for one of its tasks to reach running.

    tasks are the service's tasks as a plan leaves them. True while a live task runs an older spec (a rolling
    update moves on only once the slot it changed runs again) or sits on a draining node of a replicated
    service (its replacement must run first). Only then can a task's move to running change a plan.
    """
    if service is None:
        return False
    # Most tasks run the current spec on a node that is not draining: two cheap looks rule them out.
    draining = nodes.draining_ids if service.spec.mode != pb.SERVICE_MODE_GLOBAL else frozenset()
    for task in tasks:
        if not _outdated(service, task) and task.node_id not in draining:
            continue
        if task.desired_state == pb.DESIRED_STATE_RUNNING and not is_terminal(task.status.state):
            return True
    return False


def after_plan(tasks: Sequence[pb.Task], plan: Plan) -> Sequence[pb.Task]:
    """Returns the tasks as they will be once the plan is committed: changed, created, forgotten."""
    if plan.empty():
        return tasks
    deleted = {t.id for t in plan.delete}
    return [plan.current(t) for t in tasks if t.id not in deleted] + list(plan.create)


def _wanted_groups(
    service: pb.Service, nodes: NodeFacts, groups: dict[GroupKey, list[pb.Task]], is_global: bool
) -> dict[GroupKey, bool]:
    """Maps each group that should exist to whether it may get a new task."""
    if not is_global:
        return {slot: True for slot in range(1, service.spec.replicas + 1)}
    wanted: dict[GroupKey, bool] = {node_id: True for node_id in nodes.global_targets(service.spec)}
    for node_id in groups:
        if node_id not in wanted and isinstance(node_id, str) and nodes.global_keep(node_id, service.spec):
            wanted[node_id] = False  # keep what runs there (paused, or not yet heard from), start nothing
    return wanted


def _reconcile_group(state: _Pass, key: GroupKey, may_create: bool, group: list[pb.Task]) -> None:
    plan, now = state.plan, state.now
    still = _handle_draining(state, key, group, [t for t in group if t.desired_state == pb.DESIRED_STATE_RUNNING])
    if still is None:
        return
    live = still
    live.sort(
        key=lambda t: (
            not is_terminal(t.status.state),
            t.status.state == pb.TASK_STATE_RUNNING,
            t.created_at.seconds,
            t.created_at.nanos,
            t.id,
        )
    )
    # Keep the best live task; any other is a duplicate (for example from a lost write) and goes.
    for extra in live[:-1]:
        shut_down(extra, now, "duplicate task in slot", plan)
    stopping = any(
        not is_terminal(t.status.state) and plan.current(t).desired_state != pb.DESIRED_STATE_RUNNING for t in group
    )
    if not live:
        if not stopping and may_create:
            _create(state, key, group)
        return
    task = live[-1]
    if is_terminal(task.status.state):
        _replace_stopped(state, key, group, task, stopping, may_create)
        return
    if _outdated(state.service, task) and (
        state.updating < UPDATE_PARALLELISM or task.status.state < pb.TASK_STATE_ASSIGNED
    ):
        shut_down(task, now, f"updating to revision {state.service.revision}", plan)
        state.updating += 1


def _replace_stopped(
    state: _Pass, key: GroupKey, group: list[pb.Task], task: pb.Task, stopping: bool, may_create: bool
) -> None:
    plan, now = state.plan, state.now
    if task.status.state == pb.TASK_STATE_LOST:
        verdict = Verdict.REPLACE  # its node is gone: move it, whatever the restart policy says
    else:
        decision = decide_restart(state.service.spec.restart, task, group, now)
        verdict = decision.verdict
        if verdict is Verdict.LEAVE and _outdated(state.service, task):
            verdict = Verdict.REPLACE  # a finished task stays finished, but a new spec deserves a run
        plan.wake_no_later_than(decision.at)
        if verdict is Verdict.WAIT:
            return
    if verdict is Verdict.REPLACE:
        shut_down(task, now, "replaced after it stopped", plan)
        if not stopping and may_create:
            _create(state, key, group)


def _handle_draining(state: _Pass, key: GroupKey, group: list[pb.Task], live: list[pb.Task]) -> list[pb.Task] | None:
    """Moves live tasks off draining nodes start-first; returns the live tasks the usual rules apply to.

    None means the group is fully handled (its replacement was just created).
    """
    if isinstance(key, str):
        return live  # global groups on a draining node are simply not wanted any more
    draining = [t for t in live if t.node_id and state.nodes.draining(t.node_id) and not is_terminal(t.status.state)]
    if not draining:
        return live
    elsewhere = [t for t in live if t not in draining]
    if any(t.status.state == pb.TASK_STATE_RUNNING for t in elsewhere):
        for task in draining:
            shut_down(task, state.now, f"node {state.nodes.name(task.node_id)} is draining", state.plan)
    elif not elsewhere:
        _create(state, key, group)
        return None
    return elsewhere


def _create(state: _Pass, key: GroupKey, group: list[pb.Task]) -> None:
    slot, node_id = (key, "") if isinstance(key, int) else (0, key)
    task = new_task(state.service, slot, node_id, next_generation(group), state.now, state.new_id())
    state.plan.create.append(task)
    group.append(task)
    state.updating += 1  # a starting task counts against the update budget like a rolling one


def _in_flux(group: list[pb.Task]) -> bool:
    """Tells whether a group is changing: a task still stopping, or its live task not yet running."""
    for task in group:
        if is_terminal(task.status.state):
            continue
        if task.desired_state != pb.DESIRED_STATE_RUNNING or task.status.state < pb.TASK_STATE_RUNNING:
            return True
    return False


def _outdated(service: pb.Service, task: pb.Task) -> bool:
    """Tells whether a task runs an older spec than the service's; a change of replicas alone leaves it current."""
    return not runs_current_spec(service, task)


def _retire(task: pb.Task, now: datetime, why: str, plan: Plan) -> None:
    """Shuts down a task whose group is gone, and forgets it once it stopped."""
    if task.desired_state == pb.DESIRED_STATE_RUNNING:
        shut_down(task, now, why, plan)
    elif is_terminal(task.status.state) and task.id not in plan.changed:
        plan.delete.append(task)


def _prune_history(service: pb.Service, group: list[pb.Task], plan: Plan) -> None:
    """Forgets the oldest stopped tasks of a group beyond what history and restart counting need."""
    keep = max(HISTORY_PER_GROUP, service.spec.restart.max_attempts + 1)
    old = sorted(
        (
            t
            for t in group
            if plan.current(t).desired_state != pb.DESIRED_STATE_RUNNING
            and is_terminal(plan.current(t).status.state)
            and t.id not in plan.changed
        ),
        key=lambda t: (t.created_at.seconds, t.created_at.nanos, t.id),
    )
    plan.delete.extend(old[: max(0, len(old) - keep)])
