"""The cgroups of a host's containers: dockerd runs with --cgroup-parent=/dy-<cluster>-hN.

Container processes live in their own network namespaces, so they are found through these cgroups, never
mixed up with the containers of the machine's own dockerd (which sit under /docker).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from deploy.devcluster.mounts import mount_table


def hierarchies() -> list[Path]:
    """Mount points of every cgroup (v1) and cgroup2 hierarchy."""
    return sorted({Path(point) for point, fstype in mount_table() if fstype in ("cgroup", "cgroup2")})


def cgroup_dirs(name: str) -> list[Path]:
    """The directories of a top-level cgroup in every hierarchy where it exists."""
    return [h / name for h in hierarchies() if (h / name).is_dir()]


def cgroups_with_prefix(prefix: str) -> list[str]:
    """Top-level cgroup names that start with prefix, in any hierarchy."""
    names: set[str] = set()
    for hierarchy in hierarchies():
        with contextlib.suppress(OSError):
            names.update(n for n in os.listdir(hierarchy) if n.startswith(prefix))
    return sorted(names)


def cgroup_pids(name: str) -> set[int]:
    """Every process in the cgroup or below it, in any hierarchy."""
    pids: set[int] = set()
    for top in cgroup_dirs(name):
        for directory, _, files in os.walk(top):
            if "cgroup.procs" in files:
                with contextlib.suppress(OSError, ValueError):
                    pids.update(int(p) for p in (Path(directory) / "cgroup.procs").read_text().split())
    return pids


def remove_cgroup(name: str, keep_top: bool = False) -> list[str]:
    """Removes the (empty) cgroup tree in every hierarchy, deepest first; returns directories that stayed."""
    stayed: list[str] = []
    for top in cgroup_dirs(name):
        for directory, _, _ in sorted(os.walk(top), key=lambda w: w[0].count("/"), reverse=True):
            if keep_top and Path(directory) == top:
                continue
            try:
                os.rmdir(directory)
            except FileNotFoundError:
                pass
            except OSError:
                stayed.append(directory)
    return stayed
