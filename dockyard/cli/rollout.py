"""How far a service is from its spec, judged from its tasks: pure, for `apply` and `scale` to wait on."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from dockyard.task_state import is_terminal, runs_current_spec
from dockyard.v1 import types_pb2 as pb


@dataclass
class Progress:
    """Counts for one service, and the problems worth telling the user about."""

    name: str
    desired: int
    running: int = 0
    stale: int = 0  # live tasks still on an older spec
    stopping: int = 0  # tasks told to stop that still run
    rejected: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)

    @property
    def done(self) -> bool:
        """Tells whether exactly the desired tasks run, all at the current spec, and nothing else is stopping."""
        return self.running == self.desired and not self.stale and not self.stopping

    def line(self) -> str:
        """Returns a one-line summary such as "web: 2/3 running"."""
        extra = f", {self.stopping} stopping" if self.stopping else ""
        extra += f", {self.stale} to update" if self.stale else ""
        return f"{self.name}: {self.running}/{self.desired} running{extra}"


def progress(service: pb.Service, tasks: Iterable[pb.Task]) -> Progress:
    """Summarises the tasks of one service against its current spec (a task older than spec_revision is stale)."""
    result = Progress(service.name, service.spec.replicas)
    if service.spec.mode == pb.SERVICE_MODE_GLOBAL:
        # One task per eligible node: the orchestrator's live tasks are the target.
        result.desired = sum(
            1 for t in tasks if t.service_id == service.id and t.desired_state == pb.DESIRED_STATE_RUNNING
        )
    for task in tasks:
        if task.service_id != service.id:
            continue
        label = f"{service.name}.{task.slot}"
        state = task.status.state
        if task.desired_state != pb.DESIRED_STATE_RUNNING:
            if not is_terminal(state) and task.node_id:
                result.stopping += 1
            continue
        if not runs_current_spec(service, task):
            # Tasks name the revision they run; scaling moves revision but not spec_revision.
            result.stale += 1
        elif state == pb.TASK_STATE_RUNNING:
            result.running += 1
        elif state == pb.TASK_STATE_REJECTED:
            result.rejected.append(f"{label}: rejected: {task.status.error or task.status.message}")
        elif state == pb.TASK_STATE_FAILED:
            result.failed.append(f"{label}: failed: {task.status.error or task.status.message}")
        elif state == pb.TASK_STATE_PENDING:
            result.waiting.append(f"{label}: pending: {task.status.message}")
    return result
