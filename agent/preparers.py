"""What the worker asks of others before it creates a task's container: its networks and its files.

The worker receives one of each (the defaults here do nothing); `agent.network` implements NetworkPreparer
and `agent.files` FilePreparer. Either raises a RuntimeFailure subclass with a message when it cannot
prepare yet (no subnet for a network on this node, file data not arrived): the task stays PREPARING and is
tried again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from agent.runtime.base import MountSpec, NetworkAttachment
from dockyard.v1 import types_pb2 as pb


@dataclass(frozen=True)
class Attachments:
    """The Docker networks a task's container joins (the first is the one it is created on), and its DNS."""

    networks: tuple[NetworkAttachment, ...] = ()
    dns: tuple[str, ...] = ()
    dns_search: tuple[str, ...] = ()


class NetworkPreparer(Protocol):
    """Makes the node's side of a task's networks ready and says how its container joins them."""

    async def prepare(self, task: pb.Task) -> Attachments:
        """Returns the attachments and DNS of the task's container; raises RuntimeFailure when not ready yet."""
        ...

    def network_name(self, docker_name: str) -> str | None:
        """The cluster network a Docker network stands for, or None when it is none of ours."""
        ...


class FilePreparer(Protocol):
    """Puts a task's secrets and configs in place and says how its container mounts them."""

    async def mounts(self, task: pb.Task) -> tuple[MountSpec, ...]:
        """Returns read-only bind mounts of the task's files; raises RuntimeFailure when the data has not arrived."""
        ...


class NoNetworks:
    """The NetworkPreparer of an agent without cluster networking: containers stay on Docker's default bridge."""

    async def prepare(self, task: pb.Task) -> Attachments:
        """Returns no attachments."""
        return Attachments()

    def network_name(self, docker_name: str) -> str | None:
        """Knows no network."""
        return None


class NoFiles:
    """The FilePreparer of an agent that receives no secrets or configs."""

    async def mounts(self, task: pb.Task) -> tuple[MountSpec, ...]:
        """Returns no mounts."""
        return ()
