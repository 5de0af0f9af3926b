"""Rejecting unknown fields of a mapping, with a suggestion of the field that was probably meant."""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence

from dockyard.spec.display import describe, quote
from dockyard.spec.errors import Issue
from dockyard.spec.paths import key_path


def closest(word: str, choices: Sequence[str]) -> str | None:
    """Returns the choice `word` most likely misspells, or None when nothing is close."""
    matches = difflib.get_close_matches(word.lower(), choices, n=1, cutoff=0.6)
    return matches[0] if matches else None


def unknown_field_issues(
    mapping: Mapping[object, object], path: str, known: Sequence[str], hints: Mapping[str, str] | None = None
) -> list[Issue]:
    """Returns one issue per key of `mapping` not in `known`; `hints` gives advice for well-known mistakes."""
    issues = []
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
        issues.append(Issue(key_path(path, name), f"unknown field; {advice}"))
    return issues
