"""Benchmark: the CPU floor of Python grpc.aio for the controller's steady state (1 heartbeat + 1 ack per agent/s).

Question (issue 7): at 1,000 agents on 1 s heartbeats the controller uses about a quarter of a core; the goal is
10%. How much of that does the transport itself cost? Each server below runs in its own process and serves
Dockyard's own AgentService.Session with its own messages (AgentMessage{heartbeat} in, ControllerMessage
{heartbeat_ack} out), so the bytes on the wire are the controller's. The clients are the simulated fleet of
agent.testing.fleet (the same agents bench/fleet.py uses: hello, heartbeats every second, a session dropped
after 3 s of silence), in this process, spread over channels as the fleet does (100 streams per channel). The
same client drives every server, so the server figures differ only by the server.

    echo          (a) one coroutine per stream: read a heartbeat, write an ack; the bare grpc.aio floor
    writer        (b) as Dockyard's dispatcher shapes it: a reader task puts the heartbeat into a per-session
                      slot and sets an asyncio.Event; a writer task waits on it, clears it and writes
    writer+stamp  (b') (b) plus the dispatcher's per-message extras: an arrival datetime kept per node, the
                      message kind read with WhichOneof, the ack stamped from the datetime (to_timestamp), and
                      each write under asyncio.timeout (the dispatcher's write-stall limit)
    half          (c) as (a), acking every second heartbeat only (half the writes)
    controller    (d) the real controller (python -m controller.main), idle: no services, no tasks
                      (and again with bench/fleet.py's samplers calling it, as its steady-state figure has them:
                      ListNodes every 0.5 s, ListTasks and ListServices 10 times a second)
    echo ...      (a) again with a gRPC knob changed (see VARIANTS), to see whether anything moves the floor, and
                      with a 2 s heartbeat period (half the messages)

By default everything speaks mutual TLS, as the controller does since issue 8: the real controller is started
with --init and the fleet joins it with the token; the bare servers serve TLS with a certificate of a throwaway
CA made here, and require client certificates of it, one per simulated agent (so each agent has its own
connection, and the variants about streams per connection change nothing). --insecure measures it all in
plaintext, as before issue 8.

For each it prints the server's share of one core over a window after warm-up (from /proc/<pid>/stat, all its
threads), split into the asyncio thread and gRPC core's own threads, this process's share (the clients), the
clients' session drops and event-loop lag (a client too busy to keep time would distort the figures), and the
machine's load. The last line gives (d)/(a).

Run: python bench/grpc_floor.py [--quick] [--insecure] [--agents 1000] [--window 10] [--only '(a),(d)']
     [--profile /tmp/floor]  (runs every server under cProfile, writing /tmp/floor.<variant>.prof; the figures
     then include the profiler's cost, so compare profiles with profiles only)
One mode takes about 15 s (connect, settle, window); the default set stays under about 3 minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

# The script runs as a file, not as an installed package, so the repository root must be importable.
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# A bare server stops gracefully (so that a profiler can write its stats); gRPC core would log an INFO line for
# every stream of every client connection that its GOAWAY reaches.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import grpc  # noqa: E402

import agent.testing.fleet as fleet_module  # noqa: E402
from agent.testing.fleet import Fleet, FleetConfig, SimIdentity  # noqa: E402
from bench.fleet import (  # noqa: E402
    HEARTBEAT_PERIOD,
    TICK,
    Sampler,
    cpu_seconds,
    free_port,
    machine,
    start_controller,
    stop_process,
)
from dockyard import pki  # noqa: E402
from dockyard.client import Client  # noqa: E402
from dockyard.timestamps import duration, to_timestamp  # noqa: E402
from dockyard.v1 import agent_pb2 as apb  # noqa: E402
from dockyard.v1 import agent_pb2_grpc as apb_grpc  # noqa: E402

# The dispatcher's write-stall limit is a few seconds; any value far above a write's duration behaves alike here.
WRITE_TIMEOUT = 30.0
Context = grpc.aio.ServicerContext[apb.AgentMessage, apb.ControllerMessage]
# The fleet reads the agent's channel options through this module-level name; a variant adds to them.
OPTIONS_NAME = "session_channel_options"
BARE_MODES = ("echo", "writer", "writer+stamp", "half")


@dataclass(frozen=True)
class Variant:
    """One thing measured: a server mode and the gRPC knobs it runs with (server and client side)."""

    label: str
    mode: str  # one of BARE_MODES, "controller" or "controller+samplers"
    env: dict[str, str] = field(default_factory=dict)  # for the server process
    server_options: tuple[tuple[str, int], ...] = ()
    client_options: tuple[tuple[str, int], ...] = ()
    streams_per_channel: int = 100
    period: float = HEARTBEAT_PERIOD  # the heartbeat period the welcome names (bare modes only)


# The knobs tried on (a). bdp_probe: gRPC core pings the peer to estimate bandwidth when data arrives; off on
# both sides. poll: the older poll(2)-based poller instead of epoll1. One channel: every stream on one
# connection (more messages per wakeup). One connection per agent: as a real fleet is, 1,000 connections.
VARIANTS: dict[str, Variant] = {
    v.label: v
    for v in (
        Variant("(a) echo", "echo"),
        Variant("(b) writer", "writer"),
        Variant("(b') writer+stamp", "writer+stamp"),
        Variant("(c) half", "half"),
        Variant("(d) controller", "controller"),
        Variant("(d) controller + fleet.py samplers", "controller+samplers"),
        Variant(
            "(a) echo + bdp_probe=0",
            "echo",
            server_options=(("grpc.http2.bdp_probe", 0),),
            client_options=(("grpc.http2.bdp_probe", 0),),
        ),
        Variant("(a) echo + GRPC_POLL_STRATEGY=poll", "echo", env={"GRPC_POLL_STRATEGY": "poll"}),
        Variant("(a) echo + 1 channel", "echo", streams_per_channel=1_000_000),
        Variant("(a) echo + 1 connection per agent", "echo", streams_per_channel=1),
        # Not a knob but the other lever: half the messages by a longer period (the fleet's silence limit grows
        # with it, as the agent's does).
        Variant("(a) echo at 2 s heartbeats", "echo", period=2.0),
        # Both levers: the agent's silence limit (3 periods, 6 s) still holds with an ack every 4 s.
        Variant("(c) half at 2 s heartbeats", "half", period=2.0),
    )
}
DEFAULT_SET = list(VARIANTS)


# ---------------------------------------------------------------------------------------------- the servers


class _Bare(apb_grpc.AgentServiceServicer):
    """AgentService.Session as the bare loops of BARE_MODES: a welcome for the hello, then acks."""

    def __init__(self, mode: str, period: float) -> None:
        self._mode = mode
        self._welcome = apb.ControllerMessage(
            welcome=apb.Welcome(node_id="n", session_id="s", heartbeat_period=duration(period))
        )
        self._last_seen: dict[str, datetime] = {}

    async def Renew(
        self, request: apb.RenewRequest, context: grpc.aio.ServicerContext[apb.RenewRequest, apb.RenewResponse]
    ) -> apb.RenewResponse:
        """Not served: the bare servers only answer sessions."""
        del request
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "a bare benchmark server renews nothing")
        raise AssertionError("unreachable")

    async def Session(self, request_iterator: object, context: Context) -> None:  # type: ignore[override]
        """Answers the hello with a welcome, then acks heartbeats the mode's way until the stream ends."""
        del request_iterator
        first = await context.read()
        if not isinstance(first, apb.AgentMessage):
            return
        await context.write(self._welcome)
        if self._mode == "echo":
            await self._echo(context, every=1)
        elif self._mode == "half":
            await self._echo(context, every=2)
        else:
            await self._reader_writer(context, first.hello.node_id, stamp=self._mode == "writer+stamp")

    async def _echo(self, context: Context, every: int) -> None:
        count = 0
        while True:
            message = await context.read()
            if not isinstance(message, apb.AgentMessage):
                return
            count += 1
            if count % every == 0:
                ack = apb.HeartbeatAck(received_at=message.heartbeat.sent_at)
                await context.write(apb.ControllerMessage(heartbeat_ack=ack))

    async def _reader_writer(self, context: Context, node_id: str, stamp: bool) -> None:
        slot: list[datetime | None] = [None]
        ready = asyncio.Event()

        async def read() -> None:
            while True:
                message = await context.read()
                if not isinstance(message, apb.AgentMessage):
                    return
                arrived = datetime.now(UTC)
                if stamp:
                    self._last_seen[node_id] = arrived
                    if message.WhichOneof("msg") != "heartbeat":
                        continue
                slot[0] = arrived
                ready.set()

        async def write() -> None:
            while True:
                await ready.wait()
                ready.clear()
                arrived, slot[0] = slot[0], None
                if arrived is None:
                    continue
                ack = apb.ControllerMessage(heartbeat_ack=apb.HeartbeatAck(received_at=to_timestamp(arrived)))
                if stamp:
                    async with asyncio.timeout(WRITE_TIMEOUT):
                        await context.write(ack)
                else:
                    await context.write(ack)

        tasks = {asyncio.create_task(read()), asyncio.create_task(write())}
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


SERVER_STEM = "server"


@dataclass(frozen=True)
class TestCa:
    """A throwaway CA for the bare servers: its directory (ca.crt, server.crt, server.key) and agent identities."""

    directory: Path
    agents: tuple[SimIdentity, ...]


def make_test_ca(directory: Path, agents: int) -> TestCa:
    """Makes a CA, a serving certificate for loopback and one client certificate per agent."""
    now = dt.datetime.now(dt.UTC)
    lifetime = dt.timedelta(days=1)
    ca = pki.Authority(pki.create_ca("grpc-floor", now))
    server = ca.issue(pki.ROLE_CONTROLLER, pki.ROLE_CONTROLLER, now, lifetime, addresses=("127.0.0.1",))
    pki.Credentials(ca.ca_pem, server).save(directory, SERVER_STEM)
    identities = []
    for index in range(agents):
        name = f"floor-{index:05d}"
        credentials = pki.Credentials(ca.ca_pem, ca.issue(pki.ROLE_AGENT, name, now, lifetime))
        identities.append(SimIdentity(name, name, credentials))
    return TestCa(directory, tuple(identities))


async def serve(mode: str, port: int, period: float, options: Sequence[tuple[str, int]], tls: str) -> None:
    """Serves one bare mode on the port until killed (mutual TLS with tls's certificates, if given); prints
    "ready" once it listens.
    """
    # As the controller does: no SO_REUSEPORT.
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0), *options])
    apb_grpc.add_AgentServiceServicer_to_server(_Bare(mode, period), server)
    if tls:
        own = pki.Credentials.load(Path(tls), SERVER_STEM)
        credentials = grpc.ssl_server_credentials(
            [(own.pair.key_pem, own.pair.cert_pem)], root_certificates=own.ca_pem, require_client_auth=True
        )
        server.add_secure_port(f"127.0.0.1:{port}", credentials)
    else:
        server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    # SIGTERM ends the process cleanly, so that a profiler running it writes its stats.
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await server.stop(None)


# ------------------------------------------------------------------------------------------------ measuring


def thread_split(pid: int) -> tuple[float, float]:
    """Returns (CPU seconds of the main thread, CPU seconds of all other threads) of a process."""
    main = other = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            used = (int(fields[11]) + int(fields[12])) / TICK
            if task.name == str(pid):
                main += used
            else:
                other += used
    return main, other


@dataclass
class Row:
    """What one variant measured."""

    label: str
    server: float = float("nan")  # share of one core
    main_thread: float = float("nan")
    core_threads: float = float("nan")
    client: float = float("nan")
    drops: int = 0
    lag: float = 0.0
    note: str = ""
    load: str = ""


def profile_path(prefix: str, variant: Variant) -> str:
    """Returns where the variant's server writes its cProfile stats: empty (no profiling) when prefix is."""
    if not prefix:
        return ""
    tag = "".join(c if c.isalnum() else "-" for c in variant.label).strip("-")
    return f"{prefix}.{tag}.prof"


def start_bare(variant: Variant, port: int, profile: str, log: Path, tls: TestCa | None) -> subprocess.Popen[bytes]:
    """Starts this script as a bare server of the variant's mode (under cProfile if asked); returns once it listens."""
    options = ",".join(f"{k}={v}" for k, v in variant.server_options)
    env = {**os.environ, **variant.env, "PYTHONPATH": str(ROOT)}
    # As the controller's, the stats are written when the server exits on SIGTERM (stop_process).
    profiler = ["-m", "cProfile", "-o", profile] if profile else []
    command = [
        sys.executable,
        *profiler,
        __file__,
        *("--serve", variant.mode, "--port", str(port), "--period", str(variant.period)),
        *("--server-options", options),
        *(("--tls", str(tls.directory)) if tls is not None else ()),
    ]
    # Its stderr goes to a file: on SIGTERM gRPC prints a traceback for every stream it cancels.
    with log.open("ab") as errors:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, env=env, cwd=ROOT)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != b"ready":
        stop_process(proc)
        raise SystemExit(f"the {variant.mode} server did not start:\n{log.read_text(errors='replace')[-2000:]}")
    return proc


async def measure(variant: Variant, args: argparse.Namespace, root: Path, tls: TestCa | None) -> Row:
    """Starts the variant's server, connects the fleet, waits, and measures both sides over the window."""
    port = free_port()
    controller = None
    if variant.mode.startswith("controller"):
        state = root / f"controller-{port}"
        state.mkdir()
        controller = start_controller(state, port, profile_path(args.profile, variant), insecure=args.insecure)
        proc = controller.process
    else:
        proc = start_bare(variant, port, profile_path(args.profile, variant), root / f"server-{port}.log", tls)
    base_options = getattr(fleet_module, OPTIONS_NAME)

    def options(connect_timeout: float) -> list[tuple[str, int]]:
        return [*base_options(connect_timeout), *variant.client_options]

    setattr(fleet_module, OPTIONS_NAME, options)
    row = Row(variant.label)
    config = FleetConfig(heartbeat_period=HEARTBEAT_PERIOD, ramp=1.0, streams_per_channel=variant.streams_per_channel)
    fleet: Fleet | None = None
    samplers: list[asyncio.Task[None]] = []
    stack = contextlib.AsyncExitStack()
    try:
        if controller is not None:
            await controller.prepare()
            fleet = Fleet(f"127.0.0.1:{port}", config, join=controller.join())
            await fleet.enroll(args.agents)  # the joins are not what is measured
        else:
            fleet = Fleet(f"127.0.0.1:{port}", config)
            if tls is not None:
                fleet.adopt(tls.agents[: args.agents])
        fleet.add(args.agents)
        try:
            await fleet.wait_connected(within=60)
        except TimeoutError:
            row.note = f"only {fleet.connected()}/{args.agents} connected within 60 s; "
        if variant.mode == "controller+samplers":
            assert controller is not None
            client = await stack.enter_async_context(Client(f"127.0.0.1:{port}", credentials=controller.credentials))
            agents = fleet.agents
            sampler = Sampler(f"127.0.0.1:{port}", lambda: {a.node_id for a in agents}, controller.credentials)
            samplers = [asyncio.create_task(sampler.run_nodes(client)), asyncio.create_task(sampler.run_latency())]
        await asyncio.sleep(args.settle)
        await _window(row, proc.pid, fleet, args.window)
    finally:
        for task in samplers:
            task.cancel()
        await asyncio.gather(*samplers, return_exceptions=True)
        await stack.aclose()
        if fleet is not None:
            await fleet.stop()
        setattr(fleet_module, OPTIONS_NAME, base_options)
        stop_process(proc)
    return row


async def _window(row: Row, pid: int, fleet: Fleet, window: float) -> None:
    """Measures the server (pid) and this process over the window into row."""
    fleet.reset_lag()
    mark = time.monotonic()
    server0, own0, split0 = cpu_seconds(pid), cpu_seconds(os.getpid()), thread_split(pid)
    await asyncio.sleep(window)
    spent = time.monotonic() - mark
    split1 = thread_split(pid)
    row.server = (cpu_seconds(pid) - server0) / spent
    row.client = (cpu_seconds(os.getpid()) - own0) / spent
    row.main_thread = (split1[0] - split0[0]) / spent
    row.core_threads = (split1[1] - split0[1]) / spent
    row.drops = len(fleet.drops(since=mark))
    row.lag = fleet.max_lag
    row.load = machine()


def table(rows: list[Row]) -> list[str]:
    """Returns the report lines: one per variant, then the ratio of the controller to the bare echo."""
    lines = [
        f"{'variant':<36} {'server':>7} {'asyncio':>8} {'core thr':>8} {'clients':>8} {'drops':>5} {'lag s':>6}  load",
        f"{'':<36} {'% core':>7} {'thread':>8} {'eads':>8} {'% core':>8}",
    ]
    for r in rows:
        lines.append(
            f"{r.label:<36} {r.server * 100:6.1f}% {r.main_thread * 100:7.1f}% {r.core_threads * 100:7.1f}%"
            f" {r.client * 100:7.1f}% {r.drops:5d} {r.lag:6.2f}  {r.load} {r.note}"
        )
    by_label = {r.label: r for r in rows}
    echo, controller = by_label.get("(a) echo"), by_label.get("(d) controller")
    if echo is not None and controller is not None and echo.server > 0:
        lines.append(
            f"(d)/(a): {controller.server / echo.server:.2f}; controller above the bare floor:"
            f" {(controller.server - echo.server) * 100:.1f} points of a core"
        )
    return lines


async def bench(args: argparse.Namespace) -> None:
    """Runs every chosen variant in turn and prints the table."""
    labels = [label for label in DEFAULT_SET if label in args.only] if args.only else DEFAULT_SET
    print(f"bench/grpc_floor.py at {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC; grpcio {grpc.__version__}", flush=True)
    print(
        f"{args.agents} agents, a heartbeat a second each unless the label says otherwise;"
        f" {'plaintext (--insecure)' if args.insecure else 'mutual TLS, one connection per agent'};"
        f" window {args.window:g} s after {args.settle:g} s; {machine()}"
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="dockyard-grpc-floor-") as tmp:
        tls = None
        if not args.insecure and any(not VARIANTS[label].mode.startswith("controller") for label in labels):
            tls = make_test_ca(Path(tmp) / "ca", args.agents)
        for label in labels:
            row = await measure(VARIANTS[label], args, Path(tmp), tls)
            print(f"  measured {label}: server {row.server * 100:.1f}% of a core", flush=True)
            rows.append(row)
    print("\n".join(table(rows)))
    print(f"end: {machine()}")


def main() -> None:
    """Parses the arguments and runs the benchmark, or one bare server (--serve, used by the benchmark itself)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="200 agents, shorter windows")
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--window", type=float, default=10.0, help="seconds of each CPU measurement")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds after all connect before measuring")
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated labels or their leading (x) tags, e.g. '(a),(d)'; default: all: "
        + "; ".join(DEFAULT_SET),
    )
    parser.add_argument("--profile", default="", help="run each server under cProfile, writing PROFILE.<variant>.prof")
    parser.add_argument("--serve", choices=BARE_MODES, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--server-options", default="", help=argparse.SUPPRESS)
    parser.add_argument("--period", type=float, default=HEARTBEAT_PERIOD, help=argparse.SUPPRESS)
    parser.add_argument("--tls", default="", help=argparse.SUPPRESS)
    parser.add_argument("--insecure", action="store_true", help="plaintext everywhere (the figures before issue 8)")
    args = parser.parse_args()
    if args.serve:
        options = [(k, int(v)) for k, v in (o.split("=") for o in args.server_options.split(",") if o)]
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(args.serve, args.port, args.period, options, args.tls))
        return
    if args.quick:
        args.agents, args.window, args.settle = 200, 4.0, 2.0
    if args.only:
        wanted = [w.strip() for w in args.only.split(",") if w.strip()]
        args.only = {label for label in DEFAULT_SET for w in wanted if label == w or label.split(" ", 1)[0] == w}
        if not args.only:
            raise SystemExit(f"--only matches nothing; the labels are: {'; '.join(DEFAULT_SET)}")
    asyncio.run(bench(args))


if __name__ == "__main__":
    main()
