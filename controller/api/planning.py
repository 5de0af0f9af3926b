"""PlanApply's dry run: the real reconciler and scheduler, run on a copy of the state until it settles. Pure.

The apply's own planning (controller.api.apply.plan_apply) decides the service writes; this module then
runs rounds on a copy of the cluster, each one what the roles would do next: the pure reconciler
(controller.orchestrator.reconciler.reconcile_service) for every service of the request or removed by it,
given its dependencies as the simulation has them and taking its rollout status writes (Plan.service) as
the service of the next round; then the pure scheduler (controller.scheduler.engine.schedule) over every
pending task of the cluster with the seed the scheduler role uses (docs/design/scheduler.md, "Reproducing
a pass"); then the agents, as if every placed task reached RUNNING (a health check passing at once; a
job's task then exits 0) and every task told to stop stopped. Rounds go on until one changes nothing;
then, if a plan asked to look again later (an update's delay, a restart's backoff, a monitor period), the
simulated clock moves there. At most max_rounds rounds and max_visits task visits (PLAN_TASK_VISITS): a
rollout that does not settle within them is reported as far as it got (Simulation.settled is False).
A round reconciles only the services whose tasks, service or dependencies the round before changed (all
of them when the clock moves), as the orchestrator role reconciles only dirty services: the reconciler is
pure, so the others would plan nothing again (a 100-replica update beside 20 other services: half the time).

The report covers the tasks the apply makes and stops: a task started and stopped again within the
simulation (a start-first update's successor that is itself replaced) is not reported; one that no node
takes is reported unplaced with the scheduler's reason, and one held by depends_on with what it waits for.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

from controller.orchestrator.depends import DependencyView
from controller.orchestrator.nodes import NodeFacts
from controller.orchestrator.reconciler import reconcile_service
from controller.scheduler.engine import schedule
from controller.scheduler.model import holds_resources, is_pending
from controller.store.specs import current_spec_for
from dockyard.task_state import SpecKey, is_terminal, spec_key, unplaced_message
from dockyard.timestamps import to_timestamp
from dockyard.v1 import controller_pb2 as cpb
from dockyard.v1 import types_pb2 as pb
from dockyard.volumes import mounted_volumes

__all__ = ["PLAN_ROUNDS", "PLAN_TASK_VISITS", "Simulation", "planned_tasks", "simulate"]

# Rounds of reconcile, schedule and agents one plan runs at most. A stop-first update of parallelism one
# takes about two rounds per slot, so this covers a rolling update of 500 replicas.
PLAN_ROUNDS: Final = 1000
# And at most this many task visits in all (the tasks held, summed over rounds): a round costs about 13 us
# per task held (the reconciler's pass over the service's tasks, then the scheduler's over the cluster's;
# measured with 1,000 replicas on 100 nodes), so a plan stays within about 4 s of CPU however large the
# cluster. A rolling update of 100 replicas among 1,000 tasks takes about 220,000.
PLAN_TASK_VISITS: Final = 300_000

# Where a simulated task's state comes from: the agents' part of the simulation.
_STARTED = "running (as the plan assumes)"
_STOPPED = "stopped (as the plan assumes)"
_COMPLETED = "exited 0 (as the plan assumes)"


@dataclass
class Simulation:
    """What the simulation did: per service id, the tasks it started (as they ended) and the tasks it stopped."""

    started: dict[str, list[pb.Task]] = field(default_factory=dict)
    stopped: dict[str, list[pb.Task]] = field(default_factory=dict)
    # Why each task still pending at the end found no node (task id -> the scheduler's reason).
    unplaced: dict[str, str] = field(default_factory=dict)
    rounds: int = 0
    settled: bool = True


def simulate(
    planned: Mapping[str, pb.Service | None],
    tasks: Sequence[pb.Task],
    nodes: Sequence[pb.Node],
    old_specs: Mapping[SpecKey, pb.ServiceSpec],
    now: datetime,
    seed: int,
    *,
    others: Sequence[pb.Service] = (),
    max_rounds: int = PLAN_ROUNDS,
    max_visits: int = PLAN_TASK_VISITS,
    volumes: Mapping[str, str] | None = None,
) -> Simulation:
    """Runs the roles on a copy of the state until nothing changes; see the module docstring.

    planned maps the id of every service to reconcile to the service as the apply leaves it (None: the
    apply removes it). tasks are every task of the cluster (they are copied, never changed); old_specs the
    specs of revisions that are no longer a service's current one (tasks still running them hold resources);
    others the cluster's other services, which are not reconciled but may be depended on. volumes maps each
    volume that lives on a node to its id (as the scheduler role reads the records); a volume the simulation
    places first stays on that node for the rounds after, as the role pins it.
    """
    services = dict(planned)  # the planned services as the simulated rollouts leave them (Plan.service)
    everyone = {s.id: s for s in others}
    facts = NodeFacts.of(nodes)
    held: dict[str, pb.Task] = {}
    for task in tasks:
        copy = pb.Task()
        copy.CopyFrom(task)
        held[task.id] = copy
    known = set(held)
    counter = itertools.count(1)

    def new_id() -> str:
        # Never one of the cluster's own ids: a made task would replace it in `held`.
        while (made := f"planned-{next(counter)}") in known:
            pass
        return made

    result = Simulation()
    stopped: dict[str, pb.Task] = {}
    reasons: dict[str, str] = {}
    clock, pins = now, dict(volumes or {})  # pins: as the scheduler role's commits leave the volume records
    visits = 0
    # Services whose inputs changed since their last pass (all at first): the reconciler is pure, so a pass
    # over the same service, tasks, dependencies and time would plan the same nothing again.
    dirty: set[str] = set(services)
    wakes: dict[str, datetime] = {}  # each service's last plan's wake_at
    for _ in range(max_rounds):
        visits += len(held)
        if visits > max_visits:
            result.settled = False
            break
        result.rounds += 1
        touched: set[str] = set()
        _reconcile(services, everyone, held, facts, clock, new_id, stopped, dirty, wakes, touched)
        _schedule(services, held, nodes, old_specs, clock, seed, reasons, touched, pins)
        _agents(held, _jobs(services, everyone), clock, touched)
        if touched:
            dirty = _affected(services, everyone, touched)
            continue
        wake = min(wakes.values(), default=None)
        if wake is None or wake <= clock:
            break
        clock = wake
        dirty = set(services)
    else:
        result.settled = False
    for task in held.values():
        if task.id in known or task.service_id not in services:
            continue
        if task.desired_state != pb.DESIRED_STATE_RUNNING:
            continue  # made and stopped again within the simulation
        result.started.setdefault(task.service_id, []).append(task)
        if is_pending(task) and task.id in reasons:
            result.unplaced[task.id] = unplaced_message(reasons[task.id])
        elif task.status.state == pb.TASK_STATE_NEW:
            result.unplaced[task.id] = task.status.message  # held by depends_on ("waiting for db ...")
    for task in stopped.values():
        if task.id not in known:
            continue  # made and stopped again within the simulation
        result.stopped.setdefault(task.service_id, []).append(task)
    return result


def _jobs(services: Mapping[str, pb.Service | None], others: Mapping[str, pb.Service]) -> set[str]:
    """Returns the ids of the job services among the planned and the other services."""
    every = [*services.values(), *others.values()]
    return {s.id for s in every if s is not None and s.spec.mode == pb.SERVICE_MODE_JOB}


def _affected(
    services: Mapping[str, pb.Service | None], others: Mapping[str, pb.Service], touched: set[str]
) -> set[str]:
    """Returns the planned services to reconcile after a round that touched these service ids (their tasks or
    the service): those, and those that depend on one of them."""
    names = {s.name for s in [*services.values(), *others.values()] if s is not None and s.id in touched}
    return {
        service_id
        for service_id, service in services.items()
        if service_id in touched or (service is not None and not names.isdisjoint(service.spec.depends_on))
    }


def _reconcile(
    services: dict[str, pb.Service | None],
    others: Mapping[str, pb.Service],
    held: dict[str, pb.Task],
    facts: NodeFacts,
    now: datetime,
    new_id: Callable[[], str],
    stopped: dict[str, pb.Task],
    dirty: set[str],
    wakes: dict[str, datetime],
    touched: set[str],
) -> None:
    """Runs the reconciler once per dirty planned service and applies its plans, adding what it changed to touched.

    Each pass gets what the orchestrator role reads besides the tasks: its dependencies as they stand in
    the simulation. A plan's service write (rollout status) becomes the service the next round reconciles.
    """
    by_service: dict[str, list[pb.Task]] = {}
    for task in held.values():
        by_service.setdefault(task.service_id, []).append(task)
    by_name = {s.name: s for s in others.values()}
    by_name.update((s.name, s) for s in services.values() if s is not None)
    for service_id in sorted(dirty):
        service = services[service_id]
        # In the store's order (slot, creation, id), as the orchestrator reads a service's tasks.
        group = sorted(by_service.get(service_id, ()), key=_store_order)
        deps: dict[str, DependencyView] | None = None
        if service is not None and service.spec.depends_on:
            deps = {}
            for name in service.spec.depends_on:
                found = by_name.get(name)
                deps[name] = DependencyView(found, by_service.get(found.id, []) if found is not None else ())
        plan = reconcile_service(service, group, facts, now, new_id, deps=deps)
        if plan.wake_at is not None:
            wakes[service_id] = plan.wake_at
        else:
            wakes.pop(service_id, None)
        if plan.service is not None and plan.service != service:
            services[service_id] = plan.service
            touched.add(service_id)
        if plan.empty():
            continue
        touched.add(service_id)
        for task in plan.create:
            held[task.id] = task
        for task in plan.update:
            before = held.get(task.id)
            if (
                before is not None
                and before.desired_state == pb.DESIRED_STATE_RUNNING
                and task.desired_state != pb.DESIRED_STATE_RUNNING
                and not is_terminal(before.status.state)
                and task.id not in stopped
            ):
                # As the stop leaves it (its message says why); the agents' part changes the held one.
                record = pb.Task()
                record.CopyFrom(task)
                stopped[task.id] = record
            held[task.id] = task
        for task in plan.delete:
            held.pop(task.id, None)


def _schedule(
    services: Mapping[str, pb.Service | None],
    held: dict[str, pb.Task],
    nodes: Sequence[pb.Node],
    old_specs: Mapping[SpecKey, pb.ServiceSpec],
    now: datetime,
    seed: int,
    reasons: dict[str, str],
    touched: set[str],
    pins: dict[str, str],
) -> None:
    """Places the pending tasks as the scheduler role does (same inputs, same seed); adds their services to touched.

    pins (volume name -> node id) gains the volumes of the tasks placed, as the role's commit pins them.
    """
    tasks = list(held.values())
    pending = [t for t in tasks if is_pending(t)]
    if not pending:
        return
    specs: dict[SpecKey, pb.ServiceSpec] = {}
    for task in tasks:
        if not (holds_resources(task) or is_pending(task)):
            continue
        key = spec_key(task)
        service = services.get(task.service_id)
        spec = current_spec_for(service, task.revision) if service is not None else None
        if spec is None:
            spec = old_specs.get(key)
        if spec is not None:
            specs[key] = spec
    names = {n.id: n.description.hostname or n.id for n in nodes}
    for decision in schedule(nodes, tasks, pending, specs, now, seed, volumes=pins):
        task = held[decision.task_id]
        if decision.node_id is None:
            reasons[task.id] = decision.reason
            continue
        reasons.pop(task.id, None)
        for name in mounted_volumes(specs[spec_key(task)]):
            pins.setdefault(name, decision.node_id)
        task.node_id = decision.node_id
        task.status.state = pb.TASK_STATE_ASSIGNED
        task.status.message = f"assigned to {names.get(decision.node_id, decision.node_id)}"
        task.status.timestamp.CopyFrom(to_timestamp(now))
        touched.add(task.service_id)


def _agents(held: dict[str, pb.Task], jobs: set[str], now: datetime, touched: set[str]) -> None:
    """Moves placed tasks to RUNNING (a job's, once running, to COMPLETE: exit 0) and tasks told to stop to
    SHUTDOWN, as agents would; adds the services of the tasks it moved to touched."""
    for task in held.values():
        if is_terminal(task.status.state) or task.status.state < pb.TASK_STATE_ASSIGNED:
            continue
        if task.desired_state == pb.DESIRED_STATE_RUNNING:
            if task.status.state == pb.TASK_STATE_RUNNING:
                if task.service_id not in jobs:
                    continue
                task.status.state = pb.TASK_STATE_COMPLETE
                task.status.message = _COMPLETED
            else:
                task.status.state = pb.TASK_STATE_RUNNING
                task.status.message = _STARTED
        else:
            task.status.state = pb.TASK_STATE_SHUTDOWN
            task.status.message = _STOPPED
        task.status.timestamp.CopyFrom(to_timestamp(now))
        touched.add(task.service_id)


def planned_tasks(
    simulation: Simulation, service_id: str, node_names: Mapping[str, str], removed: bool
) -> list[cpb.PlannedTask]:
    """Returns the tasks the simulation started and stopped for one service, stops first, each by slot."""
    out: list[cpb.PlannedTask] = []
    for task in sorted(simulation.stopped.get(service_id, ()), key=_order):
        why = "service removed" if removed else (task.status.message.removeprefix("shutting down: ") or "stopped")
        out.append(_planned(cpb.PlannedTask.KIND_STOP, task, node_names, why))
    for task in sorted(simulation.started.get(service_id, ()), key=_order):
        reason = simulation.unplaced.get(task.id)
        if reason is not None:
            out.append(_planned(cpb.PlannedTask.KIND_UNPLACED, task, node_names, reason))
        else:
            out.append(_planned(cpb.PlannedTask.KIND_START, task, node_names, ""))
    return out


def _store_order(task: pb.Task) -> tuple[int, int, str]:
    return (task.slot, task.created_at.seconds * 1_000_000_000 + task.created_at.nanos, task.id)


def _order(task: pb.Task) -> tuple[int, str, str]:
    return (task.slot, task.node_id, task.id)


def _planned(
    kind: cpb.PlannedTask.Kind.ValueType, task: pb.Task, names: Mapping[str, str], reason: str
) -> cpb.PlannedTask:
    """Returns a started, stopped or unplaced task as the plan reports it; a task not yet made has no id."""
    return cpb.PlannedTask(
        kind=kind,
        slot=task.slot,
        node_id=task.node_id,
        node_name=names.get(task.node_id, task.node_id) if task.node_id else "",
        revision=task.revision,
        task_id=task.id if kind == cpb.PlannedTask.KIND_STOP else "",
        reason=reason,
    )
