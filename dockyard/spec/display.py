"""How user values appear inside error messages: quoted, on one line and short."""

from __future__ import annotations

import datetime
import json
import math

# Long values are cut so that one bad value cannot drown the rest of the report.
_MAX_SHOWN = 60


def quote(text: str) -> str:
    """Returns `text` double-quoted with every non-printable character escaped, so it stays on one line."""
    encoded = json.dumps(text, ensure_ascii=False)
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in encoded)


def describe(value: object) -> str:
    """Names a parsed YAML value for a "got ..." phrase: scalars as written, collections by kind."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        shown = value if len(value) <= _MAX_SHOWN else value[: _MAX_SHOWN - 3] + "..."
        return quote(shown)
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, datetime.datetime):
        return "a timestamp"
    if isinstance(value, datetime.date):
        return "a date"
    if isinstance(value, bytes):
        return "binary data"
    return f"a {type(value).__name__}"


def format_number(value: float) -> str:
    """Formats a CPU count or similar number without a noisy trailing `.0`."""
    if math.isfinite(value) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)
