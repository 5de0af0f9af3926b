"""The dev cluster's network: one bridge in the root namespace, one namespace per host joined to it by a veth pair.

Nothing is routed anywhere else: the namespaces get no default route, only the connected /24, and IP
forwarding is off inside them, so a container can reach its own host and nothing beyond it. No NAT rule
is added anywhere.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path

from deploy.devcluster import layout
from deploy.devcluster.commands import run
from deploy.devcluster.errors import CommandFailed, DevClusterError

NETNS_DIR = Path("/var/run/netns")
_ALLOCATION_LOCK = Path("/run/lock/dockyard-devcluster.lock")
# Messages of `ip` that mean the thing to delete is already gone.
_GONE = ("Cannot find device", "No such file or directory", "does not exist", "Cannot open network namespace")


def netns_dir_is_mounted() -> bool:
    """Tells whether /var/run/netns is already the shared bind mount that `ip netns add` makes on first use."""
    return os.path.ismount(NETNS_DIR)


def netns_path(name: str) -> Path:
    """The bind mount that names a network namespace."""
    return NETNS_DIR / name


def nsenter_argv(netns: str, argv: list[str]) -> list[str]:
    """Runs argv in the host's network namespace only: the mount and cgroup views stay the machine's.

    `ip netns exec` would also remount /sys, which hides the cgroup mounts dockerd needs.
    """
    return ["nsenter", f"--net={netns_path(netns)}", "--", *argv]


@contextlib.contextmanager
def allocation_lock() -> Iterator[None]:
    """Serialises subnet choice and bridge creation between dev clusters starting at the same time."""
    _ALLOCATION_LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(_ALLOCATION_LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


async def used_subnet_indexes() -> set[int]:
    """Indexes N of the 10.213.N.0/24 subnets that some address or route of the root namespace already uses."""
    used: set[int] = set()
    addresses = json.loads((await run("ip", "-j", "-4", "addr", "show")).stdout or "[]")
    texts = [info.get("local", "") for link in addresses for info in link.get("addr_info", [])]
    routes = json.loads((await run("ip", "-j", "-4", "route", "show", "table", "all")).stdout or "[]")
    texts += [route.get("dst", "") for route in routes]
    for text in texts:
        parts = str(text).split("/")[0].split(".")
        if len(parts) == 4 and ".".join(parts[:2]) == layout.SUBNET_BASE:
            used.add(int(parts[2]))
    return used


async def create_bridge(name: str, address: str) -> None:
    """Creates the cluster bridge with the controller's address on it."""
    await run("ip", "link", "add", name, "type", "bridge", "forward_delay", "0")
    await run("ip", "addr", "add", f"{address}/24", "dev", name)
    await run("ip", "link", "set", name, "up")


async def create_host(netns: str, veth: str, bridge: str, address: str) -> None:
    """Creates the host's namespace and its link to the bridge (eth0 inside, `veth` outside)."""
    await run("ip", "netns", "add", netns)
    await run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns)
    await run("ip", "link", "set", veth, "master", bridge)
    await run("ip", "link", "set", veth, "up")
    await run("ip", "-n", netns, "addr", "add", f"{address}/24", "dev", "eth0")
    await run("ip", "-n", netns, "link", "set", "eth0", "up")
    await run("ip", "-n", netns, "link", "set", "lo", "up")
    # Forwarding off: containers must not reach past their host (no route out, and no replies leaking out).
    await run(*nsenter_argv(netns, ["sh", "-c", "echo 0 > /proc/sys/net/ipv4/ip_forward"]))


async def set_link(name: str, up: bool) -> None:
    """Brings an interface of the root namespace up or down."""
    await run("ip", "link", "set", name, "up" if up else "down")


def link_state(name: str) -> str:
    """ "up", "down" (administratively) or "missing"."""
    try:
        flags = int((Path("/sys/class/net") / name / "flags").read_text(), 16)
    except (OSError, ValueError):
        return "missing"
    return "up" if flags & 0x1 else "down"


async def delete_link(name: str) -> bool:
    """Deletes an interface (a veth takes its peer along); returns False when there was none."""
    return await _delete("ip", "link", "del", name)


async def delete_netns(name: str) -> bool:
    """Deletes a namespace's name; returns False when there was none."""
    return await _delete("ip", "netns", "del", name)


async def _delete(*argv: str) -> bool:
    try:
        await run(*argv)
    except CommandFailed as exc:
        if any(marker in exc.stderr for marker in _GONE):
            return False
        raise
    return True


def namespaces_with_prefix(prefix: str) -> list[str]:
    """Named network namespaces whose name starts with prefix."""
    try:
        return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(prefix))
    except FileNotFoundError:
        return []


def links_with_prefix(prefix: str) -> list[str]:
    """Interfaces of the root namespace whose name starts with prefix."""
    return sorted(n for n in os.listdir("/sys/class/net") if n.startswith(prefix))


def netns_inode(name: str) -> int:
    """The nsfs inode of a named namespace: how processes inside it are found after the name is gone."""
    try:
        return netns_path(name).stat().st_ino
    except OSError as exc:
        raise DevClusterError(f"namespace {name} vanished: {exc}") from exc
