"""Problems found in a spec: the Issue type, SpecError, field paths, and how values appear in messages.

Every problem is one line, `<field path>: <what is wrong and how to fix it>`. Values are quoted, kept
on one line and cut short, so that one bad value cannot drown the rest of a report.
"""

from __future__ import annotations

import datetime
import difflib
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

_NUMERIC = re.compile(r"\s*[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?\s*\Z")
# Keys that read unambiguously after a dot; anything else (dots, spaces, empty) is bracketed and quoted.
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*\Z")
_MAX_SHOWN = 60
# Beyond any key the field table allows, so that a valid key always appears whole in a path.
_MAX_KEY_SHOWN = 300
_MAX_DIGITS = 30


@dataclass(frozen=True)
class Issue:
    """One problem found in a spec: where it is and what to do about it."""

    path: str
    message: str

    def __str__(self) -> str:
        """Renders the issue as the one-line `<path>: <message>` users see."""
        return f"{self.path}: {self.message}"


class SpecError(ValueError):
    """Raised when a spec cannot be loaded; `errors` holds every problem found, one line each."""

    def __init__(self, errors: Iterable[str]) -> None:
        self.errors: list[str] = list(errors)
        super().__init__("\n".join(self.errors))

    def __str__(self) -> str:
        """Returns the error lines joined by newlines."""
        return "\n".join(self.errors)

    def __reduce__(self) -> tuple[type[SpecError], tuple[list[str]]]:
        # ValueError would pickle the joined text and split it back into characters.
        return (SpecError, (self.errors,))


def key_path(parent: str, key: str) -> str:
    """Returns the path of mapping key `key` under `parent`, quoting keys that would be ambiguous.

    A very long key is cut short like a value, so that one such key cannot make every line huge.
    """
    if len(key) > _MAX_KEY_SHOWN:
        segment = f"[{quote(key[: _MAX_SHOWN - 3] + '...')}]"
    else:
        segment = f".{key}" if _PLAIN_KEY.match(key) else f"[{quote(key)}]"
    return f"{parent}{segment}" if parent else segment.removeprefix(".")


def index_path(parent: str, index: int) -> str:
    """Returns the path of list item `index` under `parent`."""
    return f"{parent}[{index}]"


def service_path(name: str) -> str:
    """Returns the path of the service called `name`, the start of every path inside it."""
    return key_path("services", name)


def quote(text: str) -> str:
    """Returns `text` double-quoted with every non-printable character escaped, so it stays on one line."""
    encoded = json.dumps(text, ensure_ascii=False)
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in encoded)


def describe(value: object) -> str:
    """Names a value for a "got ..." phrase: scalars as written (long text cut short), collections by kind."""
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


def closest(word: str, choices: Sequence[str]) -> str | None:
    """Returns the choice `word` most likely misspells, or None when nothing is close."""
    matches = difflib.get_close_matches(word.lower(), choices, n=1, cutoff=0.6)
    return matches[0] if matches else None


def unknown_fields(
    mapping: Mapping[object, object], path: str, known: Sequence[str], hints: Mapping[str, str] | None = None
) -> Iterator[Issue]:
    """Yields one issue per key of `mapping` not in `known`; `hints` gives advice for well-known mistakes."""
    for key in mapping:
        if isinstance(key, str) and key in known:
            continue
        name = key if isinstance(key, str) else describe(key)
        advice = (hints or {}).get(name)
        if advice is None:
            suggestion = closest(name, known)
            if suggestion is not None:
                advice = f"did you mean {quote(suggestion)}?"
            elif len(known) == 1:
                advice = f"the only field allowed here is {quote(known[0])}"
            else:
                advice = f"expected one of {', '.join(known)}"
        yield Issue(key_path(path, name), f"unknown field; {advice}")
