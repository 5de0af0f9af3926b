"""Processes of a dev cluster: identity (pid plus start time), signals, waiting, and finding them by namespace.

A pid alone is not an identity: after a crash the number may belong to someone else. Every recorded process
carries its start time from /proc, and nothing is signalled unless both still match.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from pydantic import BaseModel

from deploy.devcluster.errors import DevClusterError

_PROC = Path("/proc")
_PR_SET_CHILD_SUBREAPER = 36


class ProcRef(BaseModel):
    """A process as recorded in the state file."""

    pid: int
    start: int

    def __str__(self) -> str:
        return str(self.pid)


def _stat(pid: int) -> tuple[str, int, int] | None:
    """Returns (state, parent pid, start time in clock ticks) of a process, or None when there is none."""
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except (OSError, ValueError):
        return None
    # The command name is in parentheses and may itself contain spaces and parentheses.
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[19])


def ref_of(pid: int) -> ProcRef | None:
    """Returns the identity of a live process."""
    stat = _stat(pid)
    if stat is None or stat[0] in "ZX":
        return None
    return ProcRef(pid=pid, start=stat[2])


def is_alive(ref: ProcRef | None) -> bool:
    """Tells whether the recorded process still runs (a zombie counts as dead once all its threads are)."""
    if ref is None:
        return False
    stat = _stat(ref.pid)
    if stat is None or stat[2] != ref.start:
        return False
    # A killed multi-threaded process shows its leader as a zombie at once, while another thread may still
    # be exiting; the process holds its files (the agent's connection to the controller) until the last one
    # has gone, and the controller refuses a restarted agent while the old connection stays open.
    return stat[0] not in "ZX" or _threads_running(ref.pid)


def _threads_running(pid: int) -> bool:
    """Whether any thread of the process is neither a zombie nor dead."""
    try:
        threads = list((_PROC / str(pid) / "task").iterdir())
    except OSError:
        return False
    for thread in threads:
        try:
            text = (thread / "stat").read_text()
        except OSError:
            continue
        if text[text.rindex(")") + 2 :].split()[0] not in "ZX":
            return True
    return False


def live_pid(ref: ProcRef | None) -> int | None:
    """The pid of the recorded process if it still runs."""
    return ref.pid if ref is not None and is_alive(ref) else None


def signal_process(ref: ProcRef | None, sig: int, group: bool = True) -> bool:
    """Sends a signal to the recorded process (to its whole group when it leads one); returns whether it was alive."""
    if ref is None or not is_alive(ref):
        return False
    try:
        if group and os.getpgid(ref.pid) == ref.pid:
            os.killpg(ref.pid, sig)
        else:
            os.kill(ref.pid, sig)
    except ProcessLookupError:
        return False
    return True


async def wait_dead(refs: Iterable[ProcRef | None], wait_seconds: float) -> bool:
    """Waits until none of the processes runs; returns False on timeout."""
    pending = [r for r in refs if r is not None]
    deadline = time.monotonic() + wait_seconds
    while True:
        pending = [r for r in pending if is_alive(r)]
        if not pending:
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)


async def stop(ref: ProcRef | None, sig: int = signal.SIGTERM, grace: float = 10.0) -> bool:
    """Signals the process group, waits, and SIGKILLs it after grace seconds; returns whether it had to be killed."""
    if not signal_process(ref, sig):
        return False
    if sig != signal.SIGKILL:
        # A stopped process (SIGSTOP) handles the signal only once it runs again.
        signal_process(ref, signal.SIGCONT)
    if sig != signal.SIGKILL and await wait_dead([ref], grace):
        return False
    signal_process(ref, signal.SIGKILL)
    await wait_dead([ref], 10.0)
    return True


def netns_pids(netns_path: Path | None = None, inode: int | None = None) -> set[int]:
    """Pids of every process whose network namespace is the given one (by bind-mount path or nsfs inode)."""
    if netns_path is not None:
        try:
            inode = netns_path.stat().st_ino
        except OSError:
            return set()
    if inode is None:
        return set()
    pids: set[int] = set()
    me = os.getpid()
    for entry in _PROC.iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            if (entry / "ns" / "net").stat().st_ino == inode:
                pids.add(int(entry.name))
        except OSError:
            continue
    return pids


async def kill_all(find: Callable[[], set[int]], wait_seconds: float = 10.0) -> set[int]:
    """SIGKILLs whatever `find` returns until it returns nothing; returns every pid killed, or raises on timeout."""
    killed: set[int] = set()
    deadline = time.monotonic() + wait_seconds
    while True:
        pids = {p for p in find() if ref_of(p) is not None}
        if not pids:
            return killed
        if time.monotonic() > deadline:
            raise DevClusterError(f"processes {sorted(pids)} survive SIGKILL")
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        killed |= pids
        await asyncio.sleep(0.05)


def processes_matching(*needles: str) -> dict[int, str]:
    """Live processes whose command line contains any of the strings, as pid -> command line."""
    found: dict[int, str] = {}
    me = os.getpid()
    for entry in _PROC.iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if cmdline and any(n in cmdline for n in needles) and ref_of(int(entry.name)) is not None:
            found[int(entry.name)] = cmdline
    return found


def children_of(parent: int) -> set[int]:
    """Live direct children of a process."""
    found: set[int] = set()
    for entry in _PROC.iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None and stat[1] == parent and stat[0] not in "ZX":
                found.add(int(entry.name))
    return found


def reap(pid: int) -> None:
    """Collects the exit status of a child of ours, so that it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def become_subreaper(on: bool = True) -> None:
    """Makes orphaned descendants of this process its children instead of init's (Linux prctl); False undoes it."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")
