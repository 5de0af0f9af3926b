"""Checks `dockyard up` makes before it starts anything.

The controller refuses a busy address itself, but by then the local agent may have dialled whatever holds
the address and joined another cluster; so `up` looks first.
"""

from __future__ import annotations

from dockyard.addresses import address_in_use

__all__ = ["address_problem"]


def address_problem(listen: str) -> str | None:
    """Returns a one-line reason naming the holder when the controller could not bind `listen` now, else None."""
    problem = address_in_use(listen)
    if problem is None:
        return None
    return f"{problem} (another cluster? `dockyard down --state-dir DIR` stops it)"
