"""Names, addresses and paths of a dev cluster: pure functions of the cluster id, the host name and the state dir.

Everything the cluster creates on the machine carries the prefix ``dy-<cluster id>-`` (network namespaces,
interfaces, cgroups), so a sweep by that prefix finds what a crashed run left behind.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from deploy.devcluster.errors import DevClusterError

PREFIX = "dy-"
# Each cluster gets one /24 out of 10.213.0.0/16: the bridge is .1, host hN is .(10+N).
SUBNET_BASE = "10.213"
SUBNET_COUNT = 256
HOST_OFFSET = 10
MAX_HOSTS = 50
# Docker's default bridge inside host hN; it lives in the host's own namespace, so clusters never collide.
DOCKER_BIP = "172.30.{index}.1/24"
# The controller's --network-pool: container subnets (one /24 per network and host). The default pool
# (10.128.0.0/9) holds the hosts' own 10.213.0.0/16 link, whose addresses the agents' isolation rules would then
# treat as another network's; this one is clear of it and of DOCKER_BIP. Container subnets exist only inside the
# hosts' namespaces, so parallel clusters may share it.
NETWORK_POOL = "10.214.0.0/16"
# sun_path holds 108 bytes with the terminating NUL.
UNIX_PATH_MAX = 107
# The longest socket path dockerd's managed containerd makes under the exec root.
_LONGEST_SOCKET = "containerd/containerd.sock.ttrpc"
_HOST_NAME = re.compile(r"^h([1-9][0-9]*)$")
_CLUSTER_ID = re.compile(r"^[0-9a-f]{4}$")


def new_cluster_id() -> str:
    """Returns a random 4-hex-digit id; callers check it against what exists."""
    return secrets.token_hex(2)


def check_cluster_id(cluster_id: str) -> str:
    """Returns the id if it looks like one, else raises."""
    if not _CLUSTER_ID.match(cluster_id):
        raise DevClusterError(f"{cluster_id!r} is not a dev cluster id (4 lowercase hex digits)")
    return cluster_id


def prefix(cluster_id: str) -> str:
    """The prefix of every namespace, interface and cgroup of the cluster."""
    return f"{PREFIX}{cluster_id}-"


def host_name(index: int) -> str:
    """h1, h2, ...: the name the host's agent registers as."""
    return f"h{index}"


def host_index(name: str) -> int:
    """The N of hN."""
    match = _HOST_NAME.match(name)
    if not match:
        raise DevClusterError(f"{name!r} is not a dev cluster host name (h1, h2, ...)")
    return int(match.group(1))


def netns_name(cluster_id: str, host: str) -> str:
    """The host's network namespace (under /var/run/netns)."""
    return f"{prefix(cluster_id)}{host}"


def veth_name(cluster_id: str, host: str) -> str:
    """The root-namespace end of the host's veth pair; at most 11 characters, within IFNAMSIZ."""
    return f"{prefix(cluster_id)}{host}"


def bridge_name(cluster_id: str) -> str:
    """The root-namespace bridge that joins the hosts and carries the controller's address."""
    return f"{prefix(cluster_id)}br"


def cgroup_name(cluster_id: str, host: str) -> str:
    """The cgroup parent of the host's containers, in every hierarchy."""
    return f"{prefix(cluster_id)}{host}"


def subnet(index: int) -> str:
    """The cluster's /24."""
    return f"{SUBNET_BASE}.{index}.0/24"


def bridge_address(index: int) -> str:
    """The bridge's address: where the controller listens."""
    return f"{SUBNET_BASE}.{index}.1"


def host_address(index: int, host: str) -> str:
    """The address of the host's eth0 inside its namespace."""
    return f"{SUBNET_BASE}.{index}.{HOST_OFFSET + host_index(host)}"


def docker_bip(host: str) -> str:
    """The host dockerd's --bip."""
    return DOCKER_BIP.format(index=host_index(host))


def default_state_dir(cluster_id: str) -> Path:
    """A short state dir (unix socket paths must stay under 108 bytes)."""
    return Path("/tmp") / f"{PREFIX}{cluster_id}"


@dataclass(frozen=True)
class HostPaths:
    """Where one host keeps its dockerd and agent state, logs and sockets."""

    root: Path

    @property
    def data_root(self) -> Path:
        """dockerd --data-root: images, containers; survives a simulated host crash like a disk would."""
        return self.root / "d"

    @property
    def exec_root(self) -> Path:
        """dockerd --exec-root: runtime state; emptied by a simulated host crash like /run by a reboot."""
        return self.root / "x"

    @property
    def docker_socket(self) -> Path:
        """The host dockerd's API socket."""
        return self.root / "docker.sock"

    @property
    def docker_pidfile(self) -> Path:
        """dockerd --pidfile."""
        return self.root / "docker.pid"

    @property
    def docker_config(self) -> Path:
        """An empty daemon.json, so the machine's /etc/docker/daemon.json never applies."""
        return self.root / "daemon.json"

    @property
    def dockerd_log(self) -> Path:
        """dockerd's (and its containerd's) output."""
        return self.root / "dockerd.log"

    @property
    def agent_state(self) -> Path:
        """The agent's --state-dir."""
        return self.root / "agent"

    @property
    def agent_log(self) -> Path:
        """The agent's output."""
        return self.root / "agent.log"

    @property
    def docker_url(self) -> str:
        """unix:// URL of the host's dockerd."""
        return f"unix://{self.docker_socket}"


def host_paths(state_dir: Path, host: str) -> HostPaths:
    """Returns the paths of one host."""
    return HostPaths(state_dir / host)


def check_path_lengths(state_dir: Path, hosts: int) -> None:
    """Raises when the state dir is too long for the unix sockets dockerd and containerd make under it."""
    paths = host_paths(state_dir, host_name(hosts))
    longest = str(paths.exec_root / _LONGEST_SOCKET)
    if len(longest.encode()) > UNIX_PATH_MAX:
        raise DevClusterError(
            f"state dir {state_dir} is too long: {longest} would exceed the {UNIX_PATH_MAX}-byte unix socket limit; "
            "use a shorter --state-dir"
        )
