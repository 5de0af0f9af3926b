"""Secrets and configs on the node: kept in memory, written to a tmpfs, bound read-only into containers.

The controller sends the data of the secrets and configs that this node's tasks use (Assignments.files, each
once per session, all of them again with a full set), in messages of files alone just before the message whose
tasks and specs need them (a full set's too), so no message outgrows the session's limit. Files keeps it in
memory only: the task book never holds it (agent.task_book writes tasks and specs, which carry names, never
data). Before a task's container is created, its files are written under `<root>/<task id>/` with the
reference's uid, gid and mode, and bound read-only at their targets (dockyard.spec.schema.secret_target and
config_target: a secret under /run/secrets unless its target is absolute, a config at its target or /<name>; a
spec file's reader sets a stack's references' targets to their short names, as `docker stack deploy` mounts
them).

`root` must be a tmpfs, so nothing in clear reaches a disk: `ensure_tmpfs` mounts one there when it is not
one already (statfs tells), and while it is not, every task with files waits in PREPARING saying why. A
task's directory goes once the task has left the task book; memory keeps the data only while a task of the
book refers to it, or while it waits for the message that says who uses it: data of a message without tasks
or specs is kept until a message that has some has been taken.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Final

import structlog

from agent.runtime.base import MountKind, MountSpec, RuntimeFailure
from agent.task_book import TaskBook
from dockyard.clock import Clock, SystemClock
from dockyard.spec import schema
from dockyard.v1 import agent_pb2 as apb
from dockyard.v1 import types_pb2 as pb

__all__ = ["FILES_DIR", "TMPFS_MAGIC", "Files", "FilesNotReady", "file_target", "is_tmpfs"]

log = structlog.get_logger()

# The tmpfs under the agent's state dir, unless AgentConfig.files_dir names another place.
FILES_DIR: Final = "files"
# statfs(2)'s f_type of a tmpfs (linux/magic.h).
TMPFS_MAGIC: Final = 0x01021994
# How often directories of tasks that left the book are swept, besides every assignment.
SWEEP_SECONDS: Final = 5.0

FileKey = tuple[int, str]  # (FileData.Kind, name)


class FilesNotReady(RuntimeFailure):
    """A task's files cannot be put in place yet (no data from the controller, no tmpfs): it waits, saying why."""


def is_tmpfs(path: Path) -> bool:
    """Tells whether path is on a tmpfs, by statfs(2)'s f_type."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    # struct statfs starts with f_type (a long on Linux); the buffer is larger than the whole struct.
    buffer = ctypes.create_string_buffer(256)
    if libc.statfs(os.fsencode(path), buffer) != 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error), str(path))
    return ctypes.c_long.from_buffer(buffer).value == TMPFS_MAGIC


def _mount_tmpfs(path: Path) -> None:
    """Mounts a private tmpfs at path (root only); CalledProcessError or OSError when it cannot."""
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "mode=0700,nosuid,nodev,noexec", "dockyard-files", str(path)],
        check=True,
        capture_output=True,
        timeout=10,
    )


def file_target(kind: int, ref: pb.FileRef) -> str:
    """Returns where a secret or config is mounted in the task's container."""
    return schema.secret_target(ref) if kind == apb.FileData.KIND_SECRET else schema.config_target(ref)


def _refs(spec: pb.ServiceSpec) -> Iterable[tuple[int, pb.FileRef]]:
    for ref in spec.secrets:
        yield apb.FileData.KIND_SECRET, ref
    for ref in spec.configs:
        yield apb.FileData.KIND_CONFIG, ref


def _kind_word(kind: int) -> str:
    return "secret" if kind == apb.FileData.KIND_SECRET else "config"


class Files:
    """The agent's FilePreparer: file data in memory, files on a tmpfs, read-only binds for containers."""

    def __init__(
        self,
        root: Path,
        book: TaskBook,
        *,
        clock: Clock | None = None,
        mount: Callable[[Path], None] = _mount_tmpfs,
        check: Callable[[Path], bool] = is_tmpfs,
    ) -> None:
        """Keeps files under `root`, for the tasks of `book`; `mount` and `check` make and verify the tmpfs."""
        self._root = root
        self._book = book
        self._clock: Clock = clock or SystemClock()
        self._mount = mount
        self._check = check
        self._data: dict[FileKey, bytes] = {}
        # Data from messages of files alone, ahead of the tasks and specs that use it: kept by sweep until then.
        self._ahead: set[FileKey] = set()
        self._tmpfs_problem: str | None = "not checked yet"
        # ensure_tmpfs runs in worker threads (asyncio.to_thread), one per task being created: without the lock
        # two tasks could both find no tmpfs and mount a second one over the first, hiding the files on it.
        self._tmpfs_lock = threading.Lock()

    @property
    def root(self) -> Path:
        """Where the files are written (a tmpfs)."""
        return self._root

    def ensure_tmpfs(self) -> bool:
        """Makes root a tmpfs (mounting one when it is not); False, logged, when it cannot. Thread-safe."""
        with self._tmpfs_lock:
            return self._ensure_tmpfs()

    def _ensure_tmpfs(self) -> bool:
        try:
            self._root.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not self._check(self._root):
                self._mount(self._root)
                if not self._check(self._root):
                    raise OSError(f"{self._root} is still not a tmpfs after mounting one")
                log.info("tmpfs mounted for secrets and configs", path=str(self._root))
        except (OSError, subprocess.SubprocessError) as exc:
            detail = (
                exc.stderr.decode(errors="replace").strip() if isinstance(exc, subprocess.CalledProcessError) else ""
            )
            self._tmpfs_problem = f"{self._root} is not a tmpfs and none could be mounted: {detail or exc}"
            log.error("no tmpfs for secrets and configs; tasks using them wait", error=self._tmpfs_problem)
            return False
        self._tmpfs_problem = None
        return True

    def take(self, assignments: apb.Assignments) -> None:
        """Keeps the file data of an Assignments message, then sweeps once the message says which data is used.

        A message of files alone comes ahead of the tasks and specs that use its data: that data is kept
        until the next message with tasks, specs or removals (a full set included) has been taken. A full set
        replaces what was kept, but for the data that came ahead of it.
        """
        if assignments.kind == apb.Assignments.KIND_FULL:
            self._data = {key: data for key, data in self._data.items() if key in self._ahead}
        for item in assignments.files:
            key = (item.kind, item.name)
            self._data[key] = bytes(item.data)
            self._ahead.add(key)
        if (
            assignments.kind == apb.Assignments.KIND_FULL
            or assignments.tasks
            or assignments.specs
            or (assignments.removed_task_ids)
        ):
            self._ahead = set()
            self.sweep()

    def sweep(self) -> None:
        """Forgets data no spec of the book refers to, and removes the directories of tasks that left the book.

        Data is kept while the book keeps a spec that refers to it, not only while a task runs it: the
        controller sends a file once per session, beside the spec, so a later task of that spec gets no copy.
        """
        tasks = list(self._book)
        used = {(kind, ref.name) for spec in self._book.specs() for kind, ref in _refs(spec)}
        self._data = {key: data for key, data in self._data.items() if key in used or key in self._ahead}
        if self._tmpfs_problem is not None or not self._root.is_dir():
            return
        live = {task.id for task in tasks}
        for entry in self._root.iterdir():
            if entry.name not in live:
                shutil.rmtree(entry, ignore_errors=True)

    async def run(self) -> None:
        """Sweeps now and then, so a finished task's files go even when no assignment follows its end.

        The tmpfs is mounted when a task first needs it; one already there (from before a restart) is used.
        """
        with contextlib.suppress(OSError):
            if self._root.is_dir() and self._check(self._root):
                self._tmpfs_problem = None
        while True:
            await self._clock.sleep(SWEEP_SECONDS)
            self.sweep()

    async def mounts(self, task: pb.Task) -> tuple[MountSpec, ...]:
        """Writes the task's secrets and configs and returns their read-only binds; FilesNotReady while it cannot."""
        refs = list(_refs(task.spec))
        if not refs:
            return ()
        if self._tmpfs_problem is not None and not await asyncio.to_thread(self.ensure_tmpfs):
            raise FilesNotReady(f"secrets and configs need a tmpfs: {self._tmpfs_problem}")
        directory = self._root / task.id
        mounts: list[MountSpec] = []
        for index, (kind, ref) in enumerate(refs):
            # The index keeps two references to one file with different owners or modes apart.
            path = directory / f"{index}-{_kind_word(kind)}-{ref.name}"
            data = self._data.get((kind, ref.name))
            if data is not None:
                await asyncio.to_thread(_write, path, data, ref.uid, ref.gid, schema.file_mode(ref))
            elif not path.exists():
                # Written before this agent restarted (the tmpfs outlives it): used as it is; otherwise wait.
                raise FilesNotReady(f"waiting for the data of {_kind_word(kind)} {ref.name!r} from the controller")
            mounts.append(MountSpec(MountKind.BIND, str(path), file_target(kind, ref), read_only=True))
        return tuple(mounts)


def _write(path: Path, data: bytes, uid: int, gid: int, mode: int) -> None:
    """Writes a file atomically with its owner and mode set before it gets its name."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        if os.geteuid() == 0:
            os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    os.replace(tmp, path)
