"""Cleaning a host of Dockyard's network state: what `dockyard-agent cleanup-network` does.

The agent never tears its network down by itself: on shutdown containers keep running and reaching each
other (static stability), and a controller that refuses the node ("node X was removed from the cluster")
may as well be one started on an emptied or old store, which says that of every node; tearing the network
down then would cut every host's containers off. So a host whose node was removed for good is cleaned by
its operator, with the agent stopped: our routes (protocol ROUTE_PROTOCOL), the VXLAN device, the
DOCKYARD-* chains and the jumps to them (agent.network.host.HostNetwork.clear), Dockyard's Docker networks
that no container uses any more, and the network map and DNS table kept in the state dir (so an agent
started there again does not bring the old networks back before a controller speaks).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from agent.network.manager import DNS_FILE, MAP_FILE, NetworkRuntime
from agent.network.plan import NETWORK_LABEL
from agent.runtime.base import NetworkInUse, RuntimeFailure
from dockyard import labels

__all__ = ["Cleanup", "Clearable", "clean_host"]


class Clearable(Protocol):
    """The host side that can remove what it made (agent.network.host.HostNetwork)."""

    async def clear(self) -> list[str]:
        """Removes our routes, the VXLAN device and our chains; returns what failed."""
        ...


@dataclass
class Cleanup:
    """What a cleaning did: Docker networks removed and kept (in use), state files removed, what failed."""

    networks_removed: list[str] = field(default_factory=list)
    networks_in_use: list[str] = field(default_factory=list)
    files_removed: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


async def clean_host(host: Clearable, runtime: NetworkRuntime | None, state_dir: Path) -> Cleanup:
    """Removes this host's Dockyard network state (see the module doc); `runtime` None leaves Docker alone.

    Everything is tried; what could not be done is listed in `problems`, and a Docker network still used by a
    container is kept and listed (remove its containers, then run it again).
    """
    done = Cleanup()
    done.problems += await host.clear()
    if runtime is not None:
        try:
            ours = await runtime.list_networks({labels.MANAGED: "true"})
        except RuntimeFailure as exc:
            done.problems.append(f"docker networks not listed: {exc}")
            ours = []
        for network in ours:
            if NETWORK_LABEL not in network.labels:
                continue
            try:
                await runtime.remove_network(network.name)
                done.networks_removed.append(network.name)
            except NetworkInUse:
                done.networks_in_use.append(network.name)
            except RuntimeFailure as exc:
                done.problems.append(f"docker network {network.name} not removed: {exc}")
    for name in (MAP_FILE, DNS_FILE):
        path = state_dir / name
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            done.problems.append(f"{path} not removed: {exc}")
            continue
        done.files_removed.append(str(path))
    return done
