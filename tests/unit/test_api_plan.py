"""The controller API's pure parts: planning an apply, and request-level validation."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from controller.api.apply import plan_apply
from controller.api.validation import MAX_REPLICAS, apply_errors, node_label_errors, replicas_error, scale_errors
from dockyard.spec import schema
from dockyard.spec.validation import replicas_message
from dockyard.timestamps import to_timestamp
from dockyard.v1 import controller_pb2 as cpb
from dockyard.v1 import types_pb2 as pb

CREATED = datetime(2026, 1, 10, 9, 0, tzinfo=UTC)
NOW = datetime(2026, 1, 11, 10, 30, tzinfo=UTC)
IMAGE = "dockyard-test:latest"


def make_spec(name: str = "web", image: str = IMAGE, replicas: int = 2) -> pb.ServiceSpec:
    spec = pb.ServiceSpec(name=name, image=image, replicas=replicas)
    spec.env["MODE"] = "prod"
    spec.ports.add(host_port=8080, container_port=80, protocol="tcp")
    return spec


def stored(spec: pb.ServiceSpec, revision: int = 3, version: int = 17, service_id: str = "svc-web") -> pb.Service:
    service = pb.Service(id=service_id, name=spec.name, revision=revision, version=version)
    service.spec.CopyFrom(spec)
    service.created_at.CopyFrom(to_timestamp(CREATED))
    service.updated_at.CopyFrom(to_timestamp(CREATED))
    return service


def ids() -> Callable[[], str]:
    counter = itertools.count(1)
    return lambda: f"new-{next(counter)}"


def never() -> str:
    raise AssertionError("no id should be made")


# --- plan_apply -----------------------------------------------------------------------------------------


def test_a_new_service_is_created_at_revision_one_and_must_not_exist_yet() -> None:
    spec = make_spec()
    plan = plan_apply([spec], {}, NOW, ids())

    [result] = plan.results
    assert result.action == cpb.ApplyResult.ACTION_CREATED
    service = result.service
    assert (service.id, service.name, service.revision) == ("new-1", "web", 1)
    assert service.spec == spec
    assert service.created_at == to_timestamp(NOW)
    assert service.updated_at == to_timestamp(NOW)
    [put] = plan.puts
    assert put.expect_version == 0
    assert put.obj == service


def test_an_unchanged_spec_writes_nothing() -> None:
    current = stored(make_spec())
    plan = plan_apply([make_spec()], {"web": current}, NOW, never)

    assert plan.puts == []
    [result] = plan.results
    assert result.action == cpb.ApplyResult.ACTION_UNCHANGED
    assert result.service == current


def test_a_changed_spec_bumps_the_revision_and_expects_the_stored_version() -> None:
    current = stored(make_spec(), revision=3, version=17)
    before = current.SerializeToString()
    changed = make_spec(image="dockyard-test:v2")

    plan = plan_apply([changed], {"web": current}, NOW, never)

    [result] = plan.results
    assert result.action == cpb.ApplyResult.ACTION_UPDATED
    service = result.service
    assert (service.id, service.name, service.revision) == ("svc-web", "web", 4)
    assert service.spec == changed
    assert service.created_at == to_timestamp(CREATED)
    assert service.updated_at == to_timestamp(NOW)
    [put] = plan.puts
    assert put.expect_version == 17
    assert put.obj == service
    assert current.SerializeToString() == before, "the stored service must not be modified"


def test_a_replica_change_alone_is_an_update() -> None:
    current = stored(make_spec(replicas=2))
    plan = plan_apply([make_spec(replicas=5)], {"web": current}, NOW, never)
    assert plan.results[0].action == cpb.ApplyResult.ACTION_UPDATED
    assert plan.results[0].service.revision == 4
    assert len(plan.puts) == 1


def test_a_mixed_request_keeps_the_order_and_puts_only_the_changes() -> None:
    existing = {
        "web": stored(make_spec("web"), service_id="svc-web", version=5),
        "api": stored(make_spec("api"), service_id="svc-api", version=9),
    }
    specs = [make_spec("web"), make_spec("db"), make_spec("api", replicas=4), make_spec("cache")]

    plan = plan_apply(specs, existing, NOW, ids())

    assert [(r.service.name, r.action) for r in plan.results] == [
        ("web", cpb.ApplyResult.ACTION_UNCHANGED),
        ("db", cpb.ApplyResult.ACTION_CREATED),
        ("api", cpb.ApplyResult.ACTION_UPDATED),
        ("cache", cpb.ApplyResult.ACTION_CREATED),
    ]
    assert [r.service.id for r in plan.results] == ["svc-web", "new-1", "svc-api", "new-2"]
    assert [(p.obj.id, p.expect_version) for p in plan.puts] == [("new-1", 0), ("svc-api", 9), ("new-2", 0)]


def test_an_empty_request_plans_nothing() -> None:
    plan = plan_apply([], {"web": stored(make_spec())}, NOW, never)
    assert (plan.results, plan.puts) == ([], [])


# --- request validation ---------------------------------------------------------------------------------


def test_an_empty_request_is_an_error() -> None:
    assert errors_of([]) == ["services: at least one service is required"]


def test_a_valid_request_has_no_errors() -> None:
    assert errors_of([make_spec("web"), make_spec("api")]) == []


def test_a_name_given_twice_is_an_error_per_extra_copy() -> None:
    errors = errors_of([make_spec("web"), make_spec("api"), make_spec("web", replicas=3), make_spec("web")])
    duplicate = "services.web: listed more than once; give each service once per request"
    assert errors == [duplicate, duplicate]


def test_request_errors_come_with_every_spec_error() -> None:
    errors = errors_of([make_spec("web", image=""), make_spec("web")])
    assert errors[0].startswith("services.web.image: must not be empty")
    assert "services.web: listed more than once; give each service once per request" in errors
    assert len(errors) == 2


@pytest.mark.parametrize(("name", "path"), [("my app", 'services["my app"]'), ("", 'services[""]')])
def test_the_duplicate_error_path_is_quoted_like_every_other_path(name: str, path: str) -> None:
    errors = errors_of([make_spec(name), make_spec(name)])
    assert f"{path}: listed more than once; give each service once per request" in errors


@pytest.mark.parametrize("replicas", [0, 1, 3, MAX_REPLICAS])
def test_replica_counts_in_range_are_allowed(replicas: int) -> None:
    assert replicas_error(replicas) is None


@pytest.mark.parametrize("replicas", [-1, MAX_REPLICAS + 1, 2**32])
def test_replica_counts_out_of_range_are_errors(replicas: int) -> None:
    assert str(replicas_error(replicas)) == f"replicas: must be an integer from 0 to 10000, got {replicas}"


def test_the_api_and_the_spec_loader_agree_on_the_replica_limit() -> None:
    assert MAX_REPLICAS == schema.REPLICAS.maximum == 10_000
    assert str(replicas_error(MAX_REPLICAS + 1)) == f"replicas: {replicas_message(str(MAX_REPLICAS + 1))}"


# --- replica caps -----------------------------------------------------------------------------------------

REQUEST_CAP = schema.REQUEST_REPLICAS.maximum
CLUSTER_CAP = schema.CLUSTER_REPLICAS.maximum


def cluster(*replicas: int) -> dict[str, pb.Service]:
    """Existing services s0, s1, ... with the given replica counts."""
    return {f"s{i}": stored(make_spec(f"s{i}", replicas=n), service_id=f"svc-{i}") for i, n in enumerate(replicas)}


def budget_errors(specs: list[pb.ServiceSpec], existing: dict[str, pb.Service]) -> list[str]:
    return [str(issue) for issue in apply_errors(specs, existing) if issue.path == "services"]


def test_the_caps_are_the_documented_ones() -> None:
    assert (REQUEST_CAP, CLUSTER_CAP) == (50_000, 100_000)


@pytest.mark.parametrize(
    ("requested", "existing", "expected"),
    [
        pytest.param([10_000] * 5, [], [], id="request-at-its-cap"),
        pytest.param(
            [10_000] * 5 + [1],
            [],
            [
                "services: ask for 50001 replicas in all, more than the limit of 50000 per request; "
                "apply the services in several requests"
            ],
            id="request-over-its-cap",
        ),
        pytest.param([10_000] * 5, [10_000] * 5, [], id="cluster-at-its-cap"),
        pytest.param(
            [10_000] * 5,
            [10_000] * 5 + [1],
            [
                "services: would bring the cluster to 100001 replicas (50001 of them in other services), more "
                "than the limit of 100000; scale down or delete other services first"
            ],
            id="cluster-over-its-cap",
        ),
    ],
)
def test_replica_caps(requested: list[int], existing: list[int], expected: list[str]) -> None:
    specs = [make_spec(f"new{i}", replicas=n) for i, n in enumerate(requested)]
    assert budget_errors(specs, cluster(*existing)) == expected


def test_a_service_the_request_replaces_counts_once() -> None:
    existing = cluster(*[10_000] * 10)
    assert budget_errors([make_spec("s0", replicas=10_000)], existing) == []
    assert len(budget_errors([make_spec("s0", replicas=10_000), make_spec("new", replicas=1)], existing)) == 1


def test_lowering_a_cluster_over_its_cap_is_allowed() -> None:
    existing = cluster(*[10_000] * 11)
    assert budget_errors([make_spec("s0", replicas=5_000)], existing) == []
    assert len(budget_errors([make_spec("s0", replicas=10_000), make_spec("new", replicas=1)], existing)) == 1


def test_global_services_count_no_replicas() -> None:
    spec = make_spec("agentd", replicas=0)
    spec.mode = pb.SERVICE_MODE_GLOBAL
    assert budget_errors([spec], cluster(*[10_000] * 10)) == []


def test_without_existing_services_only_the_request_cap_applies() -> None:
    assert apply_errors([make_spec("web", replicas=10_000)]) == []


def test_scaling_is_held_to_the_cluster_cap() -> None:
    existing = cluster(*[10_000] * 10)
    assert scale_errors(existing["s0"], 10_000, existing) == []
    assert scale_errors(existing["s0"], 5, existing) == []
    assert [str(e) for e in scale_errors(existing["s0"], MAX_REPLICAS + 1, existing)] == [
        "replicas: must be an integer from 0 to 10000, got 10001"
    ]
    existing["s10"] = stored(make_spec("s10", replicas=0), service_id="svc-10")
    assert len(scale_errors(existing["s10"], 1, existing)) == 1


# --- node labels ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("set_labels", "remove", "expected"),
    [
        pytest.param({"zone": "a", "com.example.rack": "7"}, ["old"], [], id="valid"),
        pytest.param({"": "a"}, [], ['labels[""]: label key must not be empty'], id="empty"),
        pytest.param(
            {"my zone": "a"},
            [],
            [
                'labels["my zone"]: label key must not contain whitespace, control characters or "=", got "my zone"; '
                'use letters, digits, ".", "-" or "_"'
            ],
            id="whitespace",
        ),
        pytest.param(
            {},
            ["a\0b"],
            [
                'labels["a\\u0000b"]: label key must not contain whitespace, control characters or "=", '
                'got "a\\u0000b"; use letters, digits, ".", "-" or "_"'
            ],
            id="nul",
        ),
        pytest.param(
            {"dockyard.node.id": "x"},
            [],
            [
                'labels["dockyard.node.id"]: keys starting with "dockyard." are reserved for the labels Dockyard '
                "sets itself; choose another key"
            ],
            id="reserved",
        ),
        pytest.param(
            {"k" * 257: "x"},
            [],
            [f"labels.{'k' * 257}: label key must be at most 256 bytes long, got 257 bytes; use a shorter key"],
            id="too-long",
        ),
        pytest.param({"zone": "a"}, ["zone"], ["labels.zone: both set and removed; do one"], id="set-and-removed"),
    ],
)
def test_node_labels_follow_the_spec_label_key_rule(
    set_labels: dict[str, str], remove: list[str], expected: list[str]
) -> None:
    assert [str(issue) for issue in node_label_errors(set_labels, remove)] == expected


def errors_of(specs: list[pb.ServiceSpec]) -> list[str]:
    """Returns apply_errors as the one-line texts users see."""
    return [str(issue) for issue in apply_errors(specs)]


@pytest.mark.parametrize(
    ("labels", "problem"),
    [
        ({"zone": "a\x00b"}, "value must not contain NUL"),
        ({"zone": "v" * 5000}, "value must be at most 4096 bytes"),
        ({"a b": "x"}, "label key must not contain whitespace"),
    ],
)
def test_node_label_values_follow_the_service_label_rules(labels: dict[str, str], problem: str) -> None:
    issues = node_label_errors(labels, [])
    assert len(issues) == 1 and problem in issues[0].message, issues
