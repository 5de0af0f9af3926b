"""`dockyard volume ls|rm`: the named volumes on the cluster's nodes, and their removal.

A volume lives on one node (where its data is); `ls` shows which, by host name. `rm` asks that node to remove
it and then forgets it; `--force` forgets a volume whose node is down or gone (its data stays on that host).
"""

from __future__ import annotations

from typing import Any

import click

from dockyard.cli.common import controller_option, output_option, run
from dockyard.cli.output import emit
from dockyard.client import Client
from dockyard.timestamps import from_timestamp
from dockyard.v1 import types_pb2 as pb

__all__ = ["volume", "volume_view"]

_COLUMNS = [("NAME", "name"), ("STACK", "stack"), ("NODE", "node"), ("STATE", "state"), ("CREATED", "created")]


def volume_view(volume: pb.Volume, hosts: dict[str, str]) -> dict[str, Any]:
    """Returns a volume as a row; hosts maps node ids to host names (a node not in it shows by id)."""
    created = from_timestamp(volume.created_at)
    if volume.removing:
        state = "removing"
    elif volume.node_id:
        state = "placed"
    else:
        state = "not placed yet"
    return {
        "id": volume.id,
        "name": volume.name,
        "stack": volume.stack or None,
        "node_id": volume.node_id or None,
        "node": hosts.get(volume.node_id, volume.node_id) or None,
        "state": state,
        "labels": dict(volume.labels),
        "created": created.isoformat() if created else None,
    }


async def _hosts(client: Client) -> dict[str, str]:
    return {n.id: n.description.hostname or n.id for n in await client.list_nodes()}


@click.group()
def volume() -> None:
    """Manage named volumes: each lives on the node that holds its data, and its tasks run there."""


@volume.command("ls")
@click.option("--node", "node", default="", metavar="HOST|ID", help="Only the volumes on this node.")
@controller_option
@output_option
def volume_ls(node: str, controller: str | None, output: str) -> None:
    """List volumes with the node each lives on."""

    async def body(client: Client) -> None:
        hosts = await _hosts(client)
        node_id = next((i for i, host in hosts.items() if node in (i, host)), node) if node else ""
        volumes = await client.list_volumes(node_id)
        emit([volume_view(v, hosts) for v in volumes], _COLUMNS, output)

    run(body, controller)


@volume.command("rm")
@click.argument("names", nargs=-1, required=True)
@click.option("--force", is_flag=True, help="Forget a volume whose node is down or gone (its data stays there).")
@controller_option
@output_option
def volume_rm(names: tuple[str, ...], force: bool, controller: str | None, output: str) -> None:
    """Remove volumes and their data; refused for one a service still mounts."""

    async def body(client: Client) -> None:
        hosts = await _hosts(client)
        removed = [volume_view(await client.remove_volume(name, force=force), hosts) for name in names]
        if output == "json":
            emit(removed, [], output)
            return
        for row in removed:
            where = f" from {row['node']}" if row["node"] else ""
            click.echo(f"{row['name']}: removed{where}")

    run(body, controller)
