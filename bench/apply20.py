"""Benchmark: deploy 20 replicas with `dockyard apply` against creating and starting them straight on Docker.

Both run in the same process and alternate, so machine noise hits both alike; the figure that matters is
the ratio of medians (goal: at most 1.05; it was 1.09 to 1.18 while `apply` polled every 100 ms instead of
waiting on Watch).

The cluster is a controller and one agent on the local Docker, started here as on a real host: by default a new
TLS cluster (--init), admin credentials from `dockyard-controller admin-cert` for the CLI, and the agent joined
with the token; --insecure starts both in plaintext instead (before issue 8), to compare.
(`dockyard up` would do the TLS setup too, but it always takes the join port 7466, which another run may hold.)
Run: python bench/apply20.py [--replicas 20] [--rounds 5] [--insecure]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

# The script runs as a file, not as an installed package, so the repository root must be importable.
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.runtime.base import ContainerSpec  # noqa: E402
from agent.runtime.docker import DockerRuntime  # noqa: E402
from bench.fleet import BenchController, free_port, machine, start_agent, start_controller, stop_process, until  # noqa: E402
from dockyard.client import Client  # noqa: E402
from dockyard.v1 import types_pb2 as pb  # noqa: E402

IMAGE = "dockyard-test:latest"
BENCH_LABEL = "dockyard.bench"
GOAL_RATIO = 1.05


def spec_text(replicas: int) -> str:
    """The service spec the Dockyard side deploys."""
    return (
        "services:\n"
        "  bench:\n"
        f"    image: {IMAGE}\n"
        '    command: ["sleep", "3600"]\n'
        f"    replicas: {replicas}\n"
        "    stop_grace_period: 0s\n"
    )


async def direct(replicas: int) -> float:
    """Creates and starts the containers concurrently through the Docker adapter; returns seconds."""
    runtime = DockerRuntime()
    run = uuid.uuid4().hex[:8]
    try:
        started = time.perf_counter()

        async def one(slot: int) -> None:
            cid = await runtime.create(
                ContainerSpec(
                    name=f"bench-direct-{run}-{slot}",
                    image=IMAGE,
                    command=("sleep", "3600"),
                    labels={BENCH_LABEL: run},
                )
            )
            await runtime.start(cid)

        await asyncio.gather(*(one(slot) for slot in range(replicas)))
        elapsed = time.perf_counter() - started
        for info in await runtime.list({BENCH_LABEL: run}):
            await runtime.remove(info.id)
        return elapsed
    finally:
        await runtime.close()


def cli_call(env: dict[str, str]) -> float:
    """Runs `dockyard nodes` once (start, connect, one call, exit); returns seconds: the fixed cost in each apply."""
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "dockyard.cli.main", "nodes", "-o", "json"], env=env, check=True, capture_output=True
    )
    return time.perf_counter() - started


async def fresh_calls(controller: BenchController, count: int) -> float:
    """Returns the median seconds of one ListNodes on a new connection (TCP, the TLS handshake if any, the call)."""
    took = []
    for _ in range(count):
        started = time.perf_counter()
        async with Client(controller.address, credentials=controller.credentials) as client:
            await client.list_nodes()
        took.append(time.perf_counter() - started)
    return statistics.median(took)


def dockyard(env: dict[str, str], spec: Path) -> float:
    """Runs `dockyard apply` (which waits until every task runs), then removes the service; returns seconds."""
    cli = [sys.executable, "-m", "dockyard.cli.main"]
    started = time.perf_counter()
    subprocess.run([*cli, "apply", "-f", str(spec), "-o", "json"], env=env, check=True, capture_output=True)
    elapsed = time.perf_counter() - started
    subprocess.run([*cli, "rm", "bench"], env=env, check=True, capture_output=True)
    return elapsed


async def start_cluster(root: Path, insecure: bool) -> tuple[BenchController, subprocess.Popen[bytes]]:
    """Starts the controller and the local agent (joined, with TLS) and returns once the node is READY."""
    controller = start_controller(root, free_port(), insecure=insecure)
    await controller.prepare()
    agent = start_agent(root, controller, "bench-apply20")
    async with Client(controller.address, credentials=controller.credentials) as client:

        async def ready() -> bool:
            return any(n.status == pb.NODE_STATUS_READY for n in await client.list_nodes())

        if await until(ready, within=60, every=0.1) is None:
            raise SystemExit(f"the agent did not become READY within 60 s; see {root}/agent.log")
    return controller, agent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--replicas", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--insecure", action="store_true", help="a plaintext controller and agent (before issue 8)")
    args = parser.parse_args()
    mode = "plaintext (--insecure)" if args.insecure else "mutual TLS"
    print(f"{mode}; {machine()}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="dockyard-bench-") as tmp:
        state = Path(tmp)
        controller, agent = asyncio.run(start_cluster(state, args.insecure))
        env = {**os.environ, "XDG_CONFIG_HOME": str(state / "config"), "DOCKYARD_CONTROLLER": controller.address}
        if controller.credentials is not None:
            env["DOCKYARD_CREDENTIALS"] = str(state / "admin")
        spec = state / "bench.yaml"
        spec.write_text(spec_text(args.replicas))
        try:
            asyncio.run(direct(2))  # warm Docker's caches for both sides
            calls = statistics.median(cli_call(env) for _ in range(args.rounds))
            fresh = asyncio.run(fresh_calls(controller, 20))
            direct_times, dockyard_times = [], []
            for round_ in range(args.rounds):
                direct_times.append(asyncio.run(direct(args.replicas)))
                dockyard_times.append(dockyard(env, spec))
                print(
                    f"round {round_ + 1}: direct {direct_times[-1]:.3f}s  dockyard {dockyard_times[-1]:.3f}s",
                    file=sys.stderr,
                )
        finally:
            stop_process(agent)
            stop_process(controller.process)
    d, y = statistics.median(direct_times), statistics.median(dockyard_times)
    print(f"{mode}; replicas: {args.replicas}, rounds: {args.rounds}; at the end: {machine()}")
    print(f"direct (aiodocker create+start, all concurrent): median {d:.3f}s")
    print(f"dockyard apply (CLI start to all tasks running): median {y:.3f}s")
    print(f"ratio dockyard/direct: {y / d:.2f} (goal <= {GOAL_RATIO})")
    print(f"one CLI call (`dockyard nodes`: start, connect, ListNodes, exit): median {calls:.3f}s")
    print(f"one ListNodes on a new connection, in process: median {fresh * 1000:.1f} ms")


if __name__ == "__main__":
    main()
