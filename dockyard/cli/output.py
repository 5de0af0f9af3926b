"""Prints results as a table for people or as JSON for programs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import click

Row = dict[str, Any]


def emit(rows: Sequence[Row], columns: Sequence[tuple[str, str]], output: str) -> None:
    """Writes rows to stdout: a JSON list of objects, or a table of the given (header, key) columns."""
    if output == "json":
        click.echo(json.dumps(list(rows), indent=2, sort_keys=False))
        return
    from tabulate import tabulate  # imported here: JSON output and most commands' start-up skip it

    table = [[_cell(row.get(key)) for _, key in columns] for row in rows]
    click.echo(tabulate(table, headers=[header for header, _ in columns], tablefmt="plain", disable_numparse=True))


def emit_object(obj: Row, output: str, text: str) -> None:
    """Writes one result: the object as JSON, or a line of text."""
    if output == "json":
        click.echo(json.dumps(obj, indent=2))
    else:
        click.echo(text)


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in sorted(value.items()))
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)
