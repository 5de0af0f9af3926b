"""Assembles the controller: store, roles and the gRPC server, and runs them until stopped."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from controller.api import reflection
from controller.api.bounds import SERVER_OPTIONS
from controller.api.files import redigest_secrets
from controller.api.handlers import add_agent_service, add_controller_api
from controller.api.images import ImagePushes
from controller.api.servicer import ControllerApi
from controller.dispatcher.dispatcher import Dispatcher
from controller.dispatcher.files import FileSource
from controller.errors import StartupError, StoreDamaged
from controller.ids import new_id
from controller.network.allocate import DEFAULT_POOL, outside_pool, parse_pool
from controller.network.role import NetworkRole
from controller.orchestrator.role import Orchestrator
from controller.reactor import Reactor
from controller.scheduler.role import Scheduler
from controller.sealing import Sealer
from controller.security.authority import ClusterAuthority
from controller.security.guard import Guard
from controller.security.join import JoinServicer
from controller.store.base import Kind, Store
from controller.store.sqlite import STORE_FILE, SqliteStore
from dockyard import pki
from dockyard.addresses import address_in_use, host_of, in_use_message, is_loopback, join_listen_for
from dockyard.clock import Clock, SystemClock
from dockyard.limits import DEFAULT_CONTROLLER
from dockyard.logs import Throttle
from dockyard.spec.schema import SERVICE_HISTORY
from dockyard.v1 import agent_pb2, agent_pb2_grpc, controller_pb2
from dockyard.v1 import types_pb2 as pb

log = structlog.get_logger()


@dataclass(frozen=True)
class ControllerConfig:
    """How one controller runs."""

    listen: str = DEFAULT_CONTROLLER
    state_dir: Path = Path("/var/lib/dockyard/controller")
    heartbeat_period: float = 1.0
    heartbeat_grace_periods: float = 3.0
    seed: int = 0
    # The join address (server-authenticated TLS); None: the API address's host, addresses.JOIN_PORT.
    join_listen: str | None = None
    # Plaintext, no certificates, identity from the hello: loopback only, for experiments.
    insecure: bool = False
    # Make a new cluster (CA, store) if the state dir has none; without it an empty state dir is refused.
    init: bool = False
    cert_lifetime: datetime.timedelta = pki.DEFAULT_CERT_LIFETIME
    # Revisions kept per service (the current one always), for history and rollback.
    service_history: int = SERVICE_HISTORY.maximum
    # The address pool every network's per-node subnets come from (controller/network/allocate.py).
    network_pool: str = DEFAULT_POOL


class Controller:
    """The running controller: start() serves, stop() drains and closes the store."""

    def __init__(self, config: ControllerConfig, clock: Clock | None = None, store: Store | None = None) -> None:
        self.config = config
        self._clock = clock or SystemClock()
        config.state_dir.mkdir(parents=True, exist_ok=True)
        # Only a store the controller opens from its state dir is checked for having been there before.
        self._own_store = store is None
        self.store = store or SqliteStore(config.state_dir / STORE_FILE, history_limit=config.service_history)
        self.authority: ClusterAuthority | None = None
        self.sealer: Sealer | None = None
        self.join_port = 0
        self._server: grpc.aio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._side_tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    def _spawn(self, work: Coroutine[object, object, None]) -> None:
        """Runs a short piece of work beside the roles, holding a reference until it ends."""
        task = asyncio.get_running_loop().create_task(work)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    async def start(self) -> None:
        """Binds the address, opens the store, starts the roles and serves the gRPC API.

        Raises StartupError when the address is in use (naming what holds it, where it can tell), when
        --insecure is asked for on an address other than loopback, and when the state dir holds no cluster
        (or half of one) and init is not set.
        """
        if self.config.insecure and not is_loopback(self.config.listen):
            raise StartupError(
                f"--insecure: refused on {self.config.listen}; plaintext is for loopback experiments only "
                "(listen on 127.0.0.1, or drop --insecure to serve mutual TLS)"
            )
        self._check_state_dir()
        # Before a new cluster's CA is written: a start that cannot bind must leave the state dir as it was.
        addresses = [(self.config.listen, "--listen")]
        if not self.config.insecure:
            addresses.append((self._join_listen, "--join-listen"))
        for listen, flag in addresses:
            problem = address_in_use(listen, flag)
            if problem:
                raise StartupError(problem)
        throttle = Throttle(self._clock)
        # A store without a CA is a cluster's first start with TLS (it ran --insecure, or predates
        # certificates): it gets its CA now; agents join to get their certificates.
        make_ca = self.config.init or (self.config.state_dir / STORE_FILE).exists()
        # The store opens first: a damaged one stops the start before a CA is made beside it.
        await self.store.open()
        has_ca = (self.config.state_dir / pki.CA_CERT_FILE).exists()
        if not self.config.insecure and not has_ca and await self.store.list_nodes():
            # Nodes joined under a CA that is gone (the store restored without it): a new CA would lock every
            # one of them out, silently. Only a store without nodes (one run --insecure, or older) gets one.
            raise StartupError(
                f"--state-dir {self.config.state_dir}: the store has nodes but the cluster CA ({pki.CA_CERT_FILE}, "
                f"{pki.CA_KEY_FILE}) is missing: restore them with the store's backup; or, if this cluster ran "
                "--insecure until now, remove its nodes (started --insecure: dockyard node rm) and join the hosts"
            )
        if self.config.insecure:
            log.warning(
                "serving plaintext without authentication (--insecure); loopback only", listen=self.config.listen
            )
        else:
            self.authority = ClusterAuthority.open(
                self.config.state_dir,
                self._clock,
                self.config.cert_lifetime,
                init=make_ca,
                addresses=tuple(dict.fromkeys(host_of(a) for a in (self.config.listen, self._join_listen))),
            )
        network_role = await self._network_role()
        dispatcher = Dispatcher(
            self.store,
            self._clock,
            self.config.heartbeat_period,
            self.config.heartbeat_grace_periods,
            authority=self.authority,
            files=FileSource(self.store, await self._open_sealer(), throttle),
            network_pool=str(network_role.pool),
        )
        interceptors = [] if self.authority is None else [Guard(self.store, self.authority.cluster_id, throttle)]
        # gRPC sets SO_REUSEPORT by default, and then a second controller on the same address shares it
        # silently and the kernel splits the connections between two clusters.
        server = grpc.aio.server(options=[*SERVER_OPTIONS, ("grpc.so_reuseport", 0)], interceptors=interceptors)
        health_servicer = health.aio.HealthServicer()
        names = (
            controller_pb2.DESCRIPTOR.services_by_name["ControllerService"].full_name,
            agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name,
            health.SERVICE_NAME,
        )

        async def out_of_service(damage: StoreDamaged) -> None:
            log.error("store damaged; not serving", error=str(damage))
            for name in ("", *names[:2]):
                await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)

        # The API's plan runs the scheduler with the seed the scheduler role uses, so it predicts its nodes.
        add_controller_api(
            ControllerApi(
                self.store,
                self._clock,
                new_id,
                join_tokens=self,
                scheduler_seed=self.config.seed,
                images=ImagePushes(self.store, dispatcher.commands, dispatcher.images),
                commands=dispatcher.commands,
                sealer=await self._open_sealer(),
            ),
            server,
        )
        add_agent_service(dispatcher, server)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_reflection(names, server)
        try:
            if self.authority is None:
                self.port = _bind(server, self.config.listen, None)
            else:
                self.port = _bind(
                    server, self.config.listen, self.authority.server_credentials(client_certificates=True)
                )
                self.join_port = _bind(
                    server,
                    self._join_listen,
                    self.authority.server_credentials(client_certificates=False),
                    "--join-listen",
                )
                agent_pb2_grpc.add_JoinServiceServicer_to_server(
                    JoinServicer(self.store, self.authority, self._clock, self.port, throttle), server
                )
        except BaseException:
            await server.stop(None)
            raise
        # SERVING before anything can meet damage, so a later NOT_SERVING is never overwritten; the store
        # reports damage that any role or request meets, once.
        for name in ("", *names[:2]):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        self.store.on_damage(lambda damage: self._spawn(out_of_service(damage)))
        await server.start()
        self._server = server
        self._tasks = [
            asyncio.create_task(dispatcher.run(), name="dispatcher"),
            asyncio.create_task(
                Reactor(
                    "orchestrator",
                    self.store,
                    Orchestrator(self.store, self._clock, new_id).reconcile,
                    (Kind.SERVICE, Kind.TASK, Kind.NODE),
                    self._clock,
                ).run(),
                name="orchestrator",
            ),
            asyncio.create_task(
                Reactor(
                    "scheduler",
                    self.store,
                    Scheduler(self.store, self._clock, self.config.seed).reconcile,
                    (Kind.NODE, Kind.TASK, Kind.VOLUME),
                    self._clock,
                ).run(),
                name="scheduler",
            ),
            asyncio.create_task(
                Reactor("network", self.store, network_role.reconcile, NetworkRole.KINDS, self._clock).run(),
                name="network",
            ),
        ]
        log.info(
            "controller serving",
            listen=self.config.listen,
            port=self.port,
            join_port=self.join_port or None,
            tls=self.authority is not None,
            state_dir=str(self.config.state_dir),
        )

    async def _open_sealer(self) -> Sealer:
        """Opens the data key beside the CA key, made at the first start; refused when the store holds data
        sealed with a key that is not there (a store restored without its data.key)."""
        if self.sealer is None:
            sealed = [*await self.store.list_objects(Kind.SECRET), *await self.store.list_objects(Kind.REGISTRY)]
            self.sealer = Sealer.open(self.config.state_dir, sealed_objects=len(sealed))
            await redigest_secrets(self.store, self.sealer)  # a store made when secret digests were plain sha256
        return self.sealer

    async def _network_role(self) -> NetworkRole:
        """The network role over --network-pool, the cluster network made (StartupError for a bad pool)."""
        try:
            pool = parse_pool(self.config.network_pool)
        except ValueError as exc:
            raise StartupError(f"--network-pool: {exc}") from None
        networks = [n for n in await self.store.list_objects(Kind.NETWORK) if isinstance(n, pb.Network)]
        if (refused := outside_pool(networks, pool)) is not None:
            raise StartupError(refused)
        role = NetworkRole(self.store, self._clock, pool, new_id)
        await role.ensure_cluster_network()  # it exists from the start, before any service can need it
        return role

    @property
    def _join_listen(self) -> str:
        return self.config.join_listen or join_listen_for(self.config.listen)

    def _check_state_dir(self) -> None:
        """StartupError when the state dir has no store (a new cluster needs init) or a CA without a store."""
        if not self._own_store:
            return
        has_store = (self.config.state_dir / STORE_FILE).exists()
        has_ca = (self.config.state_dir / pki.CA_CERT_FILE).exists()
        if has_store:
            return
        if has_ca:
            raise StartupError(
                f"--state-dir {self.config.state_dir}: the cluster CA is here but its store ({STORE_FILE}) is not. "
                "Restore the store (dockyard-controller restore FILE); starting empty would make every agent's "
                "containers look unwanted"
            )
        if not self.config.init:
            raise StartupError(
                f"--state-dir {self.config.state_dir}: no cluster here (no {STORE_FILE}). If this is a new "
                "cluster, start once with --init; if the cluster's state was here, restore it from backup"
            )

    def join_token(self, rotate: bool) -> tuple[str, int]:
        """Returns the join token (rotating it first if asked) and the join port; ValueError when insecure."""
        if self.authority is None:
            raise ValueError("the controller runs --insecure: there are no join tokens")
        token = self.authority.rotate() if rotate else self.authority.token()
        return str(token), self.join_port

    async def stop(self, grace: float = 2.0) -> None:
        """Stops serving, cancels the roles and closes the store."""
        if self._server is not None:
            await self._server.stop(grace)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.store.close()

    async def wait(self) -> None:
        """Waits until a role fails (it should not) or the server terminates."""
        if self._server is None:
            return
        done, _ = await asyncio.wait(
            [*self._tasks, asyncio.create_task(self._server.wait_for_termination())],
            return_when=asyncio.FIRST_COMPLETED,
        )
        for task in done:
            if task.exception() is not None:
                raise task.exception()  # type: ignore[misc]


def _bind(
    server: grpc.aio.Server, listen: str, credentials: grpc.ServerCredentials | None, flag: str = "--listen"
) -> int:
    """Adds the listening port (TLS with credentials) and returns it; StartupError when taken or unusable."""
    # Checking first gives the one-line message without gRPC's own log line about the failed bind.
    problem = address_in_use(listen, flag)
    if problem:
        raise StartupError(problem)
    try:
        port = server.add_insecure_port(listen) if credentials is None else server.add_secure_port(listen, credentials)
    except RuntimeError:
        port = 0
    if port == 0:
        # The check above missed it (taken in between, or an address form it does not parse).
        raise StartupError(in_use_message(listen, flag))
    return port
