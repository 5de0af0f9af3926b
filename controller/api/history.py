"""A service's kept revisions as the API answers them, and which one a requested rollback returns to. Pure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from controller.orchestrator.rollout import ROLLBACK_STATES
from controller.store.base import ServiceRevision
from dockyard.spec.diff import CONTROLLER_ONLY, same_task_spec
from dockyard.spec.issues import Issue
from dockyard.timestamps import to_timestamp
from dockyard.v1 import controller_pb2 as cpb
from dockyard.v1 import types_pb2 as pb

__all__ = ["Resume", "history_response", "rollback_target"]


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


@dataclass(frozen=True)
class Resume:
    """A requested rollback to the spec of a paused rollout: it resumes that rollout (rollout.resumed) instead."""

    revision: int


# A rollback request whose target has the current spec goes on with these instead of being refused.
_PAUSED = frozenset({pb.UpdateStatus.STATE_PAUSED, pb.UpdateStatus.STATE_ROLLBACK_PAUSED})
_APART_FROM = ", ".join(CONTROLLER_ONLY[:-1]) + f" and {CONTROLLER_ONLY[-1]}"


def rollback_target(
    service: pb.Service, revisions: Sequence[ServiceRevision], to_revision: int
) -> ServiceRevision | Resume | Issue:
    """Returns the revision a rollback goes to (to_revision 0: the one before the current spec), or why not.

    When a rollback made the current spec, to_revision 0 is the newest revision before the one rolled back
    from (update_status.from_revision) whose spec is not the failed one: never the spec the rollback left.
    The target must be kept and run other tasks than the current spec (diff.same_task_spec); one that runs
    the same is Resume when the rollout of the current spec is paused (PAUSED, ROLLBACK_PAUSED), else refused.
    """
    kept = {r.revision: r for r in revisions}
    listing = ", ".join(str(r) for r in sorted(kept)) or "none"
    status = service.update_status
    # A rollback made the current spec while the latest rollout (to_revision) is the current spec's.
    rolled_back = status.state in ROLLBACK_STATES and status.to_revision == service.spec_revision
    if to_revision == 0:
        found = _default_target(service, kept, listing, rolled_back=rolled_back)
        if isinstance(found, Issue):
            return found
        target = found
    else:
        if to_revision not in kept:
            return Issue(
                "to_revision",
                f"revision {to_revision} of {service.name!r} is not kept (kept: {listing}); "
                f"give one of those (see `dockyard history {service.name}`)",
            )
        target = kept[to_revision]
    if same_task_spec(target.spec, service.spec):
        # As applying the current spec again does (controller/api/apply.py).
        if status.state in _PAUSED:
            return Resume(target.revision)
        if to_revision == 0 and rolled_back:
            return Issue(
                "service",
                f"{service.name!r} was rolled back from revision {status.from_revision} and runs the spec of "
                f"revision {target.revision} already; give the revision to go to (see `dockyard history "
                f"{service.name}`)",
            )
        field = "to_revision" if to_revision else "service"
        return Issue(
            field,
            f"revision {target.revision} of {service.name!r} has the current spec (apart from {_APART_FROM}); "
            "give a revision with another spec, or apply (or scale) to change those",
        )
    return target


def _default_target(
    service: pb.Service, kept: Mapping[int, ServiceRevision], listing: str, *, rolled_back: bool
) -> ServiceRevision | Issue:
    if not rolled_back:
        earlier = [r for r in sorted(kept) if r < service.spec_revision]
        if not earlier:
            return Issue(
                "service",
                f"{service.name!r} keeps no revision before its current spec (revision {service.spec_revision}; "
                f"kept: {listing}); there is nothing to roll back to",
            )
        return kept[earlier[-1]]
    # Going back from a rollback must not run the spec it escaped again: the revisions from the one rolled
    # back from up to the current spec ran it (they differ at most in controller-only fields).
    left = service.update_status.from_revision
    failed = [kept[r].spec for r in kept if left <= r < service.spec_revision]
    earlier = [r for r in sorted(kept) if r < left and not any(same_task_spec(kept[r].spec, spec) for spec in failed)]
    if not earlier:
        return Issue(
            "service",
            f"{service.name!r} was rolled back from revision {left} and keeps no other spec before it "
            f"(kept: {listing}); there is nothing to roll back to",
        )
    return kept[earlier[-1]]
