"""The one-line explanation given for a task that could not be placed."""

from __future__ import annotations

from collections.abc import Mapping

from controller.scheduler.feasibility import Rejection

RejectionKey = tuple[int, Rejection]
"""A rejection and the position of the filter that gave it."""


def unplaced_reason(node_count: int, rejections: Mapping[RejectionKey, int]) -> str:
    """Returns e.g. "3 nodes: 2 lack memory (need 512MiB), 1 has port 8080/tcp in use", or "no nodes".

    Each node is counted once, under the first filter that rejected it; parts are ordered by count, then
    filter order, so the commonest obstacle reads first.
    """
    if node_count == 0:
        return "no nodes"
    head = f"{node_count} node" if node_count == 1 else f"{node_count} nodes"
    ordered = sorted(
        ((count, index, rejection) for (index, rejection), count in rejections.items()),
        key=lambda item: (-item[0], item[1], item[2].many, item[2].one),
    )
    parts = [f"{count} {rejection.one if count == 1 else rejection.many}" for count, _, rejection in ordered]
    return f"{head}: {', '.join(parts)}" if parts else f"{head}: none feasible"
