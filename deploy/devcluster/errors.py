"""The one exception family of the dev cluster, with messages fit for one line of output."""

from __future__ import annotations


class DevClusterError(Exception):
    """Something about the dev cluster failed; the message says what and where to look."""


class CommandFailed(DevClusterError):
    """A helper program (ip, docker, nsenter) exited with an error."""

    def __init__(self, argv: list[str], code: int, stderr: str) -> None:
        self.argv = argv
        self.code = code
        self.stderr = stderr
        detail = stderr.strip().splitlines()[-1] if stderr.strip() else "no output"
        super().__init__(f"`{' '.join(argv)}` failed ({code}): {detail}")
