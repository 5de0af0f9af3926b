"""Fixtures that run one conformance suite against both the FakeRuntime and a real dockerd."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from agent.runtime.base import ContainerRuntime, RuntimeUnavailable
from agent.runtime.docker import DockerRuntime
from agent.runtime.fake import FakeRuntime
from tests.conftest import require_docker

TEST_IMAGE = "dockyard-test:latest"
RUN_LABEL = "dockyard.test-run"
BUILD_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "build-test-image.sh"

# Takes the daemon away: "closed" kills it, "hung" freezes it.
Outage = Callable[[str], Awaitable[None]]


def docker_socket_path() -> str | None:
    """The unix socket the default DockerRuntime talks to, or None when DOCKER_HOST is not a unix socket."""
    host = os.environ.get("DOCKER_HOST")
    if host is None:
        return "/var/run/docker.sock"
    return host.removeprefix("unix://") if host.startswith("unix://") else None


@pytest.fixture(scope="session")
def docker_image() -> str:
    """Builds the busybox test image once per session if the daemon lacks it."""
    result = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.fail(f"building {TEST_IMAGE} failed:\n{result.stdout}{result.stderr}")
    return TEST_IMAGE


@pytest.fixture
def run_labels() -> dict[str, str]:
    """A label unique to this test; everything the test creates carries it and is removed after it."""
    return {RUN_LABEL: uuid.uuid4().hex}


@pytest.fixture(params=["fake", pytest.param("docker", marks=pytest.mark.docker)])
def backend(request: pytest.FixtureRequest) -> str:
    """Which runtime the test runs against."""
    return str(request.param)


@pytest.fixture
async def runtime(
    backend: str, run_labels: dict[str, str], request: pytest.FixtureRequest
) -> AsyncIterator[ContainerRuntime]:
    """The runtime under test; removes every container carrying this test's label afterwards."""
    runtime: ContainerRuntime
    if backend == "fake":
        runtime = FakeRuntime(images=[TEST_IMAGE])
    else:
        runtime = DockerRuntime()
        try:
            await runtime.host_facts()
        except RuntimeUnavailable as exc:
            await runtime.close()
            require_docker(f"no docker daemon answers: {exc}")
        request.getfixturevalue("docker_image")
    try:
        yield runtime
    finally:
        if isinstance(runtime, FakeRuntime):
            runtime.set_available(True)
        for info in await runtime.list(run_labels):
            await runtime.remove(info.id)
        await runtime.close()


class SocketProxy:
    """Forwards a unix socket to dockerd's, and can drop or freeze every connection to fake an outage."""

    def __init__(self, target: str, path: str) -> None:
        """Will listen on `path` and forward to the socket at `target`."""
        self._target = target
        self._path = path
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._pumps: set[asyncio.Task[None]] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()

    async def start(self) -> None:
        """Starts listening."""
        self._server = await asyncio.start_unix_server(self._handle, path=self._path)

    def freeze(self) -> None:
        """Stops forwarding bytes while keeping every connection open: a daemon that hangs."""
        self._flowing.clear()

    async def close(self) -> None:
        """Stops listening and closes every connection: a daemon that died."""
        if self._server is not None:
            self._server.close()
        # Cancelling the pumps, not the handlers: asyncio's stream server logs cancelled handlers.
        for pump in list(self._pumps):
            pump.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        for writer in list(self._writers):
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path)

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        """Pumps one client connection to the daemon and back."""
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        self._writers.add(client_writer)
        try:
            daemon_reader, daemon_writer = await asyncio.open_unix_connection(self._target)
        except OSError:
            client_writer.close()
            self._handlers.discard(handler)
            return
        self._writers.add(daemon_writer)
        pumps = {
            asyncio.create_task(self._pump(client_reader, daemon_writer)),
            asyncio.create_task(self._pump(daemon_reader, client_writer)),
        }
        self._pumps |= pumps
        await asyncio.gather(*pumps, return_exceptions=True)
        self._pumps -= pumps
        self._handlers.discard(handler)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copies bytes one way until EOF, holding them back while frozen."""
        try:
            while data := await reader.read(65536):
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()


@pytest.fixture
async def outage_runtime(
    backend: str, runtime: ContainerRuntime, tmp_path: Path
) -> AsyncIterator[tuple[ContainerRuntime, Outage]]:
    """A runtime whose daemon the test can take away: outage("closed") kills it, outage("hung") freezes it."""
    if isinstance(runtime, FakeRuntime):
        fake = runtime

        async def fake_outage(mode: str) -> None:
            fake.set_available(False)

        yield fake, fake_outage
        fake.set_available(True)
        return
    target = docker_socket_path()
    if target is None:
        pytest.skip("DOCKER_HOST is not a unix socket, so it cannot be proxied")
    proxy = SocketProxy(target, str(tmp_path / "docker.sock"))
    await proxy.start()
    proxied = DockerRuntime(f"unix://{tmp_path / 'docker.sock'}", request_timeout=1.0, heartbeat_seconds=0.3)

    async def docker_outage(mode: str) -> None:
        if mode == "hung":
            proxy.freeze()
        else:
            await proxy.close()

    try:
        yield proxied, docker_outage
    finally:
        await proxied.close()
        await proxy.close()
