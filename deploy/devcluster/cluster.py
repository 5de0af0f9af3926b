"""The dev cluster facade: N simulated hosts on this machine, each a network namespace with its own dockerd and agent.

Layout (cluster id `abcd`, subnet index 0):

    root namespace: bridge dy-abcd-br 10.213.0.1/24, the controller (mutual TLS on 10.213.0.1:7465, joins on
                    10.213.0.1:7466), the keeper
    host hN:        namespace dy-abcd-hN, eth0 10.213.0.(10+N)/24 (veth dy-abcd-hN on the bridge),
                    dockerd (--bip 172.30.N.1/24, containers under cgroup /dy-abcd-hN), an agent that joined as hN

The controller listens only on the bridge address; the CLI on this machine reaches it there too (the address
is local to the root namespace), so nothing is bound on 127.0.0.1 and no port can clash with `dockyard up`.

Security is a real deployment's: the controller makes the cluster CA on its first start (--init); every host
joins with the token (`dockyard-agent join`, run in its namespace) before its agent first starts, and keeps
that identity across restarts and crashes; the CLI gets admin credentials in STATE_DIR/admin (as
`dockyard-controller admin-cert` makes them).

Faults:
    kill(host)           the host dies: its link goes down first (no last words reach the controller), then the
                         agent, every container process, dockerd, containerd and the shims are SIGKILLed. What a
                         reboot would clear goes too (mounts, exec root, shim sockets, container cgroups); the data
                         root stays, like a disk. revive(host) boots it again.
    partition(host)      the host's veth goes down; everything inside keeps running. heal(host) brings it up.
    restart_agent(host)  SIGKILL the agent, start it again.
    restart_docker(host) SIGTERM dockerd and wait (Docker stops the containers as it does without live-restore,
                         with each container's stop timeout: 10 s for one that ignores SIGTERM), start it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from agent.identity import CLUSTER_FILE, NotJoined, load_membership
from deploy.devcluster import cgroups, dockerd, keeper, layout, mounts, network, procs, state
from deploy.devcluster.commands import Result, run
from deploy.devcluster.errors import DevClusterError
from deploy.devcluster.procs import ProcRef
from deploy.devcluster.state import ClusterRecord, HostRecord
from dockyard import pki
from dockyard.addresses import with_port
from dockyard.cli.context import ADMIN_STEM
from dockyard.limits import CONTROLLER_PORT

if TYPE_CHECKING:
    from controller.security.authority import ClusterAuthority

log = structlog.get_logger()

DEFAULT_IMAGE = "dockyard-test:latest"
REPO_ROOT = Path(__file__).resolve().parents[2]
KEEPER_SOCKET = "keeper.sock"
CONTROLLER_DIR = "controller"  # the controller's --state-dir: its store, the cluster CA, the join secret
ADMIN_DIR = "admin"  # the CLI's admin credentials: ca.crt, admin.crt, admin.key
IMAGES_TAR = "images.tar"
# Files and directories of the state dir besides the hosts' own; only these are ever removed.
_OWN_ENTRIES = (
    state.STATE_FILE,
    state.STATE_FILE + ".tmp",
    state.LOCK_FILE,
    KEEPER_SOCKET,
    "keeper.log",
    CONTROLLER_DIR,
    "controller.log",
    ADMIN_DIR,
    IMAGES_TAR,
    "previous-context.json",
)
_NON_TERMINATING = (signal.SIGSTOP, signal.SIGCONT, signal.SIGTSTP)

Progress = Callable[[str], None]


def stderr_progress(message: str) -> None:
    """Prints a progress line to stderr."""
    print(message, file=sys.stderr, flush=True)


class DevCluster:
    """A dev cluster recorded in a state dir. Every method may be called from any event loop or process."""

    def __init__(self, record: ClusterRecord, progress: Progress | None = None) -> None:
        self.record = record
        self._progress = progress or stderr_progress
        self._lock_depth = 0

    # ----- lookups -------------------------------------------------------------------------------------------

    @property
    def cluster_id(self) -> str:
        """The short id in every name the cluster creates."""
        return self.record.cluster_id

    @property
    def state_dir(self) -> Path:
        """Where the state file, logs and the hosts' docker roots live."""
        return Path(self.record.state_dir)

    @property
    def hosts(self) -> list[str]:
        """Host names h1..hN, the names `dockyard nodes` shows."""
        return sorted(self.record.hosts, key=layout.host_index)

    @property
    def controller_address(self) -> str:
        """HOST:PORT of the controller, for DOCKYARD_CONTROLLER or --controller."""
        return f"{self.record.bridge_address}:{self.record.controller_port}"

    @property
    def join_address(self) -> str:
        """HOST:PORT where hosts join with the token (TLS without a client certificate)."""
        return with_port(self.record.bridge_address, self.record.join_port)

    @property
    def credentials_dir(self) -> Path:
        """The CLI's admin credentials (for DOCKYARD_CREDENTIALS or --credentials); made once the CA exists."""
        return self.state_dir / ADMIN_DIR

    def admin_credentials(self) -> pki.Credentials:
        """The admin credentials, for in-process clients; DevClusterError while there are none."""
        try:
            return pki.Credentials.load(self.credentials_dir, ADMIN_STEM)
        except pki.PkiError as exc:
            raise DevClusterError(f"no admin credentials: {exc}") from None

    def join_token(self) -> str:
        """The current join token, read from the controller's state dir as `dockyard-controller join-token` does.

        DevClusterError while the controller has made no CA yet.
        """
        return str(self._authority().token())

    def _authority(self) -> ClusterAuthority:
        from controller.errors import StartupError
        from controller.security.authority import ClusterAuthority
        from dockyard.clock import SystemClock

        try:
            return ClusterAuthority.open(
                self.state_dir / CONTROLLER_DIR, SystemClock(), pki.DEFAULT_CERT_LIFETIME, init=False, addresses=()
            )
        except StartupError as exc:
            raise DevClusterError(f"the controller has no CA yet: {exc}") from None

    def joined(self, host: str) -> bool:
        """Whether the host has joined (its agent's state dir holds the identity `dockyard-agent join` wrote)."""
        return (self.paths(host).agent_state / CLUSTER_FILE).exists()

    def node_id(self, host: str) -> str | None:
        """The node id the host got when it joined; None before."""
        try:
            return load_membership(self.paths(host).agent_state).node_id
        except NotJoined:
            return None

    def host(self, name: str) -> HostRecord:
        """The record of one host; raises DevClusterError for an unknown name."""
        try:
            return self.record.hosts[name]
        except KeyError:
            raise DevClusterError(
                f"unknown host {name!r}; cluster {self.cluster_id} has {', '.join(self.hosts)}"
            ) from None

    def paths(self, host: str) -> layout.HostPaths:
        """The host's files."""
        self.host(host)
        return layout.host_paths(self.state_dir, host)

    def docker_url(self, host: str) -> str:
        """unix:// URL of the host's dockerd."""
        return self.paths(host).docker_url

    def address(self, host: str) -> str:
        """The host's IP address on the cluster bridge."""
        return self.host(host).address

    def nsenter_argv(self, host: str, *argv: str) -> list[str]:
        """A command line that runs argv in the host's network namespace."""
        return network.nsenter_argv(self.host(host).netns, list(argv))

    async def exec(self, host: str, *argv: str, check: bool = True, limit: float = 60.0) -> Result:
        """Runs a program in the host's network namespace and returns its output."""
        return await run(*self.nsenter_argv(host, *argv), check=check, limit=limit)

    # ----- life cycle ----------------------------------------------------------------------------------------

    @classmethod
    def open(cls, state_dir: Path, progress: Progress | None = None) -> DevCluster:
        """The cluster recorded in state_dir."""
        return cls(state.load(state_dir.resolve()), progress)

    @classmethod
    async def up(
        cls,
        hosts: int = 3,
        state_dir: Path | None = None,
        labels: Mapping[str, Mapping[str, str]] | None = None,
        *,
        heartbeat_period: float | None = None,
        heartbeat_grace: float | None = None,
        relist_period: float | None = None,
        stranger_grace: float | None = None,
        images: Sequence[str] = (DEFAULT_IMAGE,),
        ready_timeout: float = 90.0,
        progress: Progress | None = None,
    ) -> DevCluster:
        """Brings up a cluster of `hosts` hosts and waits until every node is ready.

        labels maps a host name to its node labels. On any failure (or cancellation) whatever was created is
        torn down again and the logs are kept in the state dir.
        """
        _require_root()
        if not 1 <= hosts <= layout.MAX_HOSTS:
            raise DevClusterError(f"--hosts must be between 1 and {layout.MAX_HOSTS}, not {hosts}")
        names = [layout.host_name(i) for i in range(1, hosts + 1)]
        unknown = sorted(set(labels or {}) - set(names))
        if unknown:
            raise DevClusterError(f"labels for unknown host(s) {', '.join(unknown)}; hosts are h1..h{hosts}")
        if images:
            await dockerd.check_images(images)
        cluster_id = _unused_cluster_id()
        directory = (state_dir or layout.default_state_dir(cluster_id)).resolve()
        layout.check_path_lengths(directory, hosts)
        _claim_state_dir(directory)
        record = ClusterRecord(
            cluster_id=cluster_id,
            state_dir=str(directory),
            bridge=layout.bridge_name(cluster_id),
            controller_port=CONTROLLER_PORT,
            heartbeat_period=heartbeat_period,
            heartbeat_grace=heartbeat_grace,
            relist_period=relist_period,
            stranger_grace=stranger_grace,
            images=list(images),
            hosts={name: _host_record(cluster_id, name, (labels or {}).get(name, {})) for name in names},
        )
        state.save(record)
        cluster = cls(record, progress)
        try:
            async with cluster._exclusive():
                await cluster._bring_up(ready_timeout)
        except BaseException as exc:
            cluster._say(
                f"cluster {cluster_id}: bring-up failed ({_one_line(exc)}); tearing down, logs kept in {directory}"
            )
            try:
                await asyncio.shield(cluster.down(remove_state=False, phase="failed"))
            except Exception as cleanup:  # report the original failure, not the cleanup's
                log.error("cleanup after failed bring-up failed", error=str(cleanup))
            raise
        return cluster

    async def _bring_up(self, ready_timeout: float) -> None:
        started = time.monotonic()
        record = self.record
        self._say(f"cluster {self.cluster_id}: {len(record.hosts)} host(s), state in {self.state_dir}")
        # The bridge needs no keeper: both at once (the controller, which needs both, waits for them).
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._start_keeper())
                group.create_task(self._create_bridge())
        except ExceptionGroup as failures:
            raise _first_failure(failures) from None
        record.created_netns_dir = not network.netns_dir_is_mounted()
        state.save(record)
        try:
            async with asyncio.TaskGroup() as group:
                saved = group.create_task(self._save_images())
                controller = group.create_task(self._start_controller(init=True))
                group.create_task(self._make_admin_credentials(controller))
                for name in self.hosts:
                    group.create_task(self._bring_up_host(name, saved, controller))
        except ExceptionGroup as failures:
            raise _first_failure(failures) from None
        with contextlib.suppress(FileNotFoundError):
            (self.state_dir / IMAGES_TAR).unlink()
        await self.wait_ready(wait_seconds=ready_timeout)
        record.phase = "up"
        state.save(record)
        self._say(f"cluster {self.cluster_id}: {len(record.hosts)} node(s) ready in {time.monotonic() - started:.1f}s")

    async def _start_keeper(self) -> None:
        socket_path = self.state_dir / KEEPER_SOCKET
        argv = [sys.executable, "-m", "deploy.devcluster.keeper", "--socket", str(socket_path)]
        pid = keeper.spawn([*argv, "--cluster", self.cluster_id], self.state_dir / "keeper.log", _child_env())
        self.record.keeper = procs.ref_of(pid)
        state.save(self.record)
        deadline = time.monotonic() + 15
        while True:
            with contextlib.suppress(DevClusterError):
                await keeper.request(socket_path, {"op": "ping"}, limit=1.0)
                return
            if not procs.is_alive(self.record.keeper) or time.monotonic() > deadline:
                raise DevClusterError(f"the keeper did not start:\n{dockerd.tail(self.state_dir / 'keeper.log')}")
            await asyncio.sleep(0.05)

    async def _create_bridge(self) -> None:
        record = self.record
        with network.allocation_lock():
            used = await network.used_subnet_indexes()
            free = [i for i in range(layout.SUBNET_COUNT) if i not in used]
            if not free:
                raise DevClusterError(f"every subnet of {layout.SUBNET_BASE}.0.0/16 is in use")
            record.subnet_index = free[0]
            for name, host in record.hosts.items():
                host.address = layout.host_address(free[0], name)
            state.save(record)
            await network.create_bridge(record.bridge, record.bridge_address)
        # Hosts reach each other's containers through the bridge: let the machine's FORWARD chain pass it.
        await network.accept_bridged_traffic(record.bridge)
        self._say(f"cluster {self.cluster_id}: bridge {record.bridge} {layout.subnet(free[0])}")

    async def _save_images(self) -> None:
        if self.record.images:
            await dockerd.save_images(self.record.images, self.state_dir / IMAGES_TAR)

    async def _make_admin_credentials(self, controller_started: asyncio.Future[None]) -> None:
        """Writes the CLI's admin credentials once the controller has made its CA.

        The same calls as `dockyard-controller admin-cert --out STATE_DIR/admin`, made here rather than in a new
        interpreter, which would compete for the CPU with the hosts' joins.
        """
        await asyncio.shield(controller_started)
        self._authority().issue_admin("admin").save(self.credentials_dir, ADMIN_STEM)

    async def _bring_up_host(
        self, name: str, images_saved: asyncio.Future[None], controller_started: asyncio.Future[None]
    ) -> None:
        started = time.monotonic()
        host = self.record.hosts[name]
        await network.create_host(host.netns, host.veth, self.record.bridge, host.address)
        host.netns_inode = network.netns_inode(host.netns)
        state.save(self.record)
        # The host joins while its dockerd starts and loads the images: joining needs the controller, not Docker.
        async with asyncio.TaskGroup() as steps:
            docker_ready = steps.create_task(self._start_docker_with_images(name, images_saved))
            joined = steps.create_task(self._join_after(name, controller_started))
        await self._start_agent(name)
        self._say(
            f"{name}: {host.address} in {host.netns}, dockerd ready in {docker_ready.result():.1f}s, "
            f"joined in {joined.result():.1f}s, agent started ({time.monotonic() - started:.1f}s)"
        )

    async def _start_docker_with_images(self, name: str, images_saved: asyncio.Future[None]) -> float:
        """Starts the host's dockerd and loads the saved images into it; returns how long dockerd took to be ready."""
        waited = await self._start_dockerd(name)
        await asyncio.shield(images_saved)
        if self.record.images:
            await dockerd.load_images(self.paths(name), self.state_dir / IMAGES_TAR)
        return waited

    async def add_host(self, labels: Mapping[str, str] | None = None, wait_seconds: float = 60.0) -> str:
        """Adds the next host (hN+1) as a real host is added: its namespace and dockerd (with the cluster's
        images), a join with the current token, then its agent with these agent labels. Waits until the
        controller reports it ready and returns its name. A failure leaves the host recorded, for `down`.
        """
        async with self._exclusive():
            record = self.record
            if record.subnet_index is None or not procs.is_alive(record.controller):
                raise DevClusterError("a host joins through the controller, which is not running")
            index = max(map(layout.host_index, record.hosts), default=0) + 1
            if index > layout.MAX_HOSTS:
                raise DevClusterError(f"a dev cluster has at most {layout.MAX_HOSTS} hosts")
            layout.check_path_lengths(self.state_dir, index)
            name = layout.host_name(index)
            host = _host_record(self.cluster_id, name, labels or {})
            host.address = layout.host_address(record.subnet_index, name)
            record.hosts[name] = host
            state.save(record)
            try:
                async with asyncio.TaskGroup() as group:
                    saved = group.create_task(self._save_images())
                    group.create_task(self._bring_up_host(name, saved, _done()))
            except ExceptionGroup as failures:
                raise _first_failure(failures) from None
            finally:
                with contextlib.suppress(FileNotFoundError):
                    (self.state_dir / IMAGES_TAR).unlink()
        await self.wait_ready([name], wait_seconds)
        return name

    async def stop_controller(self, sig: int = signal.SIGTERM) -> None:
        """Stops the controller process (agents keep running and keep redialling)."""
        async with self._exclusive():
            await procs.stop(self.record.controller, sig, 10.0)
            self.record.controller = None
            state.save(self.record)

    async def start_controller(self, init: bool = False) -> None:
        """Starts the controller again on the same address and state.

        Without init it refuses (and this raises) where its store or CA went missing, as a real controller
        does; init makes a new cluster there, which the hosts' agents then refuse (another cluster or store).
        """
        async with self._exclusive():
            if self.record.controller is None or not procs.is_alive(self.record.controller):
                await self._start_controller(init=init)

    async def _start_controller(self, init: bool) -> None:
        record = self.record
        argv = [
            sys.executable,
            "-m",
            "controller.main",
            "--listen",
            self.controller_address,
            "--join-listen",
            self.join_address,
            "--state-dir",
            str(self.state_dir / CONTROLLER_DIR),
            "--network-pool",
            layout.NETWORK_POOL,
        ]
        if init:
            argv.append("--init")
        if record.heartbeat_period is not None:
            argv += ["--heartbeat-period", str(record.heartbeat_period)]
        if record.heartbeat_grace is not None:
            argv += ["--heartbeat-grace", str(record.heartbeat_grace)]
        record.controller = await self._spawn(argv, self.state_dir / "controller.log")
        state.save(record)
        deadline = time.monotonic() + 30
        for port in (record.controller_port, record.join_port):
            while not await _accepts(record.bridge_address, port):
                if not procs.is_alive(record.controller):
                    raise DevClusterError(f"the controller exited:\n{dockerd.tail(self.state_dir / 'controller.log')}")
                if time.monotonic() > deadline:
                    raise DevClusterError(f"the controller does not listen on {with_port(record.bridge_address, port)}")
                await asyncio.sleep(0.05)
        self._say(f"cluster {self.cluster_id}: controller listening on {self.controller_address}")

    async def _start_dockerd(self, name: str) -> float:
        host = self.record.hosts[name]
        paths = self.paths(name)
        dockerd.prepare(paths)
        argv = dockerd.dockerd_argv(paths, host.bip, host.cgroup)
        host.dockerd = await self._spawn(network.nsenter_argv(host.netns, argv), paths.dockerd_log)
        state.save(self.record)
        return await dockerd.wait_ready(paths, host.dockerd)

    async def _join_after(self, name: str, controller_started: asyncio.Future[None]) -> float:
        """Joins the host once the controller listens; returns how long the join took."""
        await asyncio.shield(controller_started)
        started = time.monotonic()
        await self._join(name)
        return time.monotonic() - started

    async def _join(self, name: str) -> None:
        """Joins the host as a real host joins, unless it has: `dockyard-agent join` in its namespace, with the
        token (in DOCKYARD_JOIN_TOKEN, so that no process listing shows it) and the controller's join address.
        Its output goes to the agent's log.
        """
        if self.joined(name):
            return
        host = self.record.hosts[name]
        paths = self.paths(name)
        argv = [sys.executable, "-m", "agent.main", "join", "--state-dir", str(paths.agent_state)]
        argv += ["--hostname", name, self.join_address]
        env = {**_child_env(), "DOCKYARD_JOIN_TOKEN": self.join_token()}
        result = await run(*network.nsenter_argv(host.netns, argv), env=env, check=False, limit=60.0)
        _append(paths.agent_log, result.stdout + result.stderr)
        if result.code != 0:
            lines = [line for line in (result.stderr or result.stdout).splitlines() if line.strip()]
            raise DevClusterError(f"{name} could not join: {lines[-1] if lines else f'exit {result.code}'}")

    async def _start_agent(self, name: str) -> ProcRef:
        host = self.record.hosts[name]
        paths = self.paths(name)
        await self._join(name)
        # The agent dials the API address its join recorded. Its host name was fixed at the join; it reports the
        # same one, as a real host's Docker would (the namespaces share this machine's, which Docker reports).
        argv = [
            sys.executable,
            "-m",
            "agent.main",
            "--state-dir",
            str(paths.agent_state),
            "--docker-url",
            paths.docker_url,
            "--hostname",
            name,
        ]
        for key, value in sorted(host.labels.items()):
            argv += ["--label", f"{key}={value}"]
        if self.record.relist_period is not None:
            argv += ["--relist-period", str(self.record.relist_period)]
        if self.record.stranger_grace is not None:
            argv += ["--stranger-grace", str(self.record.stranger_grace)]
        host.agent = await self._spawn(network.nsenter_argv(host.netns, argv), paths.agent_log)
        state.save(self.record)
        return host.agent

    async def _spawn(self, argv: list[str], log_path: Path) -> ProcRef:
        """Starts a daemon through the keeper (or directly when the keeper is gone) and returns its identity."""
        env = _child_env()
        message = {"op": "spawn", "argv": argv, "log": str(log_path), "env": env}
        if procs.is_alive(self.record.keeper):
            pid = int((await keeper.request(self.state_dir / KEEPER_SOCKET, message))["pid"])
        else:
            log.warning("the keeper is gone; starting the process directly", argv=argv[:4])
            pid = keeper.spawn(argv, log_path, env)
        ref = procs.ref_of(pid)
        if ref is None:
            raise DevClusterError(f"`{' '.join(argv[:6])} ...` exited at once:\n{dockerd.tail(log_path)}")
        return ref

    async def wait_ready(self, hosts: Sequence[str] | None = None, wait_seconds: float = 60.0) -> None:
        """Waits until the controller reports the given hosts (default: every live host) ready."""
        from dockyard.client import ApiError, Client
        from dockyard.v1 import types_pb2 as pb

        wanted = set(hosts if hosts is not None else self.hosts)
        deadline = time.monotonic() + wait_seconds
        last = "the controller did not answer"
        async with Client(self.controller_address, deadline=2.0, credentials=self.admin_credentials()) as client:
            while True:
                try:
                    nodes = await client.list_nodes()
                    ready = {n.description.hostname for n in nodes if n.status == pb.NODE_STATUS_READY}
                    if wanted <= ready:
                        return
                    last = f"ready: {', '.join(sorted(ready)) or 'none'}"
                except ApiError as exc:
                    last = str(exc)
                self._check_running(wanted)
                if time.monotonic() > deadline:
                    names = ", ".join(sorted(wanted))
                    raise DevClusterError(f"nodes {names} not ready after {wait_seconds:g}s ({last})")
                await asyncio.sleep(0.1)

    def _check_running(self, hosts: set[str]) -> None:
        if not procs.is_alive(self.record.controller):
            raise DevClusterError(f"the controller exited:\n{dockerd.tail(self.state_dir / 'controller.log')}")
        for name in hosts:
            if not procs.is_alive(self.record.hosts[name].agent):
                raise DevClusterError(f"the agent of {name} exited:\n{dockerd.tail(self.paths(name).agent_log)}")

    async def down(self, remove_state: bool = True, phase: state.Phase = "down") -> dict[str, Any]:
        """Stops and removes everything the cluster created; idempotent, and works from the state file alone.

        Returns a report whose "leftovers" lists anything that could not be removed (empty when all went).
        With remove_state=False the state file and logs stay (docker roots are removed either way).
        """
        started = time.monotonic()
        if not state.state_path(self.state_dir).exists():
            # Already down (or its state dir went away): only sweep by the cluster id.
            removed = await sweep(self.cluster_id, self.state_dir)
            leftovers = find_leftovers(self.cluster_id, self.state_dir)
            return {
                "cluster_id": self.cluster_id,
                "state_dir": str(self.state_dir),
                "state_removed": not self.state_dir.exists(),
                "seconds": round(time.monotonic() - started, 2),
                "swept": removed,
                "leftovers": leftovers,
            }
        async with self._exclusive():
            record = self.record
            self._say(f"cluster {self.cluster_id}: tearing down")
            # Agents first, so that none reports the teardown of its containers as task failures.
            await asyncio.gather(
                *(
                    self._attempt(f"stop agent {h.name}", procs.stop(h.agent, signal.SIGTERM, 5.0))
                    for h in record.hosts.values()
                )
            )
            await asyncio.gather(*(self._teardown_host(name) for name in self.hosts))
            await self._attempt("stop controller", procs.stop(record.controller, signal.SIGTERM, 5.0))
            await self._attempt(f"delete bridge {record.bridge}", network.delete_link(record.bridge))
            await self._attempt(
                f"remove the FORWARD rule of {record.bridge}", network.remove_bridged_traffic_rule(record.bridge)
            )
            # The keeper goes last of the processes: it reaps what the others left as zombies.
            await self._attempt("stop keeper", self._stop_keeper())
            swept: list[str] = []
            await self._attempt("sweep", _collect(sweep(self.cluster_id, self.state_dir), swept))
            if record.created_netns_dir:
                self._attempt_now("tidy /var/run/netns", _remove_netns_dir_if_unused)
            record.controller = None
            record.phase = phase
            inodes = [h.netns_inode for h in record.hosts.values() if h.netns_inode is not None]
            self._attempt_now("remove files", functools.partial(self._remove_files, remove_state))
        leftovers = find_leftovers(self.cluster_id, self.state_dir, inodes)
        seconds = time.monotonic() - started
        if leftovers:
            self._say(f"cluster {self.cluster_id}: left behind: {'; '.join(leftovers)}")
        else:
            self._say(f"cluster {self.cluster_id}: down in {seconds:.1f}s, nothing left behind")
        return {
            "cluster_id": self.cluster_id,
            "state_dir": str(self.state_dir),
            "state_removed": remove_state and not self.state_dir.exists(),
            "seconds": round(seconds, 2),
            "swept": swept,
            "leftovers": leftovers,
        }

    async def _teardown_host(self, name: str) -> None:
        """Removes one host; every step is tried even when an earlier one failed."""
        host = self.record.hosts[name]
        paths = self.paths(name)
        await self._attempt(f"{name}: kill agent", procs.stop(host.agent, signal.SIGKILL))
        # Containers first: then dockerd's own shutdown has nothing to wait for and unmounts what it mounted.
        await self._attempt(f"{name}: kill containers", procs.kill_all(lambda: cgroups.cgroup_pids(host.cgroup)))
        await self._attempt(f"{name}: stop dockerd", procs.stop(host.dockerd, signal.SIGTERM, 20.0))
        # Again: a start the agent asked for just before it died may have completed after the first sweep.
        await self._attempt(f"{name}: kill late containers", procs.kill_all(lambda: cgroups.cgroup_pids(host.cgroup)))
        await self._attempt(f"{name}: kill what runs in {host.netns}", procs.kill_all(lambda: _host_pids(host)))
        self._attempt_now(f"{name}: remove shim sockets", functools.partial(dockerd.remove_shim_sockets, paths))
        self._attempt_now(f"{name}: unmount", functools.partial(mounts.unmount_under, paths.root))
        self._attempt_now(f"{name}: remove cgroups", functools.partial(cgroups.remove_cgroup, host.cgroup))
        await self._attempt(f"{name}: delete link", network.delete_link(host.veth))
        await self._attempt(f"{name}: delete namespace", network.delete_netns(host.netns))
        host.dockerd = host.agent = None
        log.info("host removed", host=name)

    async def _attempt(self, what: str, step: Awaitable[object]) -> None:
        """Awaits one teardown step; a failure is reported and the teardown goes on."""
        try:
            await step
        except Exception as exc:
            log.error("teardown step failed", step=what, error=str(exc))
            self._say(f"cluster {self.cluster_id}: {what} failed: {_one_line(exc)}")

    def _attempt_now(self, what: str, step: Callable[[], object]) -> None:
        """Runs one synchronous teardown step; a failure is reported and the teardown goes on."""
        try:
            step()
        except Exception as exc:
            log.error("teardown step failed", step=what, error=str(exc))
            self._say(f"cluster {self.cluster_id}: {what} failed: {_one_line(exc)}")

    async def _stop_keeper(self) -> None:
        ref = self.record.keeper
        if ref is None:
            return
        if procs.is_alive(ref):
            with contextlib.suppress(DevClusterError):
                await keeper.request(self.state_dir / KEEPER_SOCKET, {"op": "exit"}, limit=2.0)
            if not await procs.wait_dead([ref], 5.0):
                await procs.stop(ref, signal.SIGKILL)
        # The keeper is our child when this process brought the cluster up: collect it (a no-op otherwise).
        procs.reap(ref.pid)
        self.record.keeper = None

    def _remove_files(self, remove_state: bool) -> None:
        for name in self.hosts:
            paths = layout.host_paths(self.state_dir, name)
            for directory in (paths.data_root, paths.exec_root):
                shutil.rmtree(directory, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            (self.state_dir / IMAGES_TAR).unlink()
        if remove_state:
            _remove_state_files(self.state_dir, self.hosts)
        else:
            state.save(self.record)

    # ----- faults --------------------------------------------------------------------------------------------

    async def kill(self, name: str) -> None:
        """The host dies: link down, then agent, containers, dockerd and containerd SIGKILLed; see the module doc."""
        async with self._exclusive():
            host = self.host(name)
            paths = self.paths(name)
            await network.set_link(host.veth, up=False)
            procs.signal_process(host.agent, signal.SIGKILL)
            killed = await procs.kill_all(lambda: cgroups.cgroup_pids(host.cgroup) | _host_pids(host))
            # What a reboot clears: mounts, the exec root (a tmpfs /run on a real host), shim sockets, cgroups.
            dockerd.remove_shim_sockets(paths)
            mounts.unmount_under(paths.root)
            shutil.rmtree(paths.exec_root, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                paths.docker_pidfile.unlink()
            cgroups.remove_cgroup(host.cgroup)
            host.agent = host.dockerd = None
            host.crashed = True
            self._say(f"{name}: killed ({len(killed)} processes); `revive {name}` boots it again")

    async def revive(self, name: str) -> None:
        """Boots a killed host again (link up, dockerd, agent); a no-op for what already runs."""
        async with self._exclusive():
            host = self.host(name)
            await network.set_link(host.veth, up=True)
            if not procs.is_alive(host.dockerd):
                await self._start_dockerd(name)
            if not procs.is_alive(host.agent):
                await self._start_agent(name)
            host.crashed = False
            self._say(f"{name}: revived")

    async def partition(self, name: str) -> None:
        """Cuts the host off the bridge (its veth goes down); everything inside keeps running."""
        async with self._exclusive():
            await network.set_link(self.host(name).veth, up=False)
            self._say(f"{name}: partitioned")

    async def heal(self, name: str) -> None:
        """Reconnects a partitioned host."""
        async with self._exclusive():
            await network.set_link(self.host(name).veth, up=True)
            self._say(f"{name}: healed")

    async def stop_agent(self, name: str, sig: int = signal.SIGTERM, grace: float = 10.0) -> None:
        """Signals the host's agent; for a terminating signal waits for it to exit (SIGKILL after grace seconds).

        SIGSTOP and SIGCONT only freeze and thaw it.
        """
        async with self._exclusive():
            host = self.host(name)
            if sig in _NON_TERMINATING:
                procs.signal_process(host.agent, sig)
                return
            await procs.stop(host.agent, sig, grace)
            host.agent = None

    async def start_agent(self, name: str) -> ProcRef:
        """Starts the host's agent unless it runs; returns its process."""
        async with self._exclusive():
            host = self.host(name)
            if host.agent is not None and procs.is_alive(host.agent):
                return host.agent
            return await self._start_agent(name)

    async def restart_agent(self, name: str) -> ProcRef:
        """SIGKILLs the host's agent and starts it again."""
        async with self._exclusive():
            await procs.stop(self.host(name).agent, signal.SIGKILL)
            ref = await self._start_agent(name)
            self._say(f"{name}: agent restarted (pid {ref.pid})")
            return ref

    async def restart_docker(self, name: str, grace: float = dockerd.SHUTDOWN_TIMEOUT) -> None:
        """Stops the host's dockerd with SIGTERM (SIGKILL after grace seconds) and starts it again; the agent stays."""
        async with self._exclusive():
            host = self.host(name)
            started = time.monotonic()
            self._say(f"{name}: stopping dockerd (Docker stops the containers first)")
            if await procs.stop(host.dockerd, signal.SIGTERM, grace):
                log.warning("dockerd did not stop in time; killed", host=name)
            # A killed dockerd leaves containerd and the shims; the agent must survive.
            agent_pid = host.agent.pid if host.agent is not None else -1
            await procs.kill_all(lambda: (_host_pids(host) | cgroups.cgroup_pids(host.cgroup)) - {agent_pid})
            waited = await self._start_dockerd(name)
            self._say(f"{name}: dockerd restarted in {time.monotonic() - started:.1f}s (ready after {waited:.1f}s)")

    # ----- status --------------------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The cluster and its hosts: processes, addresses, link states."""
        record = self.record
        return {
            "cluster_id": record.cluster_id,
            "state_dir": record.state_dir,
            "phase": record.phase,
            "controller": self.controller_address if record.subnet_index is not None else None,
            "controller_pid": procs.live_pid(record.controller),
            "join_address": self.join_address if record.subnet_index is not None else None,
            "join_token": self._current_token(),
            "credentials": str(self.credentials_dir) if (self.credentials_dir / f"{ADMIN_STEM}.crt").exists() else None,
            "keeper_pid": procs.live_pid(record.keeper),
            "subnet": layout.subnet(record.subnet_index) if record.subnet_index is not None else None,
            "bridge": record.bridge,
            "hosts": [self._host_status(name) for name in self.hosts],
        }

    def _host_status(self, name: str) -> dict[str, Any]:
        host = self.record.hosts[name]
        return {
            "host": name,
            "address": host.address,
            "netns": host.netns,
            "veth": host.veth,
            "link": network.link_state(host.veth),
            "dockerd_pid": procs.live_pid(host.dockerd),
            "agent_pid": procs.live_pid(host.agent),
            "docker_url": self.docker_url(name),
            "crashed": host.crashed,
            "node_id": self.node_id(name),
            "labels": dict(host.labels),
        }

    def _current_token(self) -> str | None:
        try:
            return self.join_token()
        except DevClusterError:
            return None

    # ----- helpers -------------------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _exclusive(self) -> AsyncIterator[None]:
        """Holds the cluster lock, with the record freshly read, and saves it afterwards (re-entrant)."""
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
            return
        if not state.state_path(self.state_dir).exists():
            raise DevClusterError(f"no dev cluster in {self.state_dir} (it is down)")
        async with state.locked(self.state_dir):
            self.record = state.load(self.state_dir)
            self._lock_depth = 1
            try:
                yield
            finally:
                self._lock_depth = 0
                if self.state_dir.is_dir() and state.state_path(self.state_dir).exists():
                    state.save(self.record)

    def _say(self, message: str) -> None:
        log.info(message)
        self._progress(message)


# ----- sweeping and checking -------------------------------------------------------------------------------------


async def sweep(cluster_id: str, state_dir: Path | None = None) -> list[str]:
    """Removes whatever carries the cluster's prefix (namespaces, interfaces, cgroups, mounts, daemons).

    Needs no state file: it is how `down` cleans up after a run that died before recording what it made.
    Returns what it removed.
    """
    layout.check_cluster_id(cluster_id)
    prefix = layout.prefix(cluster_id)
    removed: list[str] = []
    for name in network.namespaces_with_prefix(prefix):
        await procs.kill_all(functools.partial(procs.netns_pids, network.netns_path(name)))
        await network.delete_netns(name)
        removed.append(f"netns {name}")
    for name in cgroups.cgroups_with_prefix(prefix):
        await procs.kill_all(functools.partial(cgroups.cgroup_pids, name))
        cgroups.remove_cgroup(name)
        removed.append(f"cgroup {name}")
    for name in network.links_with_prefix(prefix):
        if await network.delete_link(name):
            removed.append(f"link {name}")
    bridge = layout.bridge_name(cluster_id)
    if await network.remove_bridged_traffic_rule(bridge):
        removed.append(f"iptables rule FORWARD {' '.join(network.bridge_forward_rule(bridge))}")
    markers = [f"--cluster {cluster_id}", f"/{layout.PREFIX}{cluster_id}/"]
    if state_dir is not None:
        markers.append(f"{state_dir}/")
    daemons = {
        pid: cmd
        for pid, cmd in procs.processes_matching(*markers).items()
        if pid not in _ancestors() and any(d in cmd for d in _DAEMON_MARKERS)
    }
    # The keeper last: it reaps the others.
    for keepers in (False, True):
        batch = {pid for pid, cmd in daemons.items() if ("deploy.devcluster.keeper" in cmd) == keepers}
        if batch:
            await procs.kill_all(functools.partial(_still_running, batch, tuple(markers)))
    removed += [f"process {pid} ({cmd[:60]})" for pid, cmd in daemons.items()]
    points = mounts.mounts_containing(f"/{prefix}") + mounts.mounts_containing(f"/{layout.PREFIX}{cluster_id}/")
    if state_dir is not None:
        points += mounts.mounts_under(state_dir)
    if points:
        mounts.unmount_all(sorted(set(points), key=lambda p: p.count("/"), reverse=True))
        removed += [f"mount {p}" for p in sorted(set(points))]
    return removed


# Command lines of the programs a dev cluster runs; a sweep kills nothing else (never a shell that named the dir).
_DAEMON_MARKERS = ("dockerd ", "containerd", "-m agent.main", "-m controller.main", "deploy.devcluster.keeper")


def find_leftovers(cluster_id: str, state_dir: Path, netns_inodes: Sequence[int] = ()) -> list[str]:
    """Everything of the cluster still on the machine: namespaces, links, cgroups, mounts, processes."""
    prefix = layout.prefix(cluster_id)
    found = [f"netns {n}" for n in network.namespaces_with_prefix(prefix)]
    found += [f"link {n}" for n in network.links_with_prefix(prefix)]
    found += [f"cgroup {n}" for n in cgroups.cgroups_with_prefix(prefix)]
    bridge = layout.bridge_name(cluster_id)
    if network.bridged_traffic_rule_present(bridge):
        found.append(f"iptables rule FORWARD {' '.join(network.bridge_forward_rule(bridge))}")
    points = set(mounts.mounts_containing(prefix)) | set(mounts.mounts_under(state_dir))
    found += [f"mount {p}" for p in sorted(points)]
    pids: dict[int, str] = {}
    for inode in netns_inodes:
        pids.update({p: _cmdline(p) for p in procs.netns_pids(inode=inode)})
    markers = (str(state_dir), prefix, f"{layout.PREFIX}{cluster_id}/", f"--cluster {cluster_id}")
    pids.update(procs.processes_matching(*markers))
    ancestors = _ancestors()
    found += [f"process {p} ({cmd[:80]})" for p, cmd in sorted(pids.items()) if p not in ancestors]
    return found


async def _collect(step: Awaitable[list[str]], into: list[str]) -> None:
    into.extend(await step)


def _still_running(pids: set[int], markers: tuple[str, ...]) -> set[int]:
    return pids & set(procs.processes_matching(*markers))


def _host_pids(host: HostRecord) -> set[int]:
    """Processes in the host's namespace: by its name while it exists, by its inode after."""
    pids = procs.netns_pids(network.netns_path(host.netns))
    if host.netns_inode is not None:
        pids |= procs.netns_pids(inode=host.netns_inode)
    return pids


def _ancestors() -> set[int]:
    """This process and its ancestors: never candidates for killing or for leftovers."""
    found = {os.getpid()}
    pid = os.getppid()
    while pid > 1 and pid not in found:
        found.add(pid)
        try:
            text = Path(f"/proc/{pid}/stat").read_text()
            pid = int(text[text.rindex(")") + 2 :].split()[1])
        except (OSError, ValueError):
            break
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def _append(path: Path, text: str) -> None:
    with open(path, "a") as handle:
        handle.write(text)


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _host_record(cluster_id: str, name: str, labels: Mapping[str, str]) -> HostRecord:
    """A new host's record; its address is set once the cluster's subnet is chosen."""
    return HostRecord(
        name=name,
        netns=layout.netns_name(cluster_id, name),
        veth=layout.veth_name(cluster_id, name),
        cgroup=layout.cgroup_name(cluster_id, name),
        address="",
        bip=layout.docker_bip(name),
        labels=dict(labels),
    )


def _require_root() -> None:
    if os.geteuid() != 0:
        raise DevClusterError("the dev cluster needs root (network namespaces, veth pairs, dockerd)")


def _unused_cluster_id() -> str:
    for _ in range(100):
        cluster_id = layout.new_cluster_id()
        prefix = layout.prefix(cluster_id)
        if not (
            network.namespaces_with_prefix(prefix)
            or network.links_with_prefix(prefix)
            or cgroups.cgroups_with_prefix(prefix)
            or layout.default_state_dir(cluster_id).exists()
        ):
            return cluster_id
    raise DevClusterError("no unused cluster id after 100 tries; sweep old clusters with `down --id`")


def _claim_state_dir(directory: Path) -> None:
    """Refuses a dir that holds a live cluster or someone else's files (down removes only its own entries)."""
    if directory.exists():
        if not directory.is_dir():
            raise DevClusterError(f"state dir {directory} is not a directory")
        if state.state_path(directory).exists():
            try:
                old = state.load(directory)
            except DevClusterError:
                old = None
            if old is None or old.phase not in ("down", "failed"):
                what = f"dev cluster {old.cluster_id} ({old.phase})" if old else "an unreadable dev cluster state"
                raise DevClusterError(
                    f"{directory} holds {what}; run `dockyard dev cluster down --state-dir {directory}` first"
                )
            # The logs of a cluster that is down: start afresh.
            _remove_state_files(directory, list(old.hosts))
        elif any(directory.iterdir()):
            raise DevClusterError(f"state dir {directory} is not empty; pick a new or empty directory")
    directory.mkdir(parents=True, exist_ok=True)


def _remove_state_files(directory: Path, hosts: Sequence[str]) -> None:
    """Removes the hosts' dirs and the cluster's own files, then the dir itself if that left it empty."""
    for name in hosts:
        shutil.rmtree(directory / name, ignore_errors=True)
    for entry in _OWN_ENTRIES:
        path = directory / entry
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    with contextlib.suppress(OSError):
        directory.rmdir()


def _remove_netns_dir_if_unused() -> None:
    """Undoes what the first `ip netns add` did to /var/run/netns, when no namespace is named any more."""
    try:
        if os.listdir(network.NETNS_DIR):
            return
    except FileNotFoundError:
        return
    mounts.unmount_all([str(network.NETNS_DIR.resolve())])
    with contextlib.suppress(OSError):
        network.NETNS_DIR.rmdir()


async def _accepts(host: str, port: int) -> bool:
    try:
        async with asyncio.timeout(1.0):
            _, writer = await asyncio.open_connection(host, port, family=socket.AF_INET)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


def _done() -> asyncio.Future[None]:
    """A future that is already done: for a step whose prerequisite holds already."""
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    done.set_result(None)
    return done


def _first_failure(group: BaseExceptionGroup[BaseException]) -> BaseException:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first_failure(exc)
        return exc
    return group


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
