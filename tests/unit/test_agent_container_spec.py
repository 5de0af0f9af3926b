"""What the agent asks Docker for, from a task and its spec."""

from __future__ import annotations

import pytest

from agent.container_spec import (
    DEFAULT_STOP_GRACE,
    container_spec,
    mount_spec,
    stop_grace,
    volume_labels,
    volume_mounts,
)
from agent.runtime.base import MountKind, MountSpec, NetworkAttachment
from dockyard import labels
from dockyard.spec import load_spec
from dockyard.v1 import types_pb2 as pb


def task_with(yaml_service: str) -> pb.Task:
    [spec] = load_spec(f"services: {{web: {{image: x, {yaml_service}}}}}")
    task = pb.Task(id="t1")
    task.spec.CopyFrom(spec)
    return task


def test_stop_grace_zero_means_kill_at_once_and_unset_means_the_default() -> None:
    assert stop_grace(task_with("stop_grace_period: 0s")) == 0.0
    assert stop_grace(task_with("stop_grace_period: 1500ms")) == 1.5
    assert stop_grace(task_with("replicas: 1")) == DEFAULT_STOP_GRACE
    assert stop_grace(pb.Task(id="bare")) == DEFAULT_STOP_GRACE


def app_task() -> pb.Task:
    """A stack's service with an entrypoint, a hostname and one mount of each kind."""
    task = pb.Task(id="t1234567890abcdef", service_id="s1", service_name="shop_db", slot=2, revision=3)
    spec = task.spec
    spec.name = "shop_db"
    spec.stack = "shop"
    spec.image = "postgres:16"
    spec.entrypoint.extend(["docker-entrypoint.sh"])
    spec.command.extend(["postgres", "-c", "fsync=off"])
    spec.hostname = "db-host"
    spec.mounts.extend(
        [
            pb.Mount(
                type=pb.Mount.TYPE_VOLUME,
                source="shop_db-data",
                target="/var/lib/postgresql/data",
                volume_labels={"backup": "nightly", labels.VOLUME: "forged"},
            ),
            pb.Mount(source="shop_cache", target="/cache"),  # type unset: a volume
            pb.Mount(type=pb.Mount.TYPE_BIND, source="/srv/conf", target="/etc/db", read_only=True),
            pb.Mount(type=pb.Mount.TYPE_TMPFS, source="ignored", target="/run/db", tmpfs_size_bytes=1 << 20),
        ]
    )
    return task


def test_a_task_maps_to_entrypoint_hostname_and_mounts_of_each_kind() -> None:
    made = container_spec(app_task(), "n1")
    assert made.entrypoint == ("docker-entrypoint.sh",)
    assert made.command == ("postgres", "-c", "fsync=off")
    assert made.hostname == "db-host"
    assert made.mounts == (
        MountSpec("volume", "shop_db-data", "/var/lib/postgresql/data"),
        MountSpec("volume", "shop_cache", "/cache"),
        MountSpec("bind", "/srv/conf", "/etc/db", read_only=True),
        MountSpec("tmpfs", "", "/run/db", tmpfs_size_bytes=1 << 20),
    )
    assert made.networks == ()
    assert made.dns == ()
    assert made.dns_search == ()


def test_no_entrypoint_keeps_the_images() -> None:
    assert container_spec(task_with("command: [x]"), "n1").entrypoint is None


def test_networks_keep_the_preparers_aliases_and_dns_and_file_mounts_are_added() -> None:
    secret = MountSpec("bind", "/run/dockyard/files/abc", "/run/secrets/db_password", read_only=True)
    made = container_spec(
        app_task(),
        "n1",
        networks=[NetworkAttachment("dky-shop_default"), NetworkAttachment("dky-shop_back", ("db", "primary"))],
        dns=["10.128.0.1"],
        dns_search=["shop.dockyard", "dockyard"],
        file_mounts=[secret],
    )
    assert made.networks == (
        NetworkAttachment("dky-shop_default"),
        NetworkAttachment("dky-shop_back", ("db", "primary")),
    )
    assert made.dns == ("10.128.0.1",)
    assert made.dns_search == ("shop.dockyard", "dockyard")
    assert made.mounts[-1] == secret
    assert len(made.mounts) == 5


def test_no_alias_is_added_so_dockers_dns_forwards_short_names_to_the_agents() -> None:
    made = container_spec(task_with("command: [x]"), "n1", networks=[NetworkAttachment("dockyard")])
    assert made.networks == (NetworkAttachment("dockyard"),)


def test_only_named_volumes_are_created_and_our_labels_win_over_the_specs() -> None:
    spec = app_task().spec
    assert [m.source for m in volume_mounts(spec)] == ["shop_db-data", "shop_cache"]
    assert volume_labels(spec, spec.mounts[0]) == {
        "backup": "nightly",
        labels.MANAGED: "true",
        labels.VOLUME: "shop_db-data",
        labels.STACK: "shop",
    }
    alone = pb.ServiceSpec(name="cache")
    assert volume_labels(alone, pb.Mount(source="data", target="/d")) == {
        labels.MANAGED: "true",
        labels.VOLUME: "data",
    }


def test_an_anonymous_volume_is_not_created_and_an_unknown_mount_type_is_not_a_volume() -> None:
    spec = pb.ServiceSpec(name="cache")
    anonymous = pb.Mount(type=pb.Mount.TYPE_VOLUME, target="/scratch")
    newer = pb.Mount(type=pb.Mount.Type.ValueType(99), source="x", target="/x")
    spec.mounts.extend([anonymous, newer, pb.Mount(source="data", target="/d")])
    assert [m.source for m in volume_mounts(spec)] == ["data"], "dockyard.volumes.is_volume_mount decides"
    assert mount_spec(anonymous) == MountSpec(MountKind.VOLUME, "", "/scratch")
    with pytest.raises(ValueError, match="mount type 99 of '/x' is not known"):
        mount_spec(newer)
