"""The errors that stop the controller or take it out of service; one line each, for an operator to act on."""

from __future__ import annotations

# The exit code of a StartupError: the supervisor of `dockyard up` does not restart a child that exits with
# it, because starting again with the same state and flags fails the same way. Its home is that contract.
from dockyard.config_file import EXIT_CONFIG

__all__ = ["DAMAGED_RETRY_SECONDS", "EXIT_CONFIG", "StartupError", "StoreDamaged"]

# How often a role that met a damaged store looks again (after a restore, or a transient read error). Until
# then the controller stays up, NOT_SERVING, so the damage can be seen and the state file replaced.
DAMAGED_RETRY_SECONDS = 30.0


class StartupError(Exception):
    """The controller cannot start as configured (address in use, damaged store); str() is the whole story."""


class StoreDamaged(StartupError):
    """The state file cannot be read as a Dockyard store; the message names the file and how to restore it.

    Raised at open (the controller then exits with EXIT_CONFIG), and by reads and commits that meet a
    damaged page while running (the API then answers UNAVAILABLE and health reports NOT_SERVING).
    """
