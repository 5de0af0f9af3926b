"""Benchmark: the public API's latency while a flood of silent sessions and garbage connections hits the controller.

A real controller (`python -m controller.main`, TLS with --init by default, --insecure for plaintext) serves a
few services. This process times GetService and ListServices calls (one at a time, back to back, admin
credentials) in three phases of equal length: before the flood (the baseline), during it, and after it (once
the hello timeout has ended the flood's sessions). The flood runs in a child process, so the timing client
shares no event loop with it:

    sessions  --sessions streams (200) that open AgentService.Session and never send a hello, each re-opened
              as soon as the controller ends it (after its hello timeout, HELLO_TIMEOUT_SECONDS). With TLS
              they present a joined node's certificate: only an agent, or a thief of its certificate, can
              open sessions.
    garbage   --garbage loops (50), each connecting again and again and sending 512 random bytes.
    silent    --silent sockets (100) that connect and send nothing until the controller closes them.

It prints, per call, the median and 95th percentile of each phase and the flood/baseline ratios, and the
controller's resident memory (VmRSS) at the end of each phase.
Run: python bench/flood.py [--seconds 10] [--sessions 200] [--garbage 50] [--silent 100] [--insecure]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

# The script runs as a file, not as an installed package, so the repository root must be importable.
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402

from agent.identity import join, load_credentials  # noqa: E402
from bench.fleet import cpu_seconds, free_port, machine, pct, start_controller, stop_process  # noqa: E402
from dockyard import pki  # noqa: E402
from dockyard.channels import open_channel  # noqa: E402
from dockyard.limits import HELLO_TIMEOUT_SECONDS  # noqa: E402
from dockyard.v1 import controller_pb2 as cpb  # noqa: E402
from dockyard.v1 import controller_pb2_grpc as cpb_grpc  # noqa: E402
from dockyard.v1 import types_pb2 as pb  # noqa: E402

SESSION = "/dockyard.v1.AgentService/Session"
STREAMS_PER_CHANNEL = 50
# Each flood channel gets its own connection (channels of one process share one by default), as separate peers.
OWN_CONNECTION = (("grpc.use_local_subchannel_pool", 1),)
# The flood gets this long to reach its size before the timing starts.
RAMP_SECONDS = 2.0
# After the flood: longer than the controller's hello timeout (10 s), so every flood session has been ended.
SETTLE_SECONDS = HELLO_TIMEOUT_SECONDS + 2.0


def _identity(data: bytes) -> bytes:
    return data


async def silent_sessions(address: str, credentials: pki.Credentials | None, count: int) -> None:
    """Keeps `count` sessions open that never say hello, re-opening each as soon as it ends."""
    channels = [open_channel(address, credentials, OWN_CONNECTION) for _ in range(-(-count // STREAMS_PER_CHANNEL))]

    async def one(channel: grpc.aio.Channel) -> None:
        session = channel.stream_stream(SESSION, request_serializer=_identity, response_deserializer=_identity)
        while True:
            await session(timeout=60).code()

    await asyncio.gather(*(one(channels[i // STREAMS_PER_CHANNEL]) for i in range(count)))


async def garbage(host: str, port: int, loops: int) -> None:
    """Runs `loops` loops that connect, send 512 random bytes and read until the controller hangs up."""

    async def loop() -> None:
        while True:
            with contextlib.suppress(OSError):
                reader, writer = await asyncio.open_connection(host, port)
                writer.write(os.urandom(512))
                with contextlib.suppress(OSError):
                    await writer.drain()
                    while await reader.read(4096):
                        pass
                writer.close()

    await asyncio.gather(*(loop() for _ in range(loops)))


async def silent_sockets(host: str, port: int, count: int) -> None:
    """Keeps `count` sockets connected that send nothing, re-connecting each once the controller closes it."""

    async def one() -> None:
        while True:
            with contextlib.suppress(OSError):
                reader, writer = await asyncio.open_connection(host, port)
                await reader.read()
                writer.close()

    await asyncio.gather(*(one() for _ in range(count)))


async def flood(args: argparse.Namespace) -> None:
    """The child process: every kind of flood at once, until killed."""
    credentials = load_credentials(Path(args.node_dir)) if args.node_dir else None
    host, port = args.address.rsplit(":", 1)
    await asyncio.gather(
        silent_sessions(args.address, credentials, args.sessions),
        garbage(host, int(port), args.garbage),
        silent_sockets(host, int(port), args.silent),
    )


async def probe(address: str, credentials: pki.Credentials | None, seconds: float) -> dict[str, list[float]]:
    """Times GetService and ListServices, alternating, back to back for `seconds`; returns each one's latencies."""
    times: dict[str, list[float]] = {"GetService": [], "ListServices": []}
    async with open_channel(address, credentials) as channel:
        stub = cpb_grpc.ControllerServiceStub(channel)
        calls = {
            "GetService": lambda: stub.GetService(cpb.GetServiceRequest(name="svc-3"), timeout=10),
            "ListServices": lambda: stub.ListServices(cpb.ListServicesRequest(), timeout=10),
        }
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for name, call in calls.items():
                start = time.perf_counter()
                await call()
                times[name].append(time.perf_counter() - start)
    return times


def rss_mib(pid: int) -> float:
    """The resident memory of a process in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def seed(address: str, credentials: pki.Credentials | None) -> None:
    """Applies ten small services, so ListServices has a page to send."""
    async with open_channel(address, credentials) as channel:
        specs = [pb.ServiceSpec(name=f"svc-{i}", image="nginx:1", replicas=0) for i in range(10)]
        await cpb_grpc.ControllerServiceStub(channel).ApplyService(cpb.ApplyServiceRequest(services=specs), timeout=30)


def summary(name: str, phases: dict[str, dict[str, list[float]]]) -> str:
    """One line per call: median and p95 of each phase in ms, and the flood/baseline ratios."""
    base, during, after = (phases[p][name] for p in ("baseline", "flood", "after"))
    p50 = [statistics.median(t) * 1000 for t in (base, during, after)]
    p95 = [pct(t, 0.95) * 1000 for t in (base, during, after)]
    return (
        f"{name}: calls {len(base)}/{len(during)}/{len(after)}; median ms {p50[0]:.2f} / {p50[1]:.2f} / {p50[2]:.2f}; "
        f"p95 ms {p95[0]:.2f} / {p95[1]:.2f} / {p95[2]:.2f}; flood/baseline median {p50[1] / p50[0]:.2f}, "
        f"p95 {p95[1] / p95[0]:.2f}"
    )


async def run(args: argparse.Namespace, root: Path) -> None:
    """Starts the controller, measures the three phases, prints the figures."""
    controller = start_controller(root, free_port(), insecure=args.insecure)
    worker: asyncio.subprocess.Process | None = None
    try:
        await controller.prepare()
        credentials = controller.credentials
        node_dir = ""
        if controller.join_address is not None:
            await join(root / "node", controller.join_address, controller.token, "flood-host")
            node_dir = str(root / "node")
        await seed(controller.address, credentials)
        phases: dict[str, dict[str, list[float]]] = {}
        memory: dict[str, float] = {"start": rss_mib(controller.pid)}
        cpu: dict[str, float] = {}

        async def phase(name: str) -> None:
            used = cpu_seconds(controller.pid)
            phases[name] = await probe(controller.address, credentials, args.seconds)
            cpu[name] = (cpu_seconds(controller.pid) - used) / args.seconds
            memory[name] = rss_mib(controller.pid)

        await phase("baseline")
        command = [sys.executable, __file__, "--flood-worker", controller.address, "--node-dir", node_dir]
        command += ["--sessions", str(args.sessions), "--garbage", str(args.garbage), "--silent", str(args.silent)]
        worker = await asyncio.create_subprocess_exec(
            *command, cwd=ROOT, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        await asyncio.sleep(RAMP_SECONDS)
        flood_cpu = cpu_seconds(worker.pid)
        await phase("flood")
        flood_cpu = (cpu_seconds(worker.pid) - flood_cpu) / args.seconds
        worker.kill()
        await worker.wait()
        worker = None
        await asyncio.sleep(SETTLE_SECONDS)
        await phase("after")
    finally:
        if worker is not None:
            worker.kill()
            await worker.wait()
        stop_process(controller.process)
    mode = "plaintext (--insecure)" if args.insecure else "mutual TLS"
    print(f"{mode}; flood: {args.sessions} silent sessions, {args.garbage} garbage loops, {args.silent} silent sockets")
    print(f"phases of {args.seconds:g} s: baseline / flood / after; at the end: {machine()}")
    for name in ("GetService", "ListServices"):
        print(summary(name, phases))
    print("controller VmRSS MiB: " + ", ".join(f"{name} {mib:.1f}" for name, mib in memory.items()))
    print("controller CPU (share of one core): " + ", ".join(f"{name} {share:.2f}" for name, share in cpu.items()))
    print(f"flood process CPU during the flood: {flood_cpu:.2f} of one core (on the same machine)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--garbage", type=int, default=50)
    parser.add_argument("--silent", type=int, default=100)
    parser.add_argument("--insecure", action="store_true", help="a plaintext controller (before issue 8)")
    parser.add_argument("--flood-worker", metavar="ADDRESS", help=argparse.SUPPRESS)
    parser.add_argument("--node-dir", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.flood_worker:
        args.address = args.flood_worker
        asyncio.run(flood(args))
        return
    print(f"at the start: {machine()}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="dockyard-flood-") as tmp:
        asyncio.run(run(args, Path(tmp)))


if __name__ == "__main__":
    main()
