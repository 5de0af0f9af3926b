"""`dockyard plan -f FILE`: what an apply would do now, as the controller's real orchestrator and scheduler
compute it on the current state (PlanApply writes nothing).

Exit codes (dockyard.cli.exitcodes): 0 nothing would change, 1 error, 2 something would change. The plan
names the store revision it was computed against; `dockyard apply --if-revision N` with that number is
refused if a service of the file changed since, so what was reviewed is what gets applied.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from dockyard.cli.common import controller_option, output_option, run
from dockyard.cli.exitcodes import ExitCode
from dockyard.cli.workloads import file_option, format_options, load_deployment
from dockyard.client import Client
from dockyard.v1 import controller_pb2 as cpb

__all__ = ["has_changes", "plan", "plan_document", "plan_lines"]

_MARKS = {
    cpb.ServicePlan.ACTION_CREATE: "+",
    cpb.ServicePlan.ACTION_UPDATE: "~",
    cpb.ServicePlan.ACTION_REMOVE: "-",
    cpb.ServicePlan.ACTION_UNCHANGED: "=",
}


def _action(service: cpb.ServicePlan) -> str:
    return cpb.ServicePlan.Action.Name(service.action).removeprefix("ACTION_").lower()


def _kind(task: cpb.PlannedTask) -> str:
    return cpb.PlannedTask.Kind.Name(task.kind).removeprefix("KIND_").lower()


def has_changes(response: cpb.PlanApplyResponse) -> bool:
    """Tells whether applying would change anything: a service created, updated or removed, or a task
    started or stopped (an unchanged spec whose tasks are not all running yet also starts some)."""
    return any(s.action != cpb.ServicePlan.ACTION_UNCHANGED or len(s.tasks) > 0 for s in response.services)


def _value(text: str) -> str:
    return text if text else "(unset)"


def _task_name(service: str, task: cpb.PlannedTask) -> str:
    return f"{service}.{task.slot}" if task.slot else service


def _where(task: cpb.PlannedTask) -> str:
    return task.node_name or task.node_id


def _start_order(services: Sequence[cpb.ServicePlan]) -> str:
    """Says in which order services start: "db, then api and web" (one group per start_order)."""
    groups: dict[int, list[str]] = {}
    for s in services:
        if s.action != cpb.ServicePlan.ACTION_REMOVE:
            groups.setdefault(s.start_order, []).append(s.name)
    return ", then ".join(" and ".join(sorted(names)) for _, names in sorted(groups.items()))


def plan_lines(response: cpb.PlanApplyResponse) -> list[str]:
    """Returns the plan as text lines, services in start order, ending with counts and how to apply it."""
    lines: list[str] = []
    started = stopped = unplaced = 0
    for s in response.services:
        header = f"{_MARKS.get(s.action, '?')} {s.name}: {_action(s)}"
        if s.action in (cpb.ServicePlan.ACTION_CREATE, cpb.ServicePlan.ACTION_UPDATE):
            header += f" (revision {s.revision})"
        lines.append(header)
        for change in s.changes:
            lines.append(f"    {change.path}: {_value(change.old_value)} -> {_value(change.new_value)}")
        if s.depends_on:
            lines.append(f"    waits for: {', '.join(s.depends_on)}")
        for task in s.tasks:
            name = _task_name(s.name, task)
            reason = f" ({task.reason})" if task.reason else ""
            if task.kind == cpb.PlannedTask.KIND_START:
                started += 1
                lines.append(f"    start {name} on {_where(task)} at revision {task.revision}{reason}")
            elif task.kind == cpb.PlannedTask.KIND_STOP:
                stopped += 1
                ident = f" [{task.task_id[:12]}]" if task.task_id else ""
                lines.append(f"    stop  {name}{ident} on {_where(task)}{reason}")
            else:
                unplaced += 1
                lines.append(f"    ! {name} cannot be placed: {task.reason or 'no node fits'}")
    counts: dict[str, int] = {}
    for s in response.services:
        counts[_action(s)] = counts.get(_action(s), 0) + 1
    summary = ", ".join(f"{counts[a]} to {a}" for a in ("create", "update", "remove") if counts.get(a))
    summary = summary or "no service changes"
    summary += f"; {started} task(s) to start, {stopped} to stop"
    if unplaced:
        summary += f", {unplaced} cannot be placed"
    order = _start_order(response.services)
    if order and any(s.depends_on for s in response.services):
        lines.append(f"start order: {order}")
    lines.append(summary)
    lines.append(
        f"planned against state revision {response.state_revision} (apply with --if-revision {response.state_revision})"
    )
    return lines


def plan_document(response: cpb.PlanApplyResponse) -> dict[str, Any]:
    """Returns the plan as --output json shows it."""
    return {
        "state_revision": response.state_revision,
        "changes": has_changes(response),
        "services": [
            {
                "name": s.name,
                "action": _action(s),
                "revision": s.revision,
                "start_order": s.start_order,
                "depends_on": list(s.depends_on),
                "changes": [{"path": c.path, "old": c.old_value, "new": c.new_value} for c in s.changes],
                "tasks": [
                    {
                        "kind": _kind(t),
                        "slot": t.slot,
                        "node": t.node_name or None,
                        "node_id": t.node_id or None,
                        "revision": t.revision,
                        "task_id": t.task_id or None,
                        "reason": t.reason or None,
                    }
                    for t in s.tasks
                ],
            }
            for s in response.services
        ],
    }


@click.command()
@file_option
@format_options
@click.option("--prune", is_flag=True, help="Also plan the removal of every service that is not in the file.")
@controller_option
@output_option
def plan(
    path: Path,
    file_format: str,
    stack: str,
    ignore_unsupported: bool,
    prune: bool,
    controller: str | None,
    output: str,
) -> None:
    """Show what `apply -f FILE` would change now, computed by the controller's scheduler; change nothing.

    Exit codes: 0 nothing would change, 1 error, 2 something would change.
    """
    deployment = load_deployment(path, file_format, stack, ignore_unsupported)
    outcome = ExitCode.OK

    async def body(client: Client) -> None:
        nonlocal outcome
        response = await client.plan(deployment.specs, prune=prune, extras=deployment.extras())
        if has_changes(response):
            outcome = ExitCode.CHANGES
        if output == "json":
            click.echo(json.dumps(plan_document(response), indent=2))
        else:
            for line in plan_lines(response):
                click.echo(line)

    run(body, controller)
    if outcome != ExitCode.OK:
        raise click.exceptions.Exit(int(outcome))
