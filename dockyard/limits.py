"""Limits on what crosses the wire, in one place: the controller enforces them, the agent and the CLI plan by them.

Limits on what a service spec may hold live in the spec's field table (dockyard.spec); these are the
protocol's own.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "AGENT_MESSAGE_BYTES",
    "STATUS_TEXT_BYTES",
    "truncate_text",
]

# An agent's session carries full assignment sets with one spec per revision; specs are capped by the spec
# table, so a node's set stays far below this, but it is above gRPC's 4 MiB default on purpose.
AGENT_MESSAGE_BYTES: Final = 64 * 1024 * 1024

# A task's status message and error as an agent reports them. Longer text is cut, so that one agent's
# chatter can never make a list of tasks too big for anyone to read.
STATUS_TEXT_BYTES: Final = 2048

_CUT_MARK: Final = " [truncated]"


def truncate_text(text: str, limit: int) -> str:
    """Returns text cut to at most `limit` UTF-8 bytes on a character boundary, marked when it was cut."""
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= limit:
        return text
    room = max(0, limit - len(_CUT_MARK))
    return data[:room].decode("utf-8", "ignore") + _CUT_MARK
