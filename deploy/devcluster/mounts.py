"""Unmounting what a dockerd left mounted under its data and exec roots (overlays, shm, netns files)."""

from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path

_MNT_DETACH = 2
_MOUNTINFO = Path("/proc/self/mountinfo")


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def mount_table() -> list[tuple[str, str]]:
    """Every mount of this mount namespace as (mount point, filesystem type)."""
    table: list[tuple[str, str]] = []
    for line in _MOUNTINFO.read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields = left.split()
        if len(fields) >= 5 and right:
            table.append((_unescape(fields[4]), right.split()[0]))
    return table


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below path, deepest first."""
    root = str(path).rstrip("/")
    points = {p for p, _ in mount_table() if p == root or p.startswith(root + "/")}
    return sorted(points, key=lambda p: (p.count("/"), p), reverse=True)


def mounts_containing(text: str) -> list[str]:
    """Mount points whose path contains text (for sweeping by cluster id)."""
    return sorted({p for p, _ in mount_table() if text in p}, reverse=True)


def unmount_all(points: list[str]) -> list[str]:
    """Lazily unmounts the given points (repeatedly, for stacked mounts); returns those still mounted."""
    libc = ctypes.CDLL(None, use_errno=True)
    for _ in range(8):
        current = set(p for p, _ in mount_table())
        remaining = [p for p in points if p in current]
        if not remaining:
            return []
        for point in remaining:
            if libc.umount2(os.fsencode(point), _MNT_DETACH) != 0:
                code = ctypes.get_errno()
                if code not in (errno.EINVAL, errno.ENOENT):
                    raise OSError(code, f"umount {point}: {os.strerror(code)}")
    current = set(p for p, _ in mount_table())
    return [p for p in points if p in current]


def unmount_under(path: Path) -> list[str]:
    """Unmounts everything at or below path; returns what could not be unmounted."""
    return unmount_all(mounts_under(path))
