"""Commands about services and their tasks: apply, services, ps, scale, rm."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import click

from dockyard.cli.common import controller_option, output_option, run
from dockyard.cli.following import Mirror, wait_until
from dockyard.cli.output import emit, emit_object
from dockyard.cli.rollout import Progress, progress
from dockyard.cli.views import service_view, task_view
from dockyard.client import ApiError, Client
from dockyard.spec import SpecError, load_spec_file
from dockyard.task_state import spec_key
from dockyard.v1 import controller_pb2 as cpb
from dockyard.v1 import types_pb2 as pb

# Waiting for more services than this reads all tasks in one list instead of one list per service.
_PER_SERVICE_LISTS = 4

TASK_COLUMNS = [
    ("ID", "short_id"),
    ("NAME", "name"),
    ("NODE", "node"),
    ("DESIRED", "desired_state"),
    ("STATE", "state"),
    ("CONTAINER", "short_container"),
    ("REV", "revision"),
    ("MESSAGE", "detail"),
]


def _action(result: cpb.ApplyResult) -> str:
    return cpb.ApplyResult.Action.Name(result.action).removeprefix("ACTION_").lower()


def parse_if_revision(values: Sequence[str], names: Sequence[str]) -> dict[str, int]:
    """Turns --if-revision values into service name -> expected revision (0: must not exist yet).

    A bare N is allowed once and only for a file of one service; with several services each value is
    NAME=N, and NAME must be one of them. Raises click.BadParameter naming the bad value.
    """
    expected: dict[str, int] = {}
    for value in values:
        name, sep, number = value.rpartition("=")
        if not sep:
            if len(names) != 1 or len(values) != 1:
                raise click.BadParameter(
                    f"{value!r}: a bare N is for a file of one service; write NAME=N for each service",
                    param_hint="--if-revision",
                )
            name = names[0]
        if not (number.isascii() and number.isdigit()):
            raise click.BadParameter(
                f"{value!r}: N must be a revision number (0: must not exist yet)", param_hint="--if-revision"
            )
        if name not in names:
            raise click.BadParameter(f"{value!r}: the file has no service {name!r}", param_hint="--if-revision")
        if name in expected:
            raise click.BadParameter(f"{value!r}: {name!r} is given twice", param_hint="--if-revision")
        expected[name] = int(number)
    return expected


@click.command()
@click.option(
    "-f",
    "--file",
    "path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Service spec (YAML).",
)
@click.option("--detach", "-d", is_flag=True, help="Return once the change is stored; do not wait for tasks.")
@click.option("--dry-run", is_flag=True, help="Validate and show what would change; change nothing.")
@click.option(
    "--if-revision",
    "if_revision",
    multiple=True,
    metavar="N|NAME=N",
    help="Change nothing unless the service is still at revision N (0: does not exist yet); "
    "NAME=N per service when the file has several. Refused with the current revision when it moved.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=300.0,
    show_default=True,
    help="Seconds to wait for the tasks to run.",
)
@controller_option
@output_option
def apply(
    path: Path,
    detach: bool,
    dry_run: bool,
    if_revision: tuple[str, ...],
    timeout: float,
    controller: str | None,
    output: str,
) -> None:
    """Create or update the services of a spec file, then wait until their tasks run."""
    try:
        specs = load_spec_file(path)
    except SpecError as exc:
        raise click.ClickException(f"{path}: invalid spec\n{exc}") from None
    expected = parse_if_revision(if_revision, [s.name for s in specs])

    async def body(client: Client) -> None:
        response = await client.apply(specs, dry_run=dry_run, if_revision=expected)
        rows: list[dict[str, object]] = [
            {"service": r.service.name, "action": _action(r), "revision": r.service.revision} for r in response.results
        ]
        if output != "json":
            for row in rows:
                click.echo(f"{row['service']}: {row['action']} (revision {row['revision']})", err=True)
        if dry_run or detach:
            emit(rows, [("SERVICE", "service"), ("ACTION", "action"), ("REVISION", "revision")], output)
            return
        final = await _wait(client, [r.service for r in response.results], timeout, quiet=output == "json")
        for row, result in zip(rows, response.results, strict=True):
            row["running"] = final[result.service.name].running
            row["replicas"] = final[result.service.name].desired
        emit(
            rows,
            [
                ("SERVICE", "service"),
                ("ACTION", "action"),
                ("REVISION", "revision"),
                ("RUNNING", "running"),
                ("REPLICAS", "replicas"),
            ],
            output,
        )

    run(body, controller)


async def _wait(client: Client, targets: list[pb.Service], wait_seconds: float, quiet: bool) -> dict[str, Progress]:
    """Waits on a watch until every target service has converged; raises ApiError on rejection or timeout."""
    names = [s.name for s in targets]
    ids = [s.id for s in targets]
    last: dict[str, str] = {}
    current: dict[str, Progress] = {}

    async def load() -> tuple[list[pb.Service], list[pb.Task]]:
        services = [s for s in await client.list_services() if s.id in ids]
        if len(ids) <= _PER_SERVICE_LISTS:
            tasks = [t for service_id in ids for t in await client.list_tasks(service_id, include_finished=True)]
        else:
            tasks = await client.list_tasks(include_finished=True)
        return services, tasks

    def converged(mirror: Mirror) -> dict[str, Progress] | None:
        nonlocal current
        services = {s.name: s for s in mirror.services.values()}
        tasks = list(mirror.tasks.values())
        current = {name: progress(services[name], tasks) for name in names if name in services}
        for name, state in current.items():
            line = state.line()
            if not quiet and last.get(name) != line:
                click.echo(line, err=True)
                last[name] = line
            if state.rejected:
                raise ApiError("; ".join(state.rejected))
        return current if all(p.done for p in current.values()) else None

    def missing() -> str:
        problems = [msg for p in current.values() for msg in (*p.failed, *p.waiting)]
        return "waiting for tasks to run" + (f": {'; '.join(problems[:5])}" if problems else "")

    return await wait_until(client, load, converged, within=wait_seconds, waiting_for=missing, services=ids)


@click.command()
@controller_option
@output_option
def services(controller: str | None, output: str) -> None:
    """List services with how many of their tasks run."""

    async def body(client: Client) -> None:
        tasks = await client.list_tasks()
        rows = [service_view(s, tasks) for s in await client.list_services()]
        for row in rows:
            row["short_id"] = row["id"][:12]
            row["tasks"] = f"{row['running']}/{row['replicas']}"
        emit(
            rows,
            [
                ("ID", "short_id"),
                ("NAME", "name"),
                ("REV", "revision"),
                ("IMAGE", "image"),
                ("TASKS", "tasks"),
                ("PORTS", "ports"),
            ],
            output,
        )

    run(body, controller)


@click.command()
@click.argument("service", required=False, default="")
@click.option("--all", "-a", "show_all", is_flag=True, help="Also show finished tasks.")
@controller_option
@output_option
def ps(service: str, show_all: bool, controller: str | None, output: str) -> None:
    """List tasks, of one SERVICE when given."""

    async def body(client: Client) -> None:
        nodes = {n.id: n for n in await client.list_nodes()}
        tasks = await client.list_tasks(service=service, include_finished=show_all)
        specs = await client.specs_for(tasks)
        rows = [task_view(t, nodes, specs.get(spec_key(t))) for t in tasks]
        for row in rows:
            row["short_id"] = row["id"][:12]
            row["short_container"] = (row["container_id"] or "")[:12]
            row["detail"] = row["error"] or row["message"]
        emit(rows, TASK_COLUMNS, output)

    run(body, controller)


@click.command()
@click.argument("service")
@click.argument("replicas", type=int)
@click.option("--detach", "-d", is_flag=True, help="Return at once; do not wait for the tasks.")
@click.option(
    "--if-revision",
    type=click.IntRange(min=0),
    default=None,
    metavar="N",
    help="Change nothing unless SERVICE is still at revision N; refused with the current revision when it moved.",
)
@click.option("--timeout", type=click.FloatRange(min=1), default=300.0, show_default=True)
@controller_option
@output_option
def scale(
    service: str,
    replicas: int,
    detach: bool,
    if_revision: int | None,
    timeout: float,
    controller: str | None,
    output: str,
) -> None:
    """Set the number of replicas of SERVICE, then wait until exactly that many run."""

    async def body(client: Client) -> None:
        scaled = await client.scale(service, replicas, if_revision=if_revision)
        if not detach:
            await _wait(client, [scaled], timeout, quiet=output == "json")
        emit_object(
            {"service": scaled.name, "replicas": scaled.spec.replicas, "revision": scaled.revision},
            output,
            f"{scaled.name} scaled to {scaled.spec.replicas}",
        )

    run(body, controller)


@click.command()
@click.argument("names", nargs=-1, required=True)
@click.option("--detach", "-d", is_flag=True, help="Return at once; do not wait for the containers to go.")
@click.option("--timeout", type=click.FloatRange(min=1), default=120.0, show_default=True)
@controller_option
@output_option
def rm(names: tuple[str, ...], detach: bool, timeout: float, controller: str | None, output: str) -> None:
    """Remove services; their containers are stopped (with their grace period) and removed."""

    async def body(client: Client) -> None:
        if detach:
            removed = [await client.delete_service(name) for name in names]
        else:
            removed = await _remove_and_wait(client, names, timeout)
        rows = [{"service": s.name, "id": s.id, "removed": True} for s in removed]
        if output == "json":
            emit(rows, [], output)
        else:
            for s in removed:
                click.echo(f"{s.name} removed")

    run(body, controller)


async def _remove_and_wait(client: Client, names: tuple[str, ...], wait_seconds: float) -> list[pb.Service]:
    """Deletes the services, then waits on a watch (opened before the deletion) until their tasks stopped."""
    removed: list[pb.Service] = []
    left: list[pb.Task] = []

    async def delete_then_load() -> tuple[list[pb.Service], list[pb.Task]]:
        removed.extend([await client.delete_service(name) for name in names])
        # All tasks, not per service: the services are deleted, so the API no longer knows their names.
        return [], await client.list_tasks(include_finished=True)

    def gone(mirror: Mirror) -> bool | None:
        nonlocal left
        ids = {s.id for s in removed}
        left = [t for t in mirror.tasks.values() if t.service_id in ids and t.status.state < pb.TASK_STATE_COMPLETE]
        return True if not left else None

    await wait_until(
        client,
        delete_then_load,
        gone,
        within=wait_seconds,
        waiting_for=lambda: f"waiting for {len(left)} task(s) to stop",
        kinds=[cpb.OBJECT_KIND_TASK],
    )
    return removed
