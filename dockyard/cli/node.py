"""`dockyard node ...`: drain, pause, activate, label and remove hosts."""

from __future__ import annotations

import click

from dockyard.cli.common import controller_option, output_option, run
from dockyard.cli.following import Mirror, wait_until
from dockyard.cli.output import emit_object
from dockyard.cli.views import node_view
from dockyard.client import Client
from dockyard.task_state import is_terminal
from dockyard.v1 import controller_pb2 as cpb
from dockyard.v1 import types_pb2 as pb


@click.group()
def node() -> None:
    """Manage the cluster's hosts."""


def _availability_command(name: str, availability: int, text: str) -> click.Command:
    @click.command(name=name, help=text)
    @click.argument("host")
    @controller_option
    @output_option
    def command(host: str, controller: str | None, output: str) -> None:
        async def body(client: Client) -> None:
            changed = await client.update_node(host, availability=availability)
            emit_object(node_view(changed), output, f"{changed.description.hostname or changed.id}: {name}d")

        run(body, controller)

    return command


node.add_command(_availability_command("pause", pb.NODE_AVAILABILITY_PAUSE, "Place no new tasks on HOST."))
node.add_command(_availability_command("activate", pb.NODE_AVAILABILITY_ACTIVE, "Let HOST take tasks again."))


@node.command()
@click.argument("host")
@click.option("--detach", "-d", is_flag=True, help="Return at once; do not wait for the tasks to move.")
@click.option("--timeout", type=click.FloatRange(min=1), default=300.0, show_default=True)
@controller_option
@output_option
def drain(host: str, detach: bool, timeout: float, controller: str | None, output: str) -> None:
    """Move every task off HOST: each stops only after its replacement runs elsewhere."""

    async def body(client: Client) -> None:
        changed = await client.update_node(host, availability=pb.NODE_AVAILABILITY_DRAIN)
        if not detach:
            await _wait_empty(client, changed.id, timeout, quiet=output == "json")
        emit_object(node_view(changed), output, f"{changed.description.hostname or changed.id}: drained")

    run(body, controller)


async def _wait_empty(client: Client, node_id: str, wait_seconds: float, quiet: bool) -> None:
    """Waits on a watch of tasks until none on the node is still to finish."""
    left: list[pb.Task] = []
    last = -1

    async def load() -> tuple[list[pb.Service], list[pb.Task]]:
        return [], await client.list_tasks(node_id=node_id)

    def empty(mirror: Mirror) -> bool | None:
        nonlocal left, last
        left = [t for t in mirror.tasks.values() if t.node_id == node_id and not is_terminal(t.status.state)]
        if len(left) != last and not quiet:
            click.echo(f"{len(left)} task(s) left on the node", err=True)
            last = len(left)
        return True if not left else None

    def still_there() -> str:
        return "waiting for the node to empty; still on it: " + ", ".join(
            f"{t.service_name}.{t.slot}" for t in left[:5]
        )

    await wait_until(client, load, empty, within=wait_seconds, waiting_for=still_there, kinds=[cpb.OBJECT_KIND_TASK])


@node.command()
@click.argument("host")
@click.argument("labels", nargs=-1, required=True)
@controller_option
@output_option
def label(host: str, labels: tuple[str, ...], controller: str | None, output: str) -> None:
    """Set operator labels on HOST: KEY=VALUE sets, KEY- removes."""
    set_labels: dict[str, str] = {}
    remove: list[str] = []
    for item in labels:
        key, sep, value = item.partition("=")
        if sep:
            set_labels[key] = value
        elif item.endswith("-"):
            remove.append(item[:-1])
        else:
            raise click.BadParameter(f"{item!r}: write KEY=VALUE to set or KEY- to remove", param_hint="LABELS")

    async def body(client: Client) -> None:
        changed = await client.update_node(host, set_labels=set_labels, remove_labels=remove)
        view = node_view(changed)
        emit_object(view, output, f"{view['hostname'] or view['id']}: labels {view['labels']}")

    run(body, controller)


@node.command(name="rm")
@click.argument("host")
@click.option("--force", "-f", is_flag=True, help="Remove even a ready node (its tasks count as lost).")
@controller_option
@output_option
def remove(host: str, force: bool, controller: str | None, output: str) -> None:
    """Forget HOST; its tasks are replaced elsewhere."""

    async def body(client: Client) -> None:
        removed = await client.remove_node(host, force=force)
        emit_object(node_view(removed), output, f"{removed.description.hostname or removed.id}: removed")

    run(body, controller)


@node.command(name="ls")
@controller_option
@output_option
@click.pass_context
def list_nodes(ctx: click.Context, controller: str | None, output: str) -> None:
    """List hosts (same as `dockyard nodes`)."""
    from dockyard.cli.nodes import nodes

    ctx.invoke(nodes, controller=controller, output=output)
