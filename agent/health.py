"""Health checks: how a spec's healthcheck reaches Docker, and the agent's own HTTP and TCP prober.

A `test` check (and the image's own HEALTHCHECK) runs inside Docker; `docker_healthcheck` turns the spec's
block into the create config. An `http` or `tcp` check is probed by the agent from the host to the
container's address, with Docker's rules (`ProbeTracker`, pure): the first probe one interval after the
start, `start_interval` between probes while the container is starting inside `start_period`, failures
inside `start_period` do not count while it is still starting, `retries` failures in a row make it
unhealthy, one success makes it healthy again. `task_health` is what a status report carries.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass

from google.protobuf.duration_pb2 import Duration

from agent.runtime.base import Health, HealthConfig, HealthStatus
from dockyard.clock import Clock
from dockyard.limits import HEALTH_OUTPUT_BYTES
from dockyard.spec import schema
from dockyard.v1 import types_pb2 as pb

_NANOS = 1_000_000_000
# What an HTTP probe reads of the answer after its status line (headers and the start of the body).
_HTTP_READ_BYTES = 4096
_HTTP_STATUS_LINE_BYTES = 1024

_TASK_HEALTH = {
    HealthStatus.STARTING: pb.TaskHealth.STATE_STARTING,
    HealthStatus.HEALTHY: pb.TaskHealth.STATE_HEALTHY,
    HealthStatus.UNHEALTHY: pb.TaskHealth.STATE_UNHEALTHY,
}


@dataclass(frozen=True)
class ProbeSettings:
    """A check's timing in seconds, defaults filled in from the spec table."""

    interval: float
    timeout: float
    retries: int
    start_period: float
    start_interval: float


def probe_settings(check: pb.HealthCheck) -> ProbeSettings:
    """Returns the check's timing with the spec table's defaults for unset fields."""

    def nanos(value: Duration, present: bool, default: int) -> float:
        return (value.ToNanoseconds() if present else default) / _NANOS

    return ProbeSettings(
        interval=nanos(check.interval, check.HasField("interval"), schema.HEALTH_INTERVAL.default),
        timeout=nanos(check.timeout, check.HasField("timeout"), schema.HEALTH_TIMEOUT.default),
        retries=check.retries if check.HasField("retries") else schema.HEALTH_RETRIES.default,
        start_period=nanos(check.start_period, check.HasField("start_period"), schema.HEALTH_START_PERIOD.default),
        start_interval=nanos(
            check.start_interval, check.HasField("start_interval"), schema.HEALTH_START_INTERVAL.default
        ),
    )


def agent_probed(spec: pb.ServiceSpec) -> bool:
    """Tells whether the agent probes this spec's containers itself (an http or tcp check)."""
    return spec.HasField("healthcheck") and (spec.healthcheck.HasField("http") or spec.healthcheck.HasField("tcp"))


def docker_healthcheck(spec: pb.ServiceSpec) -> HealthConfig | None:
    """The Healthcheck to create the container with; None leaves the image's own HEALTHCHECK in force.

    A `test` check goes to Docker with the spec's timing (defaults filled in, so Compose's defaults hold
    whatever Docker's are). An http or tcp check turns the image's own check off: the agent's probe is the
    one health of the task. A block with timing only keeps the image's test with the block's timing.
    """
    if not spec.HasField("healthcheck"):
        return None
    check = spec.healthcheck
    if agent_probed(spec):
        return HealthConfig(test=("NONE",))
    if tuple(check.test[:1]) == ("NONE",):
        return HealthConfig(test=("NONE",))
    timing = probe_settings(check)
    return HealthConfig(
        test=tuple(check.test),  # empty: Docker keeps the image's test and takes this timing
        interval_ns=round(timing.interval * _NANOS),
        timeout_ns=round(timing.timeout * _NANOS),
        retries=timing.retries,
        start_period_ns=round(timing.start_period * _NANOS),
        start_interval_ns=round(timing.start_interval * _NANOS),
    )


def shorten(output: str) -> str:
    """Cuts a probe's output to what a status report may carry (limits.HEALTH_OUTPUT_BYTES of UTF-8)."""
    data = output.encode()
    if len(data) <= HEALTH_OUTPUT_BYTES:
        return output
    return data[:HEALTH_OUTPUT_BYTES].decode(errors="ignore")


def task_health(health: Health) -> pb.TaskHealth:
    """The TaskHealth a status report carries for a container's health."""
    return pb.TaskHealth(
        state=_TASK_HEALTH[health.status],
        output=shorten(health.output),
        failing_streak=health.failing_streak,
    )


class ProbeTracker:
    """Docker's health rules over probe results (pure: the caller passes monotonic times in)."""

    def __init__(self, settings: ProbeSettings, start_period_ends: float, initial: Health | None = None) -> None:
        """Tracks a container whose start period ends at monotonic `start_period_ends`, starting at `initial`."""
        self.settings = settings
        self._start_period_ends = start_period_ends
        self.health = initial or Health(HealthStatus.STARTING)

    def next_delay(self, now: float) -> float:
        """Seconds until the next probe: the start interval while starting inside the start period."""
        if self.health.status is HealthStatus.STARTING and now < self._start_period_ends:
            return min(self.settings.start_interval, self.settings.interval)
        return self.settings.interval

    def record(self, ok: bool, output: str, started: float) -> Health:
        """Takes the result of a probe begun at `started` and returns the health it leaves."""
        if ok:
            self.health = Health(HealthStatus.HEALTHY, 0, output)
        elif self.health.status is HealthStatus.STARTING and started < self._start_period_ends:
            # Failures while still starting inside the start period do not count, as in Docker.
            self.health = Health(HealthStatus.STARTING, self.health.failing_streak, output)
        else:
            streak = self.health.failing_streak + 1
            status = HealthStatus.UNHEALTHY if streak >= self.settings.retries else self.health.status
            self.health = Health(status, streak, output)
        return self.health


def _reason(exc: Exception) -> str:
    """A failed connection's reason in words ("Connection refused"), not asyncio's wrapping of it."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return os.strerror(exc.errno)
    if isinstance(exc, asyncio.IncompleteReadError):
        return "the connection closed before an answer"
    return str(exc) or type(exc).__name__


async def probe_tcp(address: str, port: int) -> tuple[bool, str]:
    """Connects to address:port and closes at once; the caller bounds the time."""
    try:
        _, writer = await asyncio.open_connection(address, port)
    except OSError as exc:
        return False, f"tcp connect to {address}:{port} failed: {_reason(exc)}"
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True, f"tcp connect to {address}:{port} succeeded"


async def probe_http(address: str, probe: pb.HttpProbe) -> tuple[bool, str]:
    """Sends one HTTP/1.1 GET and judges the status line; the output names the status and the body's start."""
    path = probe.path or schema.HEALTH_HTTP_PATH.default
    target = f"http://{address}:{probe.port}{path}"
    try:
        # The limit bounds what readuntil buffers while looking for the end of the status line.
        reader, writer = await asyncio.open_connection(address, probe.port, limit=_HTTP_READ_BYTES)
    except OSError as exc:
        return False, f"GET {target} failed: {_reason(exc)}"
    try:
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {address}:{probe.port}\r\nUser-Agent: dockyard-agent\r\n"
            "Accept: */*\r\nConnection: close\r\n\r\n"
        )
        writer.write(request.encode())
        await writer.drain()
        status_line = await reader.readuntil(b"\n")
        body = b""
        with contextlib.suppress(OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            # The status decides; the body only adds to the output, and a server that hangs up (or keeps
            # the connection open) after its status line has still answered.
            body = await _start_of_body(reader)
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
        return False, f"GET {target} failed: {_reason(exc)}"
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    parts = status_line[:_HTTP_STATUS_LINE_BYTES].decode(errors="replace").split(None, 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        return False, f"GET {target}: not an HTTP answer: {status_line[:80]!r}"
    code = int(parts[1])
    ok = code == probe.status if probe.status else 200 <= code < 400
    text = body.decode(errors="replace").strip()
    output = f"GET {target}: {code}" + (f" {text}" if text else "")
    return ok, output


async def _start_of_body(reader: asyncio.StreamReader) -> bytes:
    """Reads the headers and at most _HTTP_READ_BYTES of a body whose Content-Length is given; a body of
    unknown length (chunked, or until the server closes) is not read: the server may keep it open."""
    headers = await reader.readuntil(b"\r\n\r\n")
    length: int | None = None
    for line in headers.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            length = int(value.strip())
    if length is None:
        return b""
    try:
        return await reader.readexactly(min(length, _HTTP_READ_BYTES))
    except asyncio.IncompleteReadError as exc:
        return exc.partial


class ProbeLoop:
    """Probes one container from the host until cancelled, calling `changed` when its health state or streak moves."""

    def __init__(
        self,
        check: pb.HealthCheck,
        address: str,
        tracker: ProbeTracker,
        clock: Clock,
        changed: Callable[[Health], None],
    ) -> None:
        """Starts probing `address` at once (the first probe one interval later)."""
        self.address = address
        self._check = check
        self._tracker = tracker
        self._clock = clock
        self._changed = changed
        self._task = asyncio.create_task(self._run(), name=f"probe-{address}")

    @property
    def health(self) -> Health:
        """The container's health as last probed."""
        return self._tracker.health

    async def _run(self) -> None:
        while True:
            await self._clock.sleep(self._tracker.next_delay(self._clock.monotonic()))
            started = self._clock.monotonic()
            ok, output = await self.probe_once()
            before = self._tracker.health
            after = self._tracker.record(ok, output, started)
            if (before.status, before.failing_streak) != (after.status, after.failing_streak):
                self._changed(after)

    async def probe_once(self) -> tuple[bool, str]:
        """One probe within the check's timeout."""
        timeout = self._tracker.settings.timeout
        try:
            async with self._clock.timeout(timeout):
                if self._check.HasField("http"):
                    return await probe_http(self.address, self._check.http)
                return await probe_tcp(self.address, self._check.tcp.port)
        except TimeoutError:
            return False, f"probe timed out after {timeout:g}s"

    def close_soon(self) -> None:
        """Stops probing without waiting for the probe in flight to end."""
        self._task.cancel()

    async def close(self) -> None:
        """Stops probing."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
