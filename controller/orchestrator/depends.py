"""The depends_on gate: whether a service's new tasks may start, given its dependencies' tasks. Pure.

A dependency is judged by its groups: the slots 1..replicas of a replicated service or a job, the nodes a
global service has a live task on (the nodes it should run on are the orchestrator's business; a global
service with no live task yet is not started). Each group counts by its newest task (highest generation):
what runs in the slot now, or is about to. That task must run the dependency's current spec
(dockyard.task_state.runs_current_spec), so a dependency in the middle of an update holds back new tasks
until its updated tasks are there.

- service_started: every group's newest task is STARTING or RUNNING (a job's may also have COMPLETEd);
- service_healthy: every group's newest task is RUNNING, which means healthy for a service with a health
  check (a job's may also have COMPLETEd);
- service_completed_successfully: every group's newest task COMPLETEd (exit 0).

A dependency with no group (replicas 0, a global service on no node) never holds: nothing started. Running
tasks are never stopped by the gate; it only holds back the creation of new ones (the reconciler's call).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

from dockyard.spec import schema
from dockyard.task_state import runs_current_spec
from dockyard.v1 import types_pb2 as pb

_STARTED = frozenset({pb.TASK_STATE_STARTING, pb.TASK_STATE_RUNNING})
_HEALTHY = frozenset({pb.TASK_STATE_RUNNING})
_COMPLETED = frozenset({pb.TASK_STATE_COMPLETE})

# Per condition: the states a group's newest task may be in, and the word a count of them reads with.
_HOLDS: dict[int, tuple[frozenset[int], str]] = {
    pb.Dependency.CONDITION_SERVICE_STARTED: (_STARTED, "started"),
    pb.Dependency.CONDITION_SERVICE_HEALTHY: (_HEALTHY, "healthy"),
    pb.Dependency.CONDITION_SERVICE_COMPLETED_SUCCESSFULLY: (_COMPLETED, "completed"),
}


class DependencyView(NamedTuple):
    """One dependency as the gate sees it: its service (None: no such service) and its tasks."""

    service: pb.Service | None
    tasks: Sequence[pb.Task]


def waiting_for(service: pb.Service, deps: Mapping[str, DependencyView]) -> str | None:
    """Returns None when every dependency of service.spec.depends_on holds, else what a held task shows.

    deps maps a dependency's name to its view; a name missing from deps counts as no such service. The text
    names each dependency that does not hold, in name order: "waiting for db (service_healthy): 1 of 3 tasks
    healthy; waiting for queue (service_started): no such service".
    """
    reasons = []
    for name in sorted(service.spec.depends_on):
        condition = service.spec.depends_on[name].condition or schema.DEPENDS_ON_CONDITION.default
        view = deps.get(name)
        why = "no such service" if view is None or view.service is None else _unmet(view.service, view.tasks, condition)
        if why is not None:
            reasons.append(f"waiting for {name} ({schema.DEPENDS_ON_CONDITION.choice_name(condition)}): {why}")
    return "; ".join(reasons) if reasons else None


def holds(dependency: pb.Service, tasks: Sequence[pb.Task], condition: pb.Dependency.Condition.ValueType) -> bool:
    """Tells whether the condition holds of the dependency with these tasks (its own, any others are ignored)."""
    return _unmet(dependency, tasks, condition or schema.DEPENDS_ON_CONDITION.default) is None


def dependents(services: Iterable[pb.Service]) -> dict[str, set[str]]:
    """Maps each service name that some service depends on to the names of the services that depend on it."""
    found: dict[str, set[str]] = {}
    for service in services:
        for name in service.spec.depends_on:
            found.setdefault(name, set()).add(service.spec.name or service.name)
    return found


def _unmet(dependency: pb.Service, tasks: Sequence[pb.Task], condition: int) -> str | None:
    """Returns None when the condition holds of the dependency, else a count of how far it is, in words."""
    states, word = _HOLDS.get(condition, _HOLDS[schema.DEPENDS_ON_CONDITION.default])
    job = dependency.spec.mode == pb.SERVICE_MODE_JOB
    if job:
        states = states | _COMPLETED  # a job that ran to completion has started, and was healthy
    newest = _newest_per_group(dependency, tasks)
    if not newest:
        return "it has no tasks to run"
    ready = sum(
        1
        for task in newest.values()
        if task is not None and task.status.state in states and runs_current_spec(dependency, task)
    )
    if ready == len(newest):
        return None
    return f"{ready} of {len(newest)} {'task' if len(newest) == 1 else 'tasks'} {word}"


def _newest_per_group(dependency: pb.Service, tasks: Sequence[pb.Task]) -> dict[int | str, pb.Task | None]:
    """Returns each group of the dependency with its newest task (None: a slot with no task yet)."""
    own = [t for t in tasks if t.service_id == dependency.id]
    is_global = dependency.spec.mode == pb.SERVICE_MODE_GLOBAL
    newest: dict[int | str, pb.Task | None]
    if is_global:
        # Groups are the nodes it runs on now: those with a task it still wants running.
        newest = {t.node_id: None for t in own if t.node_id and t.desired_state == pb.DESIRED_STATE_RUNNING}
    else:
        newest = dict.fromkeys(range(1, dependency.spec.replicas + 1))
    for task in own:
        group: int | str = task.node_id if is_global else task.slot
        if group not in newest:
            continue
        held = newest[group]
        if held is None or (task.generation, task.id) > (held.generation, held.id):
            newest[group] = task
    return newest
