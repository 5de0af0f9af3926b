"""Options every command shares, and running an async command body with one-line errors."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import click

from dockyard import pki
from dockyard.cli.context import resolve_controller, resolve_credentials
from dockyard.client import ApiError, Client

F = TypeVar("F", bound=Callable[..., Any])


def output_option(fn: F) -> F:
    """Adds --output table|json."""
    return click.option(
        "--output",
        "-o",
        type=click.Choice(["table", "json"]),
        default="table",
        show_default=True,
        help="Human table or JSON for programs.",
    )(fn)


def controller_option(fn: F) -> F:
    """Adds --controller HOST:PORT."""
    return click.option(
        "--controller",
        default=None,
        metavar="HOST:PORT",
        help="Controller address (default: $DOCKYARD_CONTROLLER, then what `dockyard up` recorded).",
    )(fn)


def run(body: Callable[[Client], Coroutine[Any, Any, None]], controller: str | None) -> None:
    """Runs an async command body against the controller; API errors become a one-line error and exit 1."""

    try:
        credentials = resolve_credentials(credentials_flag())
    except pki.PkiError as exc:
        raise click.ClickException(f"credentials: {exc}") from None

    async def main() -> None:
        async with Client(resolve_controller(controller), credentials=credentials) as client:
            await body(client)

    try:
        asyncio.run(main())
    except ApiError as exc:
        raise click.ClickException(str(exc)) from None


def credentials_flag() -> str | None:
    """The root command's --credentials, if this runs under it and it was given."""
    context = click.get_current_context(silent=True)
    if context is None:
        return None
    value = context.find_root().params.get("credentials")
    return value if isinstance(value, str) and value else None
