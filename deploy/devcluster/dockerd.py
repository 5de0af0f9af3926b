"""One dockerd per host, inside the host's network namespace, with its own roots, socket and cgroup parent.

--iptables=false (and so no --ip-masq): dockerd would otherwise install NAT/MASQUERADE rules and load
br_netfilter, which is machine-wide; the dev cluster must never NAT anything out, and containers only
need to reach their own host (published ports still work through docker-proxy on the host's addresses).
--ip-forward=false leaves forwarding as network.create_host set it (off); the agent turns it on for the
container subnets it routes between hosts (agent/network/host.py), as it does on a real host.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Sequence
from pathlib import Path

from deploy.devcluster.commands import run
from deploy.devcluster.errors import CommandFailed, DevClusterError
from deploy.devcluster.layout import HostPaths
from deploy.devcluster.procs import ProcRef, is_alive

# containerd 1.6 puts every shim's socket here, named by a hash of (containerd address, namespace, container id).
SHIM_SOCKET_DIR = Path("/run/containerd/s")
DOCKER_NAMESPACE = "moby"
SHUTDOWN_TIMEOUT = 60.0


def dockerd_argv(paths: HostPaths, bip: str, cgroup_parent: str) -> list[str]:
    """The host dockerd's command line (to be run under nsenter --net)."""
    return [
        "dockerd",
        "--config-file",
        str(paths.docker_config),
        "--data-root",
        str(paths.data_root),
        "--exec-root",
        str(paths.exec_root),
        "--pidfile",
        str(paths.docker_pidfile),
        "--host",
        paths.docker_url,
        "--bip",
        bip,
        "--iptables=false",
        "--ip-forward=false",
        "--ip-masq=false",
        "--cgroup-parent",
        f"/{cgroup_parent}",
    ]


def prepare(paths: HostPaths) -> None:
    """Creates the host's directories and the empty daemon.json."""
    for directory in (paths.root, paths.data_root, paths.exec_root, paths.agent_state):
        directory.mkdir(parents=True, exist_ok=True)
    paths.docker_config.write_text("{}\n")


async def ping(socket: Path, limit: float = 2.0) -> bool:
    """Tells whether a dockerd answers GET /_ping on its socket."""
    try:
        async with asyncio.timeout(limit):
            reader, writer = await asyncio.open_unix_connection(str(socket))
            try:
                writer.write(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
                await writer.drain()
                status = await reader.readline()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError):
        return False
    return b" 200 " in status


async def wait_ready(paths: HostPaths, ref: ProcRef, wait_seconds: float = 60.0) -> float:
    """Waits until the dockerd answers; returns how long that took. Raises with its log's tail if it dies."""
    started = time.monotonic()
    while not await ping(paths.docker_socket):
        if not is_alive(ref):
            raise DevClusterError(f"dockerd of {paths.root.name} exited:\n{tail(paths.dockerd_log)}")
        if time.monotonic() - started > wait_seconds:
            raise DevClusterError(
                f"dockerd of {paths.root.name} not ready after {wait_seconds:g}s; see {paths.dockerd_log}"
            )
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def check_images(images: Sequence[str]) -> None:
    """Raises unless the machine's own dockerd has every image (it is only read from, never changed)."""
    for image in images:
        try:
            await run("docker", "image", "inspect", "--format", "{{.Id}}", image)
        except CommandFailed as exc:
            raise DevClusterError(
                f"image {image} is not on the machine's dockerd ({exc.stderr.strip() or exc}); "
                "build it with scripts/build-test-image.sh"
            ) from None


async def save_images(images: Sequence[str], tar: Path) -> None:
    """`docker save`s the images from the machine's dockerd into one tar file."""
    await run("docker", "save", "--output", str(tar), *images, limit=300)


async def load_images(paths: HostPaths, tar: Path) -> None:
    """`docker load`s the tar into the host's dockerd."""
    await run("docker", "--host", paths.docker_url, "load", "--quiet", "--input", str(tar), limit=300)


def shim_sockets(paths: HostPaths) -> list[Path]:
    """The shim sockets this dockerd's containerd made (or would have made) for its containers.

    A shim removes its socket when it exits normally; after SIGKILL the file stays in /run/containerd/s.
    """
    address = paths.exec_root / "containerd" / "containerd.sock"
    try:
        ids = [p.name for p in (paths.data_root / "containers").iterdir()]
    except OSError:
        return []
    sockets = []
    for container_id in ids:
        digest = hashlib.sha256(f"{address}/{DOCKER_NAMESPACE}/{container_id}".encode()).hexdigest()
        sockets.append(SHIM_SOCKET_DIR / digest)
    return sockets


def remove_shim_sockets(paths: HostPaths) -> int:
    """Removes leftover shim sockets; returns how many there were."""
    removed = 0
    for socket in shim_sockets(paths):
        with contextlib.suppress(FileNotFoundError):
            socket.unlink()
            removed += 1
    return removed


def tail(path: Path, lines: int = 15) -> str:
    """The last lines of a log file, for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"
