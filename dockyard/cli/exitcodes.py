"""The exit codes of the commands that change or wait for a deploy, in one place.

Scripts and CI branch on these (docs/operations.md lists them), so a number never changes its meaning.
`apply`, `rollback`, `scale` and `service rebalance` wait and end with one of them; `plan` uses OK, ERROR and
CHANGES only. A command that fails raises `Failed`, which click turns into "Error: <reason>" on stderr and
the code.
"""

from __future__ import annotations

import enum

import click

__all__ = ["ExitCode", "Failed"]


class ExitCode(enum.IntEnum):
    """What a deploying command's exit status means."""

    OK = 0  # converged: every service healthy at the new revision (a job: every task exited 0); plan: no change
    ERROR = 1  # the command failed (a refused request, an unreachable controller, a bad file)
    CHANGES = 2  # plan only: applying the file would change something
    ROLLED_BACK = 3  # the rollout failed and was rolled back (the old revision runs again)
    PAUSED = 4  # the rollout paused on failures (failure_action pause); apply again or roll back
    UNPLACED = 5  # tasks cannot be placed: no node fits them (the reason says which filter refused)
    TIMEOUT = 6  # --timeout passed before the services converged
    JOB_FAILED = 7  # a job's task failed and its restart policy will not run it again

    @property
    def label(self) -> str:
        """The name a JSON document shows ("rolled_back")."""
        return self.name.lower()


class Failed(click.ClickException):
    """Ends a command with `code` and prints the reason (click writes "Error: <reason>" to stderr)."""

    def __init__(self, code: ExitCode, reason: str) -> None:
        """Keeps the code as the process's exit status."""
        super().__init__(reason)
        self.code = code

    # click reads exit_code from the instance; a property keeps it in step with `code`.
    @property
    def exit_code(self) -> int:  # type: ignore[override]
        """The process's exit status."""
        return int(self.code)
