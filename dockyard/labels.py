"""The labels that mark every container, volume and network Dockyard creates; the agent adopts and reaps by them."""

from __future__ import annotations

from collections.abc import Mapping

from dockyard.spec.schema import LABELS

# Users may not set labels under this prefix (the spec's table reserves it), so these are always ours.
PREFIX = LABELS.reserved_prefix
MANAGED = f"{PREFIX}managed"
TASK_ID = f"{PREFIX}task.id"
SERVICE_ID = f"{PREFIX}service.id"
SERVICE_NAME = f"{PREFIX}service.name"
SLOT = f"{PREFIX}slot"
REVISION = f"{PREFIX}revision"
NODE_ID = f"{PREFIX}node.id"
GENERATION = f"{PREFIX}generation"

# On Docker objects other than containers (all also carry MANAGED). A volume's cluster-wide name, a network's
# cluster network name (its Docker name may differ), and the stack either belongs to ("" or absent: none).
VOLUME = f"{PREFIX}volume"
NETWORK = f"{PREFIX}network"
STACK = f"{PREFIX}stack"


def is_dockyards(object_labels: Mapping[str, str]) -> bool:
    """Tells whether a Docker volume or network carrying these labels is Dockyard's (MANAGED), so it may be reused.

    One of another tool's (`docker compose` names its networks `<project>_default`, as a stack's are) is never
    reused, recreated or removed by the runtime: the agent refuses it and says so.
    """
    return object_labels.get(MANAGED) == "true"
