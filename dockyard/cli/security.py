"""`dockyard join-token`: the token hosts join with, and its rotation."""

from __future__ import annotations

import click

from dockyard.addresses import host_of, is_loopback, with_port
from dockyard.cli.common import controller_option, output_option, run
from dockyard.cli.output import emit_object
from dockyard.client import Client


@click.command("join-token")
@click.option("--rotate", is_flag=True, help="Replace the token; the old one is refused from now on.")
@click.option("--quiet", "-q", is_flag=True, help="Print the token only.")
@controller_option
@output_option
def join_token(rotate: bool, quiet: bool, controller: str | None, output: str) -> None:
    """Print the token a host joins with, and the command to run on it."""

    async def body(client: Client) -> None:
        response = await client.join_token(rotate=rotate)
        address = with_port(host_of(client.address), response.join_port)
        command = f"dockyard-agent join --token {response.token} {address}"
        if quiet and output == "table":
            click.echo(response.token)
            return
        note = ""
        if is_loopback(address):
            note = (
                f"\n{address} is this machine's loopback: another host must use an address of the controller it "
                "can reach (ask with --controller PUBLIC-ADDRESS:PORT to print it).\n"
            )
        emit_object(
            {"token": response.token, "join_address": address, "command": command, "rotated": rotate},
            output,
            ("Rotated. The old token is refused from now on.\n" if rotate else "")
            + f"To make a host a node of this cluster, run on it:\n\n    {command}\n"
            + note,
        )

    run(body, controller)
