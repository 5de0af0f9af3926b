"""The agent's record of its tasks: what it was assigned, and its own view of each task's status.

It is persisted after every change so that a restarted agent resumes without the controller.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

from google.protobuf.message import DecodeError

from dockyard.v1 import agent_pb2 as apb
from dockyard.v1 import types_pb2 as pb


class TaskBook:
    """Tasks by id, each carrying the status the agent observed (never older than the controller's)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._tasks: dict[str, pb.Task] = {}
        self.full_sync_seen = False  # a full assignment set arrived in this process's life
        self._pending_save: asyncio.TimerHandle | None = None

    def save_soon(self, delay: float = 0.05) -> None:
        """Saves within delay seconds, coalescing a burst of changes into one write.

        Losing the last few changes to a crash is harmless: the agent re-adopts its containers by label
        and the controller's full set restores its assignments.
        """
        if self._pending_save is None:
            self._pending_save = asyncio.get_running_loop().call_later(delay, self._flush)

    def _flush(self) -> None:
        self._pending_save = None
        self.save()

    def close(self) -> None:
        """Writes any pending change now."""
        if self._pending_save is not None:
            self._pending_save.cancel()
            self._flush()

    def load(self) -> None:
        """Reads the persisted tasks, if any."""
        if not self._path.exists():
            return
        try:
            saved = apb.Assignments.FromString(self._path.read_bytes())
        except DecodeError:
            return  # torn by a crash: the containers' labels and the controller's full set rebuild it
        self._tasks = {t.id: t for t in saved.tasks}

    def save(self) -> None:
        """Writes the tasks atomically (write, rename).

        No fsync: after a power cut an agent that finds the file torn adopts its containers from their labels.
        """
        data = apb.Assignments(kind=apb.Assignments.KIND_FULL, tasks=list(self._tasks.values())).SerializeToString()
        self._path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._path.with_suffix(".tmp")
        with open(tmp, "wb") as handle:
            handle.write(data)
        os.replace(tmp, self._path)

    def get(self, task_id: str) -> pb.Task | None:
        """Returns the task, or None."""
        return self._tasks.get(task_id)

    def __iter__(self) -> Iterator[pb.Task]:
        return iter(list(self._tasks.values()))

    def __len__(self) -> int:
        return len(self._tasks)

    def apply_full(self, tasks: list[pb.Task]) -> set[str]:
        """Takes a full set: upserts its tasks, marks every other one for shutdown; returns the changed ids."""
        self.full_sync_seen = True
        changed: set[str] = set()
        incoming = {t.id for t in tasks}
        for task in tasks:
            if self.upsert(task):
                changed.add(task.id)
        for task_id in list(self._tasks):
            if task_id not in incoming and self.drop(task_id):
                changed.add(task_id)
        return changed

    def upsert(self, task: pb.Task) -> bool:
        """Merges a task from the controller, keeping the further-along status; returns whether it changed."""
        known = self._tasks.get(task.id)
        if known is not None and task.version and task.version < known.version:
            return False  # a stale copy that raced a newer one
        merged = pb.Task()
        merged.CopyFrom(task)
        if known is not None and known.status.state > task.status.state:
            merged.status.CopyFrom(known.status)
        if known == merged:
            return False
        self._tasks[task.id] = merged
        return True

    def drop(self, task_id: str) -> bool:
        """Marks a task the controller no longer assigns for shutdown; forgotten once its container is gone."""
        known = self._tasks.get(task_id)
        if known is None or known.desired_state == pb.DESIRED_STATE_SHUTDOWN:
            return False
        known.desired_state = pb.DESIRED_STATE_SHUTDOWN
        return True

    def set_status(self, task_id: str, status: pb.TaskStatus) -> None:
        """Records the agent's own observation of a task."""
        known = self._tasks.get(task_id)
        if known is not None:
            known.status.CopyFrom(status)

    def forget(self, task_id: str) -> None:
        """Removes a finished task whose container is gone."""
        self._tasks.pop(task_id, None)

    def inventory(self) -> list[apb.InventoryItem]:
        """Returns every task's id, status and generation, for the session's hello."""
        return [apb.InventoryItem(task_id=t.id, status=t.status, generation=t.generation) for t in self._tasks.values()]
