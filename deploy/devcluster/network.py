"""The dev cluster's network: one bridge in the root namespace, one namespace per host joined to it by a veth pair.

Nothing is routed anywhere else: the namespaces get no default route, only the connected /24 (plus the
routes the agents add to each other's container subnets), so a container reaches its own host and the other
hosts' containers and nothing beyond them. No NAT rule is added anywhere.

One rule is added in the machine's own namespace: `FORWARD -i <bridge> -o <bridge> -j ACCEPT`, first in the
chain. Docker (on the machine) loads br_netfilter, so frames the bridge switches between two hosts pass the
machine's iptables FORWARD chain, whose policy Docker sets to DROP: without the rule host-to-host traffic
(other than to the controller, which is INPUT) is dropped. It matches only frames that enter and leave the
cluster's own bridge, so nothing else on the machine is affected; `down` and the sweep remove it. (Moving the
bridge into a namespace of its own would avoid the rule, but the controller and the CLI reach the hosts
through the bridge's address in the machine's namespace: that would need another veth and routes.)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
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


def bridge_forward_rule(bridge: str) -> list[str]:
    """The FORWARD rule's match and target (after the chain) that lets the bridge switch frames between its ports."""
    return ["-i", bridge, "-o", bridge, "-j", "ACCEPT"]


async def accept_bridged_traffic(bridge: str) -> None:
    """Puts the bridge's FORWARD rule first in the machine's FORWARD chain, once (see the module docstring)."""
    if shutil.which("iptables") is None:
        return  # no iptables: no Docker rules either, and nothing filters bridged frames
    present = await run("iptables", "-w", "-C", "FORWARD", *bridge_forward_rule(bridge), check=False)
    if present.code != 0:
        await run("iptables", "-w", "-I", "FORWARD", "1", *bridge_forward_rule(bridge))


async def remove_bridged_traffic_rule(bridge: str) -> bool:
    """Deletes every copy of the bridge's FORWARD rule; returns False when there was none."""
    if shutil.which("iptables") is None:
        return False
    removed = False
    # Bounded: a rule inserted twice (two racing `up`s cannot, but a hand-made copy can) goes too.
    for _ in range(10):
        if (await run("iptables", "-w", "-D", "FORWARD", *bridge_forward_rule(bridge), check=False)).code != 0:
            break
        removed = True
    return removed


def bridged_traffic_rule_present(bridge: str) -> bool:
    """Tells whether the bridge's FORWARD rule is still in the machine's FORWARD chain (for leftover checks)."""
    if shutil.which("iptables") is None:
        return False
    argv = ["iptables", "-w", "-C", "FORWARD", *bridge_forward_rule(bridge)]
    return subprocess.run(argv, capture_output=True, check=False).returncode == 0


async def create_host(netns: str, veth: str, bridge: str, address: str) -> None:
    """Creates the host's namespace and its link to the bridge (eth0 inside, `veth` outside)."""
    await run("ip", "netns", "add", netns)
    await run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns)
    await run("ip", "link", "set", veth, "master", bridge)
    await run("ip", "link", "set", veth, "up")
    await run("ip", "-n", netns, "addr", "add", f"{address}/24", "dev", "eth0")
    await run("ip", "-n", netns, "link", "set", "eth0", "up")
    await run("ip", "-n", netns, "link", "set", "lo", "up")
    # Forwarding off until the agent turns it on for its container subnets (agent/network/host.py): with no
    # default route, forwarding only ever reaches the connected /24 and the other hosts' container subnets.
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
