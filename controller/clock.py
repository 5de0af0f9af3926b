"""The time source roles take, so tests can drive them with a virtual clock."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    """Tells the current time."""

    def now(self) -> datetime:
        """Returns the current aware UTC time."""
        ...


class SystemClock:
    """The wall clock."""

    def now(self) -> datetime:
        """Returns the current aware UTC time."""
        return datetime.now(UTC)
