"""The limits a service must respect and how a violation is worded.

Both the YAML reader and validate_service word problems through these functions, so a mistake reads
the same whether it came from a file or from a gRPC client. Each takes the offending value as it
should be shown and returns the message that follows the field path.
"""

from __future__ import annotations

import re

from dockyard.spec.units import MIB, NANOS_PER_SECOND

MAX_REPLICAS = 10_000
MAX_PORT = 65_535
PROTOCOLS = ("tcp", "udp")
MAX_CPUS = 1024
# Docker rejects smaller memory limits when it creates the container; refusing them here fails earlier.
MIN_MEMORY_LIMIT = 6 * MIB
MAX_STOP_GRACE_PERIOD_NANOS = 3600 * NANOS_PER_SECOND
MAX_RESTART_DELAY_NANOS = 3600 * NANOS_PER_SECOND
# A day covers any maintenance window; beyond that a cut-off task is better rescheduled by hand.
MAX_STOP_AFTER_NANOS = 24 * 3600 * NANOS_PER_SECOND
MAX_UINT32 = 2**32 - 1
RESERVED_LABEL_PREFIX = "dockyard."
# Lowercase RFC 1123 label, so the name can appear in container and DNS names.
DNS_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")
GLOBAL_REPLICAS_MESSAGE = "a global service runs one task per eligible node; remove replicas or use mode: replicated"


def replicas_message(got: str) -> str:
    """Wording for a replica count outside 0..MAX_REPLICAS or of the wrong type."""
    return f"must be an integer from 0 to {MAX_REPLICAS}, got {got}"


def mode_message(got: str) -> str:
    """Wording for an unknown service mode."""
    return f"must be replicated or global, got {got}"


def max_replicas_per_node_message(got: str) -> str:
    """Wording for a per-node replica cap outside 0..MAX_REPLICAS or of the wrong type."""
    return f"must be an integer from 0 to {MAX_REPLICAS} (0 means no limit), got {got}"


def strategy_message(got: str) -> str:
    """Wording for an unknown placement strategy."""
    return f"must be spread or binpack, got {got}"


def stop_after_message(got: str) -> str:
    """Wording for an on_disconnect.stop_after outside (0s, 24h]."""
    return f"must be a duration greater than 0s and at most 24h, got {got}"


def target_port_message(got: str) -> str:
    """Wording for a container port outside 1..65535 or of the wrong type."""
    return f"must be a container port from 1 to {MAX_PORT}, got {got}"


def published_port_message(got: str) -> str:
    """Wording for a host port outside 0..65535 or of the wrong type."""
    return f"must be a host port from 0 to {MAX_PORT} (0 lets Docker pick a free one), got {got}"


def protocol_message(got: str) -> str:
    """Wording for a protocol other than tcp or udp."""
    return f'must be "tcp" or "udp", got {got}'


def cpus_ok(cpus: float) -> bool:
    """Tells whether an explicitly given CPU amount is acceptable (NaN is not)."""
    return 0 < cpus <= MAX_CPUS


def cpus_message(got: str) -> str:
    """Wording for a CPU amount that is not in (0, MAX_CPUS]."""
    return f"must be a number of CPUs greater than 0 and at most {MAX_CPUS}, got {got}"


def memory_limit_message(got: str) -> str:
    """Wording for a memory limit below Docker's minimum."""
    return f"must be at least 6MiB (the smallest limit Docker accepts), got {got}"


def memory_reservation_message(got: str) -> str:
    """Wording for a memory reservation that is not positive."""
    return f"must be greater than 0, got {got}; leave it out to reserve nothing"


def exceeds_limit_message(limit_field: str, limit: str, got: str) -> str:
    """Wording for a reservation larger than the matching limit."""
    return f"must not exceed {limit_field} ({limit}), got {got}"


def condition_message(got: str) -> str:
    """Wording for an unknown restart condition."""
    return f"must be none, on-failure or any, got {got}"


def max_attempts_message(got: str) -> str:
    """Wording for a restart attempt count that is negative, too large or of the wrong type."""
    return f"must be an integer from 0 to {MAX_UINT32} (0 means no limit), got {got}"


def bounded_duration_message(got: str) -> str:
    """Wording for stop_grace_period and restart.delay outside 0s..1h."""
    return f"must be a duration from 0s to 1h, got {got}"


def window_message(got: str) -> str:
    """Wording for a negative restart window."""
    return f"must be a duration of 0s or more, got {got}"
