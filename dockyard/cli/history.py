"""`dockyard history SERVICE` (its kept revisions, what changed in each) and `dockyard rollback SERVICE`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import click

from dockyard.cli.common import controller_option, output_option, run
from dockyard.cli.deploying import Target, choose_display, finish, wait_for_deploy
from dockyard.cli.output import emit, emit_object
from dockyard.cli.rollout import rollout_name
from dockyard.cli.workloads import DEPLOY_TIMEOUT, timeout_option
from dockyard.client import Client
from dockyard.timestamps import from_timestamp
from dockyard.v1 import controller_pb2 as cpb
from dockyard.v1 import types_pb2 as pb

__all__ = ["history", "history_rows", "rollback"]

Diff = Callable[[pb.ServiceSpec, pb.ServiceSpec], Sequence[cpb.FieldChange]]

# A history line names at most this many changed fields; --output json has them all.
_SHOWN_CHANGES = 4


def _change_text(change: cpb.FieldChange) -> str:
    return f"{change.path}: {change.old_value or '(unset)'} -> {change.new_value or '(unset)'}"


def history_rows(revisions: Sequence[cpb.ServiceRevision], diff: Diff) -> list[dict[str, Any]]:
    """Returns the revisions (newest first, as the API lists them) as rows, each with what changed since the
    next older kept one (`diff(old, new)`); the oldest kept has none to compare with."""
    rows: list[dict[str, Any]] = []
    for index, revision in enumerate(revisions):
        older = revisions[index + 1] if index + 1 < len(revisions) else None
        changes = list(diff(older.spec, revision.spec)) if older is not None else []
        when = from_timestamp(revision.created_at)
        if older is None:
            summary = "created" if revision.revision == 1 else "(the oldest revision kept)"
        else:
            shown = [_change_text(c) for c in changes[:_SHOWN_CHANGES]]
            more = len(changes) - len(shown)
            summary = "; ".join(shown) + (f"; and {more} more" if more > 0 else "") if changes else "no change"
        rows.append(
            {
                "revision": revision.revision,
                "spec_revision": revision.spec_revision,
                "current": revision.current,
                "created_at": when.isoformat() if when else None,
                "change_cause": revision.change_cause or None,
                "changes": [{"path": c.path, "old": c.old_value, "new": c.new_value} for c in changes],
                "summary": summary,
                "mark": "*" if revision.current else "",
            }
        )
    return rows


@click.command()
@click.argument("service")
@controller_option
@output_option
def history(service: str, controller: str | None, output: str) -> None:
    """List SERVICE's kept revisions, newest first: when, why (the change cause) and what changed.

    The current one is marked *. `dockyard rollback SERVICE --to REVISION` makes one of them current again.
    """
    from dockyard.spec.diff import spec_changes  # the same field-by-field diff as `dockyard plan`

    async def body(client: Client) -> None:
        rows = history_rows(await client.history(service), spec_changes)
        emit(
            rows,
            [
                ("", "mark"),
                ("REV", "revision"),
                ("CREATED", "created_at"),
                ("CAUSE", "change_cause"),
                ("CHANGES", "summary"),
            ],
            output,
        )

    run(body, controller)


@click.command()
@click.argument("service")
@click.option(
    "--to",
    "to_revision",
    type=click.IntRange(min=1),
    default=None,
    metavar="REVISION",
    help="The revision whose spec to run again (see `dockyard history`) [default: the one before the current spec].",
)
@click.option(
    "--if-revision",
    type=click.IntRange(min=0),
    default=None,
    metavar="N",
    help="Change nothing unless SERVICE is still at revision N.",
)
@click.option("--detach", "-d", is_flag=True, help="Return once the rollback is stored; do not wait for it.")
@timeout_option(DEPLOY_TIMEOUT)
@controller_option
@output_option
def rollback(
    service: str,
    to_revision: int | None,
    if_revision: int | None,
    detach: bool,
    timeout: float,
    controller: str | None,
    output: str,
) -> None:
    """Run an earlier revision's spec again, as a new revision rolled out with the service's rollback settings,
    then wait for it as `apply` does (same progress, same exit codes)."""

    async def body(client: Client) -> None:
        before = await client.get_service(service)
        written = await client.rollback(service, to_revision or 0, if_revision=if_revision)
        # A target that runs the current spec resumes a paused rollout at the same revision: no new revision.
        resumed = written.revision == before.revision
        row = {"service": written.name, "action": "resumed" if resumed else "rolled back", "revision": written.revision}
        if output != "json":
            if resumed:
                state = rollout_name(written.update_status.state)
                click.echo(f"{written.name}: revision {written.revision}: paused rollout resumed ({state})", err=True)
            else:
                cause = f": {written.change_cause}" if written.change_cause else ""
                click.echo(f"{written.name}: revision {written.revision}{cause}", err=True)
        if detach:
            emit_object(row, output, f"{written.name}: rollback to revision {written.revision} stored")
            return
        display = choose_display(output, f"rollback {written.name}")
        target = Target(written, written.spec_revision)
        verdict, progresses = await wait_for_deploy(client, [target], within=timeout, display=display)
        finish(verdict, progresses, [row], output)

    run(body, controller)
