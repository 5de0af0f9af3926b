"""Request checks that are about the request, not about one service spec."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from dockyard.spec import validate_service
from dockyard.spec.paths import key_path
from dockyard.v1 import types_pb2 as pb

MAX_REPLICAS = 10000


def apply_errors(specs: Sequence[pb.ServiceSpec]) -> list[str]:
    """Returns every problem of an apply request, each as "<field path>: <problem and fix>"."""
    if not specs:
        return ["services: at least one service is required"]
    errors: list[str] = []
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            errors.append(
                f"{key_path('services', spec.name)}: listed more than once; give each service once per request"
            )
        seen.add(spec.name)
        errors.extend(validate_service(spec))
    return errors


def replicas_error(replicas: int) -> str | None:
    """Returns the problem with a replica count, or None when it is allowed."""
    if 0 <= replicas <= MAX_REPLICAS:
        return None
    return f"replicas: must be an integer from 0 to {MAX_REPLICAS}, got {replicas}"


def node_label_errors(set_labels: Mapping[str, str], remove_labels: Sequence[str]) -> list[str]:
    """Returns the problems of a node label change: empty or reserved keys, a key both set and removed."""
    errors: list[str] = []
    for key in [*set_labels, *remove_labels]:
        if not key or any(c.isspace() or c in "=," for c in key):
            errors.append(f"labels: {key!r} is not a usable key; use letters, digits, '.', '-' or '_'")
        elif key.startswith("dockyard."):
            errors.append(f"labels.{key}: the dockyard. prefix is reserved; choose another key")
    errors.extend(f"labels.{key}: both set and removed; do one" for key in sorted(set(set_labels) & set(remove_labels)))
    return errors
