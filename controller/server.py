"""Assembles the controller: store, roles and the gRPC server, and runs them until stopped."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from controller.api import reflection
from controller.api.handlers import add_controller_api
from controller.api.servicer import ControllerApi
from controller.dispatcher.dispatcher import Dispatcher
from controller.errors import StartupError, StoreDamaged
from controller.ids import new_id
from controller.orchestrator.role import Orchestrator
from controller.reactor import Reactor
from controller.scheduler.role import Scheduler
from controller.store.base import Kind, Store
from controller.store.sqlite import SqliteStore
from dockyard.addresses import address_in_use, in_use_message
from dockyard.clock import Clock, SystemClock
from dockyard.limits import DEFAULT_CONTROLLER
from dockyard.v1 import agent_pb2, agent_pb2_grpc, controller_pb2

log = structlog.get_logger()


@dataclass(frozen=True)
class ControllerConfig:
    """How one controller runs."""

    listen: str = DEFAULT_CONTROLLER
    state_dir: Path = Path("/var/lib/dockyard/controller")
    heartbeat_period: float = 1.0
    heartbeat_grace_periods: float = 3.0
    seed: int = 0


class Controller:
    """The running controller: start() serves, stop() drains and closes the store."""

    def __init__(self, config: ControllerConfig, clock: Clock | None = None, store: Store | None = None) -> None:
        self.config = config
        self._clock = clock or SystemClock()
        config.state_dir.mkdir(parents=True, exist_ok=True)
        self.store = store or SqliteStore(config.state_dir / "controller.db")
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

        Raises StartupError when the address is in use (naming what holds it, where it can tell).
        """
        dispatcher = Dispatcher(
            self.store, self._clock, self.config.heartbeat_period, self.config.heartbeat_grace_periods
        )
        orchestrator = Orchestrator(self.store, self._clock, new_id)
        scheduler = Scheduler(self.store, self._clock, self.config.seed)
        # gRPC sets SO_REUSEPORT by default, and then a second controller on the same address shares it
        # silently and the kernel splits the connections between two clusters.
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
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

        add_controller_api(ControllerApi(self.store, self._clock, new_id), server)
        agent_pb2_grpc.add_AgentServiceServicer_to_server(dispatcher, server)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_reflection(names, server)
        self.port = _bind(server, self.config.listen)
        try:
            await self.store.open()
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
                    orchestrator.reconcile,
                    (Kind.SERVICE, Kind.TASK, Kind.NODE),
                    self._clock,
                ).run(),
                name="orchestrator",
            ),
            asyncio.create_task(
                Reactor("scheduler", self.store, scheduler.reconcile, (Kind.NODE, Kind.TASK), self._clock).run(),
                name="scheduler",
            ),
        ]
        log.info(
            "controller serving",
            listen=self.config.listen,
            port=self.port,
            state_dir=str(self.config.state_dir),
        )

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


def _bind(server: grpc.aio.Server, listen: str) -> int:
    """Adds the listening port and returns it; StartupError when the address is taken or unusable."""
    # Checking first gives the one-line message without gRPC's own log line about the failed bind.
    problem = address_in_use(listen)
    if problem:
        raise StartupError(problem)
    try:
        port = server.add_insecure_port(listen)
    except RuntimeError:
        port = 0
    if port == 0:
        # The check above missed it (taken in between, or an address form it does not parse).
        raise StartupError(in_use_message(listen))
    return port
