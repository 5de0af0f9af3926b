"""The values a service gets for the fields its spec leaves out."""

from __future__ import annotations

from dockyard.spec.units import NANOS_PER_SECOND
from dockyard.v1 import types_pb2 as pb

REPLICAS = 1
# A global service's task count follows the eligible nodes, so its replicas field stays 0.
GLOBAL_REPLICAS = 0
MODE = pb.SERVICE_MODE_REPLICATED
PLACEMENT_STRATEGY = pb.Placement.STRATEGY_SPREAD
MAX_REPLICAS_PER_NODE = 0  # unlimited
STOP_GRACE_PERIOD_NANOS = 10 * NANOS_PER_SECOND
RESTART_CONDITION = pb.RestartPolicy.CONDITION_ON_FAILURE
RESTART_DELAY_NANOS = 5 * NANOS_PER_SECOND
RESTART_MAX_ATTEMPTS = 0  # unlimited
RESTART_WINDOW_NANOS = 0
PORT_PROTOCOL = "tcp"
