"""The agent's record of its tasks: what it was assigned, and its own view of each task's status.

It is persisted after every change so that a restarted agent resumes without the controller.

Tasks name the service revision they run; the spec of each (service id, revision) is kept once, beside
the tasks, never copied into each of them. In memory and on disk a task's `spec` field is always empty.
Specs that tasks refer to are persisted with them (old files with specs inside their tasks load too).
Specs the controller sent during the current session are kept even when no task refers to them any more,
because the controller leaves a spec out of later messages of the session once it has sent it; a full
set starts that over on both sides.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from google.protobuf.message import DecodeError

from dockyard.clock import Clock, SystemClock
from dockyard.task_state import SpecKey, spec_key
from dockyard.v1 import agent_pb2 as apb
from dockyard.v1 import types_pb2 as pb


class TaskBook:
    """Tasks by id, each carrying the status the agent observed (never older than the controller's)."""

    def __init__(self, path: Path, clock: Clock | None = None) -> None:
        self._path = path
        self._clock: Clock = clock or SystemClock()
        self._tasks: dict[str, pb.Task] = {}
        self._specs: dict[SpecKey, pb.ServiceSpec] = {}
        self.full_sync_seen = False  # a full assignment set arrived in this process's life
        self._pending_save: asyncio.Task[None] | None = None

    # ----- persistence ----------------------------------------------------------------------------------

    def save_soon(self, delay: float = 0.05) -> None:
        """Saves within delay seconds, coalescing a burst of changes into one write.

        Losing the last few changes to a crash is harmless: the agent re-adopts its containers by label
        and the controller's full set restores its assignments.
        """
        if self._pending_save is None:
            self._pending_save = asyncio.get_running_loop().create_task(self._save_after(delay))

    async def _save_after(self, delay: float) -> None:
        await self._clock.sleep(delay)
        self._pending_save = None
        self.save()

    def close(self) -> None:
        """Writes any pending change now."""
        if self._pending_save is not None:
            self._pending_save.cancel()
            self._pending_save = None
            self.save()

    def load(self) -> None:
        """Reads the persisted tasks and their specs, if any."""
        if not self._path.exists():
            return
        try:
            saved = apb.Assignments.FromString(self._path.read_bytes())
        except DecodeError:
            return  # torn by a crash: the containers' labels and the controller's full set rebuild it
        self._specs = {(s.service_id, s.revision): s.spec for s in saved.specs}
        self._tasks = {}
        for task in saved.tasks:
            self._take_embedded_spec(task)  # a file written before specs were kept per revision
            self._tasks[task.id] = task

    def save(self) -> None:
        """Writes the tasks and the specs they run atomically (write, rename).

        Only those: never the file data or registry credentials an Assignments message carries (the secrets
        stay in memory and on tmpfs, agent.files), which is why the message is built afresh here.

        No fsync: after a power cut an agent that finds the file torn adopts its containers from their labels.
        """
        used = {spec_key(t) for t in self._tasks.values()}
        specs = [
            apb.ServiceRevisionSpec(service_id=key[0], revision=key[1], spec=spec)
            for key, spec in self._specs.items()
            if key in used
        ]
        data = apb.Assignments(
            kind=apb.Assignments.KIND_FULL, tasks=list(self._tasks.values()), specs=specs
        ).SerializeToString()
        self._path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._path.with_suffix(".tmp")
        with open(tmp, "wb") as handle:
            handle.write(data)
        os.replace(tmp, self._path)

    # ----- reading --------------------------------------------------------------------------------------

    def get(self, task_id: str) -> pb.Task | None:
        """Returns the task (without its spec), or None."""
        return self._tasks.get(task_id)

    def __iter__(self) -> Iterator[pb.Task]:
        return iter(list(self._tasks.values()))

    def __len__(self) -> int:
        return len(self._tasks)

    def spec_of(self, task: pb.Task) -> pb.ServiceSpec | None:
        """Returns the spec of the revision the task runs, or None when the agent was never given it."""
        return self._specs.get(spec_key(task))

    def specs(self) -> list[pb.ServiceSpec]:
        """Returns every spec the book keeps: its tasks' and those sent in this session (see the module doc)."""
        return list(self._specs.values())

    def with_spec(self, task: pb.Task) -> pb.Task | None:
        """Returns a copy of the task with its spec filled in, or None when the spec is not known."""
        spec = self.spec_of(task)
        if spec is None:
            return None
        full = pb.Task()
        full.CopyFrom(task)
        full.spec.CopyFrom(spec)
        return full

    def inventory(self) -> list[apb.InventoryItem]:
        """Returns every task's id, status and generation, for the session's hello."""
        return [apb.InventoryItem(task_id=t.id, status=t.status, generation=t.generation) for t in self._tasks.values()]

    # ----- changes from the controller ------------------------------------------------------------------

    def apply(self, assignments: apb.Assignments) -> set[str]:
        """Takes one Assignments message, full or incremental, with its specs; returns the changed task ids."""
        if assignments.kind == apb.Assignments.KIND_FULL:
            return self.apply_full(list(assignments.tasks), assignments.specs)
        self.learn_specs(assignments.specs)
        changed = {t.id for t in assignments.tasks if self.upsert(t)}
        changed |= {i for i in assignments.removed_task_ids if self.drop(i)}
        return changed

    def learn_specs(self, specs: Iterable[apb.ServiceRevisionSpec]) -> None:
        """Keeps the spec of each (service, revision) given."""
        for item in specs:
            spec = pb.ServiceSpec()
            spec.CopyFrom(item.spec)
            self._specs[(item.service_id, item.revision)] = spec

    def apply_full(self, tasks: list[pb.Task], specs: Iterable[apb.ServiceRevisionSpec] = ()) -> set[str]:
        """Takes a full set: upserts its tasks, marks every other one for shutdown; returns the changed ids.

        The controller starts counting the specs it sent over with every full set, so the specs kept
        from before are reduced to those that tasks of the book still run.
        """
        self.full_sync_seen = True
        specs = list(specs)
        self.learn_specs(specs)
        changed: set[str] = set()
        incoming = {t.id for t in tasks}
        for task in tasks:
            if self.upsert(task):
                changed.add(task.id)
        for task_id in list(self._tasks):
            if task_id not in incoming and self.drop(task_id):
                changed.add(task_id)
        keep = {spec_key(t) for t in self._tasks.values()} | {(s.service_id, s.revision) for s in specs}
        self._specs = {key: spec for key, spec in self._specs.items() if key in keep}
        return changed

    def upsert(self, task: pb.Task) -> bool:
        """Merges a task from the controller, keeping the further-along status; returns whether it changed.

        A spec inside the task (controllers from before specs were sent per revision) is kept for its
        revision; the stored task never holds one.
        """
        known = self._tasks.get(task.id)
        if known is not None and task.version and task.version < known.version:
            return False  # a stale copy that raced a newer one
        merged = pb.Task()
        merged.CopyFrom(task)
        self._take_embedded_spec(merged)
        if known is not None and known.status.state > task.status.state:
            merged.status.CopyFrom(known.status)
        if known == merged:
            return False
        self._tasks[task.id] = merged
        return True

    def _take_embedded_spec(self, task: pb.Task) -> None:
        """Moves a spec found inside a task into the per-revision specs (a spec sent per revision wins)."""
        if task.HasField("spec"):
            key = spec_key(task)
            if key not in self._specs:
                self._specs[key] = _copy(task.spec)
            task.ClearField("spec")

    def drop(self, task_id: str) -> bool:
        """Marks a task the controller no longer assigns for shutdown; forgotten once its container is gone."""
        known = self._tasks.get(task_id)
        if known is None or known.desired_state == pb.DESIRED_STATE_SHUTDOWN:
            return False
        known.desired_state = pb.DESIRED_STATE_SHUTDOWN
        return True

    # ----- the agent's own observations -----------------------------------------------------------------

    def set_status(self, task_id: str, status: pb.TaskStatus) -> None:
        """Records the agent's own observation of a task."""
        known = self._tasks.get(task_id)
        if known is not None:
            known.status.CopyFrom(status)

    def forget(self, task_id: str) -> None:
        """Removes a finished task whose container is gone (its spec stays for the rest of the session)."""
        self._tasks.pop(task_id, None)


def _copy(spec: pb.ServiceSpec) -> pb.ServiceSpec:
    copy = pb.ServiceSpec()
    copy.CopyFrom(spec)
    return copy
