"""A stand-in for the rollback writer controller/orchestrator/rollout.py is adding (the design's semantics).

Replaced by an import of the real one once it is in main; until then RollbackService codes against this.
"""

from __future__ import annotations

from datetime import datetime

from dockyard.timestamps import to_timestamp
from dockyard.v1 import types_pb2 as pb


def rollback_service(
    service: pb.Service,
    to_revision: int,
    spec: pb.ServiceSpec,
    also_current: tuple[int, int],
    cause: str,
    now: datetime,
) -> pb.Service:
    """Returns the service as a rollback to `to_revision` (whose spec is `spec`) writes it."""
    rolled = pb.Service()
    rolled.CopyFrom(service)
    rolled.spec.CopyFrom(spec)
    rolled.revision = service.revision + 1
    rolled.spec_revision = rolled.revision
    rolled.also_current_from, rolled.also_current_to = also_current
    rolled.change_cause = cause
    rolled.updated_at.CopyFrom(to_timestamp(now))
    rolled.update_status.Clear()
    rolled.update_status.state = pb.UpdateStatus.STATE_ROLLBACK_STARTED
    rolled.update_status.from_revision = service.spec_revision
    rolled.update_status.to_revision = rolled.revision
    rolled.update_status.started_at.CopyFrom(to_timestamp(now))
    rolled.update_status.message = cause
    return rolled
