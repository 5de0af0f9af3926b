"""What one agent session may cost the controller, in one place: the dispatcher's own bounds.

The wire limits an agent plans by (message sizes, the hello deadline) live in dockyard/limits.py; these are
the controller's side of a session, which no agent needs to know.
"""

from __future__ import annotations

from typing import Final

from dockyard.limits import AGENT_MESSAGE_BYTES

__all__ = [
    "ASSIGNMENTS_CHUNK_BYTES",
    "COMMIT_BATCH_STATUSES",
    "COMMIT_WINDOW_SECONDS",
    "MAP_INTERVAL_SECONDS",
    "NETWORK_NAME_BYTES",
    "OUTBOX_BYTES",
    "PENDING_STATUSES_PER_NODE",
    "PUBLISH_WINDOW_SECONDS",
    "TASK_ADDRESSES",
    "WRITE_STALL_SECONDS",
]

# Statuses wait in the group committer, coalesced per (node, task), so a sane agent never has more pending
# than it runs tasks. A host runs a few hundred containers; past this many distinct task ids pending for one
# node, further ids are refused at once (counted, one log line per message), costing no store read.
PENDING_STATUSES_PER_NODE: Final = 10_000

# One transaction takes at most this many status updates; the rest go in the next one at once. It bounds how
# long one commit holds the store's writer and how much a conflict makes the committer judge again.
COMMIT_BATCH_STATUSES: Final = 5_000

# After the first status of an idle period the committer waits this long for more before committing (as
# swarmkit's dispatcher does), so a burst from many agents becomes one transaction; under load the batch that
# gathers while the previous one commits is larger anyway.
COMMIT_WINDOW_SECONDS: Final = 0.05

# What the controller holds for one agent that has not been written yet (the full set plus pending changes,
# each task once). The largest full set an agent accepts is the most a sane session can need; past it the
# agent is not reading and the session is closed instead of buffering more.
OUTBOX_BYTES: Final = AGENT_MESSAGE_BYTES

# Pending incremental changes are sent as Assignments messages of at most about this size, so a large batch
# never makes one message the agent must take whole.
ASSIGNMENTS_CHUNK_BYTES: Final = 4 * 1024 * 1024

# A write to an agent that does not complete within this is a reader that stopped reading: its session is
# closed (RESOURCE_EXHAUSTED) and the agent re-dials, rather than the controller holding its messages. The
# agent itself gives up on a silent controller after 3 heartbeat periods, so a healthy agent is never near it.
WRITE_STALL_SECONDS: Final = 10.0

# Network maps and DNS changes are published to the sessions at most this long after the change that makes
# them: a burst (a deploy's tasks turning healthy, many nodes joining) goes out as one message per session,
# and a change still reaches every agent well within a second.
PUBLISH_WINDOW_SECONDS: Final = 0.1

# A change of other nodes' subnets (a node joined, left or got a subnet of a shared network) goes out to the
# sessions at most this often, as every round sends each session its whole map; a subnet a task waits for
# goes with the task at once instead (controller/dispatcher/networks.py, the gate).
MAP_INTERVAL_SECONDS: Final = 1.0

# A task's status may name at most this many networks with an address; the rest, and any entry that is not
# an IPv4 address on a network name of sane length, are dropped.
TASK_ADDRESSES: Final = 32
NETWORK_NAME_BYTES: Final = 255
