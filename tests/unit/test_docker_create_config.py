"""The bodies DockerRuntime sends Docker for the settings of real applications (pure; no Docker needed)."""

from __future__ import annotations

from agent.runtime.base import ContainerSpec, MountSpec, NetworkAttachment
from agent.runtime.docker import _create_config, _network_info


def test_mounts_use_docker_mount_objects_so_a_missing_bind_source_is_an_error_not_a_new_directory() -> None:
    spec = ContainerSpec(
        name="x",
        image="img",
        mounts=(
            MountSpec("volume", "shop_db-data", "/data"),
            MountSpec("bind", "/srv/conf", "/conf", read_only=True),
            MountSpec("tmpfs", "", "/scratch", tmpfs_size_bytes=1 << 20),
            MountSpec("tmpfs", "", "/run/x"),
        ),
    )
    host = _create_config(spec)["HostConfig"]
    assert "Binds" not in host
    assert host["Mounts"] == [
        {"Type": "volume", "Source": "shop_db-data", "Target": "/data", "ReadOnly": False},
        {"Type": "bind", "Source": "/srv/conf", "Target": "/conf", "ReadOnly": True},
        {"Type": "tmpfs", "Target": "/scratch", "ReadOnly": False, "TmpfsOptions": {"SizeBytes": 1 << 20}},
        {"Type": "tmpfs", "Target": "/run/x", "ReadOnly": False},
    ]


def test_entrypoint_none_keeps_the_images_and_empty_clears_it() -> None:
    assert "Entrypoint" not in _create_config(ContainerSpec(name="x", image="img"))
    assert _create_config(ContainerSpec(name="x", image="img", entrypoint=()))["Entrypoint"] == [""]
    assert _create_config(ContainerSpec(name="x", image="img", entrypoint=("tini", "--")))["Entrypoint"] == [
        "tini",
        "--",
    ]


def test_the_first_network_is_the_create_ones_with_its_aliases_and_dns_and_hostname_are_set() -> None:
    spec = ContainerSpec(
        name="x",
        image="img",
        networks=(NetworkAttachment("front", ("web",)), NetworkAttachment("back")),
        dns=("10.128.0.1",),
        dns_search=("shop.dockyard", "dockyard"),
        hostname="web-1",
    )
    config = _create_config(spec)
    assert config["HostConfig"]["NetworkMode"] == "front"
    assert config["NetworkingConfig"] == {"EndpointsConfig": {"front": {"Aliases": ["web"]}}}
    assert config["HostConfig"]["Dns"] == ["10.128.0.1"]
    assert config["HostConfig"]["DnsSearch"] == ["shop.dockyard", "dockyard"]
    assert config["Hostname"] == "web-1"


def test_a_network_reads_its_ipv4_pool_bridge_name_and_labels() -> None:
    data = {
        "Name": "dockyard",
        "Id": "abc",
        "IPAM": {"Config": [{"Subnet": "fd00::/64"}, {"Subnet": "10.128.3.0/24", "Gateway": "10.128.3.1"}]},
        "Options": {"com.docker.network.bridge.name": "dky-0a1b2c3d"},
        "Labels": {"dockyard.network": "dockyard"},
    }
    info = _network_info(data)
    assert (info.subnet, info.gateway, info.bridge) == ("10.128.3.0/24", "10.128.3.1", "dky-0a1b2c3d")
    assert info.labels == {"dockyard.network": "dockyard"}
