"""Dockyard's testing kit: the fake runtime, the fake clock, and the conformance suite every runtime must pass.

* `FakeRuntime`: an in-memory ContainerRuntime that behaves as Docker does where the suite pins it, with
  controls for what happens on a host behind the agent's back (crash, OOM kill, `docker rm -f`, outage,
  Docker's own shutdown, a container's health) and images with a HEALTHCHECK of their own.
* `FakeClock`: virtual time for everything that takes a `dockyard.clock.Clock`; it moves on `advance()`.
* `RuntimeConformance`: the runtime contract as a base test class. Both the fake and the aiodocker
  adapter run it (tests/conformance/), so what agent tests learn from the fake holds on Docker.
* `UnixSocketProxy`: sits in front of a daemon's socket and makes the daemon die or hang on demand.
* `Fleet`: many simulated agents in one process, each speaking the real Session protocol to a real
  controller, for load tests and benchmarks (bench/fleet.py); `agent.testing.fleet` says what they simulate.

A new runtime adapter proves itself by subclassing `RuntimeConformance` in a test module and saying how
to connect to its daemon and how to take that daemon away; every check becomes one test:

    import contextlib, os, tempfile

    from agent.testing import RuntimeConformance, UnixSocketProxy
    from myadapter import PodmanRuntime

    SOCKET = "/run/podman/podman.sock"

    class TestPodmanRuntime(RuntimeConformance):
        image = "dockyard-test:latest"  # scripts/build-test-image.sh loads it into a daemon

        @contextlib.asynccontextmanager
        async def open_runtime(self):
            runtime = PodmanRuntime(f"unix://{SOCKET}")
            try:
                yield runtime
            finally:
                await runtime.close()

        @contextlib.asynccontextmanager
        async def open_outage(self, runtime):
            with tempfile.TemporaryDirectory() as directory:
                proxy = UnixSocketProxy(SOCKET, os.path.join(directory, "proxy.sock"))
                await proxy.start()
                proxied = PodmanRuntime(f"unix://{proxy.path}")

                async def outage(mode):
                    if mode == "hung":
                        proxy.freeze()
                    else:
                        await proxy.close()

                try:
                    yield proxied, outage
                finally:
                    await proxied.close()
                    await proxy.close()

The checks are async methods, so run them with pytest-asyncio (``asyncio_mode = "auto"``, as Dockyard
does, or ``pytestmark = pytest.mark.asyncio``). To skip when no daemon runs, call ``pytest.skip`` in
`open_runtime`. The module `agent.testing.conformance` documents what the image needs.
"""

import sys

from agent.runtime.fake import FakeRuntime
from dockyard.clock import FakeClock

if "pytest" in sys.modules:
    # The checks use plain asserts: have pytest rewrite them (as in a test module) for readable failures.
    # It must be registered before the module is first imported; pytest is imported only if already loaded.
    import pytest

    pytest.register_assert_rewrite("agent.testing.conformance")

from agent.testing.conformance import Outage, OutageMode, RuntimeConformance
from agent.testing.fleet import Fleet, FleetConfig
from agent.testing.socket_proxy import UnixSocketProxy

__all__ = [
    "FakeClock",
    "FakeRuntime",
    "Fleet",
    "FleetConfig",
    "Outage",
    "OutageMode",
    "RuntimeConformance",
    "UnixSocketProxy",
]
