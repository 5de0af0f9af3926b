"""This host's Dockyard volumes: the names the hello lists, and removing one when the controller asks.

A volume is Dockyard's when it carries labels.MANAGED and labels.VOLUME, as the worker creates every named
volume before the container that mounts it (agent.container_spec.volume_labels). A volume of that name
that is not labelled so belongs to someone else on the host and is never removed.
"""

from __future__ import annotations

import structlog

from agent.commands import Incoming, error_result
from agent.runtime.base import ContainerRuntime, RuntimeFailure, VolumeInUse
from dockyard import labels
from dockyard.clock import Clock
from dockyard.limits import HELLO_VOLUMES
from dockyard.logs import Throttle
from dockyard.v1 import agent_pb2 as apb

log = structlog.get_logger()


class Volumes:
    """Lists and removes the volumes the agent made on this host."""

    def __init__(self, runtime: ContainerRuntime, clock: Clock) -> None:
        self._runtime = runtime
        # A hello is sent at every reconnect; a Docker that stays away is worth a line a minute.
        self._throttle = Throttle(clock, interval=60.0, burst=1)

    async def names(self) -> list[str]:
        """This host's Dockyard volumes by name, for the hello (at most HELLO_VOLUMES; none while Docker is away)."""
        try:
            found = await self._runtime.list_volumes({labels.MANAGED: "true"})
        except RuntimeFailure as exc:
            if self._throttle.allow("list volumes") is not None:
                log.warning("volumes not listed for the hello", error=str(exc))
            return []
        return sorted(v.name for v in found if labels.VOLUME in v.labels)[:HELLO_VOLUMES]

    async def remove(self, incoming: Incoming) -> apb.CommandResult | None:
        """The VolumeRemove handler: removes a Dockyard volume; a missing one is done, one in use an error."""
        name = incoming.first.volume_remove.name
        if not name:
            return error_result(incoming.command_id, "volume_remove.name: empty; name the volume to remove")
        try:
            ours = await self._runtime.list_volumes({labels.MANAGED: "true", labels.VOLUME: name})
            if not any(v.name == name for v in ours):
                present = await self._runtime.list_volumes({})
                if any(v.name == name for v in present):
                    return error_result(
                        incoming.command_id,
                        f"volume {name} on this host was not made by Dockyard (no {labels.VOLUME} label); not removed",
                    )
                return None  # already gone: removing is idempotent
            await self._runtime.remove_volume(name)
        except VolumeInUse as exc:
            return error_result(incoming.command_id, f"volume {name} is in use on this host: {exc}")
        except RuntimeFailure as exc:
            return error_result(incoming.command_id, f"removing volume {name} failed: {exc}")
        log.info("volume removed", volume=name)
        return None
