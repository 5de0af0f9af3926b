"""The one retry policy for optimistic writes: read, decide, commit; on a conflict read again."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

from controller.store.base import ConflictError

__all__ = ["CONFLICT_TRIES", "retry_on_conflict"]

T = TypeVar("T")

# A conflict means another writer changed what we read; ten fresh reads in a row losing the race means
# something is writing that object continuously, and the caller should hear about it.
CONFLICT_TRIES: Final = 10


async def retry_on_conflict(attempt: Callable[[], Awaitable[T]], tries: int = CONFLICT_TRIES) -> T:
    """Runs attempt() (which must re-read what it writes) until it does not raise ConflictError.

    Raises the last ConflictError after `tries` attempts.
    """
    for _ in range(tries - 1):
        try:
            return await attempt()
        except ConflictError:
            continue
    return await attempt()
