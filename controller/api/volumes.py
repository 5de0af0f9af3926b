"""Volumes: the API's list and remove (records are made by apply, by placement and by agents' hellos).

RemoveVolume is refused while a service mounts the volume, naming the services. The record is marked
`removing` before the users are read that decide (an apply refuses a volume being removed, or fails its Check
of one it read before the mark; the scheduler places no task on it), and the delete Checks the services read.
A volume that was never placed has no data anywhere: its record goes at once. Otherwise the node that holds it
is sent a VolumeRemove through the command channel; the record stays marked meanwhile and is deleted once the
node confirms
(a node that refuses, say because a container still uses the volume, leaves the record as it was and the
error names why). A node that is down or not connected cannot confirm: the removal is refused unless
`force`, which forgets the record (the data stays on that host, as the message says).
"""

from __future__ import annotations

from collections.abc import Callable

import grpc
import structlog

from controller.api.bounds import Gate
from controller.api.status import Context, abort, abort_invalid
from controller.api.writes import commit_or_abort, still_as_read
from controller.commands import CommandFailed, CommandSender, NodeUnavailable
from controller.store.base import Delete, Kind, Put, Store
from controller.volumes import users_of
from dockyard.clock import Clock
from dockyard.spec.issues import Issue
from dockyard.v1 import agent_pb2 as apb
from dockyard.v1 import controller_pb2 as cpb
from dockyard.v1 import types_pb2 as pb

__all__ = ["VolumesApi"]

log = structlog.get_logger("controller.api")


def _subject(name: str) -> str:
    return f"volumes.{name}"


class VolumesApi:
    """The ControllerService methods of volumes (mixed into ControllerApi)."""

    _store: Store
    _clock: Clock
    _new_id: Callable[[], str]
    _lists: Gate
    _commands: CommandSender | None

    async def ListVolumes(self, request: cpb.ListVolumesRequest, context: Context) -> cpb.ListVolumesResponse:
        """Returns every volume record by name, or those on one node (request.node_id)."""
        async with self._lists.hold(context, "ListVolumes"):
            found = await self._store.list_objects(Kind.VOLUME)
        volumes = [v for v in found if isinstance(v, pb.Volume)]
        if request.node_id:
            volumes = [v for v in volumes if v.node_id == request.node_id]
        return cpb.ListVolumesResponse(volumes=volumes)

    async def RemoveVolume(self, request: cpb.RemoveVolumeRequest, context: Context) -> cpb.RemoveVolumeResponse:
        """Removes a volume from its node, then its record; see the module docstring for refusals and force."""
        if not request.name:
            await abort_invalid(context, [Issue("name", "is required; give a volume name or id")])
        found = await self._store.get_object(Kind.VOLUME, request.name)
        if not isinstance(found, pb.Volume):
            await abort(
                context, grpc.StatusCode.NOT_FOUND, f"name: volume {request.name!r} not found; see `dockyard volume ls`"
            )
        volume = found
        # Refused at once when a service mounts it (a mark an interrupted removal left goes too, so the service's
        # tasks can be placed again).
        await self._refuse_users(volume, await self._store.list_services(), volume.removing, "", context)
        node = await self._store.get_node(volume.node_id) if volume.node_id else None
        where = (node.description.hostname or node.id) if node is not None else volume.node_id
        unreachable = await self._unreachable(node, volume.node_id) if volume.node_id else None
        if unreachable is not None and not request.force:
            await abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"name: volume {volume.name!r} is on node {where}, which {unreachable}; try again once it is "
                f"back, or use --force to forget the volume (its data stays on {where})",
            )
        # Marked first: from here an apply refuses the volume (one that read it before fails its Check) and the
        # scheduler places nothing on it, so the users read next are all it can have.
        marked = await self._mark(volume, True, context)
        services = await self._store.list_services()
        await self._refuse_users(marked, services, True, "", context)
        if not volume.node_id or unreachable is not None:
            # Never placed (no host holds data of it), or forced: only the record goes.
            if unreachable is not None:
                log.info("volume forgotten", volume=volume.name, node=where, why=unreachable)
            await self._forget(marked, services, context)
            return cpb.RemoveVolumeResponse(volume=volume)
        try:
            error = await self._remove_on(volume)
        except NodeUnavailable:
            if not request.force:
                error = (
                    "not connected; try again once it is back, or use --force to forget the volume"
                    f" (its data stays on {where})"
                )
            else:
                log.info("volume forgotten", volume=volume.name, node=where, why="not connected")
                error = None
        if error is not None:
            await self._mark(marked, False, context)
            await abort(
                context, grpc.StatusCode.FAILED_PRECONDITION, f"name: volume {volume.name!r}: node {where}: {error}"
            )
        # Read again just before the record goes: a write that is not an apply (a rollback) may have added a mount.
        services = await self._store.list_services()
        await self._refuse_users(marked, services, True, f" (its data on node {where} is removed already)", context)
        await self._forget(marked, services, context)
        return cpb.RemoveVolumeResponse(volume=marked)

    async def _refuse_users(
        self, volume: pb.Volume, services: list[pb.Service], unmark: bool, note: str, context: Context
    ) -> None:
        """Ends the RPC naming the services that mount the volume, if any; unmark: clears `removing` first."""
        users = users_of(volume.name, services)
        if not users:
            return
        if unmark:
            await self._mark(volume, False, context)
        await abort(
            context,
            grpc.StatusCode.FAILED_PRECONDITION,
            f"name: volume {volume.name!r} is mounted by service(s) {', '.join(users)}{note}; remove them, or the "
            "mount from their specs (apply them without it), first",
        )

    async def _unreachable(self, node: pb.Node | None, node_id: str) -> str | None:
        """Returns why the volume's node cannot remove it now ("is down", ...), or None when it can be asked."""
        if node is None:
            return "is no longer in the cluster"
        if node.status == pb.NODE_STATUS_DOWN:
            return "is down"
        if self._commands is None:
            return "cannot be reached from this controller (no agent sessions)"
        return None

    async def _remove_on(self, volume: pb.Volume) -> str | None:
        """Asks the volume's node to remove it; returns the error, or None once the node confirmed.

        Raises NodeUnavailable when the node has no live session to ask.
        """
        assert self._commands is not None
        command = apb.Command(volume_remove=apb.VolumeRemove(name=volume.name))
        try:
            call = self._commands.open(volume.node_id, command)
            try:
                async for result in call:
                    if result.done:
                        return result.error or None
            finally:
                call.close()
        except NodeUnavailable:
            raise
        except CommandFailed as exc:
            return f"no answer ({exc}); try again"
        return "the removal ended without an answer; try again"

    async def _mark(self, volume: pb.Volume, removing: bool, context: Context) -> pb.Volume:
        """Writes the record with `removing` set as given (conditioned on its version); returns it as written."""
        marked = pb.Volume()
        marked.CopyFrom(volume)
        marked.removing = removing
        await commit_or_abort(
            self._store, context, [Put(marked, expect_version=volume.version)], _subject(volume.name), False
        )
        return marked

    async def _forget(self, volume: pb.Volume, services: list[pb.Service], context: Context) -> None:
        """Deletes the record, only if it and the services its users were judged from are as read."""
        await commit_or_abort(
            self._store,
            context,
            [Delete(Kind.VOLUME, volume.id, expect_version=volume.version), *still_as_read(services)],
            _subject(volume.name),
            False,
        )
