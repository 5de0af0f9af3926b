"""The labels that mark every container Dockyard creates; the agent adopts and reaps by them."""

from __future__ import annotations

PREFIX = "dockyard."
MANAGED = "dockyard.managed"
TASK_ID = "dockyard.task.id"
SERVICE_ID = "dockyard.service.id"
SERVICE_NAME = "dockyard.service.name"
SLOT = "dockyard.slot"
REVISION = "dockyard.revision"
NODE_ID = "dockyard.node.id"
GENERATION = "dockyard.generation"
