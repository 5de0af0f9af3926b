"""Options every command shares, and running an async command body with one-line errors."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import click

from dockyard.cli.context import resolve_controller
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

    async def main() -> None:
        async with Client(resolve_controller(controller)) as client:
            await body(client)

    try:
        asyncio.run(main())
    except ApiError as exc:
        raise click.ClickException(str(exc)) from None
