"""The `dockyard nodes` command."""

from __future__ import annotations

import click

from dockyard.cli.common import controller_option, output_option, run
from dockyard.cli.output import emit
from dockyard.cli.views import node_view
from dockyard.client import Client
from dockyard.spec import format_bytes


@click.command()
@controller_option
@output_option
def nodes(controller: str | None, output: str) -> None:
    """List the cluster's hosts with their status and availability."""

    async def body(client: Client) -> None:
        tasks = await client.list_tasks()
        rows = [node_view(n, tasks) for n in await client.list_nodes()]
        for row in rows:
            row["short_id"] = row["id"][:12]
            row["memory"] = format_bytes(row["memory_bytes"], approximate=True)
        emit(
            rows,
            [
                ("ID", "short_id"),
                ("HOSTNAME", "hostname"),
                ("STATUS", "status"),
                ("AVAILABILITY", "availability"),
                ("CPUS", "cpus"),
                ("MEMORY", "memory"),
                ("TASKS", "tasks_running"),
                ("LABELS", "labels"),
            ],
            output,
        )

    run(body, controller)
