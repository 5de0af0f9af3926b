"""`dockyard secret ...` and `dockyard config ...`: files the controller keeps and mounts into containers.

A secret's data goes to the controller and never comes back: `secret ls` shows names, sizes and digests.
A config's data is not secret: `config inspect` shows it.
"""

from __future__ import annotations

import base64
import sys
from collections.abc import Sequence
from typing import Any, BinaryIO

import click

from dockyard.cli.common import controller_option, output_option, run
from dockyard.cli.output import emit, emit_object
from dockyard.client import Client
from dockyard.spec.schema import FILE_BYTES
from dockyard.timestamps import from_timestamp
from dockyard.v1 import types_pb2 as pb

__all__ = ["config", "file_view", "read_data", "secret"]

_COLUMNS = [("NAME", "name"), ("STACK", "stack"), ("SIZE", "size"), ("DIGEST", "short_digest"), ("CREATED", "created")]


def file_view(obj: pb.Secret | pb.Config) -> dict[str, Any]:
    """Returns a secret or config as a row (never data: a config's is added by `config inspect`)."""
    created = from_timestamp(obj.created_at)
    return {
        "id": obj.id,
        "name": obj.name,
        "stack": obj.stack or None,
        "size": obj.size,
        "digest": obj.digest,
        "short_digest": obj.digest.partition(":")[2][:12],  # without "sha256:" or "hmac-sha256:"
        "labels": dict(obj.labels),
        "created": created.isoformat() if created else None,
    }


def read_data(source: str, stdin: BinaryIO | None = None) -> bytes:
    """Reads FILE, or standard input for "-", refusing more than a secret or config may hold."""
    try:
        if source == "-":
            data = (stdin or sys.stdin.buffer).read(FILE_BYTES.maximum + 1)
        else:
            with open(source, "rb") as handle:
                data = handle.read(FILE_BYTES.maximum + 1)
    except OSError as exc:
        raise click.BadParameter(f"{source}: {exc.strerror or exc}", param_hint="--file") from None
    if len(data) > FILE_BYTES.maximum:
        raise click.BadParameter(
            f"{source}: more than the {FILE_BYTES.maximum} bytes a secret or config may hold", param_hint="--file"
        )
    return data


def _labels(values: Sequence[str]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r}: write KEY=VALUE", param_hint="--label")
        labels[key] = value
    return labels


def _file_option(fn: Any) -> Any:
    return click.option(
        "--file",
        "-f",
        "source",
        required=True,
        metavar="FILE|-",
        help="Where the data is; - reads standard input.",
    )(fn)


def _label_option(fn: Any) -> Any:
    return click.option("--label", "-l", "labels", multiple=True, metavar="KEY=VALUE", help="A label; repeatable.")(fn)


@click.group()
def secret() -> None:
    """Manage secrets: stored encrypted, sent only to the nodes whose tasks use them, mounted on tmpfs."""


@secret.command("create")
@click.argument("name")
@_file_option
@_label_option
@controller_option
@output_option
def secret_create(name: str, source: str, labels: tuple[str, ...], controller: str | None, output: str) -> None:
    """Store the secret NAME (immutable: rotate by creating a new name and pointing the services at it)."""
    data = read_data(source)
    label_map = _labels(labels)

    async def body(client: Client) -> None:
        created = await client.create_secret(name, data, label_map)
        emit_object(file_view(created), output, created.id)

    run(body, controller)


@secret.command("ls")
@controller_option
@output_option
def secret_ls(controller: str | None, output: str) -> None:
    """List secrets (names, sizes and digests; never their data)."""

    async def body(client: Client) -> None:
        emit([file_view(s) for s in await client.list_secrets()], _COLUMNS, output)

    run(body, controller)


@secret.command("rm")
@click.argument("names", nargs=-1, required=True)
@controller_option
@output_option
def secret_rm(names: tuple[str, ...], controller: str | None, output: str) -> None:
    """Remove secrets; refused for one a service still uses."""

    async def body(client: Client) -> None:
        removed = [file_view(await client.remove_secret(name)) for name in names]
        _emit_removed(removed, output)

    run(body, controller)


@click.group()
def config() -> None:
    """Manage configs: files the controller keeps and mounts read-only into the containers that use them."""


@config.command("create")
@click.argument("name")
@_file_option
@_label_option
@controller_option
@output_option
def config_create(name: str, source: str, labels: tuple[str, ...], controller: str | None, output: str) -> None:
    """Store the config NAME (immutable: a new version is a new name)."""
    data = read_data(source)
    label_map = _labels(labels)

    async def body(client: Client) -> None:
        created = await client.create_config(name, data, label_map)
        emit_object(file_view(created), output, created.id)

    run(body, controller)


@config.command("ls")
@controller_option
@output_option
def config_ls(controller: str | None, output: str) -> None:
    """List configs."""

    async def body(client: Client) -> None:
        emit([file_view(c) for c in await client.list_configs()], _COLUMNS, output)

    run(body, controller)


@config.command("inspect")
@click.argument("name")
@controller_option
@output_option
def config_inspect(name: str, controller: str | None, output: str) -> None:
    """Show a config with its data (as text; base64 in JSON when it is not UTF-8)."""

    async def body(client: Client) -> None:
        found = await client.get_config(name)
        view = file_view(found)
        try:
            view["data"] = found.data.decode()
        except UnicodeDecodeError:
            view["data_base64"] = base64.b64encode(found.data).decode()
        if output == "json":
            emit_object(view, output, "")
            return
        for key in ("id", "name", "stack", "size", "digest", "labels", "created"):
            click.echo(f"{key}: {view[key] if view[key] is not None else ''}")
        click.echo("data:")
        if "data" in view:
            click.echo(view["data"], nl=not view["data"].endswith("\n"))
        else:
            click.echo(f"({found.size} bytes, not text; base64) {view['data_base64']}")

    run(body, controller)


@config.command("rm")
@click.argument("names", nargs=-1, required=True)
@controller_option
@output_option
def config_rm(names: tuple[str, ...], controller: str | None, output: str) -> None:
    """Remove configs; refused for one a service still uses."""

    async def body(client: Client) -> None:
        removed = [file_view(await client.remove_config(name)) for name in names]
        _emit_removed(removed, output)

    run(body, controller)


def _emit_removed(rows: list[dict[str, Any]], output: str) -> None:
    if output == "json":
        emit(rows, [], output)
        return
    for row in rows:
        click.echo(f"{row['name']}: removed")
