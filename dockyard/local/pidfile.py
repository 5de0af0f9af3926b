"""The pid file that marks a running `dockyard up`."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def read_pid(path: Path) -> int | None:
    """Returns the pid in the file if that process is alive, else None (a stale file is removed)."""
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        with contextlib.suppress(OSError):
            path.unlink()
        return None
    except PermissionError:
        return pid
    return pid


def write_pid(path: Path, pid: int) -> None:
    """Writes the pid atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{pid}\n")
    os.replace(tmp, path)
