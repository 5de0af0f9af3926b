"""The agent's health checks: the spec's block as Docker's Healthcheck, Docker's rules over probe results
(ProbeTracker), and the HTTP and TCP prober against real servers on loopback, timed by a FakeClock."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import pytest

from agent.health import (
    ProbeLoop,
    ProbeSettings,
    ProbeTracker,
    agent_probed,
    docker_healthcheck,
    probe_http,
    probe_settings,
    probe_tcp,
    shorten,
)
from agent.runtime.base import Health, HealthConfig, HealthStatus
from dockyard.clock import FakeClock
from dockyard.limits import HEALTH_OUTPUT_BYTES
from dockyard.timestamps import duration
from dockyard.v1 import types_pb2 as pb

SETTINGS = ProbeSettings(interval=10.0, timeout=2.0, retries=3, start_period=30.0, start_interval=1.0)


# --- the spec's block -----------------------------------------------------------------------------------


def spec_with(**check: object) -> pb.ServiceSpec:
    spec = pb.ServiceSpec(name="web", image="img")
    spec.healthcheck.CopyFrom(pb.HealthCheck(**check))  # type: ignore[arg-type]
    return spec


def test_no_block_leaves_the_images_own_check() -> None:
    assert docker_healthcheck(pb.ServiceSpec(name="web", image="img")) is None


def test_a_test_check_goes_to_docker_with_composes_defaults_filled_in() -> None:
    check = docker_healthcheck(spec_with(test=["CMD", "true"], interval=duration(0.1)))
    assert check == HealthConfig(
        test=("CMD", "true"),
        interval_ns=100_000_000,
        timeout_ns=30_000_000_000,
        retries=3,
        start_period_ns=0,
        start_interval_ns=5_000_000_000,
    )


def test_none_turns_the_images_check_off() -> None:
    assert docker_healthcheck(spec_with(test=["NONE"])) == HealthConfig(test=("NONE",))


@pytest.mark.parametrize("probe", [{"http": pb.HttpProbe(port=80)}, {"tcp": pb.TcpProbe(port=5432)}])
def test_an_agent_probe_turns_the_images_check_off(probe: dict[str, object]) -> None:
    spec = spec_with(**probe)
    assert agent_probed(spec)
    assert docker_healthcheck(spec) == HealthConfig(test=("NONE",))


def test_timing_only_keeps_the_images_test() -> None:
    check = docker_healthcheck(spec_with(interval=duration(1), retries=5))
    assert check is not None
    assert (check.test, check.interval_ns, check.retries) == ((), 1_000_000_000, 5)


def test_probe_settings_take_the_spec_and_default_the_rest() -> None:
    settings = probe_settings(pb.HealthCheck(timeout=duration(0.5), retries=1, start_period=duration(4)))
    assert settings == ProbeSettings(interval=30.0, timeout=0.5, retries=1, start_period=4.0, start_interval=5.0)


def test_output_is_cut_on_a_character_boundary() -> None:
    assert shorten("short") == "short"
    cut = shorten("€" * HEALTH_OUTPUT_BYTES)
    assert len(cut.encode()) <= HEALTH_OUTPUT_BYTES
    assert set(cut) == {"€"}


# --- Docker's rules -------------------------------------------------------------------------------------


def test_failures_inside_the_start_period_do_not_count_while_starting() -> None:
    tracker = ProbeTracker(SETTINGS, start_period_ends=30.0)
    for t in (1.0, 2.0, 3.0, 4.0):
        assert tracker.record(False, "refused", started=t) == Health(HealthStatus.STARTING, 0, "refused")
    # After the start period they count: retries in a row make it unhealthy.
    assert tracker.record(False, "refused", started=31.0).failing_streak == 1
    assert tracker.record(False, "refused", started=41.0).status is HealthStatus.STARTING
    assert tracker.record(False, "refused", started=51.0) == Health(HealthStatus.UNHEALTHY, 3, "refused")


def test_once_healthy_failures_count_even_inside_the_start_period() -> None:
    tracker = ProbeTracker(SETTINGS, start_period_ends=30.0)
    assert tracker.record(True, "200", started=1.0) == Health(HealthStatus.HEALTHY, 0, "200")
    assert tracker.record(False, "503", started=2.0) == Health(HealthStatus.HEALTHY, 1, "503")
    assert tracker.record(True, "200", started=3.0) == Health(HealthStatus.HEALTHY, 0, "200")
    for t in (4.0, 5.0):
        tracker.record(False, "503", started=t)
    assert tracker.record(False, "503", started=6.0) == Health(HealthStatus.UNHEALTHY, 3, "503")
    # Docker keeps probing an unhealthy container, and one success makes it healthy again.
    assert tracker.record(True, "200", started=7.0).status is HealthStatus.HEALTHY


def test_the_start_interval_applies_only_while_starting_inside_the_start_period() -> None:
    tracker = ProbeTracker(SETTINGS, start_period_ends=30.0)
    assert tracker.next_delay(now=0.0) == 1.0
    assert tracker.next_delay(now=30.0) == 10.0
    tracker.record(True, "", started=2.0)
    assert tracker.next_delay(now=3.0) == 10.0


def test_without_a_start_period_the_first_failures_count() -> None:
    tracker = ProbeTracker(SETTINGS, start_period_ends=0.0)
    assert tracker.next_delay(now=0.0) == 10.0
    assert tracker.record(False, "x", started=10.0).failing_streak == 1


# --- probes on the wire ---------------------------------------------------------------------------------

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], object]


@contextlib.asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[int]:
    """A server on 127.0.0.1 with a free port, yielding the port."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            result = handler(reader, writer)
            if asyncio.iscoroutine(result):
                await result
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def answering(status: str, body: bytes = b"") -> Handler:
    """An HTTP server that answers every request with `status` and `body`, remembering the request lines."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        answering.requests.append(request.split(b"\r\n")[0].decode())  # type: ignore[attr-defined]
        writer.write(f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        await writer.drain()

    return handler


answering.requests = []  # type: ignore[attr-defined]


async def test_http_probe_counts_2xx_and_3xx_as_healthy_by_default() -> None:
    async with serving(answering("204 No Content")) as port:
        ok, output = await probe_http("127.0.0.1", pb.HttpProbe(port=port, path="/up"))
    assert ok
    assert output == f"GET http://127.0.0.1:{port}/up: 204"
    assert answering.requests[-1] == "GET /up HTTP/1.1"  # type: ignore[attr-defined]


async def test_http_probe_reports_the_status_and_the_start_of_the_body() -> None:
    async with serving(answering("503 Service Unavailable", b"database down")) as port:
        ok, output = await probe_http("127.0.0.1", pb.HttpProbe(port=port))
    assert not ok
    assert output == f"GET http://127.0.0.1:{port}/: 503 database down"


async def test_http_probe_with_an_expected_status_wants_exactly_that() -> None:
    async with serving(answering("200 OK")) as port:
        assert not (await probe_http("127.0.0.1", pb.HttpProbe(port=port, status=418)))[0]
    async with serving(answering("418 I'm a teapot")) as port:
        assert (await probe_http("127.0.0.1", pb.HttpProbe(port=port, status=418)))[0]


async def test_http_probe_reads_a_bounded_answer() -> None:
    async with serving(answering("200 OK", b"x" * 1_000_000)) as port:
        ok, output = await probe_http("127.0.0.1", pb.HttpProbe(port=port))
    assert ok
    assert len(output) < 5000


async def test_http_probe_does_not_wait_for_a_body_of_unknown_length() -> None:
    hold = asyncio.Event()

    async def streaming(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        await hold.wait()  # and never ends the body

    async with serving(streaming) as port:
        try:
            ok, output = await probe_http("127.0.0.1", pb.HttpProbe(port=port))
        finally:
            hold.set()
    assert ok
    assert output == f"GET http://127.0.0.1:{port}/: 200"


async def test_http_probe_of_something_that_is_not_http_fails() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-OpenSSH\r\n")
        await writer.drain()

    async with serving(garbage) as port:
        ok, output = await probe_http("127.0.0.1", pb.HttpProbe(port=port))
    assert not ok
    assert "not an HTTP answer" in output


async def test_probes_of_a_closed_port_fail_with_the_reason() -> None:
    async with serving(answering("200 OK")) as port:
        pass  # the port is free again
    ok, output = await probe_tcp("127.0.0.1", port)
    assert not ok
    assert "refused" in output.lower()
    ok, output = await probe_http("127.0.0.1", pb.HttpProbe(port=port))
    assert not ok
    assert "refused" in output.lower()


async def test_tcp_probe_connects() -> None:
    async with serving(lambda reader, writer: None) as port:
        assert await probe_tcp("127.0.0.1", port) == (True, f"tcp connect to 127.0.0.1:{port} succeeded")


async def wait_until(condition: Callable[[], bool]) -> None:
    """Lets real loopback I/O finish (a bounded number of short turns), virtual time standing still."""
    for _ in range(400):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the probe did not finish")


async def test_the_probe_loop_follows_the_clock_and_reports_only_changes() -> None:
    clock = FakeClock()
    changes: list[Health] = []
    status = ["503 Service Unavailable"]

    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(f"HTTP/1.1 {status[0]}\r\nContent-Length: 0\r\n\r\n".encode())
        await writer.drain()

    check = pb.HealthCheck(http=pb.HttpProbe(port=0), retries=2)
    settings = ProbeSettings(interval=10.0, timeout=2.0, retries=2, start_period=0.0, start_interval=1.0)
    async with serving(server) as port:
        check.http.port = port
        loop = ProbeLoop(check, "127.0.0.1", ProbeTracker(settings, 0.0), clock, changes.append)
        try:
            await clock.advance(9.9)
            assert changes == [], "the first probe comes one interval after the start"
            await clock.advance(0.1)
            await wait_until(lambda: len(changes) == 1)
            assert (changes[0].status, changes[0].failing_streak) == (HealthStatus.STARTING, 1)
            await clock.advance(10)
            await wait_until(lambda: len(changes) == 2)
            assert (changes[1].status, changes[1].failing_streak) == (HealthStatus.UNHEALTHY, 2)
            status[0] = "200 OK"
            await clock.advance(10)
            await wait_until(lambda: len(changes) == 3)
            assert changes[2] == Health(HealthStatus.HEALTHY, 0, f"GET http://127.0.0.1:{port}/: 200")
            await clock.advance(10)
            await clock.advance(0)
            assert len(changes) == 3, "another success is no change"
            assert loop.health.status is HealthStatus.HEALTHY
        finally:
            await loop.close()


async def test_a_probe_that_hangs_fails_after_the_timeout() -> None:
    clock = FakeClock()
    changes: list[Health] = []
    hold = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await hold.wait()

    settings = ProbeSettings(interval=1.0, timeout=0.5, retries=1, start_period=0.0, start_interval=1.0)
    async with serving(silent) as port:
        check = pb.HealthCheck(http=pb.HttpProbe(port=port))
        loop = ProbeLoop(check, "127.0.0.1", ProbeTracker(settings, 0.0), clock, changes.append)
        try:
            await clock.advance(1.0)
            await asyncio.sleep(0.05)  # the request reaches the server, which never answers
            await clock.advance(0.5)
            await wait_until(lambda: len(changes) == 1)
            assert changes[0] == Health(HealthStatus.UNHEALTHY, 1, "probe timed out after 0.5s")
        finally:
            hold.set()
            await loop.close()
