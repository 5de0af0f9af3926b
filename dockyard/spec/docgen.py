"""Renders the field reference tables of docs/spec.md from the table in dockyard.spec.schema.

Each generated table sits between `<!-- BEGIN fields: SECTION -->` and `<!-- END fields -->`, where
SECTION is "service" (the fields of a service), "name", a section such as "restart" or "ports[]", or
"limits" (the limits over several fields). After changing the table, run

    .venv/bin/python -m dockyard.spec.docgen docs/spec.md

A unit test fails while the file is stale.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from dockyard.spec import schema

_BLOCK = re.compile(r"(<!-- BEGIN fields: (?P<section>[^ ]+) -->\n)(?P<body>.*?)(<!-- END fields -->)", re.S)
_HEADER = "| Field | Type | Default | Limits | Meaning |\n| --- | --- | --- | --- | --- |\n"


def table(section: str) -> str:
    """Returns the Markdown table of one section; raises KeyError for a section the table does not have."""
    if section == "limits":
        rows = "".join(f"| {limit.name} | {limit.shown} | {limit.help} |\n" for limit in schema.LIMITS)
        return "| Limit | Maximum | Meaning |\n| --- | --- | --- |\n" + rows
    if section == "name":
        fields = [(schema.NAME.path, schema.NAME)]
    elif section == "service":
        fields = [(row.path, row) for row in schema.FIELDS if "." not in row.path]
    else:
        prefix = f"{section}."
        fields = [(row.path.removeprefix(prefix), row) for row in schema.FIELDS if row.path.startswith(prefix)]
    if not fields:
        raise KeyError(section)
    rows = "".join(
        f"| `{name}` | {row.type} | {row.default_text} | {row.limits_text} | {row.help} |\n" for name, row in fields
    )
    return _HEADER + rows


def render(text: str) -> str:
    """Returns `text` with every generated table replaced by its current rendering."""
    return _BLOCK.sub(lambda match: match[1] + table(match["section"]) + match[4], text)


def sections(text: str) -> list[str]:
    """Returns the sections `text` has generated tables for, in order."""
    return [match["section"] for match in _BLOCK.finditer(text)]


def main(argv: list[str]) -> int:
    """Rewrites each file named in `argv` with fresh tables; returns the exit status."""
    if not argv:
        print("usage: python -m dockyard.spec.docgen FILE...", file=sys.stderr)
        return 2
    for name in argv:
        path = Path(name)
        text = path.read_text(encoding="utf-8")
        fresh = render(text)
        if fresh != text:
            path.write_text(fresh, encoding="utf-8")
            print(f"{name}: updated")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
