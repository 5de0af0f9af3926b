"""An in-process cluster: the real controller and real agents over real gRPC, with fake runtimes.

Both harnesses speak mutual TLS with real certificates, as a deployment does: agents join with the token,
API clients present admin credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import grpc
from click.testing import CliRunner, Result

from agent.agent import Agent
from agent.config import AgentConfig
from agent.identity import CLUSTER_FILE, join
from agent.runtime.base import ContainerInfo, ContainerState
from agent.runtime.fake import FakeRuntime
from controller.api.bounds import SERVER_OPTIONS
from controller.api.handlers import add_controller_api
from controller.api.paging import PageLimits
from controller.api.servicer import ControllerApi
from controller.ids import new_id
from controller.sealing import Sealer
from controller.security.authority import ClusterAuthority
from controller.security.guard import Guard
from controller.server import Controller, ControllerConfig
from controller.store.sqlite import SqliteStore
from dockyard import labels, pki
from dockyard.channels import open_channel
from dockyard.cli.main import cli
from dockyard.client import Client
from dockyard.clock import SystemClock
from dockyard.logs import Throttle
from dockyard.v1 import types_pb2 as pb

IMAGE = "dockyard-test:latest"
T = TypeVar("T")


@dataclass
class HostUnderTest:
    """One agent with its own fake Docker and state directory."""

    name: str
    runtime: FakeRuntime
    state_dir: Path
    agent: Agent | None = None
    task: asyncio.Task[None] | None = None


@dataclass
class FakeCluster:
    """A controller on a loopback port and any number of agents on fake runtimes."""

    root: Path
    controller: Controller | None = None
    port: int = 0
    join_port: int = 0
    hosts: dict[str, HostUnderTest] = field(default_factory=dict)
    admin: pki.Credentials | None = None
    # Plaintext controller and agents (--insecure): only for tests about plaintext.
    insecure: bool = False

    async def start_controller(self, **options: object) -> None:
        """Starts (or restarts, on the same ports, CA and database) the controller; options go to its config."""
        config = ControllerConfig(
            listen=f"127.0.0.1:{self.port}",
            join_listen=f"127.0.0.1:{self.join_port}",
            state_dir=self.root / "controller",
            heartbeat_period=0.2,
            init=True,
            insecure=self.insecure,
            **options,  # type: ignore[arg-type]
        )
        self.controller = Controller(config)
        await self.controller.start()
        self.port = self.controller.port
        self.join_port = self.controller.join_port
        if self.admin is None and self.controller.authority is not None:
            self.admin = self.controller.authority.issue_admin("tests")
            self.admin.save(self.credentials_dir, "admin")

    @property
    def credentials_dir(self) -> Path:
        """Where the admin credentials are saved, for the CLI's --credentials."""
        return self.root / "admin"

    def token(self) -> str:
        """The running controller's join token."""
        assert self.controller is not None and self.controller.authority is not None
        return str(self.controller.authority.token())

    async def join(self, name: str) -> None:
        """Joins host `name` (its state dir) with the token, as `dockyard-agent join` does."""
        await join(self.root / name, f"127.0.0.1:{self.join_port}", self.token(), name)

    async def stop_controller(self) -> None:
        """Stops the controller; agents keep their containers."""
        if self.controller is not None:
            await self.controller.stop(grace=0.1)
            self.controller = None

    async def start_agent(
        self, name: str, runtime: FakeRuntime | None = None, stranger_grace: float = 30.0, files_dir: Path | None = None
    ) -> HostUnderTest:
        """Starts an agent (a new one, or again on the same fake daemon and state)."""
        host = self.hosts.get(name) or HostUnderTest(name, runtime or FakeRuntime(images=[IMAGE]), self.root / name)
        self.hosts[name] = host
        if not self.insecure and not (host.state_dir / CLUSTER_FILE).exists():
            await self.join(name)
        config = AgentConfig(
            controller=f"127.0.0.1:{self.port}",
            state_dir=host.state_dir,
            hostname=name,
            heartbeat_period=0.2,
            relist_period=0.5,
            stranger_grace=stranger_grace,
            insecure=self.insecure,
            files_dir=files_dir,  # the tmpfs for secrets and configs (None: the agent's state dir, mounted there)
        )
        host.agent = Agent(config, host.runtime)
        host.task = asyncio.create_task(host.agent.run())
        return host

    async def stop_agent(self, name: str) -> None:
        """Cancels an agent as a crash would (nothing is cleaned up)."""
        host = self.hosts[name]
        if host.task is not None:
            host.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await host.task
            host.task = None

    def client(self, **options: object) -> Client:
        """A public API client for the controller, with admin credentials; options go to Client."""
        return Client(f"127.0.0.1:{self.port}", credentials=self.admin, **options)  # type: ignore[arg-type]

    def channel(self, credentials: pki.Credentials | None = None) -> grpc.aio.Channel:
        """A raw channel to the API address (admin credentials unless others are given)."""
        return open_channel(f"127.0.0.1:{self.port}", credentials or self.admin)

    async def close(self) -> None:
        """Stops every agent and the controller; a step that hangs fails with every task's stack."""
        steps = [(f"agent {name}", self.stop_agent(name)) for name in list(self.hosts)]
        steps.append(("controller", self.stop_controller()))
        for what, step in steps:
            running_step = asyncio.ensure_future(step)
            done, _ = await asyncio.wait([running_step], timeout=3)
            if not done:
                stacks = io.StringIO()
                for task in asyncio.all_tasks():
                    task.print_stack(limit=8, file=stacks)
                print(f"SLOW stopping the {what}:\n{stacks.getvalue()}")
            await running_step


async def running(host: HostUnderTest, service: str | None = None) -> list[ContainerInfo]:
    """The running containers of a host (of one service when named)."""
    selector = {labels.MANAGED: "true"}
    if service:
        selector[labels.SERVICE_NAME] = service
    return [c for c in await host.runtime.list(selector) if c.state is ContainerState.RUNNING]


@dataclass
class ApiUnderTest:
    """The public API alone over a real gRPC server and SQLite store: no orchestrator or scheduler writes.

    Tests that need exact store contents (tasks written by hand, conflicting writes) use it.
    """

    store: SqliteStore
    server: grpc.aio.Server
    port: int
    authority: ClusterAuthority
    admin: pki.Credentials
    credentials_dir: Path

    @property
    def address(self) -> str:
        """The server's address for clients."""
        return f"127.0.0.1:{self.port}"

    def client(self, **options: object) -> Client:
        """A public API client for this server, with admin credentials; options go to Client."""
        return Client(self.address, credentials=self.admin, **options)  # type: ignore[arg-type]

    def channel(self, credentials: pki.Credentials | None = None) -> grpc.aio.Channel:
        """A raw channel, for requests the client would never send (admin credentials unless others are given)."""
        return open_channel(self.address, credentials or self.admin)

    async def close(self) -> None:
        """Stops the server and closes the store."""
        await self.server.stop(None)
        await self.store.close()


async def start_api(root: Path, page_limits: PageLimits | None = None, **api_options: object) -> ApiUnderTest:
    """Serves ControllerService (as the controller registers it: mutual TLS, the guard) over a new store under root.

    api_options go to ControllerApi (caps, watch limits).
    """
    store = SqliteStore(root / "api.db")
    await store.open()
    clock = SystemClock()
    authority = ClusterAuthority.open(
        root / "pki", clock, pki.DEFAULT_CERT_LIFETIME, init=True, addresses=("127.0.0.1",)
    )
    server = grpc.aio.server(
        options=list(SERVER_OPTIONS), interceptors=[Guard(store, authority.cluster_id, Throttle(clock))]
    )
    api_options.setdefault("sealer", Sealer.open(root / "pki"))  # the data key beside the CA key, as the controller's
    add_controller_api(ControllerApi(store, clock, new_id, page_limits, **api_options), server)  # type: ignore[arg-type]
    port = server.add_secure_port("127.0.0.1:0", authority.server_credentials(client_certificates=True))
    await server.start()
    admin = authority.issue_admin("tests")
    admin.save(root / "admin", "admin")
    return ApiUnderTest(store, server, port, authority, admin, root / "admin")


class ApiInThread:
    """start_api on an event loop of its own thread, for synchronous tests that run the CLI in-process."""

    def __init__(self, root: Path, page_limits: PageLimits | None = None) -> None:
        """Starts the loop and the API; close() stops both."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="api-under-test", daemon=True)
        self._thread.start()
        self.api = self.run(start_api(root, page_limits))

    def run(self, step: Awaitable[T]) -> T:
        """Runs a coroutine on the API's loop (e.g. a store write) and returns its result."""

        async def wrapped() -> T:
            return await step

        return asyncio.run_coroutine_threadsafe(wrapped(), self._loop).result(timeout=30)

    def close(self) -> None:
        """Stops the API, then the loop and its thread."""
        self.run(self.api.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> ApiInThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_cli(api: ApiInThread, *args: str, stdin: bytes | None = None) -> Result:
    """Runs `dockyard *args` in-process against `api` as its admin; exceptions propagate to the test."""
    return CliRunner().invoke(
        cli,
        ["--credentials", str(api.api.credentials_dir), *args, "--controller", api.api.address],
        input=stdin,
        catch_exceptions=False,
    )


async def cluster_cli(cluster: FakeCluster, *args: str) -> Result:
    """Runs `dockyard *args` in-process against `cluster` as its admin, on a thread of its own (the CLI runs
    its own event loop); exceptions propagate to the test."""
    command = ["--credentials", str(cluster.credentials_dir), *args, "--controller", f"127.0.0.1:{cluster.port}"]
    return await asyncio.to_thread(CliRunner().invoke, cli, command, catch_exceptions=False)


def ok(result: Result) -> Result:
    """`result`, once the command exited 0 (else the assertion shows its output)."""
    assert result.exit_code == 0, result.output
    return result


def after_first_read(api: ApiUnderTest, write: Callable[[], Awaitable[object]]) -> None:
    """Makes `write` happen just after the next list_services returns: a request racing the one that read."""
    store = api.store
    original = store.list_services
    fired = False

    async def racing() -> list[pb.Service]:
        nonlocal fired
        services = await original()
        if not fired:
            fired = True
            await write()
        return services

    store.list_services = racing  # type: ignore[method-assign]
