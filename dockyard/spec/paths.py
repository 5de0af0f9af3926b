"""Field paths such as `services.web.ports[1]`, the prefix of every error line."""

from __future__ import annotations

import re

from dockyard.spec.display import quote

# Keys that read unambiguously after a dot; anything else (dots, spaces, empty) is bracketed and quoted.
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*\Z")


def key_path(parent: str, key: str) -> str:
    """Returns the path of mapping key `key` under `parent`, quoting keys that would be ambiguous."""
    segment = f".{key}" if _PLAIN_KEY.match(key) else f"[{quote(key)}]"
    return f"{parent}{segment}" if parent else segment.removeprefix(".")


def index_path(parent: str, index: int) -> str:
    """Returns the path of list item `index` under `parent`."""
    return f"{parent}[{index}]"


def is_within(path: str, ancestor: str) -> bool:
    """Tells whether `path` is `ancestor` or lies below it, segment-wise (ports[1] excludes ports[10])."""
    return path == ancestor or path.startswith((f"{ancestor}.", f"{ancestor}["))
