"""Request checks that are about the request, not about one service spec; limits come from the spec's table."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from google.protobuf.descriptor import EnumDescriptor

from dockyard.spec import schema
from dockyard.spec.issues import Issue, key_path, service_path
from dockyard.spec.validation import (
    depends_on_issues,
    label_issues,
    label_key_issues,
    replica_budget_issues,
    replicas_message,
    service_issues,
)
from dockyard.v1 import types_pb2 as pb

MAX_REPLICAS = schema.REPLICAS.maximum


def apply_errors(specs: Sequence[pb.ServiceSpec], existing: Mapping[str, pb.Service] | None = None) -> list[Issue]:
    """Returns every problem of an apply request; str(issue) is "<field path>: <problem and fix>".

    `existing` maps the name of every service in the cluster to it; given, the replicas the request
    would leave in the cluster are checked against the cluster's cap too.
    """
    if not specs:
        return [Issue("services", "at least one service is required")]
    errors: list[Issue] = []
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            errors.append(Issue(service_path(spec.name), "listed more than once; give each service once per request"))
        seen.add(spec.name)
        errors.extend(service_issues(spec))
    errors.extend(replica_budget_issues(specs, existing or {}))
    return errors


def dependency_graph(
    specs: Sequence[pb.ServiceSpec], existing: Mapping[str, pb.Service], removed: Collection[str] = ()
) -> dict[str, list[str]]:
    """Returns service name -> the names it depends on, for the cluster as the request would leave it.

    The request's specs replace the stored services of their names; `removed` (what prune deletes) is gone.
    """
    graph = {name: sorted(s.spec.depends_on) for name, s in existing.items() if name not in removed}
    graph.update((spec.name, sorted(spec.depends_on)) for spec in specs)
    return graph


def dependency_errors(
    specs: Sequence[pb.ServiceSpec], existing: Mapping[str, pb.Service], removed: Collection[str] = ()
) -> list[Issue]:
    """Returns the request's depends_on problems across the cluster (what prune deletes is gone): unknown
    services, then a cycle through request and stored services alike (dockyard.spec.validation's rule)."""
    return depends_on_issues(specs, {name: s for name, s in existing.items() if name not in removed})


def replicas_error(replicas: int) -> Issue | None:
    """Returns the problem with a replica count, or None when it is allowed."""
    if schema.REPLICAS.minimum <= replicas <= MAX_REPLICAS:
        return None
    return Issue("replicas", replicas_message(str(replicas)))


def scale_errors(service: pb.Service, replicas: int, existing: Mapping[str, pb.Service]) -> list[Issue]:
    """Returns the problems of scaling `service` to `replicas`: the count itself, then the cluster's cap."""
    problem = replicas_error(replicas)
    if problem is not None:
        return [problem]
    scaled = pb.ServiceSpec()
    scaled.CopyFrom(service.spec)
    scaled.replicas = replicas
    return replica_budget_issues([scaled], existing)


def enum_error(path: str, value: int, enum: EnumDescriptor, what: str) -> Issue | None:
    """Returns the problem with an enum number the proto does not define (proto3 enums accept any), else None.

    Stored as is, an undefined number would be a state no role knows how to act on.
    """
    if value in enum.values_by_number:
        return None
    names = ", ".join(v.name for v in enum.values if v.number != 0)
    return Issue(path, f"{value} is not {what}; give one of {names}")


def node_update_errors(availability: int, set_labels: Mapping[str, str], remove_labels: Sequence[str]) -> list[Issue]:
    """Returns the problems of a node update: an availability the proto does not define, then its labels."""
    problem = enum_error("availability", availability, pb.NodeAvailability.DESCRIPTOR, "an availability")
    return [*([problem] if problem else []), *node_label_errors(set_labels, remove_labels)]


def node_label_errors(set_labels: Mapping[str, str], remove_labels: Sequence[str]) -> list[Issue]:
    """Returns the problems of a node label change: labels a service could not have, a key both set and removed."""
    errors: list[Issue] = []
    for key, value in set_labels.items():
        errors.extend(label_issues(key, value, key_path("labels", key)))
    for key in remove_labels:
        errors.extend(label_key_issues(key, key_path("labels", key)))
    errors.extend(
        Issue(key_path("labels", key), "both set and removed; do one")
        for key in sorted(set(set_labels) & set(remove_labels))
    )
    return errors
