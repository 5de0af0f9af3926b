"""Conditional writes: the caller's expected revision, and one commit-or-abort for every write RPC.

The check a caller asks for (if_revision, if_version) is made twice: against what the API read, to
name the object and its current revision in the answer, and in the store's transaction itself
(expect_version on the Put or Delete), so a write that lands between the read and the commit is
caught too.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import grpc

from controller.api.status import Context, Stale, abort, abort_stale
from controller.store.base import Check, ConflictError, Kind, Op, Store
from dockyard.v1 import types_pb2 as pb

__all__ = ["commit_or_abort", "revision_stale", "still_as_read", "version_stale"]


def revision_stale(subject: str, expected: int | None, service: pb.Service | None) -> Stale | None:
    """Returns why `service` (None: absent) fails the caller's expected revision (0: must not exist), or None."""
    if expected is None:
        return None
    if service is None:
        return None if expected == 0 else Stale(subject, f"does not exist, expected revision {expected}")
    if expected == 0:
        return Stale(subject, f"exists at revision {service.revision}, expected it not to exist")
    if service.revision != expected:
        return Stale(subject, f"revision is {service.revision}, not {expected} as expected")
    return None


def version_stale(subject: str, expected: int | None, node: pb.Node) -> Stale | None:
    """Returns why `node` fails the caller's expected version, or None when none was given or it matches."""
    if expected is None or node.version == expected:
        return None
    return Stale(subject, f"version is {node.version}, not {expected} as expected")


async def commit_or_abort(store: Store, context: Context, ops: Sequence[Op], subject: str, conditional: bool) -> int:
    """Commits ops in one transaction and returns the store revision, or ends the RPC.

    A conflict means something changed between this request's read and its commit. When the caller
    made the write conditional (if_revision, if_version) its view is stale: FAILED_PRECONDITION, read
    again. Otherwise the same request may simply be sent again: ABORTED. StoreDamaged propagates to the
    seam in controller.api.handlers, which answers UNAVAILABLE for reads and writes alike.
    """
    try:
        return await store.commit(ops)
    except ConflictError:
        if conditional:
            await abort_stale(context, [Stale(subject, "changed while this request ran")])
        await abort(context, grpc.StatusCode.ABORTED, f"{subject}: changed while this request ran; try again")


def still_as_read(services: Iterable[pb.Service]) -> list[Op]:
    """Returns a Check of each service: a removal that found no user among them commits only if none changed."""
    return [Check(Kind.SERVICE, s.id, s.version) for s in services]
