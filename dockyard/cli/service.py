"""`dockyard service inspect` (a service's spec, revision, rollout and tasks, with why any task waits) and
`dockyard service rebalance`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import click
import yaml

from dockyard.cli.common import controller_option, output_option, run
from dockyard.cli.deploying import Target, choose_display, finish, wait_for_deploy
from dockyard.cli.output import emit_object
from dockyard.cli.rollout import unbalanced
from dockyard.cli.views import service_view, task_detail, task_view
from dockyard.cli.workloads import DEPLOY_TIMEOUT, timeout_option
from dockyard.client import Client
from dockyard.constraints import node_satisfies
from dockyard.spec import spec_to_document
from dockyard.task_state import spec_key
from dockyard.v1 import types_pb2 as pb


@click.group()
def service() -> None:
    """Inspect and rebalance services."""


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
        if view["change_cause"]:
            click.echo(f"Last change: {view['change_cause']}")
        click.echo(f"Rollout: {rollout_text(view)}")
        click.echo(f"Tasks: {view['running']}/{view['replicas']} running")
        click.echo("Spec:")
        click.echo("  " + yaml.safe_dump(view["spec"], sort_keys=False).rstrip().replace("\n", "\n  "))
        for task in view["tasks"]:
            where = task["node"] or "-"
            health = f" ({task['health']})" if task["health"] else ""
            click.echo(f"  {task['name']:<16} {task['state'] + health:<20} on {where:<14} {task_detail(task)}")

    run(body, controller)


def rollout_text(view: dict[str, Any]) -> str:
    """Says where a service's rollout stands: "completed (revision 3 to 4), finished 2026-...: message"."""
    if view["rollout"] is None:
        return "none since the service was created"
    text = f"{view['rollout']} (revision {view['rollout_from']} to {view['rollout_to']})"
    if view["rollout_completed_at"]:
        text += f", finished {view['rollout_completed_at']}"
    elif view["rollout_started_at"]:
        text += f", started {view['rollout_started_at']}"
    return text + (f": {view['rollout_message']}" if view["rollout_message"] else "")


@service.command()
@click.argument("name")
@click.option("--detach", "-d", is_flag=True, help="Return at once; do not wait for the moves.")
@timeout_option(DEPLOY_TIMEOUT)
@controller_option
@output_option
def rebalance(name: str, detach: bool, timeout: float, controller: str | None, output: str) -> None:
    """Move NAME's tasks start-first until they are spread evenly over the nodes they may use, then wait.

    Nothing moves by itself when a node joins or comes back (unless placement.rebalance is set); this
    moves each task off an over-full node to another, starting the new one before the old one stops.
    """

    async def body(client: Client) -> None:
        service = await client.rebalance(name)
        row = {"service": service.name, "action": "rebalance", "revision": service.revision}
        if detach:
            emit_object(row, output, f"{service.name}: rebalance requested")
            return
        nodes = await client.list_nodes()
        eligible = eligible_nodes(service, nodes)

        def spread(current: pb.Service, tasks: Sequence[pb.Task]) -> str | None:
            over = unbalanced(current, tasks, nodes, eligible)
            return f"uneven: {', '.join(over)}" if over else None

        display = choose_display(output, f"rebalance {service.name}")
        verdict, progresses = await wait_for_deploy(
            client, [Target(service, service.spec_revision)], within=timeout, display=display, extra=spread
        )
        finish(verdict, progresses, [row], output)

    run(body, controller)


def eligible_nodes(service: pb.Service, nodes: Sequence[pb.Node]) -> set[str]:
    """The nodes a rebalance spreads a service over: ready, active, and meeting its constraints."""
    return {
        n.id
        for n in nodes
        if n.status == pb.NODE_STATUS_READY
        and n.availability in (pb.NODE_AVAILABILITY_UNSPECIFIED, pb.NODE_AVAILABILITY_ACTIVE)
        and node_satisfies(n, service.spec.placement.constraints)
    }
