"""Benchmark: one real controller process under a simulated fleet (agent.testing.fleet) in this process.

Prints, with the machine's load beside them:
* controller CPU (share of one core, from /proc/<pid>/stat over a window) and RSS at steady state for 100, 300
  and 1,000 agents, and again with every replica of the deploy running;
* time from one apply (10 services x 1,000 replicas, one call) to every replica RUNNING as the agents see it,
  and until ListTasks agrees;
* nodes wrongly marked down meanwhile (ListNodes sampled every 0.5 s, plus the agents' own session drops and
  the controller's "node down" log lines);
* p50/p99 latency of ListTasks (one page) and ListServices, sampled during the deploy and after it;
* after 100 agents are lost at once: time until all are marked down and until their tasks run elsewhere;
* the RSS of one real idle agent process (python -m agent.main on the local Docker).

By default the controller serves mutual TLS (started with --init; this script's client and samplers use admin
credentials from `dockyard-controller admin-cert`) and every simulated agent joins with the join token and
opens its session with its own node certificate. The joins are made before each size's timings (the
controller's join rate would otherwise be timed); how long they took is printed. --insecure runs the same
against a plaintext controller, the figures before issue 8; --streams-per-channel 1 then gives each agent its
own connection as TLS must, to tell the cost of the connections from the cost of TLS.

Goals (issue 7, at 1,000 agents): steady state <= 10% of a core and <= 300 MB; 10,000 replicas running within
10 s of the apply; list calls p99 < 100 ms during the deploy; 100 lost nodes replaced within 5 s; 0 nodes
wrongly marked down. The simulated fleet runs in this process on the same cores as the controller, so the
figures are for this machine as loaded; the load average is printed with them.

Run: python bench/fleet.py [--quick] [--sizes 100,300,1000] [--services 10] [--replicas 1000] [--lose 100]
     [--insecure [--streams-per-channel N]]
Each wait has a deadline, so a run ends within a few minutes whatever the controller does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

# The script runs as a file, not as an installed package, so the repository root must be importable.
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402

from agent.link import MISSED_HEARTBEATS  # noqa: E402
from agent.testing.fleet import Drop, Fleet, FleetConfig, FleetJoin  # noqa: E402
from dockyard import pki  # noqa: E402
from dockyard.channels import open_channel  # noqa: E402
from dockyard.client import PAGE_SIZE, Client  # noqa: E402
from dockyard.spec import load_spec  # noqa: E402
from dockyard.v1 import controller_pb2 as cpb  # noqa: E402
from dockyard.v1 import controller_pb2_grpc as cpb_grpc  # noqa: E402
from dockyard.v1 import types_pb2 as pb  # noqa: E402

IMAGE = "dockyard-test:latest"
HEARTBEAT_PERIOD = 1.0
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
MB = 1 << 20
DOCKER_SOCKET = Path("/var/run/docker.sock")


def free_port() -> int:
    """Returns a loopback port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """Returns the user+system CPU seconds a process (all its threads) has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime (fields 14 and 15 of stat)


def rss_mb(pid: int) -> float:
    """Returns a process's resident set size in MB."""
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE / MB


async def cpu_share(pid: int, window: float) -> float:
    """Returns the share of one core a process used over the next `window` seconds."""
    start_cpu, start = cpu_seconds(pid), time.monotonic()
    await asyncio.sleep(window)
    return (cpu_seconds(pid) - start_cpu) / (time.monotonic() - start)


def machine() -> str:
    """Returns the load averages and core count, to print beside the figures."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


def pct(values: list[float], q: float) -> float:
    """Returns the q-quantile (0..1) of values, nearest rank; NaN when there are none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


async def until(check: Callable[[], Awaitable[bool] | bool], within: float, every: float = 0.02) -> float | None:
    """Polls check until true; returns the seconds it took, or None when `within` ran out."""
    start = time.monotonic()
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return time.monotonic() - start
        if time.monotonic() - start > within:
            return None
        await asyncio.sleep(every)


@dataclass
class Sampler:
    """Samples list-call latency and node status in the background, labelled with the current phase."""

    address: str
    sim_nodes: Callable[[], set[str]]
    credentials: pki.Credentials | None = None  # admin; None for a controller run with --insecure
    lost: set[str] = field(default_factory=set)
    phase: str = "setup"
    latencies: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    errors: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    wrongly_down: dict[str, set[str]] = field(default_factory=dict)  # phase -> node ids
    down: set[str] = field(default_factory=set)

    async def run_latency(self) -> None:
        """Calls ListTasks (one page) and ListServices in turn, 10 times a second, timing each."""
        async with open_channel(self.address, self.credentials) as channel:
            stub = cpb_grpc.ControllerServiceStub(channel)
            calls: list[tuple[str, Callable[[], Awaitable[object]]]] = [
                ("ListTasks", lambda: stub.ListTasks(cpb.ListTasksRequest(page_size=PAGE_SIZE), timeout=10)),
                ("ListServices", lambda: stub.ListServices(cpb.ListServicesRequest(), timeout=10)),
            ]
            while True:
                for name, call in calls:
                    phase = self.phase
                    start = time.monotonic()
                    try:
                        await call()
                    except grpc.aio.AioRpcError as exc:
                        self.errors.setdefault((phase, name), []).append(exc.code().name)
                    else:
                        self.latencies.setdefault((phase, name), []).append(time.monotonic() - start)
                    await asyncio.sleep(0.05)

    async def run_nodes(self, client: Client) -> None:
        """Lists nodes every 0.5 s and notes every simulated node marked down that was not lost."""
        while True:
            with contextlib.suppress(Exception):
                nodes = await client.list_nodes()
                sims = self.sim_nodes()
                self.down = {n.id for n in nodes if n.status == pb.NODE_STATUS_DOWN}
                wrong = {n for n in self.down if n in sims and n not in self.lost}
                self.wrongly_down.setdefault(self.phase, set()).update(wrong)
            await asyncio.sleep(0.5)

    def latency_line(self, phase: str) -> str:
        """Returns p50/p99 of each call sampled in a phase, with the sample count and errors."""
        parts = []
        for name in ("ListTasks", "ListServices"):
            values = self.latencies.get((phase, name), [])
            errors = self.errors.get((phase, name), [])
            text = f"{name} p50 {pct(values, 0.5) * 1000:.0f} ms p99 {pct(values, 0.99) * 1000:.0f} ms (n={len(values)}"
            if errors:
                text += f", {len(errors)} failed: {', '.join(sorted(set(errors)))}"
            parts.append(text + ")")
        return "; ".join(parts)


def spec_text(services: int, replicas: int) -> str:
    """The services of the deploy, placed only on simulated nodes (never on the real agent of the footprint)."""
    lines = ["services:"]
    for i in range(services):
        lines += [
            f"  fleet{i}:",
            f"    image: {IMAGE}",
            '    command: ["sleep", "3600"]',
            f"    replicas: {replicas}",
            "    placement: {constraints: ['engine.labels.fleet == sim']}",
        ]
    return "\n".join(lines) + "\n"


async def running_per_list(client: Client, avoid: set[str] = frozenset()) -> int:  # type: ignore[assignment]
    """Returns how many tasks ListTasks shows wanted and RUNNING on nodes not in `avoid`."""
    tasks = await client.list_tasks()
    return sum(
        1
        for t in tasks
        if t.desired_state == pb.DESIRED_STATE_RUNNING
        and t.status.state == pb.TASK_STATE_RUNNING
        and t.node_id not in avoid
    )


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


@dataclass
class BenchController:
    """A controller process this script started: where it listens, and with TLS the admin credentials and token."""

    root: Path  # root/controller is its state dir, root/admin the admin credentials
    process: subprocess.Popen[bytes]
    address: str
    join_address: str | None  # None: --insecure
    credentials: pki.Credentials | None = None
    token: str = ""
    started: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        """The controller's process id."""
        return self.process.pid

    def join(self) -> FleetJoin | None:
        """How simulated agents join it (None: plaintext)."""
        return None if self.join_address is None else FleetJoin(self.join_address, self.token)

    def tool(self, *args: str) -> str:
        """Runs a `dockyard-controller` subcommand (admin-cert, join-token) on its state dir; returns the output."""
        command = [sys.executable, "-m", "controller.main", *args, "--state-dir", str(self.root / "controller")]
        result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=60, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"dockyard-controller {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout.strip()

    async def prepare(self, within: float = 30.0) -> None:
        """Waits until it listens; with TLS then makes admin credentials and reads the join token.

        SystemExit with the end of its log when it exits or does not listen within `within` seconds.
        """
        host, port = self.address.rsplit(":", 1)

        async def listening() -> bool:
            if self.process.poll() is not None:
                return True  # judged below
            try:
                _, writer = await asyncio.open_connection(host, int(port))
            except OSError:
                return False
            writer.close()
            return True

        if await until(listening, within, every=0.1) is None or self.process.poll() is not None:
            tail = (self.root / "controller.log").read_text(errors="replace")[-1500:]
            raise SystemExit(f"the controller did not start listening on {self.address}:\n{tail}")
        if self.join_address is None:
            return
        self.tool("admin-cert", "--out", str(self.root / "admin"), "--name", "bench")
        self.credentials = pki.Credentials.load(self.root / "admin", "admin")
        self.token = self.tool("join-token")


def start_controller(
    root: Path, port: int, profile: str = "", *, insecure: bool = False, extra: tuple[str, ...] = ()
) -> BenchController:
    """Starts `python -m controller.main` on the port (TLS with --init and a join port, or --insecure), logging to
    root/controller.log, under cProfile if asked; `await prepare()` before using it.
    """
    # The stats are written when the controller exits on SIGTERM (stop_process); its CPU figures include the profiler.
    profiler = ["-m", "cProfile", "-o", profile] if profile else []
    address = f"127.0.0.1:{port}"
    join_address = None if insecure else f"127.0.0.1:{free_port()}"
    mode = ["--init", *(["--insecure"] if join_address is None else ["--join-listen", join_address])]
    command = [
        *(sys.executable, *profiler, "-m", "controller.main", *mode),
        *("--listen", address, "--state-dir", str(root / "controller")),
        *("--heartbeat-period", str(HEARTBEAT_PERIOD), *extra),
    ]
    with open(root / "controller.log", "ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=_env())
    return BenchController(root, process, address, join_address)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """Stops a child with SIGTERM, then SIGKILL after 10 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def start_agent(root: Path, controller: BenchController, hostname: str) -> subprocess.Popen[bytes]:
    """Starts one real agent (`python -m agent.main`) on the local Docker, logging to root/agent.log.

    With TLS it first joins with the token (`dockyard-agent join`), as a real host does.
    """
    state = str(root / "agent")
    agent = [sys.executable, "-m", "agent.main"]
    if controller.join_address is not None:
        joined = subprocess.run(
            [
                *agent,
                "join",
                "--token",
                controller.token,
                "--hostname",
                hostname,
                "--state-dir",
                state,
                controller.join_address,
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=_env(),
            timeout=60,
            check=False,
        )
        if joined.returncode != 0:
            raise RuntimeError(f"dockyard-agent join: {joined.stderr.strip()}")
        mode = ["--controller", controller.address]
    else:
        mode = ["--insecure", "--controller", controller.address, "--hostname", hostname]
    with open(root / "agent.log", "ab") as log:
        return subprocess.Popen(
            [*agent, *mode, "--state-dir", state, "--docker-url", f"unix://{DOCKER_SOCKET}"],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=_env(),
        )


async def agent_footprint(root: Path, controller: BenchController, client: Client) -> str:
    """Runs one real agent on the local Docker until it is READY and idle; returns its RSS (or why not)."""
    if not DOCKER_SOCKET.is_socket():  # noqa: ASYNC240 (one stat, before anything runs)
        return f"not measured: no Docker at {DOCKER_SOCKET}"
    hostname = "bench-real-agent"
    try:
        proc = start_agent(root, controller, hostname)
    except RuntimeError as exc:
        return f"not measured: {exc}"
    try:

        async def ready() -> bool:
            nodes = await client.list_nodes()
            return any(n.description.hostname == hostname and n.status == pb.NODE_STATUS_READY for n in nodes)

        took = await until(ready, within=30, every=0.1)
        if took is None:
            return "not measured: the agent did not become READY within 30 s"
        await asyncio.sleep(3.0)  # idle: a few heartbeats and one re-list done
        rss = rss_mb(proc.pid)
        return f"{rss:.1f} MB RSS idle (READY {took:.1f} s after start)"
    finally:
        stop_process(proc)
        with contextlib.suppress(Exception):
            await client.remove_node(hostname, force=True)


class FleetBench:
    """One run: a controller process, the simulated fleet, the samplers, and the lines printed so far."""

    def __init__(self, args: argparse.Namespace, root: Path, controller: BenchController) -> None:
        """Starts nothing more; `run()` does it all on the (prepared) controller."""
        self.args = args
        self.root = root
        self.controller = controller
        self.address = controller.address
        config = FleetConfig(heartbeat_period=HEARTBEAT_PERIOD, ramp=1.0, streams_per_channel=args.streams_per_channel)
        self.fleet = Fleet(self.address, config, join=controller.join())
        self.sampler = Sampler(self.address, lambda: {a.node_id for a in self.fleet.agents}, controller.credentials)
        self.total = args.services * args.replicas
        self.down_lines: dict[str, int] = {}  # phase -> the controller's "node down" lines during it
        self._down_seen = 0

    def say(self, line: str) -> None:
        """Prints one line of the report at once."""
        print(line, flush=True)

    def phase(self, name: str) -> None:
        """Starts a phase: samples from now on are counted for it, and so are the controller's "node down" lines."""
        self._count_down_lines()
        self.sampler.phase = name
        self.fleet.reset_lag()

    def _count_down_lines(self) -> None:
        count = (self.root / "controller.log").read_text(errors="replace").count("node down")
        previous = self.sampler.phase
        self.down_lines[previous] = self.down_lines.get(previous, 0) + count - self._down_seen
        self._down_seen = count

    def wrongly_down(self, phase: str) -> str:
        """Returns the nodes wrongly marked down in a phase as ListNodes saw them and as the log says."""
        sampled = len(self.sampler.wrongly_down.get(phase, set()))
        expected = self.args.lose if phase == "lose" else 0
        logged = self.down_lines.get(phase, 0) - expected
        return f"{max(0, logged)} by the controller's log ('node down' lines), {sampled} seen by ListNodes"

    async def run(self, client: Client, controller: BenchController) -> None:
        """Runs every phase in turn."""

        async def answers() -> bool:
            try:
                await client.list_nodes()
            except Exception:
                return False
            return True

        if await until(answers, within=30, every=0.1) is None:
            raise SystemExit("the controller did not answer within 30 s; see its log")
        self.say(f"agent footprint: {await agent_footprint(self.root, controller, client)}")
        for size in [int(s) for s in self.args.sizes.split(",")]:
            await self.steady(client, controller.pid, size)
        if self.args.no_deploy:
            return
        await self.deploy(client, controller.pid)
        await self.lose(client)

    async def steady(self, client: Client, pid: int, size: int) -> None:
        """Grows the fleet to `size`, waits until every node is READY, then measures the controller."""
        self.phase(f"steady {size}")
        fleet = self.fleet
        joining, retries = time.monotonic(), fleet.join_retries
        await fleet.enroll(size - len(fleet.agents))  # before the clock starts: the join rate is not timed
        if fleet.secure:
            self.say(
                f"joined {size - len(fleet.agents)} agents in {time.monotonic() - joining:.1f} s"
                f" ({fleet.join_retries - retries} joins refused for the join rate and retried)"
            )
        fleet.add(size - len(fleet.agents))
        start = time.monotonic()
        with contextlib.suppress(TimeoutError):
            await fleet.wait_connected(within=60)

        async def all_ready() -> bool:
            nodes = await client.list_nodes()
            sims = {a.node_id for a in fleet.live}
            return sum(1 for n in nodes if n.id in sims and n.status == pb.NODE_STATUS_READY) >= size

        took = await until(all_ready, within=60, every=0.25)
        ready = f"after {time.monotonic() - start:.1f} s" if took is not None else "NOT within 60 s"
        await asyncio.sleep(self.args.settle)
        own = cpu_seconds(os.getpid())
        share = await cpu_share(pid, self.args.window)
        own_share = (cpu_seconds(os.getpid()) - own) / self.args.window
        self.say(
            f"steady {size:>5} agents: controller {share * 100:5.1f}% of a core, {rss_mb(pid):6.1f} MB RSS"
            f"  (all READY {ready}; simulated fleet {own_share * 100:.0f}% of a core, {rss_mb(os.getpid()):.0f} MB"
            f" RSS; {machine()})"
        )

    async def deploy(self, client: Client, pid: int) -> None:
        """Applies every service in one call and times it until all replicas run; samples latency throughout."""
        fleet, sampler, total = self.fleet, self.sampler, self.total
        specs = load_spec(spec_text(self.args.services, self.args.replicas))
        self.phase("idle before deploy")
        await asyncio.sleep(3.0)
        self.say(f"list latency before the deploy: {sampler.latency_line('idle before deploy')}")
        self.phase("deploy")
        mark = time.monotonic()
        cpu_before = cpu_seconds(pid), cpu_seconds(os.getpid())
        await client.apply(specs)
        applied = time.monotonic() - mark
        within = self.args.deploy_within
        deployed = await until(lambda: fleet.running_count() >= total, within=within, every=0.05)
        spent = time.monotonic() - mark
        controller_share = (cpu_seconds(pid) - cpu_before[0]) / spent
        fleet_share = (cpu_seconds(os.getpid()) - cpu_before[1]) / spent
        if deployed is None:
            self.say(
                f"deploy: NOT all running within {within:g} s: {fleet.running_count()}/{total} as the agents see it"
            )
        else:
            listed = await until(lambda: _at_least(running_per_list(client), total), within=within, every=0.25)
            agrees = f"{deployed + listed:.1f} s" if listed is not None else "NOT within the deadline"
            self.say(
                f"deploy {total} replicas: apply call {applied:.2f} s; all RUNNING as the agents see it"
                f" {deployed:.1f} s after the apply ({total / deployed:.0f} tasks/s); ListTasks agrees at {agrees}"
            )
        lag, silence = fleet.max_lag, fleet.longest_silence()
        self.phase("after deploy")
        drops = fleet.drops(since=mark)
        self.say(
            f"  wrongly marked down during the deploy: {self.wrongly_down('deploy')};"
            f" agents' session drops: {len(drops)}{_reasons(drops)}; tasks running on two agents:"
            f" {len(fleet.duplicates())}; slots running on two agents {len(fleet.slots_run_twice())};"
            f" {_margin(silence, lag)}"
        )
        self.say(
            f"  until then the controller used {controller_share * 100:.0f}% of a core and this process (the"
            f" simulated fleet and the samplers) {fleet_share * 100:.0f}%"
        )
        self.say(f"  list latency during the deploy: {sampler.latency_line('deploy')}")
        await asyncio.sleep(self.args.window)
        self.say(f"  list latency after the deploy:  {sampler.latency_line('after deploy')}")
        self.phase("steady with tasks")
        share = await cpu_share(pid, self.args.window)
        self.say(
            f"steady {len(fleet.live)} agents with {fleet.running_count()} running: controller"
            f" {share * 100:.1f}% of a core, {rss_mb(pid):.1f} MB RSS ({machine()})"
        )

    async def lose(self, client: Client) -> None:
        """Loses agents that run tasks, all at once, and times until they are down and their tasks run elsewhere."""
        fleet, total, within = self.fleet, self.total, self.args.lose_within
        self.phase("lose")
        victims = [a for a in fleet.live if a.host.running()][: self.args.lose]
        lost_ids = {a.node_id for a in victims}
        lost_tasks = sum(len(a.host.running()) for a in victims)
        self.sampler.lost |= lost_ids
        mark = time.monotonic()
        fleet.lose(len(victims), among=victims)
        marked, replaced = await asyncio.gather(
            until(lambda: lost_ids <= self.sampler.down, within=within, every=0.05),
            until(lambda: fleet.running_count() >= total, within=within, every=0.05),
        )
        self.say(
            f"lose {len(victims)} agents at once ({lost_tasks} tasks): all marked down {_took(marked, within)}"
            f" (ListNodes every 0.5 s); their tasks RUNNING elsewhere {_took(replaced, within)}"
            f" ({fleet.running_count()}/{total} running)"
        )
        if replaced is not None:
            confirmed = await until(
                lambda: _at_least(running_per_list(client, avoid=lost_ids), total), within=30, every=0.25
            )
            self.say(f"  ListTasks agrees {_took(confirmed, 30)} more")
        lag, silence = fleet.max_lag, fleet.longest_silence()
        self.phase("end")
        drops = fleet.drops(since=mark)
        self.say(
            f"  wrongly marked down meanwhile: {self.wrongly_down('lose')}; other agents' session drops:"
            f" {len(drops)}{_reasons(drops)}; {_margin(silence, lag)}"
        )

    def summary(self) -> None:
        """Prints the totals over the run and the goals."""
        self._count_down_lines()
        fleet = self.fleet
        sampled = set().union(*self.sampler.wrongly_down.values()) if self.sampler.wrongly_down else set()
        logged = sum(self.down_lines.values()) - self.args.lose
        waits = [w for a in fleet.agents for w in a.welcome_waits]
        connects = [w for a in fleet.agents for w in a.connect_waits]
        self.say(
            f"whole run: nodes wrongly marked down {max(0, logged)} by the log, {len(sampled)} seen by ListNodes;"
            f" agents' reconnects {sum(a.reconnects for a in fleet.agents)}{_reasons(fleet.drops())};"
            f" connect (TCP{'' if self.args.insecure else ' + TLS handshake'}, before the hello) p50"
            f" {pct(connects, 0.5) * 1000:.0f} ms p99 {pct(connects, 0.99) * 1000:.0f} ms; hello-to-welcome p50"
            f" {pct(waits, 0.5) * 1000:.0f} ms p99 {pct(waits, 0.99) * 1000:.0f} ms"
        )
        self.say(
            "goals at 1,000 agents: steady <= 10% of a core and <= 300 MB; 10,000 running <= 10 s after the apply;"
            " list p99 < 100 ms during the deploy; 100 lost nodes' tasks running elsewhere <= 5 s; 0 wrongly down"
        )
        self.say(f"end: {machine()}")


async def bench(args: argparse.Namespace) -> None:
    """Runs the benchmark in a temporary directory (or --keep's) and stops every process it started."""
    with contextlib.ExitStack() as stack:
        if args.keep:
            root = Path(args.keep)
            root.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (before anything runs)
        else:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dy-fleet-", dir="/tmp")))
        print(f"bench/fleet.py at {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}; {machine()}", flush=True)
        mode = (
            f"plaintext (--insecure), {args.streams_per_channel} streams per connection"
            if args.insecure
            else "mutual TLS (each agent joined with the token, its own certificate and connection)"
        )
        print(
            f"{mode}; heartbeat period {HEARTBEAT_PERIOD:g} s; sizes {args.sizes}; deploy {args.services} x"
            f" {args.replicas}; lose {args.lose}",
            flush=True,
        )
        controller = start_controller(root, free_port(), args.profile, insecure=args.insecure)
        run: FleetBench | None = None
        background: list[asyncio.Task[None]] = []
        try:
            await controller.prepare()
            run = FleetBench(args, root, controller)
            async with Client(run.address, credentials=controller.credentials) as client:
                background = [
                    asyncio.create_task(run.sampler.run_nodes(client)),
                    asyncio.create_task(run.sampler.run_latency()),
                ]
                await run.run(client, controller)
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            if run is not None:
                await run.fleet.stop()
            stop_process(controller.process)
        if run is not None:
            run.summary()


def _margin(silence: float, lag: float) -> str:
    return (
        f"longest silence of the controller an agent saw {silence:.2f} s (a session ends at"
        f" {HEARTBEAT_PERIOD * MISSED_HEARTBEATS:g} s); the agents' own event loop ran up to {lag:.2f} s late"
    )


def _took(seconds: float | None, within: float) -> str:
    return f"after {seconds:.1f} s" if seconds is not None else f"NOT within {within:g} s"


async def _at_least(count: Awaitable[int], wanted: int) -> bool:
    return await count >= wanted


def _reasons(drops: list[tuple[str, Drop]]) -> str:
    if not drops:
        return ""
    reasons: dict[str, int] = {}
    for _, drop in drops:
        reason = drop.reason
        reasons[reason[:60]] = reasons.get(reason[:60], 0) + 1
    top = sorted(reasons.items(), key=lambda item: -item[1])[:3]
    return " (" + "; ".join(f"{n} x {r}" for r, n in top) + ")"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small numbers: 50,100,200 agents, 10 x 100 replicas")
    parser.add_argument("--sizes", default="100,300,1000", help="fleet sizes for the steady-state figures")
    parser.add_argument("--services", type=int, default=10)
    parser.add_argument("--replicas", type=int, default=1000, help="replicas per service")
    parser.add_argument("--lose", type=int, default=100, help="agents lost at once")
    parser.add_argument("--window", type=float, default=5.0, help="seconds of each CPU measurement")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds after the fleet is READY before measuring")
    parser.add_argument("--deploy-within", type=float, default=90.0)
    parser.add_argument("--lose-within", type=float, default=45.0)
    parser.add_argument("--no-deploy", action="store_true", help="only the steady-state figures")
    parser.add_argument("--profile", default="", help="run the controller under cProfile, writing its stats here")
    parser.add_argument("--keep", default="", help="a directory to run in and keep: the controller's and agent's logs")
    parser.add_argument("--insecure", action="store_true", help="a plaintext controller and fleet (before issue 8)")
    parser.add_argument(
        "--streams-per-channel",
        type=int,
        default=FleetConfig.streams_per_channel,
        help="plaintext only: agents per connection (TLS: one connection per agent, always)",
    )
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.replicas, args.lose, args.window, args.settle = "50,100,200", 100, 20, 2.0, 1.0
        args.deploy_within, args.lose_within = 30.0, 20.0
    asyncio.run(bench(args))


if __name__ == "__main__":
    main()
