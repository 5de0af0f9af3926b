"""Collects status transitions for the controller; the session sends them while connected."""

from __future__ import annotations

import asyncio

from dockyard.v1 import agent_pb2 as apb
from dockyard.v1 import types_pb2 as pb


class Reporter:
    """Keeps the latest unsent status per task; a reconnecting session's hello carries them all anyway."""

    def __init__(self) -> None:
        self._pending: dict[str, pb.TaskStatus] = {}
        self._ready = asyncio.Event()

    def report(self, task_id: str, status: pb.TaskStatus) -> None:
        """Queues a task's new status, replacing an unsent older one."""
        self._pending[task_id] = status
        self._ready.set()

    async def take(self) -> apb.StatusUpdate:
        """Waits for statuses and returns all of them as one update."""
        await self._ready.wait()
        self._ready.clear()
        updates = [apb.TaskStatusUpdate(task_id=k, status=v) for k, v in self._pending.items()]
        self._pending.clear()
        return apb.StatusUpdate(updates=updates)

    def clear(self) -> None:
        """Drops what is queued: a new session's hello inventory already says it."""
        self._pending.clear()
        self._ready.clear()
