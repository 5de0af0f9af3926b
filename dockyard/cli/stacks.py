"""`dockyard stack ...`: the services of one Compose file, with the networks, volumes, secrets and configs it made."""

from __future__ import annotations

from typing import Any

import click

from dockyard.cli.common import controller_option, output_option, run
from dockyard.cli.output import emit, emit_object
from dockyard.cli.views import TASK_COLUMNS, ps_rows
from dockyard.client import ApiError, Client
from dockyard.v1 import controller_pb2 as cpb

__all__ = ["stack"]


def stack_view(found: cpb.Stack) -> dict[str, Any]:
    """Returns a stack as a row: its name and the cluster-wide names of its parts."""
    return {
        "name": found.name,
        "services": list(found.services),
        "networks": list(found.networks),
        "volumes": list(found.volumes),
        "secrets": list(found.secrets),
        "configs": list(found.configs),
    }


@click.group()
def stack() -> None:
    """Manage stacks: what one `dockyard apply -f compose.yaml` deployed."""


@stack.command("ls")
@controller_option
@output_option
def stack_ls(controller: str | None, output: str) -> None:
    """List stacks with the number of their services and objects."""

    async def body(client: Client) -> None:
        rows = [stack_view(s) for s in await client.list_stacks()]
        if output == "json":
            emit(rows, [], output)
            return
        for row in rows:
            for key in ("services", "networks", "volumes", "secrets", "configs"):
                row[f"n_{key}"] = len(row[key])
        columns = [("NAME", "name"), ("SERVICES", "n_services"), ("NETWORKS", "n_networks")]
        columns += [("VOLUMES", "n_volumes"), ("SECRETS", "n_secrets"), ("CONFIGS", "n_configs")]
        emit(rows, columns, output)

    run(body, controller)


@stack.command("ps")
@click.argument("name")
@click.option("--all", "-a", "show_all", is_flag=True, help="Include finished tasks.")
@controller_option
@output_option
def stack_ps(name: str, show_all: bool, controller: str | None, output: str) -> None:
    """List the tasks of the stack NAME's services."""

    async def body(client: Client) -> None:
        found = [s for s in await client.list_stacks() if s.name == name]
        if not found:
            raise ApiError(f"stack {name!r} not found; see `dockyard stack ls`")
        nodes = {n.id: n for n in await client.list_nodes()}
        tasks = [t for service in found[0].services for t in await client.list_tasks(service, show_all)]
        specs = await client.specs_for(tasks)
        emit(ps_rows(tasks, nodes, specs), TASK_COLUMNS, output)

    run(body, controller)


@stack.command("rm")
@click.argument("name")
@controller_option
@output_option
def stack_rm(name: str, controller: str | None, output: str) -> None:
    """Remove the stack NAME's services, then its networks, secrets and configs; its volumes stay."""

    async def body(client: Client) -> None:
        removed = stack_view(await client.remove_stack(name))
        kept = removed.pop("volumes")
        view = {**removed, "volumes_kept": kept}
        parts = [f"{len(removed[k])} {k}" for k in ("services", "networks", "secrets", "configs")]
        text = f"{name}: removed {', '.join(parts)}"
        if kept:
            text += f"; volumes kept: {', '.join(kept)} (`dockyard volume rm` removes them)"
        emit_object(view, output, text)

    run(body, controller)
