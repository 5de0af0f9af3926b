"""Which services a batch of store events can make the orchestrator's plan change for: pure, table-tested.

The rules mirror reconciler.py; each says which of its decisions the event can change.

- A service event (created, changed, deleted): its own service; the spec, the replicas or the whole service
  changed.
- A task deleted: its service; a slot may have lost its only task, or its history shrank below what restart
  counting (max_attempts) saw.
- A task put in a terminal state (complete, failed, shutdown, rejected, lost...): its service; a stopped task
  is replaced under the restart policy, unblocks a stop-first update of its slot, and may be pruned.
- A task put running: its service only while the service waits for tasks to run (`waits_for_running`): a
  rolling update moves to the next slot, and a draining node's task stops, only once a new task runs.
- Any other task put (pending, assigned, preparing, starting; a desired-state change, which only the
  orchestrator writes): nothing. Below running a task is "in flux" before and after, and no rule tells
  assigned from starting.
- A node event that changes what the orchestrator reads of a node (`placement_facts`: added, removed, down,
  ready, drain, pause, labels, hostname): the services with tasks on it (looked up by the caller), and every
  global service (one task per matching node) and every service with placement.rebalance (its spread may no
  longer hold). A node put that changes only its heartbeat, address or message changes nothing.
- Any event of a service, or of one of its tasks, that a service holding tasks back depends on
  (depends_on): that service, whose gate may have opened (or whose held tasks' message changes).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

from controller.orchestrator.nodes import placement_facts
from controller.store.base import Action, Event, Kind
from dockyard.task_state import is_terminal
from dockyard.v1 import types_pb2 as pb


@dataclass
class Dirty:
    """Services to reconcile, and nodes whose tasks' services must be reconciled too."""

    services: set[str] = field(default_factory=set)
    nodes: set[str] = field(default_factory=set)


def dirty_from(
    events: Iterable[Event],
    nodes_before: Mapping[str, pb.Node],
    waiting: Collection[str],
    global_services: Collection[str],
    held_by: Mapping[str, Collection[str]] | None = None,
) -> Dirty:
    """Returns what the events make dirty, judging node events against the nodes as they were before them.

    waiting: the services whose plan waits for a task to reach running; global_services: the ids of the
    services that follow the set of nodes (global mode, or placement.rebalance); held_by: a service name ->
    the ids of the services holding new tasks back until it holds (depends_on).
    """
    dirty = Dirty()
    before = dict(nodes_before)
    held_by = held_by or {}
    for event in events:
        if event.kind == Kind.SERVICE:
            dirty.services.add(event.id)
            assert isinstance(event.obj, pb.Service)
            dirty.services.update(held_by.get(event.obj.name, ()))
        elif event.kind == Kind.TASK:
            task = event.obj
            assert isinstance(task, pb.Task)
            if _task_matters(event.action, task, waiting):
                dirty.services.add(task.service_id)
            # Any change of a dependency's tasks may open the gate of a service that holds tasks for it.
            dirty.services.update(held_by.get(task.service_name, ()))
        elif event.kind == Kind.NODE:
            after = event.obj if event.action == Action.PUT else None
            assert after is None or isinstance(after, pb.Node)
            old = before.get(event.id)
            if _node_facts(old) != _node_facts(after):
                dirty.nodes.add(event.id)
                dirty.services.update(global_services)
            # A node may change twice in one batch; the second change is judged against the first.
            if after is None:
                before.pop(event.id, None)
            else:
                before[event.id] = after
    return dirty


def _task_matters(action: Action, task: pb.Task, waiting: Collection[str]) -> bool:
    if action == Action.DELETE or is_terminal(task.status.state):
        return True
    return task.status.state == pb.TASK_STATE_RUNNING and task.service_id in waiting


def _node_facts(node: pb.Node | None) -> object:
    return None if node is None else placement_facts(node)
