"""A service's kept revisions as the API answers them, and which one a requested rollback returns to. Pure."""

from __future__ import annotations

from collections.abc import Sequence

from controller.store.base import ServiceRevision
from dockyard.spec.diff import CONTROLLER_ONLY, same_task_spec
from dockyard.spec.issues import Issue
from dockyard.timestamps import to_timestamp
from dockyard.v1 import controller_pb2 as cpb
from dockyard.v1 import types_pb2 as pb

__all__ = ["history_response", "rollback_target"]

_APART_FROM = ", ".join(CONTROLLER_ONLY[:-1]) + f" and {CONTROLLER_ONLY[-1]}"


def history_response(
    service: pb.Service, revisions: Sequence[ServiceRevision], max_bytes: int
) -> cpb.ListServiceHistoryResponse:
    """Returns the revisions (newest first, as given) that fit in max_bytes; the newest always.

    A spec may be 256 KiB and a service keeps up to --service-history revisions, so the whole history could
    exceed what a client takes in one message: the oldest are left out, as a list page's are.
    """
    response = cpb.ListServiceHistoryResponse()
    size = 0
    for kept in revisions:
        entry = cpb.ServiceRevision(
            revision=kept.revision,
            spec_revision=kept.spec_revision,
            spec=kept.spec,
            change_cause=kept.change_cause,
            current=kept.revision == service.revision,
        )
        if kept.created_at is not None:
            entry.created_at.CopyFrom(to_timestamp(kept.created_at))
        size += entry.ByteSize()
        if response.revisions and size > max_bytes:
            break
        response.revisions.append(entry)
    return response


def rollback_target(
    service: pb.Service, revisions: Sequence[ServiceRevision], to_revision: int
) -> ServiceRevision | Issue:
    """Returns the revision a rollback goes to (to_revision 0: the one before the current spec), or why not.

    The target must be kept and run other tasks than the current spec (diff.same_task_spec): a rollback to
    the current spec would change nothing an apply could not.
    """
    kept = {r.revision: r for r in revisions}
    listing = ", ".join(str(r) for r in sorted(kept)) or "none"
    if to_revision == 0:
        earlier = [r for r in sorted(kept) if r < service.spec_revision]
        if not earlier:
            return Issue(
                "service",
                f"{service.name!r} keeps no revision before its current spec (revision {service.spec_revision}; "
                f"kept: {listing}); there is nothing to roll back to",
            )
        target = kept[earlier[-1]]
    else:
        if to_revision not in kept:
            return Issue(
                "to_revision",
                f"revision {to_revision} of {service.name!r} is not kept (kept: {listing}); "
                f"give one of those (see `dockyard history {service.name}`)",
            )
        target = kept[to_revision]
    if same_task_spec(target.spec, service.spec):
        field = "to_revision" if to_revision else "service"
        return Issue(
            field,
            f"revision {target.revision} of {service.name!r} has the current spec (apart from {_APART_FROM}); "
            "give a revision with another spec, or apply (or scale) to change those",
        )
    return target
