"""Limits on what crosses the wire, in one place: the controller enforces them, the agent and the CLI plan by them.

Limits on what a service spec may hold live in the spec's field table (dockyard.spec); these are the
protocol's own. What an agent sends is cut or dropped to these sizes by the dispatcher; what the controller
sends an agent is bounded by the spec limits and the tasks a node runs, and the dispatcher logs an error
when a node's full set would not fit in AGENT_MESSAGE_BYTES (the agent then cannot hold a session).
"""

from __future__ import annotations

import re
from typing import Final

__all__ = [
    "AGENT_COMMANDS",
    "AGENT_MESSAGE_BYTES",
    "COMMAND_RESULT_BYTES",
    "CONNECT_TIMEOUT_SECONDS",
    "CONTAINER_ID_BYTES",
    "CONTROLLER_PORT",
    "DEFAULT_CONTROLLER",
    "HEALTH_OUTPUT_BYTES",
    "HELLO_IMAGES",
    "HELLO_TIMEOUT_SECONDS",
    "HELLO_VOLUMES",
    "IMAGE_PIECES_IN_FLIGHT",
    "IMAGE_PIECE_BYTES",
    "NODE_LABELS",
    "NODE_TEXT_BYTES",
    "REDIAL_CAP_SECONDS",
    "STATUS_TEXT_BYTES",
    "clean_text",
    "truncate_text",
]

# Where the controller listens unless told otherwise, and where the CLI and agents look for it.
CONTROLLER_PORT: Final = 7465
DEFAULT_CONTROLLER: Final = f"127.0.0.1:{CONTROLLER_PORT}"

# An agent's session carries full assignment sets with one spec per revision. Specs are capped by the spec
# table (256 KiB), so a node would need about 250 distinct revisions to reach this; it is above gRPC's 4 MiB
# default on purpose.
AGENT_MESSAGE_BYTES: Final = 64 * 1024 * 1024

# A task's status message and error as an agent reports them. Longer text is cut, so that one agent's
# chatter can never make a list of tasks too big for anyone to read.
STATUS_TEXT_BYTES: Final = 2048

# The last health probe's output as a task's status carries it: enough for the line that says why (Docker
# keeps 4 KiB per probe), small enough that a status report with health stays one small message.
HEALTH_OUTPUT_BYTES: Final = 512

# A container id as Docker makes it is 64 hex characters.
CONTAINER_ID_BYTES: Final = 128

# What an agent says about its host: each text (host name, OS, versions) and how many labels it may set.
NODE_TEXT_BYTES: Final = 255
NODE_LABELS: Final = 64

# How an agent re-dials: a dial not connected within CONNECT_TIMEOUT_SECONDS (the agent's default for
# --connect-timeout) is abandoned, and the delay between dials grows to at most REDIAL_CAP_SECONDS. A
# restarted controller gives silent nodes that long on top of the heartbeat grace.
CONNECT_TIMEOUT_SECONDS: Final = 3.0
REDIAL_CAP_SECONDS: Final = 1.5

# A session stream must open with its hello within this; a stream that does not is closed, so streams that
# never speak cost the controller nothing for long. Agents send the hello as soon as the stream is open.
HELLO_TIMEOUT_SECONDS: Final = 10.0

# The command channel (controller/dispatcher/commands.py, agent/commands.py). One CommandResult's data is at
# most COMMAND_RESULT_BYTES (a larger one fails its command); an agent runs at most AGENT_COMMANDS commands at
# once and answers more with an error at once. An image push travels in pieces of IMAGE_PIECE_BYTES, at most
# IMAGE_PIECES_IN_FLIGHT of them unacknowledged per node, so a push holds a few MiB per node on either side.
COMMAND_RESULT_BYTES: Final = 1024 * 1024
AGENT_COMMANDS: Final = 16
IMAGE_PIECE_BYTES: Final = 1024 * 1024
IMAGE_PIECES_IN_FLIGHT: Final = 4

# The image references a hello lists (the controller keeps which node has which image from them); a host with
# more lists the first ones, and a task needing another is simply not known to be pushable from it.
HELLO_IMAGES: Final = 4096

# The Dockyard volumes a hello lists (the controller makes records of volumes it did not know); a host with more
# lists the first ones by name.
HELLO_VOLUMES: Final = 4096

_CUT_MARK: Final = " [truncated]"

# Control characters but tab and newline (C0, DEL, C1): in a peer's text they would reach an operator's terminal
# through the CLI as escape sequences (moving the cursor, rewriting earlier lines, setting the window title).
_CONTROLS: Final = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_REPLACEMENT: Final = "\ufffd"


def truncate_text(text: str, limit: int) -> str:
    """Returns text cut to at most `limit` UTF-8 bytes on a character boundary, marked when it was cut."""
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= limit:
        return text
    room = max(0, limit - len(_CUT_MARK))
    return data[:room].decode("utf-8", "ignore") + _CUT_MARK


def clean_text(text: str, limit: int) -> str:
    """Returns a peer's text with control characters (but tab and newline) replaced by U+FFFD, cut as truncate_text."""
    return truncate_text(_CONTROLS.sub(_REPLACEMENT, text), limit)
