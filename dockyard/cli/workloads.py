"""Commands about services and their tasks: apply, services, ps, scale, rm (plan: dockyard.cli.planning)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

import click

from dockyard.cli.common import controller_option, output_option, run
from dockyard.cli.deploying import Target, choose_display, finish, wait_for_deploy
from dockyard.cli.exitcodes import ExitCode, Failed
from dockyard.cli.following import Mirror, wait_until
from dockyard.cli.output import emit, emit_object
from dockyard.cli.views import TASK_COLUMNS, ps_rows, service_view
from dockyard.client import Client
from dockyard.spec import Deployment, SpecError
from dockyard.spec.compose import FORMAT_AUTO, FORMATS, load_any_file
from dockyard.v1 import controller_pb2 as cpb
from dockyard.v1 import types_pb2 as pb

F = TypeVar("F", bound=Callable[..., Any])

# How long apply, rollback, scale and rebalance wait by default: a 20-replica rolling update with health
# checks takes minutes, not seconds.
DEPLOY_TIMEOUT: Final = 600.0


def _action(result: cpb.ApplyResult) -> str:
    return cpb.ApplyResult.Action.Name(result.action).removeprefix("ACTION_").lower()


def parse_if_revision(values: Sequence[str], names: Sequence[str]) -> tuple[int, dict[str, int]]:
    """Turns --if-revision values into (store revision, service name -> expected service revision).

    A bare N is the store revision a plan printed ("planned against state revision N"): the apply is
    refused when any service of the file (or one --prune would remove) changed since. A bare 0 (a plan of an
    empty store) is the same guard as NAME=0 for each service of the file: none may exist yet. NAME=N is
    the revision one service must still be at (0: it must not exist yet). Both forms may be combined; a
    bare N is given at most once. Raises click.BadParameter naming the bad value.
    """
    state_revision: int | None = None
    expected: dict[str, int] = {}
    for value in values:
        name, sep, number = value.rpartition("=")
        if not (number.isascii() and number.isdigit()):
            raise click.BadParameter(
                f"{value!r}: N must be a revision number (N: a plan's state revision; NAME=N: a service's)",
                param_hint="--if-revision",
            )
        if not sep:
            if state_revision is not None:
                raise click.BadParameter(f"{value!r}: a state revision is given twice", param_hint="--if-revision")
            state_revision = int(number)
            continue
        if name not in names:
            raise click.BadParameter(f"{value!r}: the file has no service {name!r}", param_hint="--if-revision")
        if name in expected:
            raise click.BadParameter(f"{value!r}: {name!r} is given twice", param_hint="--if-revision")
        expected[name] = int(number)
    if state_revision == 0:
        # Store revision 0 is before anything was written, and the API reads 0 as "no check".
        expected = {name: expected.get(name, 0) for name in names}
    return state_revision or 0, expected


def load_deployment(
    path: Path, file_format: str = FORMAT_AUTO, stack: str = "", ignore_unsupported: bool = False
) -> Deployment:
    """Reads a spec file, ours or Compose; an invalid one ends the command with every problem listed.

    What was read as Compose, and the unsupported keys left out, are said on stderr (stdout stays for --output).
    """
    try:
        loaded = load_any_file(path, file_format=file_format, stack=stack, ignore_unsupported=ignore_unsupported)
    except SpecError as exc:
        raise click.ClickException(f"{path}: invalid spec\n{exc}") from None
    if loaded.reason:
        click.echo(f"{path}: read as a Compose file of stack {loaded.deployment.stack} ({loaded.reason})", err=True)
    for warning in loaded.warnings:
        click.echo(f"warning: {warning}", err=True)
    return loaded.deployment


def format_options(fn: F) -> F:
    """Adds --format, --stack and --ignore-unsupported: how the spec file is read (docs/compose.md)."""
    fn = click.option(
        "--ignore-unsupported",
        is_flag=True,
        help="Compose: leave out the keys Dockyard does not support, warning of each, instead of refusing the file.",
    )(fn)
    fn = click.option(
        "--stack",
        default="",
        metavar="NAME",
        help="Compose: the stack's name (default: the file's top-level name, else its folder's name).",
    )(fn)
    return click.option(
        "--format",
        "file_format",
        type=click.Choice(FORMATS),
        default=FORMAT_AUTO,
        show_default=True,
        help="The file's format: compose, dockyard, or auto (Compose's file names and keys mean compose).",
    )(fn)


def file_option(fn: F) -> F:
    """Adds -f/--file FILE, the spec file."""
    return click.option(
        "-f",
        "--file",
        "path",
        required=True,
        type=click.Path(dir_okay=False, path_type=Path),
        help="Service spec (YAML).",
    )(fn)


def timeout_option(default: float) -> Callable[[F], F]:
    """Adds --timeout SECONDS (at least 1) with the command's default."""
    return click.option(
        "--timeout",
        type=click.FloatRange(min=1),
        default=default,
        show_default=True,
        help="Seconds to wait before giving up (exit code 6).",
    )


@click.command()
@file_option
@format_options
@click.option("--detach", "-d", is_flag=True, help="Return once the change is stored; do not wait for the rollout.")
@click.option("--dry-run", is_flag=True, help="Validate and show what would change; change nothing (see `plan`).")
@click.option(
    "--if-revision",
    "if_revision",
    multiple=True,
    metavar="N|NAME=N",
    help="N: change nothing if a service of the file (or one --prune removes) changed since state revision N "
    "(as `dockyard plan` printed it). NAME=N: unless service NAME is still at revision N (0: does not exist "
    "yet); repeat per service. Refused (exit 1) with what moved.",
)
@click.option("--prune", is_flag=True, help="Also remove every service that is not in the file.")
@timeout_option(DEPLOY_TIMEOUT)
@controller_option
@output_option
def apply(
    path: Path,
    file_format: str,
    stack: str,
    ignore_unsupported: bool,
    detach: bool,
    dry_run: bool,
    if_revision: tuple[str, ...],
    prune: bool,
    timeout: float,
    controller: str | None,
    output: str,
) -> None:
    """Create or update the services of a spec file, then wait until they run healthy at the new revision.

    Exit codes: 0 converged, 1 error, 3 rolled back, 4 paused, 5 tasks cannot be placed, 6 timeout, 7 a job
    failed (docs/operations.md).
    """
    deployment = load_deployment(path, file_format, stack, ignore_unsupported)
    state_revision, expected = parse_if_revision(if_revision, deployment.names)

    async def body(client: Client) -> None:
        response = await client.apply(
            deployment.specs,
            dry_run=dry_run,
            if_revision=expected,
            if_state_revision=state_revision,
            prune=prune,
            extras=deployment.extras(),
        )
        # Services prune deleted come back as ACTION_REMOVED, as they were last: the controller's own account.
        applied = [r for r in response.results if r.action != cpb.ApplyResult.ACTION_REMOVED]
        rows: list[dict[str, Any]] = [
            {"service": r.service.name, "action": _action(r), "revision": r.service.revision} for r in applied
        ]
        rows.extend(
            {"service": r.service.name, "action": "removed", "revision": None}
            for r in sorted(response.results, key=lambda r: r.service.name)
            if r.action == cpb.ApplyResult.ACTION_REMOVED
        )
        if output != "json":
            for row in rows:
                revision = f" (revision {row['revision']})" if row["revision"] is not None else ""
                click.echo(f"{row['service']}: {row['action']}{revision}", err=True)
        if dry_run or detach:
            emit(rows, [("SERVICE", "service"), ("ACTION", "action"), ("REVISION", "revision")], output)
            return
        targets = [Target(r.service, r.service.spec_revision) for r in applied]
        display = choose_display(output, f"apply {path.name}")
        verdict, progresses = await wait_for_deploy(client, targets, within=timeout, display=display)
        finish(verdict, progresses, rows, output)

    run(body, controller)


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
                ("MODE", "mode"),
                ("REV", "revision"),
                ("IMAGE", "image"),
                ("TASKS", "tasks"),
                ("ROLLOUT", "rollout"),
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
        emit(ps_rows(tasks, nodes, specs), TASK_COLUMNS, output)

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
@timeout_option(DEPLOY_TIMEOUT)
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
        document = {"service": scaled.name, "replicas": scaled.spec.replicas, "revision": scaled.revision}
        if not detach:
            display = choose_display(output, f"scale {scaled.name} to {scaled.spec.replicas}")
            target = Target(scaled, scaled.spec_revision)
            verdict, _ = await wait_for_deploy(client, [target], within=timeout, display=display)
            if verdict.code != ExitCode.OK:
                raise Failed(verdict.code, verdict.reason)
        emit_object(document, output, f"{scaled.name} scaled to {scaled.spec.replicas}")

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
