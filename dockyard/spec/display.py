"""How user values appear inside error messages: quoted, on one line and short."""

from __future__ import annotations

import datetime
import json
import math
import re

_NUMERIC = re.compile(r"\s*[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?\s*\Z")
# Long values are cut so that one bad value cannot drown the rest of the report.
_MAX_SHOWN = 60
_MAX_DIGITS = 30


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
    if isinstance(value, int) and abs(value) >= 10**_MAX_DIGITS:
        # Also keeps clear of the interpreter's limit on converting huge integers to text.
        return f"a number with more than {_MAX_DIGITS} digits"
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


def got(value: object) -> str:
    """The "got ..." text for a value of the wrong kind, with a hint when it is null."""
    if value is None:
        return "null; leave the field out to use the default"
    return describe(value)


def got_number(value: object) -> str:
    """Like got, also pointing out a number written in quotes."""
    if isinstance(value, str) and _NUMERIC.match(value):
        return f"{describe(value)}; write the number without quotes"
    return got(value)


def got_string(value: object) -> str:
    """The "got ..." text for a value that should have been a string, with a hint to quote it."""
    if value is None:
        return 'null; write "" for an empty value'
    if isinstance(value, list | dict):
        return describe(value)
    # YAML turned it into a number, boolean or date; quoting keeps the text as written.
    return f"{describe(value)}; put the value in quotes"
