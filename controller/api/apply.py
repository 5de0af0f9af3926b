"""Turns validated specs into service writes: pure, so apply and dry-run share one path."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from controller.orchestrator.rollout import resumed
from controller.store.base import Put
from dockyard.spec.diff import same_task_spec
from dockyard.timestamps import to_timestamp
from dockyard.v1 import controller_pb2 as cpb
from dockyard.v1 import types_pb2 as pb

# The change_cause of a revision an apply writes (history shows it); scale and rollback write their own.
APPLY_CAUSE: Final = "apply"


def scale_cause(replicas: int) -> str:
    """Returns the change_cause of a revision ScaleService writes."""
    return f"scale to {replicas}"


@dataclass(frozen=True)
class ApplyPlan:
    """The results to report and the puts to commit (empty when nothing changed)."""

    results: list[cpb.ApplyResult]
    puts: list[Put]


def plan_apply(
    specs: Sequence[pb.ServiceSpec],
    existing: dict[str, pb.Service],
    now: datetime,
    new_id: Callable[[], str],
) -> ApplyPlan:
    """Decides per spec whether it creates, updates (revision + 1) or leaves a service unchanged.

    An update moves spec_revision (a rollout) only when what tasks run changes (diff.same_task_spec). An
    unchanged service whose rollout is paused is written resumed (rollout.resumed), at the same revision; so is
    one changed only in controller-only fields, at revision + 1.
    """
    results: list[cpb.ApplyResult] = []
    puts: list[Put] = []
    stamp = to_timestamp(now)
    for spec in specs:
        current = existing.get(spec.name)
        service = pb.Service()
        if current is None:
            service.id = new_id()
            service.name = spec.name
            service.revision = 1
            service.spec_revision = 1
            service.created_at.CopyFrom(stamp)
            action = cpb.ApplyResult.ACTION_CREATED
        else:
            service.CopyFrom(current)
            if current.spec == spec:
                # Applying the spec of a paused rollout again resumes it: a write, not a new revision.
                again = resumed(current, now)
                if again != current:
                    puts.append(Put(again, expect_version=current.version))
                results.append(cpb.ApplyResult(service=again, action=cpb.ApplyResult.ACTION_UNCHANGED))
                continue
            service.revision = current.revision + 1
            if not same_task_spec(current.spec, spec):
                service.spec_revision = service.revision
                # The range a rollback returned to runs an older spec now (see Service.also_current_from).
                service.also_current_from = service.also_current_to = 0
            else:
                # The tasks stay (no rollout): new replicas, update or restart settings apply to them at once,
                # and a paused rollout goes on under them, as applying its spec again would have it.
                service = resumed(service, now)
            action = cpb.ApplyResult.ACTION_UPDATED
        service.spec.CopyFrom(spec)
        service.updated_at.CopyFrom(stamp)
        service.change_cause = APPLY_CAUSE
        puts.append(Put(service, expect_version=current.version if current is not None else 0))
        results.append(cpb.ApplyResult(service=service, action=action))
    return ApplyPlan(results, puts)


def pruned(specs: Sequence[pb.ServiceSpec], existing: Mapping[str, pb.Service]) -> list[pb.Service]:
    """Returns the stored services an apply with prune deletes: those the request does not name, by name."""
    names = {spec.name for spec in specs}
    return [existing[name] for name in sorted(existing) if name not in names]
