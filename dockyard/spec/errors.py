"""The error type of the spec package and the single problem it is made of."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


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
