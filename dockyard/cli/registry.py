"""`dockyard registry ...`: credentials for private registries, given once to the controller.

The controller keeps the password encrypted and hands it only to the agents that pull from that registry;
nothing here ever reads it back.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from dockyard.cli.common import controller_option, output_option, run
from dockyard.cli.output import emit, emit_object
from dockyard.client import Client
from dockyard.timestamps import from_timestamp
from dockyard.v1 import types_pb2 as pb

__all__ = ["registry"]


def credential_view(credential: pb.RegistryCredential) -> dict[str, Any]:
    """Returns a registry credential as a row: server and username, never the password."""
    created = from_timestamp(credential.created_at)
    return {
        "server": credential.server,
        "username": credential.username,
        "created": created.isoformat() if created else None,
    }


@click.group()
def registry() -> None:
    """Manage the credentials agents pull private images with."""


@registry.command()
@click.argument("server")
@click.option("--username", "-u", required=True, help="The registry user.")
@click.option(
    "--password-stdin",
    is_flag=True,
    help="Read the password (or token) from standard input; without it, it is asked for without echo.",
)
@controller_option
@output_option
def login(server: str, username: str, password_stdin: bool, controller: str | None, output: str) -> None:
    """Give the controller the credentials of the registry SERVER (host[:port] as in image names; docker.io)."""
    if password_stdin:
        password = sys.stdin.read().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, err=True)
    if not password:
        raise click.UsageError("the password is empty")

    async def body(client: Client) -> None:
        stored = await client.set_registry_credential(server, username, password)
        emit_object(credential_view(stored), output, f"{stored.server}: credentials stored for {stored.username}")

    run(body, controller)


@registry.command("ls")
@controller_option
@output_option
def registry_ls(controller: str | None, output: str) -> None:
    """List the registries the controller has credentials for."""

    async def body(client: Client) -> None:
        rows = [credential_view(c) for c in await client.list_registry_credentials()]
        emit(rows, [("SERVER", "server"), ("USERNAME", "username"), ("CREATED", "created")], output)

    run(body, controller)


@registry.command()
@click.argument("server")
@controller_option
@output_option
def logout(server: str, controller: str | None, output: str) -> None:
    """Forget the credentials of the registry SERVER."""

    async def body(client: Client) -> None:
        removed = await client.remove_registry_credential(server)
        emit_object(credential_view(removed), output, f"{removed.server}: credentials removed")

    run(body, controller)
