"""Benchmark: deploy 20 replicas with `dockyard apply` against creating and starting them straight on Docker.

Both run in the same process and alternate, so machine noise hits both alike; the figure that matters is
the ratio of medians (goal: at most 1.05; it was 1.09 to 1.18 while `apply` polled every 100 ms instead of
waiting on Watch). Run: python bench/apply20.py [--replicas 20] [--rounds 5]
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

from agent.runtime.base import ContainerSpec
from agent.runtime.docker import DockerRuntime

ROOT = Path(__file__).resolve().parent.parent
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


def dockyard(env: dict[str, str], spec: Path) -> float:
    """Runs `dockyard apply` (which waits until every task runs), then removes the service; returns seconds."""
    cli = [sys.executable, "-m", "dockyard.cli.main"]
    started = time.perf_counter()
    subprocess.run([*cli, "apply", "-f", str(spec), "-o", "json"], env=env, check=True, capture_output=True)
    elapsed = time.perf_counter() - started
    subprocess.run([*cli, "rm", "bench"], env=env, check=True, capture_output=True)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--replicas", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dockyard-bench-") as tmp:
        state = Path(tmp)
        port = 17000 + os.getpid() % 1000
        env = {**os.environ, "XDG_CONFIG_HOME": str(state / "config"), "DOCKYARD_CONTROLLER": f"127.0.0.1:{port}"}
        cli = [sys.executable, "-m", "dockyard.cli.main"]
        subprocess.run(
            [*cli, "up", "--detach", "--state-dir", str(state / "cluster"), "--listen", f"127.0.0.1:{port}"],
            env=env,
            check=True,
            capture_output=True,
        )
        spec = state / "bench.yaml"
        spec.write_text(spec_text(args.replicas))
        try:
            asyncio.run(direct(2))  # warm Docker's caches for both sides
            direct_times, dockyard_times = [], []
            for round_ in range(args.rounds):
                direct_times.append(asyncio.run(direct(args.replicas)))
                dockyard_times.append(dockyard(env, spec))
                print(
                    f"round {round_ + 1}: direct {direct_times[-1]:.3f}s  dockyard {dockyard_times[-1]:.3f}s",
                    file=sys.stderr,
                )
        finally:
            subprocess.run([*cli, "down", "--state-dir", str(state / "cluster")], env=env, check=False)
    d, y = statistics.median(direct_times), statistics.median(dockyard_times)
    print(f"replicas: {args.replicas}, rounds: {args.rounds}")
    print(f"direct (aiodocker create+start, all concurrent): median {d:.3f}s")
    print(f"dockyard apply (CLI start to all tasks running): median {y:.3f}s")
    print(f"ratio dockyard/direct: {y / d:.2f} (goal <= {GOAL_RATIO})")


if __name__ == "__main__":
    main()
