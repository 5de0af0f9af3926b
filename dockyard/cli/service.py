"""`dockyard service inspect`: a service's spec, revision and tasks, with why any task waits."""

from __future__ import annotations

import json

import click
import yaml

from dockyard.cli.common import controller_option, output_option, run
from dockyard.cli.views import service_view, task_view
from dockyard.client import Client
from dockyard.spec import spec_to_document
from dockyard.task_state import spec_key


@click.group()
def service() -> None:
    """Inspect services."""


@service.command()
@click.argument("name")
@controller_option
@output_option
def inspect(name: str, controller: str | None, output: str) -> None:
    """Show a service's spec and the state of each of its tasks, with reasons for pending ones."""

    async def body(client: Client) -> None:
        found = await client.get_service(name)
        nodes = {n.id: n for n in await client.list_nodes()}
        tasks = await client.list_tasks(service=found.id)
        specs = await client.specs_for(tasks)
        view = service_view(found, tasks)
        view["spec"] = spec_to_document(found.spec)
        view["tasks"] = [task_view(t, nodes, specs.get(spec_key(t))) for t in tasks]
        view["pending"] = [
            {"task": f"{t['name']}", "reason": t["message"]} for t in view["tasks"] if t["state"] == "pending"
        ]
        if output == "json":
            click.echo(json.dumps(view, indent=2))
            return
        click.echo(f"Service {found.name} (id {found.id}), revision {found.revision}")
        click.echo(f"Tasks: {view['running']}/{view['replicas']} running")
        click.echo("Spec:")
        click.echo("  " + yaml.safe_dump(view["spec"], sort_keys=False).rstrip().replace("\n", "\n  "))
        for task in view["tasks"]:
            where = task["node"] or "-"
            detail = task["error"] or task["message"]
            click.echo(f"  {task['name']:<16} {task['state']:<10} on {where:<14} {detail}")

    run(body, controller)
