"""Waiting for a deploy and showing it: what `apply`, `rollback`, `scale` and `service rebalance` share.

`wait_for_deploy` follows the services on a Watch (dockyard.cli.following), judges them with the pure
rules of dockyard.cli.rollout after every change (and every second, for the grace of unplaced tasks),
and shows the counts on a `Display`: a live table in a terminal, one line per change otherwise, nothing
with --output json. `finish` prints the result and ends the command with the verdict's exit code.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import click

from dockyard.cli.exitcodes import ExitCode, Failed
from dockyard.cli.following import Mirror, TimedOut, wait_until
from dockyard.cli.output import emit
from dockyard.cli.rollout import Progress, UnplacedClock, Verdict, at_timeout, judge, progress
from dockyard.client import Client
from dockyard.clock import Clock, SystemClock
from dockyard.v1 import types_pb2 as pb

__all__ = ["Display", "PlainDisplay", "Target", "choose_display", "finish", "wait_for_deploy"]

# Waiting for more services than this reads all tasks in one list instead of one list per service.
_PER_SERVICE_LISTS: Final = 4
# How often a wait looks again while no change arrives: the grace of unplaced tasks runs on time alone.
RECHECK_SECONDS: Final = 1.0

# Another check a service must pass to be done (e.g. a rebalance's spread): None, or why it is not done yet.
ExtraCheck = Callable[[pb.Service, Sequence[pb.Task]], str | None]


@dataclass(frozen=True)
class Target:
    """A service to wait for, and the spec revision its command wrote (a later rollback of it is a failure)."""

    service: pb.Service
    spec_revision: int


class Display(Protocol):
    """Where a wait shows its progress."""

    def show(self, progresses: Sequence[Progress], notes: Sequence[str]) -> None:
        """Shows the current counts of every service, with notes of what blocks them."""

    def close(self) -> None:
        """Ends the display (a live one leaves its last frame on the screen)."""


class QuietDisplay:
    """Shows nothing: --output json prints one document at the end."""

    def show(self, progresses: Sequence[Progress], notes: Sequence[str]) -> None:
        """Ignores the progress."""

    def close(self) -> None:
        """Nothing to close."""


class PlainDisplay:
    """One line on stderr whenever a service's summary changes: for logs and CI, where there is no terminal."""

    def __init__(self, echo: Callable[[str], None] | None = None) -> None:
        """Writes with echo (default: click.echo to stderr)."""
        self._echo = echo or (lambda line: click.echo(line, err=True))
        self._last: dict[str, str] = {}

    def show(self, progresses: Sequence[Progress], notes: Sequence[str]) -> None:
        """Prints the lines that changed since the last call."""
        for p in progresses:
            line = p.line()
            if self._last.get(p.name) != line:
                self._last[p.name] = line
                self._echo(line)
        for note in notes:
            if self._last.get(f"note:{note}") is None:
                self._last[f"note:{note}"] = note
                self._echo(f"  {note}")

    def close(self) -> None:
        """Nothing to close."""


class RichDisplay:
    """A table on stderr that redraws in place: one row per service, the problems below it."""

    def __init__(self, title: str) -> None:
        """Starts the live display (rich is imported here: only a terminal pays for it)."""
        from rich.console import Console
        from rich.live import Live

        self._title = title
        self._live = Live(console=Console(stderr=True), refresh_per_second=4, transient=False)
        self._live.start()

    def show(self, progresses: Sequence[Progress], notes: Sequence[str]) -> None:
        """Redraws the table."""
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        table = Table(title=self._title, title_justify="left", box=None, pad_edge=False)
        for header in ("SERVICE", "UPDATED", "HEALTHY", "STARTING", "FAILED", "ROLLOUT", ""):
            table.add_column(header)
        for p in progresses:
            done = p.completed if p.job else p.updated
            state = "rolled back" if p.rolled_back else (p.rollout or "")
            mark = "[green]done[/]" if p.converged else ""
            table.add_row(
                p.name,
                f"{done}/{p.desired}" + (" exited 0" if p.job else ""),
                str(p.running),
                str(p.starting),
                f"[red]{p.failed}[/]" if p.failed else "0",
                state,
                mark,
            )
        lines = [Text(f"  {note}", style="yellow") for note in notes[:8]]
        self._live.update(Group(table, *lines), refresh=True)

    def close(self) -> None:
        """Stops redrawing; the last frame stays."""
        self._live.stop()


def choose_display(output: str, title: str) -> Display:
    """Quiet for JSON, a live table when stderr is a terminal, plain lines otherwise."""
    if output == "json":
        return QuietDisplay()
    if sys.stderr.isatty():
        return RichDisplay(title)
    return PlainDisplay()


def notes_of(progresses: Sequence[Progress], extra: Sequence[str] = ()) -> list[str]:
    """What blocks the services, for the display: recent failures, pending tasks, the extra checks' reasons."""
    notes = [*extra]
    for p in progresses:
        if p.rollout_message and (p.rolled_back or p.rollout in ("paused", "rollback_paused")):
            notes.append(f"{p.name}: {p.rollout_message}")
        notes.extend(p.job_failures)
        notes.extend(p.given_up)
        notes.extend(p.refused)
        notes.extend(p.failures[-2:])
        notes.extend(p.waiting[:2])
    return notes


async def wait_for_deploy(
    client: Client,
    targets: Sequence[Target],
    *,
    within: float,
    display: Display,
    clock: Clock | None = None,
    extra: ExtraCheck | None = None,
) -> tuple[Verdict, list[Progress]]:
    """Follows the targets until judge() gives a verdict or `within` seconds pass; returns the verdict and last counts.

    A target service deleted meanwhile ends the wait with ExitCode.ERROR. Errors of the watch (an
    unreachable controller) are raised as ApiError.
    """
    clock = clock or SystemClock()
    ids = [t.service.id for t in targets]
    wanted = {t.service.id: t.spec_revision for t in targets}
    unplaced = UnplacedClock()
    last: list[Progress] = []
    blocked: list[str] = []

    async def load() -> tuple[list[pb.Service], list[pb.Task]]:
        services = [s for s in await client.list_services() if s.id in wanted]
        if len(ids) <= _PER_SERVICE_LISTS:
            tasks = [t for service_id in ids for t in await client.list_tasks(service_id, include_finished=True)]
        else:
            tasks = await client.list_tasks(include_finished=True)
        return services, tasks

    def check(mirror: Mirror) -> Verdict | None:
        nonlocal last, blocked
        tasks = list(mirror.tasks.values())
        gone = [t.service.name for t in targets if t.service.id not in mirror.services]
        if gone:
            return Verdict(ExitCode.ERROR, f"deleted while waiting: {', '.join(gone)}")
        current = [mirror.services[service_id] for service_id in ids]
        last = [progress(s, tasks, target=wanted[s.id]) for s in current]
        blocked = blockers = [f"{s.name}: {why}" for s in current if extra and (why := extra(s, tasks))]
        display.show(last, notes_of(last, blockers))
        seen = unplaced.seen([task_id for p in last for task_id in p.unplaced], clock.monotonic())
        verdict = judge(last, seen)
        if verdict is not None and verdict.code == ExitCode.OK and blockers:
            return None
        return verdict

    try:
        verdict = await wait_until(
            client,
            load,
            check,
            within=within,
            waiting_for=lambda: "",
            services=ids,
            clock=clock,
            recheck=RECHECK_SECONDS,
        )
    except TimedOut:
        verdict = at_timeout(last, within)
        if verdict.code == ExitCode.TIMEOUT and blocked:
            joiner = "; " if ":" in verdict.reason else ": "
            verdict = Verdict(verdict.code, f"{verdict.reason}{joiner}{'; '.join(blocked)}")
    finally:
        display.close()
    return verdict, last


def finish(
    verdict: Verdict,
    progresses: Sequence[Progress],
    rows: Sequence[dict[str, Any]],
    output: str,
    extra_document: dict[str, Any] | None = None,
) -> None:
    """Prints the outcome (a table of rows with the final counts, or one JSON document) and exits with its code.

    rows are the command's own per-service facts (service, action, revision); each gains the counts of its
    service. A failure ends with Failed (exit code and "Error: <reason>" on stderr); success prints the
    reason on stderr in table mode.
    """
    counts = {p.name: p.as_dict() for p in progresses}
    merged = [{**row, **{k: v for k, v in counts.get(str(row["service"]), {}).items() if k not in row}} for row in rows]
    if output == "json":
        document = {
            **(extra_document or {}),
            "outcome": verdict.code.label,
            "exit_code": int(verdict.code),
            "reason": verdict.reason,
            "services": merged,
        }
        click.echo(json.dumps(document, indent=2))
    else:
        emit(
            merged,
            [
                ("SERVICE", "service"),
                ("ACTION", "action"),
                ("REVISION", "revision"),
                ("UPDATED", "updated"),
                ("HEALTHY", "healthy"),
                ("FAILED", "failed"),
                ("DESIRED", "desired"),
                ("ROLLOUT", "rollout"),
            ],
            output,
        )
    if verdict.code != ExitCode.OK:
        raise Failed(verdict.code, verdict.reason)
    if output != "json":
        click.echo(f"converged: {verdict.reason}", err=True)
