"""The runtime conformance suite (agent.testing.conformance) against the FakeRuntime and against a real dockerd."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.runtime.base import ContainerRuntime, RuntimeUnavailable
from agent.runtime.docker import DockerRuntime
from agent.testing import FakeRuntime, Outage, OutageMode, RuntimeConformance, UnixSocketProxy
from agent.testing.conformance import HEALTHCHECK_IMAGE, IMAGE_CHECK
from tests.conftest import require_docker

BUILD_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "build-test-image.sh"


class TestFakeRuntime(RuntimeConformance):
    """The fake, with the test image present; its outage is set_available(False)."""

    healthcheck_image = HEALTHCHECK_IMAGE

    @contextlib.asynccontextmanager
    async def open_runtime(self) -> AsyncIterator[ContainerRuntime]:
        runtime = FakeRuntime(
            images=[self.image, HEALTHCHECK_IMAGE], image_healthchecks={HEALTHCHECK_IMAGE: IMAGE_CHECK}
        )
        try:
            yield runtime
        finally:
            await runtime.close()

    async def remove_image(self, runtime: ContainerRuntime, image: str) -> bool:
        assert isinstance(runtime, FakeRuntime)
        runtime.remove_image(image)
        return True

    @contextlib.asynccontextmanager
    async def open_outage(self, runtime: ContainerRuntime) -> AsyncIterator[tuple[ContainerRuntime, Outage]]:
        assert isinstance(runtime, FakeRuntime)
        fake = runtime

        async def outage(mode: OutageMode) -> None:
            fake.set_available(False)

        try:
            yield fake, outage
        finally:
            fake.set_available(True)


def docker_socket_path() -> str | None:
    """The unix socket the default DockerRuntime talks to, or None when DOCKER_HOST is not a unix socket."""
    host = os.environ.get("DOCKER_HOST")
    if host is None:
        return "/var/run/docker.sock"
    return host.removeprefix("unix://") if host.startswith("unix://") else None


@functools.cache
def build_test_image(image: str) -> None:
    """Builds the busybox test image once per session if the daemon lacks it."""
    result = subprocess.run(["bash", str(BUILD_SCRIPT), image], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.fail(f"building {image} failed:\n{result.stdout}{result.stderr}")


@pytest.mark.docker
class TestDockerRuntime(RuntimeConformance):
    """The aiodocker adapter on this machine's dockerd; its outage is a socket proxy that dies or hangs."""

    healthcheck_image = HEALTHCHECK_IMAGE

    @contextlib.asynccontextmanager
    async def open_runtime(self) -> AsyncIterator[ContainerRuntime]:
        runtime = DockerRuntime()
        try:
            try:
                await runtime.host_facts()
            except RuntimeUnavailable as exc:
                require_docker(f"no docker daemon answers: {exc}")
            await asyncio.to_thread(build_test_image, self.image)
            await asyncio.to_thread(build_test_image, "--healthcheck")
            yield runtime
        finally:
            await runtime.close()

    async def remove_image(self, runtime: ContainerRuntime, image: str) -> bool:
        # The protocol has no image removal; the CLI talks to the same daemon (DOCKER_HOST) as DockerRuntime.
        result = await asyncio.to_thread(
            subprocess.run, ["docker", "rmi", image], capture_output=True, text=True, check=False
        )
        if result.returncode != 0 and "No such image" not in result.stderr:
            pytest.fail(f"docker rmi {image} failed: {result.stderr}")
        return True

    @contextlib.asynccontextmanager
    async def open_outage(self, runtime: ContainerRuntime) -> AsyncIterator[tuple[ContainerRuntime, Outage]]:
        target = docker_socket_path()
        if target is None:
            pytest.skip("DOCKER_HOST is not a unix socket, so it cannot be proxied")
        with tempfile.TemporaryDirectory(prefix="dockyard-proxy-") as directory:
            proxy = UnixSocketProxy(target, os.path.join(directory, "docker.sock"))
            await proxy.start()
            proxied = DockerRuntime(f"unix://{proxy.path}", request_timeout=1.0, heartbeat_seconds=0.3)

            async def outage(mode: OutageMode) -> None:
                if mode == "hung":
                    proxy.freeze()
                else:
                    await proxy.close()

            try:
                yield proxied, outage
            finally:
                await proxied.close()
                await proxy.close()
