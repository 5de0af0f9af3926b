"""The `dockyard network` commands: list, create and remove the cluster's networks.

`ls` shows each network with its stack and its subnets (one per host taking part); the cluster network
`dockyard` is always there. A network made with `create` belongs to no stack and is joined by naming it in
a service's `networks`; a stack's networks come from its Compose file. `rm` is refused while a service joins
the network.
"""

from __future__ import annotations

from typing import Any

import click

from dockyard.cli.common import controller_option, output_option, run
from dockyard.cli.output import emit, emit_object
from dockyard.client import Client
from dockyard.timestamps import from_timestamp
from dockyard.v1 import types_pb2 as pb

__all__ = ["network", "network_row"]


def network_row(net: pb.Network) -> dict[str, Any]:
    """One network as `ls` shows it and --output json prints it."""
    created = from_timestamp(net.created_at) if net.HasField("created_at") else None
    return {
        "name": net.name,
        "id": net.id,
        "stack": net.stack,
        "internal": net.internal,
        "labels": dict(sorted(net.labels.items())),
        "subnets": dict(sorted(net.subnets.items())),
        "nodes": len(net.subnets),
        "created_at": created.isoformat() if created is not None else None,
    }


@click.group()
def network() -> None:
    """Networks across hosts: each host taking part gets its own subnet of a network."""


@network.command("ls")
@controller_option
@output_option
def ls(controller: str | None, output: str) -> None:
    """List the networks, with their stack and how many hosts have a subnet of each."""

    async def body(client: Client) -> None:
        rows = [network_row(n) for n in await client.list_networks()]
        emit(
            rows,
            [("NAME", "name"), ("STACK", "stack"), ("INTERNAL", "internal"), ("HOSTS", "nodes"), ("ID", "id")],
            output,
        )

    run(body, controller)


@network.command()
@click.argument("name")
@click.option(
    "--label", "-l", "labels", multiple=True, metavar="KEY=VALUE", help="A label for the network (repeatable)."
)
@click.option("--internal", is_flag=True, help="No traffic in or out of the cluster's networks (Compose's internal).")
@controller_option
@output_option
def create(name: str, labels: tuple[str, ...], internal: bool, controller: str | None, output: str) -> None:
    """Create network NAME; services join it by naming it in their `networks`."""
    parsed: dict[str, str] = {}
    for item in labels:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r}: write KEY=VALUE", param_hint="--label")
        parsed[key] = value

    async def body(client: Client) -> None:
        made = await client.create_network(name, parsed, internal=internal)
        emit_object(network_row(made), output, f"created network {made.name} ({made.id})")

    run(body, controller)


@network.command()
@click.argument("name")
@controller_option
@output_option
def rm(name: str, controller: str | None, output: str) -> None:
    """Remove network NAME (refused while a service joins it)."""

    async def body(client: Client) -> None:
        removed = await client.remove_network(name)
        emit_object(network_row(removed), output, f"removed network {removed.name}")

    run(body, controller)
