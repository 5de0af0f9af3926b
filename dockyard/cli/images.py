"""The `dockyard image` commands: `push` sends an image from this host's Docker to the cluster's nodes.

No registry is involved: the image is read with `docker save` (through the agent's Docker adapter, the one
module that speaks to Docker), spooled to a temporary file (the push must announce its size, and the archive
is never held in memory), and streamed through the controller to every ready node that lacks it, or to the
nodes named with --node. Progress is shown per node: a live display in a terminal, a line per node otherwise,
and one JSON document with --output json. The command fails (exit 1) when any node failed, naming each.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from typing import IO, Any

import click

from dockyard.cli.common import controller_option, output_option, run
from dockyard.cli.exitcodes import ExitCode, Failed
from dockyard.cli.output import emit
from dockyard.client import Client
from dockyard.limits import IMAGE_PIECE_BYTES
from dockyard.spec import format_bytes
from dockyard.v1 import controller_pb2 as cpb

__all__ = ["image", "push_archive", "result_row"]

Progress = cpb.PushImageProgress


@click.group()
def image() -> None:
    """Images: send one from this host's Docker to the cluster's nodes, without a registry."""


@image.command()
@click.argument("reference", metavar="IMAGE")
@click.option(
    "--node",
    "nodes",
    multiple=True,
    metavar="HOST",
    help="Push to this node only (host name or id; repeat for more) [default: every ready node].",
)
@controller_option
@output_option
def push(reference: str, nodes: tuple[str, ...], controller: str | None, output: str) -> None:
    """Send IMAGE from this host's Docker to the nodes that lack it (nodes that have it are skipped)."""

    async def body(client: Client) -> None:
        with tempfile.TemporaryFile(prefix="dockyard-push-") as spool:
            image_id = await save_local(reference, spool)
            display = _display(output)
            try:
                finals = await push_archive(client, reference, image_id, spool, nodes, display.show)
            finally:
                display.close()
        rows = [result_row(p) for p in sorted(finals, key=lambda p: (p.hostname, p.node_id))]
        emit(
            rows,
            [("NODE", "hostname"), ("ID", "short_id"), ("RESULT", "result"), ("SIZE", "size"), ("ERROR", "error")],
            output,
        )
        failed = [p for p in finals if p.error]
        if failed:
            names = "; ".join(f"{p.hostname or p.node_id}: {p.error}" for p in failed)
            raise Failed(ExitCode.ERROR, f"{reference} was not pushed to {len(failed)} node(s): {names}")

    run(body, controller)


async def save_local(reference: str, spool: IO[bytes]) -> str:
    """Writes `docker save REFERENCE` into spool (rewound) and returns the image's id; fails when it is absent."""
    from agent.runtime.base import RuntimeFailure
    from agent.runtime.docker import DockerRuntime  # Docker only for this command: others never load it

    runtime = DockerRuntime()
    try:
        image_id = await runtime.image_id(reference)
        if image_id is None:
            raise Failed(
                ExitCode.ERROR,
                f"IMAGE: {reference!r} is not in this host's Docker (see `docker images`); build or pull it first",
            )
        async for chunk in runtime.save_image(reference):
            spool.write(chunk)
    except RuntimeFailure as exc:
        raise Failed(ExitCode.ERROR, f"reading {reference!r} from this host's Docker: {exc}") from None
    finally:
        await runtime.close()
    spool.flush()
    spool.seek(0)
    return image_id


async def push_archive(
    client: Client,
    reference: str,
    image_id: str,
    archive: IO[bytes],
    nodes: Sequence[str],
    show: Callable[[Progress], None],
) -> list[Progress]:
    """Streams the archive (a seekable file) to the nodes; calls show on every progress; returns each node's last."""
    archive.seek(0, 2)
    total = archive.tell()
    archive.seek(0)

    async def pieces() -> AsyncIterator[bytes]:
        while piece := archive.read(IMAGE_PIECE_BYTES):
            yield piece

    finals: dict[str, Progress] = {}
    async for progress in client.push_image(reference, image_id, total, pieces(), nodes):
        show(progress)
        if progress.done:
            finals[progress.node_id] = progress
    return list(finals.values())


def result_row(progress: Progress) -> dict[str, Any]:
    """One node's outcome as the table and the JSON document show it."""
    if progress.error:
        result = "failed"
    elif progress.already_present:
        result = "present"
    else:
        result = "loaded"
    return {
        "node_id": progress.node_id,
        "short_id": progress.node_id[:12],
        "hostname": progress.hostname,
        "result": result,
        "bytes": progress.total if result == "loaded" else 0,
        "size": format_bytes(progress.total, approximate=True) if result == "loaded" else "",
        "error": progress.error,
    }


class _Quiet:
    """Shows nothing: --output json prints one document at the end."""

    def show(self, progress: Progress) -> None:
        """Ignores the progress."""

    def close(self) -> None:
        """Nothing to close."""


class _Lines:
    """A line on stderr when a node starts and when it is done: for logs and CI, where there is no terminal."""

    def __init__(self) -> None:
        self._started: set[str] = set()

    def show(self, progress: Progress) -> None:
        """Prints the node's first and last report."""
        name = progress.hostname or progress.node_id
        if progress.done:
            row = result_row(progress)
            click.echo(f"{name}: {row['result']}" + (f": {progress.error}" if progress.error else ""), err=True)
        elif progress.node_id not in self._started:
            self._started.add(progress.node_id)
            click.echo(f"{name}: pushing {format_bytes(progress.total, approximate=True)}", err=True)

    def close(self) -> None:
        """Nothing to close."""


class _Bars:
    """A progress bar per node on stderr, redrawn in place (rich is imported here: only a terminal pays)."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TextColumn("{task.fields[state]}"),
            console=Console(stderr=True),
        )
        self._tasks: dict[str, Any] = {}
        self._progress.start()

    def show(self, progress: Progress) -> None:
        """Moves the node's bar; a done node shows its result."""
        task = self._tasks.get(progress.node_id)
        if task is None:
            name = progress.hostname or progress.node_id[:12]
            task = self._tasks[progress.node_id] = self._progress.add_task(name, total=progress.total, state="")
        state = ""
        if progress.done:
            row = result_row(progress)
            state = f"[red]failed: {progress.error}[/]" if progress.error else f"[green]{row['result']}[/]"
        self._progress.update(task, completed=progress.bytes_done, state=state)

    def close(self) -> None:
        """Stops redrawing; the last frame stays."""
        self._progress.stop()


def _display(output: str) -> _Quiet | _Lines | _Bars:
    """Quiet for JSON, bars when stderr is a terminal, plain lines otherwise."""
    if output == "json":
        return _Quiet()
    if sys.stderr.isatty():
        return _Bars()
    return _Lines()
