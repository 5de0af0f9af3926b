"""Which of a service's running tasks a rebalance moves, so that its spread holds again. Pure.

The spread holds when the service's task counts on the eligible nodes differ by at most one (so none holds
more than ceil(n / eligible nodes), none fewer than floor) and none holds more than
placement.max_replicas_per_node. Counted are the service's live tasks: desired running, not stopped, not
already being moved (`replaced`). Tasks on nodes that are not eligible (draining, paused, down, not matching)
are neither counted nor moved: draining moves its own, and the others stay where they are by design.

A live task with no node yet (a successor waiting for the scheduler, a replacement) is counted where the
scheduler's spread will put it: on the least loaded eligible node it does not avoid. So a move in flight is
counted once, where it goes, and the next call does not make it again.

The moves are chosen by playing them out: take the most loaded node that still has a RUNNING task to move
(ties by node id), move its newest one (created_at, ties by task id) to the least loaded other node (ties by
node id), and repeat while that gains (the two differ by two or more) and the receiving node stays within
max_replicas_per_node. Only RUNNING tasks move (a starting one is not disturbed; it counts where it is). The
scheduler, not this module, picks where each successor goes; the successor avoids its old node, and the
spread scorer then prefers the emptiest nodes, as the playing out assumes.

A node that a live task of the service sits on although it avoids it (`avoid_node_ids`) gives nothing: the
scheduler uses an avoided node only when no other node could take the task, so a move off that node would
only come back to it, restarting a container on every pass with placement.rebalance. It stays so while that
task lives there (a new spec or the task's end clears it), even if a node joins meanwhile: a missed move
leaves running work alone, a futile one disturbs it.

Global services have one task per node and jobs run to completion: neither is rebalanced.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from dockyard.task_state import is_terminal
from dockyard.v1 import types_pb2 as pb


def to_move(service: pb.Service, tasks: Sequence[pb.Task], eligible_node_ids: Collection[str]) -> list[pb.Task]:
    """Returns the running tasks to move start-first (most loaded node first, its newest task first) so that the
    service's counts on the eligible nodes differ by at most one and max_replicas_per_node holds where it can."""
    if service.spec.mode in (pb.SERVICE_MODE_GLOBAL, pb.SERVICE_MODE_JOB) or not eligible_node_ids:
        return []
    eligible = sorted(set(eligible_node_ids))
    loads = dict.fromkeys(eligible, 0)
    movable: dict[str, list[pb.Task]] = {node_id: [] for node_id in eligible}
    unplaced: list[pb.Task] = []
    came_back: set[str] = set()
    for task in tasks:
        if task.service_id != service.id or not _live(task):
            continue
        if not task.node_id:
            unplaced.append(task)
        elif task.node_id in loads:
            loads[task.node_id] += 1
            if task.status.state == pb.TASK_STATE_RUNNING:
                movable[task.node_id].append(task)
            if task.node_id in task.avoid_node_ids:
                came_back.add(task.node_id)
    for task in sorted(unplaced, key=lambda t: t.id):
        avoided = set(task.avoid_node_ids)
        preferred = [node_id for node_id in eligible if node_id not in avoided] or eligible
        loads[min(preferred, key=lambda n: (loads[n], n))] += 1
    per_node = service.spec.placement.max_replicas_per_node
    for found in movable.values():
        # Newest last, so pop() takes the newest; created_at, then id, so equal stamps still order one way.
        found.sort(key=lambda t: (t.created_at.seconds, t.created_at.nanos, t.id))
    moves: list[pb.Task] = []
    while True:
        sources = [node_id for node_id in eligible if movable[node_id] and node_id not in came_back]
        if not sources or len(eligible) < 2:
            break
        source = min(sources, key=lambda n: (-loads[n], n))
        target = min((n for n in eligible if n != source), key=lambda n: (loads[n], n))
        if loads[source] < loads[target] + 2 or (per_node and loads[target] + 1 > per_node):
            break  # no gain left, or nowhere with room: a move would only leave a successor waiting for a node
        moves.append(movable[source].pop())
        loads[source] -= 1
        loads[target] += 1
    return moves


def _live(task: pb.Task) -> bool:
    """Tells whether the task occupies a place of its service: wanted running, not stopped, not being moved."""
    return task.desired_state == pb.DESIRED_STATE_RUNNING and not is_terminal(task.status.state) and not task.replaced
