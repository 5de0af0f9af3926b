"""What a role may ask of the agents through their live sessions: the command channel's interface.

The dispatcher holds the sessions and implements it (controller/dispatcher/commands.py); controller.server
hands it to the API, whose handlers (image pushes, volume removals, later logs and exec) send commands
without knowing sessions. Like the store, it is shared: the roles still never import each other.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from dockyard.v1 import agent_pb2 as apb

__all__ = ["CommandCall", "CommandFailed", "CommandSender", "NodeUnavailable"]


class CommandFailed(Exception):
    """A command got no (complete) answer: the session ended, a bound was passed, or time ran out."""


class NodeUnavailable(CommandFailed):
    """The node has no live session to send a command on."""


class CommandCall(Protocol):
    """One command on one node: send further parts, iterate the results until the one marked done."""

    command_id: str
    node_id: str

    async def send(self, command: apb.Command) -> None:
        """Sends another part of the command (same command_id); raises CommandFailed when it cannot."""
        ...

    def fail(self, reason: str) -> None:
        """Makes the call fail with `reason` (its reader sees it after the results already queued)."""
        ...

    def close(self) -> None:
        """Forgets the call: results that still arrive for it are dropped."""
        ...

    def __aiter__(self) -> AsyncIterator[apb.CommandResult]:
        """The results, ending after the done one; raises CommandFailed when the call fails."""
        ...


class CommandSender(Protocol):
    """Opens commands on nodes' sessions."""

    def open(self, node_id: str, command: apb.Command, *, idle_timeout: float | None = None) -> CommandCall:
        """Sends `command` to the node; raises NodeUnavailable (no session) or CommandFailed (too many open)."""
        ...
