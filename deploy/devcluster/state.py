"""The state file: everything a dev cluster creates is written here before or as it is created.

`down` needs nothing else: it works from this file alone (and sweeps by the cluster id's prefix for what a
crashed run created but could not record). The file is STATE_DIR/cluster.json, replaced atomically.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Literal

from pydantic import BaseModel, Field, ValidationError

from deploy.devcluster.errors import DevClusterError
from deploy.devcluster.layout import bridge_address
from deploy.devcluster.procs import ProcRef
from dockyard.addresses import JOIN_PORT

STATE_FILE = "cluster.json"
LOCK_FILE = "cluster.lock"
VERSION = 1

Phase = Literal["starting", "up", "failed", "down"]


class HostRecord(BaseModel):
    """One host: its names, addresses and the processes that run for it."""

    name: str
    netns: str
    veth: str
    cgroup: str
    address: str
    bip: str
    labels: dict[str, str] = Field(default_factory=dict)
    netns_inode: int | None = None
    dockerd: ProcRef | None = None
    agent: ProcRef | None = None
    crashed: bool = False


class ClusterRecord(BaseModel):
    """One dev cluster."""

    version: int = VERSION
    cluster_id: str
    state_dir: str
    phase: Phase = "starting"
    subnet_index: int | None = None
    bridge: str
    controller_port: int
    join_port: int = JOIN_PORT  # the controller's join address: bridge_address, this port
    heartbeat_period: float | None = None
    heartbeat_grace: float | None = None
    relist_period: float | None = None
    stranger_grace: float | None = None
    images: list[str] = Field(default_factory=list)
    created_netns_dir: bool = False
    keeper: ProcRef | None = None
    controller: ProcRef | None = None
    hosts: dict[str, HostRecord] = Field(default_factory=dict)

    @property
    def bridge_address(self) -> str:
        """The controller's address on the bridge (empty before a subnet is chosen)."""
        return bridge_address(self.subnet_index) if self.subnet_index is not None else ""


def state_path(state_dir: Path) -> Path:
    """Where the state file of a cluster lives."""
    return state_dir / STATE_FILE


def load(state_dir: Path) -> ClusterRecord:
    """Reads the state file; raises DevClusterError when there is none or it is unreadable."""
    path = state_path(state_dir)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise DevClusterError(f"no dev cluster in {state_dir} (no {STATE_FILE})") from None
    except OSError as exc:
        raise DevClusterError(f"cannot read {path}: {exc}") from None
    try:
        record = ClusterRecord.model_validate_json(text)
    except ValidationError as exc:
        raise DevClusterError(f"{path} is not a dev cluster state file: {exc.errors()[0]['msg']}") from None
    if record.version != VERSION:
        raise DevClusterError(f"{path} has version {record.version}; this dockyard reads version {VERSION}")
    return record


def save(record: ClusterRecord) -> None:
    """Writes the state file atomically."""
    path = state_path(Path(record.state_dir))
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(record.model_dump_json(indent=2) + "\n")
    os.replace(tmp, path)


@contextlib.asynccontextmanager
async def locked(state_dir: Path, wait_seconds: float = 300.0) -> AsyncIterator[None]:
    """Holds the cluster's lock file (between processes: one CLI command at a time changes a cluster)."""
    path = state_dir / LOCK_FILE
    with _open_lock(path) as handle:
        deadline = asyncio.get_running_loop().time() + wait_seconds
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if asyncio.get_running_loop().time() > deadline:
                    raise DevClusterError(f"another command holds {path} for more than {wait_seconds:g}s") from None
                await asyncio.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _open_lock(path: Path) -> IO[str]:
    return open(path, "a")
