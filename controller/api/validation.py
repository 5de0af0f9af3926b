"""Request checks that are about the request, not about one service spec."""

from __future__ import annotations

from collections.abc import Sequence

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
