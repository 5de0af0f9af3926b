"""Request checks that are about the request, not about one service spec."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from dockyard.spec.errors import Issue
from dockyard.spec.paths import key_path
from dockyard.spec.validation import service_issues
from dockyard.v1 import types_pb2 as pb

MAX_REPLICAS = 10000


def apply_errors(specs: Sequence[pb.ServiceSpec]) -> list[Issue]:
    """Returns every problem of an apply request; str(issue) is "<field path>: <problem and fix>"."""
    if not specs:
        return [Issue("services", "at least one service is required")]
    errors: list[Issue] = []
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            errors.append(
                Issue(key_path("services", spec.name), "listed more than once; give each service once per request")
            )
        seen.add(spec.name)
        errors.extend(service_issues(spec))
    return errors


def replicas_error(replicas: int) -> Issue | None:
    """Returns the problem with a replica count, or None when it is allowed."""
    if 0 <= replicas <= MAX_REPLICAS:
        return None
    return Issue("replicas", f"must be an integer from 0 to {MAX_REPLICAS}, got {replicas}")


def node_label_errors(set_labels: Mapping[str, str], remove_labels: Sequence[str]) -> list[Issue]:
    """Returns the problems of a node label change: empty or reserved keys, a key both set and removed."""
    errors: list[Issue] = []
    for key in [*set_labels, *remove_labels]:
        if not key or any(c.isspace() or c in "=," for c in key):
            errors.append(Issue("labels", f"{key!r} is not a usable key; use letters, digits, '.', '-' or '_'"))
        elif key.startswith("dockyard."):
            errors.append(Issue(f"labels.{key}", "the dockyard. prefix is reserved; choose another key"))
    errors.extend(
        Issue(f"labels.{key}", "both set and removed; do one") for key in sorted(set(set_labels) & set(remove_labels))
    )
    return errors
