"""The scheduler's verdict for one pending task."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Decision:
    """Where one task goes: node_id is None when it stays unplaced, and reason then says why."""

    task_id: str
    node_id: str | None
    reason: str
