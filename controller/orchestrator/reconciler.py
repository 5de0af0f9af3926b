"""Reconciles one service: the right tasks in each group, at the current spec, rolled out as its policy says.

A group is a slot (1..replicas) of a replicated or job service, or a node of a global one. Pure: it takes the
service, its tasks, the nodes and the time (and, from the role, what a rollback would return to), and returns
a Plan. The rollout rules (when one starts, its settings, failures, rollback) live in rollout.py; this module
applies them to groups:

- A group's *primary* is its newest live task that is not `replaced`. A `replaced` task is an old one that
  keeps serving while its successor (the primary) starts: it is shut down once the primary is RUNNING
  (healthy). Start-first updates, moves off draining nodes and rebalancing all work this way.
- Stop-first: the old task is told to stop, and the group gets its new task only once nothing of it runs,
  so the group never runs two tasks.
- An outdated group starts changing only while the rollout is active, fewer than `parallelism` groups are
  changing, and `delay` has passed since a task of the rollout last started running.
- Failed and lost tasks are replaced under the restart policy whatever the rollout does; one of an older spec
  that waits out its backoff (or is left by the policy) is replaced as soon as the rollout may change its
  group, and its successor starts a new streak (attempt 0).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from controller.orchestrator import depends, rollout
from controller.orchestrator.depends import DependencyView
from controller.orchestrator.edits import (
    hold,
    keep_held,
    mark_lost,
    new_task,
    next_generation,
    release,
    settle_unplaced,
    shut_down,
)
from controller.orchestrator.nodes import NodeFacts
from controller.orchestrator.plan import Plan
from controller.orchestrator.rebalance import to_move
from controller.orchestrator.restart import Verdict, decide_restart, successor
from dockyard.task_state import is_terminal, runs_current_spec
from dockyard.timestamps import to_timestamp
from dockyard.v1 import types_pb2 as pb

HISTORY_PER_GROUP = 3

GroupKey = int | str  # a slot number, or a node id for global services


@dataclass
class _Pass:
    """What one reconcile pass shares between groups."""

    service: pb.Service
    nodes: NodeFacts
    now: datetime
    new_id: Callable[[], str]
    plan: Plan
    policy: rollout.Policy
    may_update: bool  # outdated groups may start changing (an active rollout, its delay passed)
    held: str | None = None  # why new tasks are held back (depends_on), None: they are not
    changing: int = 0  # groups changing now: counted against update.parallelism
    settled: bool = True  # every group is at the current spec with nothing left to do


def reconcile_service(
    service: pb.Service | None,
    tasks: Sequence[pb.Task],
    nodes: NodeFacts,
    now: datetime,
    new_id: Callable[[], str],
    *,
    rollback_to: rollout.RollbackTarget | None = None,
    deps: Mapping[str, DependencyView] | None = None,
    rebalance: bool = False,
) -> Plan:
    """Returns the writes that move a service's tasks toward its spec; service None means it was deleted.

    Keyword arguments, each defaulting to "nothing special":
    - rollback_to: the target of update_status.from_revision (rollout.find_rollback_target), needed only when
      the rollout fails with failure_action rollback; None then pauses it, saying the revision is not kept.
    - deps: the service's depends_on, name -> DependencyView (every name; a missing one counts as no such
      service). None: not judged, nothing is held. While depends.waiting_for says why, new tasks are made
      held (state NEW, that text as their message; the scheduler places only PENDING ones) and the rollout
      changes no slot; once it holds, held tasks are released (PENDING).
    - rebalance: a rebalance was asked for (rebalance_generation moved past the one acted on): move the tasks
      rebalance.to_move names start-first. placement.rebalance does so on every pass. plan.rebalanced says
      the request was acted on (it waits while a rollout is active, paused with tasks of an older spec
      live, or new tasks are held).
    The plan's `service` is set when the rollout's status changes (or it rolls back): commit it guarded by
    the service's version, with the task writes.
    """
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
    original = service
    started = rollout.begin(service, current, now)
    if started is not None:
        service = _with_status(service, started)
    is_global = service.spec.mode == pb.SERVICE_MODE_GLOBAL
    groups: dict[GroupKey, list[pb.Task]] = defaultdict(list)
    for task in current:
        groups[task.node_id if is_global else task.slot].append(task)
    wanted = _wanted_groups(service, nodes, groups, is_global)
    policy = rollout.policy(service.spec, rollout.is_rolling_back(service))
    service = _judge_failures(service, policy, current, len(wanted), now, rollback_to, plan)
    if plan.service is not None:
        return plan  # a rollback: the next pass (the service write wakes it) follows the rolled-back spec
    active = rollout.is_active(service)
    held = depends.waiting_for(service, deps) if deps is not None and service.spec.depends_on else None
    may_update = active and held is None
    if may_update and policy.delay:
        last = rollout.finished_at(service, current)
        if last is not None and now < last + policy.delay:
            may_update = False
            plan.wake_no_later_than(last + policy.delay)
    state = _Pass(service, nodes, now, new_id, plan, policy, may_update, held)
    state.changing = sum(1 for key, group in groups.items() if key in wanted and _changing(group))
    counted = _failures_to_keep(service, policy, current, len(wanted), now)
    # A move makes a task of the current spec: not while a paused rollout holds that spec back (any live task
    # of an older spec); the request stays pending until the rollout is over.
    outdated = any(t.desired_state == pb.DESIRED_STATE_RUNNING and _outdated(service, t) for t in current)
    if not active and held is None and not outdated and (rebalance or service.spec.placement.rebalance):
        service = _rebalance(state, groups, current)
    for key in sorted(set(groups) | set(wanted), key=str):
        group = groups.get(key, [])
        if key not in wanted:
            for task in group:
                _retire(task, now, "no longer wanted here", plan)
            continue
        _reconcile_group(state, key, wanted[key], group)
        _prune_history(service, group, plan, counted)
    for task in current:
        settle_unplaced(task, now, plan)
        _hold_or_release(state, plan.current(task))
    if active and state.settled and not plan.create:
        last = rollout.finished_at(service, current)
        if last is None or now >= last + policy.monitor:
            service = _with_status(service, rollout.completed(service.update_status, now))
        else:
            plan.wake_no_later_than(last + policy.monitor)
    if (service.update_status, service.rebalanced_generation) != (
        original.update_status,
        original.rebalanced_generation,
    ):
        plan.service = service
    return plan


def _judge_failures(
    service: pb.Service,
    policy: rollout.Policy,
    tasks: Sequence[pb.Task],
    slots: int,
    now: datetime,
    rollback_to: rollout.RollbackTarget | None,
    plan: Plan,
) -> pb.Service:
    """Applies the failure action when an active rollout has too many failures: returns the service paused,
    or sets plan.service to the service rolled back; otherwise returns it as it is."""
    if not rollout.is_active(service):
        return service
    found = rollout.failures(service, tasks, now)
    if not rollout.too_many(policy, found, slots) or policy.failure_action == rollout.CONTINUE:
        return service
    message = rollout.failure_message(found, slots)
    back_to = service.update_status.from_revision
    if policy.failure_action == rollout.ROLLBACK:
        if rollback_to is not None and rollback_to.revision == back_to:
            plan.service = rollout.rollback_service(
                service, rollback_to, now, rollout.failure_cause(back_to, found, slots)
            )
            return service
        message += f"; cannot roll back: revision {back_to} is not kept" if back_to else "; nothing to roll back to"
    return _with_status(service, rollout.paused(service.update_status, message))


def waits_for_running(service: pb.Service | None, tasks: Iterable[pb.Task], nodes: NodeFacts) -> bool:
    """Tells whether the service's next step waits for one of its tasks to reach running.

    tasks are the service's tasks as a plan leaves them. True while a live task runs an older spec, is
    replaced (its successor must run first) or sits on a draining node of a replicated service, and while a
    rollout is active and a live task has not reached running (the rollout's delay, monitor and completion
    count from it). Only then can a task's move to running change a plan.
    """
    if service is None:
        return False
    # Most tasks run the current spec on a node that is not draining: cheap looks rule them out.
    draining = nodes.draining_ids if service.spec.mode != pb.SERVICE_MODE_GLOBAL else frozenset()
    active = rollout.is_active(service)
    for task in tasks:
        if task.desired_state != pb.DESIRED_STATE_RUNNING or is_terminal(task.status.state):
            continue
        if active and task.status.state < pb.TASK_STATE_RUNNING:
            return True
        if task.replaced or task.node_id in draining or _outdated(service, task):
            return True
    return False


def after_plan(tasks: Sequence[pb.Task], plan: Plan) -> Sequence[pb.Task]:
    """Returns the tasks as they will be once the plan is committed: changed, created, forgotten."""
    if plan.empty():
        return tasks
    deleted = {t.id for t in plan.delete}
    return [plan.current(t) for t in tasks if t.id not in deleted] + list(plan.create)


def _with_status(service: pb.Service, status: pb.UpdateStatus) -> pb.Service:
    copy = _copy(service)
    copy.update_status.CopyFrom(status)
    return copy


def _copy(service: pb.Service) -> pb.Service:
    copy = pb.Service()
    copy.CopyFrom(service)
    return copy


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


def _newest(tasks: Iterable[pb.Task]) -> pb.Task:
    return max(tasks, key=lambda t: (t.created_at.seconds, t.created_at.nanos, t.id))


def _reconcile_group(state: _Pass, key: GroupKey, may_create: bool, group: list[pb.Task]) -> None:
    plan, now, service = state.plan, state.now, state.service
    if isinstance(key, int) and state.nodes.draining_ids:
        _move_off_draining(state, group)
    if service.spec.mode == pb.SERVICE_MODE_JOB and _job_done(service, group):
        _end_job_slot(state, group)
        return
    live = [t for t in map(plan.current, group) if t.desired_state == pb.DESIRED_STATE_RUNNING]
    candidates = [t for t in live if not t.replaced]
    candidates.sort(
        key=lambda t: (
            not is_terminal(t.status.state),
            t.status.state == pb.TASK_STATE_RUNNING,
            t.created_at.seconds,
            t.created_at.nanos,
            t.id,
        )
    )
    # Keep the best live task; any other is a duplicate (for example from a lost write) and goes.
    for extra in candidates[:-1]:
        shut_down(extra, now, "duplicate task in slot", plan)
    primary = candidates[-1] if candidates else None
    serving = [t for t in live if t.replaced and not is_terminal(t.status.state)]
    for done in (t for t in live if t.replaced and is_terminal(t.status.state)):
        shut_down(done, now, "stopped while replaced", plan)
    if serving and _back_to_serving(state, primary, serving):
        return
    if primary is None:
        state.settled = False
        if serving:
            _create(state, key, group)  # a replaced task's successor: it keeps serving meanwhile
            return
        stopping = any(
            not is_terminal(plan.current(t).status.state) and plan.current(t).desired_state != pb.DESIRED_STATE_RUNNING
            for t in group
        )
        if not stopping and may_create:
            stopped = [t for t in group if is_terminal(plan.current(t).status.state)]
            _create(state, key, group, _newest(stopped) if stopped else None)
        return
    if is_terminal(primary.status.state):
        _replace_stopped(state, key, group, primary, bool(serving), may_create)
        return
    if serving:
        state.settled = False
        if primary.status.state == pb.TASK_STATE_RUNNING:
            for old in serving:
                shut_down(old, now, f"replaced by task {primary.id}", plan)
            # The group is done changing (its old tasks need only stop), so the next one may start now.
            state.changing -= 1
        elif _outdated(service, primary) and state.may_update:
            # A successor of an older spec that never ran: start one of the current spec instead at once.
            shut_down(primary, now, f"updating to revision {service.revision}", plan)
            _create(state, key, group)
            return
        else:
            return
    if not _outdated(service, primary):
        if primary.status.state < pb.TASK_STATE_RUNNING:
            state.settled = False
        return
    state.settled = False
    if not state.may_update:
        return
    if primary.status.state < pb.TASK_STATE_ASSIGNED:
        shut_down(primary, now, f"updating to revision {service.revision}", plan)  # it serves nothing yet
        return
    if not state.policy.may_start(state.changing):
        return
    state.changing += 1
    if state.policy.start_first and primary.status.state == pb.TASK_STATE_RUNNING:
        _mark_replaced(primary, now, plan)
        _create(state, key, group, counts=False)
    else:
        shut_down(primary, now, f"updating to revision {service.revision}", plan)


def _job_done(service: pb.Service, group: list[pb.Task]) -> bool:
    """Tells whether a job's slot is done: a task of it running the current spec completed, whatever its
    desired state (after a rollback, the task a failed update told to stop had completed this very spec)."""
    return any(t.status.state == pb.TASK_STATE_COMPLETE and runs_current_spec(service, t) for t in group)


def _end_job_slot(state: _Pass, group: list[pb.Task]) -> None:
    """Leaves a done job slot with nothing to run: other tasks still desired running stop (a finished one at
    once; one still running an older spec as the rollout's change, while it may change slots)."""
    plan, service = state.plan, state.service
    for task in group:
        current = plan.current(task)
        if current.desired_state != pb.DESIRED_STATE_RUNNING:
            continue
        if current.status.state == pb.TASK_STATE_COMPLETE and runs_current_spec(service, current):
            continue
        if not is_terminal(current.status.state):
            state.settled = False
            if not state.may_update:
                continue
        shut_down(task, state.now, f"the job completed at revision {service.spec_revision}", plan)


def _back_to_serving(state: _Pass, primary: pb.Task | None, serving: list[pb.Task]) -> bool:
    """Makes a replaced task the group's task again when its successor is gone or runs an older spec than the
    replaced task now does (a rollback returned to the replaced task's spec); True when it did."""
    plan, service = state.plan, state.service
    keep = [t for t in serving if runs_current_spec(service, t) and not state.nodes.draining(t.node_id)]
    if not keep:
        return False
    if primary is not None and not _outdated(service, primary):
        return False
    back = _newest(keep)
    changed = plan.edit(back)
    changed.replaced = False
    changed.updated_at.CopyFrom(to_timestamp(state.now))
    if primary is not None:
        shut_down(primary, state.now, f"task {back.id} serves its slot again", plan)
    state.settled = False
    return True


def _move_off_draining(state: _Pass, group: list[pb.Task]) -> None:
    """Moves a replicated group's task off a draining node: a running one start-first (it is replaced and keeps
    running until its successor runs elsewhere), one not yet running simply stops."""
    plan = state.plan
    for task in group:
        current = plan.current(task)
        if current.desired_state != pb.DESIRED_STATE_RUNNING or current.replaced or is_terminal(current.status.state):
            continue
        if current.node_id not in state.nodes.draining_ids:
            continue
        if current.status.state == pb.TASK_STATE_RUNNING:
            _mark_replaced(task, state.now, plan)
        else:
            shut_down(task, state.now, f"node {state.nodes.name(current.node_id)} is draining", plan)


def _mark_replaced(task: pb.Task, now: datetime, plan: Plan) -> None:
    changed = plan.edit(task)
    changed.replaced = True
    changed.updated_at.CopyFrom(to_timestamp(now))


def _replace_stopped(
    state: _Pass, key: GroupKey, group: list[pb.Task], task: pb.Task, serving: bool, may_create: bool
) -> None:
    plan, now, service = state.plan, state.now, state.service
    outdated = _outdated(service, task)
    if task.status.state == pb.TASK_STATE_LOST:
        verdict = Verdict.REPLACE  # its node is gone: move it, whatever the restart policy says
    else:
        decision = decide_restart(service.spec.restart, task, group, now, mode=service.spec.mode)
        verdict = decision.verdict
        plan.wake_no_later_than(decision.at)
    if verdict in (Verdict.LEAVE, Verdict.WAIT) and outdated:
        # A finished task stays finished, but a new spec deserves a run: that is the rollout's change. Nor does
        # a new spec wait out the old one's crash-loop backoff: the fix of a crash loop runs as soon as the
        # rollout reaches the slot.
        if not state.may_update or not state.policy.may_start(state.changing):
            state.settled = False
            return
        state.changing += 1
        verdict = Verdict.REPLACE
    if verdict is Verdict.WAIT:
        state.settled = False
        return
    if verdict is Verdict.LEAVE:
        if serving:
            state.settled = False
        return
    state.settled = False
    shut_down(task, now, "replaced after it stopped", plan)
    stopping = any(
        not is_terminal(plan.current(t).status.state) and plan.current(t).desired_state != pb.DESIRED_STATE_RUNNING
        for t in group
        if t.id != task.id
    )
    if serving or (not stopping and may_create):
        _create(state, key, group, task)


def _create(
    state: _Pass,
    key: GroupKey,
    group: list[pb.Task],
    after: pb.Task | None = None,
    *,
    counts: bool = True,
    avoid: Sequence[str] = (),
) -> None:
    """Creates the group's next task in place of `after` (the stopped task it follows; None: nothing stopped,
    a first task or the successor of one still running), which sets its attempt and the nodes it avoids."""
    slot, node_id = (key, "") if isinstance(key, int) else (0, key)
    task = new_task(state.service, slot, node_id, next_generation(group), state.now, state.new_id())
    if state.held is not None:
        hold(task, state.held)
    follows = successor(after, state.now, policy=state.service.spec.restart)
    # Task.attempt is this spec's streak of failures: one under an older spec is not (the new spec may fix it).
    task.attempt = follows.attempt if after is None or not _outdated(state.service, after) else 0
    task.avoid_node_ids.extend([*follows.avoid_node_ids, *(n for n in avoid if n not in follows.avoid_node_ids)])
    state.plan.create.append(task)
    group.append(task)
    if counts:
        state.changing += 1  # a starting task counts against the update budget like a rolling one


def _hold_or_release(state: _Pass, task: pb.Task) -> None:
    """Keeps a held task held while the service's dependencies do not hold, and releases it once they do."""
    if task.status.state != pb.TASK_STATE_NEW or task.desired_state != pb.DESIRED_STATE_RUNNING:
        return
    if state.held is None:
        release(task, state.now, state.plan)
    else:
        keep_held(task, state.held, state.now, state.plan)


def _rebalance(state: _Pass, groups: Mapping[GroupKey, list[pb.Task]], tasks: Sequence[pb.Task]) -> pb.Service:
    """Moves the tasks rebalance.to_move names start-first: each is replaced by a successor in its slot that
    avoids its node, and stops once that one runs. Returns the service, marked as having acted on the latest
    rebalance request (recorded in the service, so a restart does not act on it again)."""
    state.plan.rebalanced = True
    for task in to_move(state.service, tasks, state.nodes.global_targets(state.service.spec)):
        if task.slot not in groups:
            continue  # not a slot of this service (to_move only names its running tasks)
        _mark_replaced(task, state.now, state.plan)
        _create(state, task.slot, groups[task.slot], avoid=[task.node_id])
    if state.service.rebalanced_generation < state.service.rebalance_generation:
        state.service = _copy(state.service)
        state.service.rebalanced_generation = state.service.rebalance_generation
    return state.service


def _changing(group: list[pb.Task]) -> bool:
    """Tells whether a group is changing: a successor not yet running, or a stop-first change in between (its
    old task told to stop, stopped or not, and its new one not made yet)."""
    live = [t for t in group if t.desired_state == pb.DESIRED_STATE_RUNNING and not is_terminal(t.status.state)]
    if any(t.replaced or t.status.state < pb.TASK_STATE_RUNNING for t in live):
        return True
    # A stopped task still desired running waits for its restart (or was left): that is not a change.
    return not live and bool(group) and not any(t.desired_state == pb.DESIRED_STATE_RUNNING for t in group)


def _outdated(service: pb.Service, task: pb.Task) -> bool:
    """Tells whether a task runs an older spec than the service's; a change of replicas alone leaves it current."""
    return not runs_current_spec(service, task)


def _retire(task: pb.Task, now: datetime, why: str, plan: Plan) -> None:
    """Shuts down a task whose group is gone, and forgets it once it stopped."""
    if task.desired_state == pb.DESIRED_STATE_RUNNING:
        shut_down(task, now, why, plan)
    elif is_terminal(task.status.state) and task.id not in plan.changed:
        plan.delete.append(task)


def _failures_to_keep(
    service: pb.Service, policy: rollout.Policy, tasks: Sequence[pb.Task], slots: int, now: datetime
) -> frozenset[str]:
    """Returns the ids of the failures an active rollout counts that pruning must keep, so a crash-looping
    slot's failures are not forgotten before they reach max_failure_ratio. Bounded: only as many as can
    matter (one more than max_failure_ratio x slots, after which the failure action applies), and none
    when that action is continue (failures change nothing then)."""
    if not rollout.is_active(service) or policy.failure_action == rollout.CONTINUE:
        return frozenset()
    failed = sorted(
        rollout.counted_failures(service, tasks, now),
        key=lambda t: (t.created_at.seconds, t.created_at.nanos, t.id),
        reverse=True,
    )
    return frozenset(t.id for t in failed[: math.floor(policy.max_failure_ratio * slots) + 1])


def _prune_history(service: pb.Service, group: list[pb.Task], plan: Plan, counted: Collection[str]) -> None:
    """Forgets the oldest stopped tasks of a group beyond what history and restart counting need, except the
    failures an active rollout still counts (`counted`) and a job slot's newest completed task."""
    keep = max(HISTORY_PER_GROUP, service.spec.restart.max_attempts + 1)
    old = sorted(
        (
            t
            for t in group
            # A task the plan changes is not forgotten in the same plan; the others are as stored.
            if t.id not in plan.changed and t.desired_state != pb.DESIRED_STATE_RUNNING and is_terminal(t.status.state)
        ),
        key=lambda t: (t.created_at.seconds, t.created_at.nanos, t.id),
    )
    # A job slot's newest completed task is its record of having run (a rollback to its spec needs it).
    ran = (
        [t for t in old if t.status.state == pb.TASK_STATE_COMPLETE] if service.spec.mode == pb.SERVICE_MODE_JOB else []
    )
    record = ran[-1].id if ran else ""
    plan.delete.extend(t for t in old[: max(0, len(old) - keep)] if t.id not in counted and t.id != record)
