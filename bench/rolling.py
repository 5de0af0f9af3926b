"""Benchmark: a 20-replica rolling update through Dockyard against the same rollout done by hand with Docker.

One host: the local dockerd, with a controller and one agent started here as on a real host (TLS, joined with
the token; see bench/apply20.py, whose start-up this reuses). Each side first runs 20 replicas of the test
image (untimed), then every round changes them all to a new version (VERSION=n in the env) and is timed:

* Dockyard: `dockyard apply -f` of the changed spec, from the CLI's start until it exits 0 (it waits until
  every replica runs the new revision). The spec's update block is written out, not left to the defaults:
  `parallelism: P` (--parallelism, default 1, the default of the spec), `order: stop-first`, `delay: 0s`
  and `monitor: 0s`, since the by-hand rollout watches nothing after a container runs; --default-update
  leaves the block out (then the default 5 s monitor applies as documented in docs/spec.md).
* By hand, in this process through Docker's API (the agent's aiodocker adapter, so no CLI start-up is
  counted on this side): P containers at a time, for each: stop the old one (grace 0 s, as the spec's
  stop_grace_period), remove it, create and start the new one, and wait until Docker reports it running.

With --health both sides get the same Docker health check (`test -f /tmp/ok`, every --health-interval) and
wait for healthy instead of running (a Dockyard task counts as running only once healthy).

The sides alternate in every round, so machine noise hits both alike; the figure is the ratio of medians,
Dockyard over by hand. After each round both sides are checked: exactly 20 containers, all running the new
version. The load average is printed before and after, and each side's time per slot by step (Dockyard's
from the controller's task timestamps: successor RUNNING -> the next old task stopped -> its successor
created -> RUNNING).

Measured on 2 cores (issue 9, main at d538c16, a quiet machine): by hand 5.79 s, Dockyard 8.37 s, ratio 1.44;
Dockyard's defaults (a 5 s monitor at the end) 2.22; with a 1 s health check on both sides 1.10. Most of the
gap was the dispatcher's 50 ms commit window, paid twice per slot (the old task's stop, the successor's
RUNNING): with it set to 0 the ratio was 1.10 without health checks.

Run: python bench/rolling.py [--replicas 20] [--rounds 3] [--parallelism 1] [--default-update]
     [--health [--health-interval 0.5]] [--insecure]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

# The script runs as a file, not as an installed package, so the repository root must be importable.
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.runtime.base import ContainerSpec, ContainerState, HealthConfig, HealthStatus  # noqa: E402
from agent.runtime.docker import DockerRuntime  # noqa: E402
from bench.apply20 import start_cluster  # noqa: E402
from bench.fleet import BenchController, machine, stop_process  # noqa: E402
from dockyard import labels  # noqa: E402
from dockyard.client import Client  # noqa: E402
from dockyard.timestamps import from_timestamp  # noqa: E402
from dockyard.v1 import types_pb2 as pb  # noqa: E402

IMAGE = "dockyard-test:latest"
SERVICE = "rolling"
BENCH_LABEL = "dockyard.bench"
HEALTHY_FILE = "/tmp/ok"
COMMAND = ("sh", "-c", f"touch {HEALTHY_FILE}; exec sleep 3600")
POLL = 0.02  # how often the by-hand side asks Docker whether a new container runs (or is healthy)
WAIT_LIMIT = 120.0  # seconds one container may take to run (or be healthy) before the bench gives up
NANOS = 1_000_000_000
HAND_STEPS = ("stop", "remove", "create, start, wait")


def spec_text(replicas: int, version: int, parallelism: int, default_update: bool, health: float | None) -> str:
    """The service spec at one version, as JSON (which YAML reads)."""
    body: dict[str, Any] = {
        "image": IMAGE,
        "command": list(COMMAND),
        "replicas": replicas,
        "env": {"VERSION": str(version)},
        "stop_grace_period": "0s",
    }
    if not default_update:
        body["update"] = {"parallelism": parallelism, "order": "stop-first", "delay": "0s", "monitor": "0s"}
    if health is not None:
        body["healthcheck"] = {
            "test": ["CMD", "test", "-f", HEALTHY_FILE],
            "interval": f"{round(health * 1000)}ms",
            "timeout": "5s",
            "retries": 3,
        }
    return json.dumps({"services": {SERVICE: body}}, indent=2)


class ByHand:
    """The same service run by hand on Docker: `replicas` containers, replaced P at a time on each version."""

    def __init__(self, replicas: int, parallelism: int, health: float | None) -> None:
        self.runtime = DockerRuntime()
        self.run_id = uuid.uuid4().hex[:8]
        self.replicas = replicas
        self.parallelism = parallelism or replicas  # 0: all at once, as update.parallelism
        self.health = health
        self.containers: dict[int, str] = {}  # slot -> container id
        self.steps: dict[str, list[float]] = {}  # step of a replacement -> seconds, every replacement

    def _spec(self, slot: int, version: int) -> ContainerSpec:
        check = None
        if self.health is not None:
            interval = round(self.health * NANOS)
            check = HealthConfig(
                ("CMD", "test", "-f", HEALTHY_FILE), interval_ns=interval, timeout_ns=5 * NANOS, retries=3
            )
        return ContainerSpec(
            name=f"bench-rolling-{self.run_id}-{slot}-v{version}",
            image=IMAGE,
            command=COMMAND,
            env={"VERSION": str(version)},
            labels={BENCH_LABEL: self.run_id},
            healthcheck=check,
        )

    async def _ready(self, container_id: str) -> None:
        deadline = time.monotonic() + WAIT_LIMIT
        while True:
            info = await self.runtime.inspect(container_id)
            if info.state == ContainerState.RUNNING and (
                self.health is None or (info.health is not None and info.health.status == HealthStatus.HEALTHY)
            ):
                return
            if info.state == ContainerState.EXITED or time.monotonic() > deadline:
                raise SystemExit(f"by hand: container {container_id[:12]} did not come up: {info}")
            await asyncio.sleep(POLL)

    async def _replace(self, slot: int, version: int) -> None:
        old = self.containers.get(slot)
        marks = [time.perf_counter()]
        if old is not None:
            await self.runtime.stop(old, 0)
            marks.append(time.perf_counter())
            await self.runtime.remove(old)
            marks.append(time.perf_counter())
        new = await self.runtime.create(self._spec(slot, version))
        await self.runtime.start(new)
        await self._ready(new)
        marks.append(time.perf_counter())
        self.containers[slot] = new
        if old is not None:
            for step, (began, ended) in zip(HAND_STEPS, itertools.pairwise(marks), strict=True):
                self.steps.setdefault(step, []).append(ended - began)

    async def roll(self, version: int) -> float:
        """Moves every slot to `version`, P slots at a time; returns seconds."""
        started = time.perf_counter()
        slots = list(range(1, self.replicas + 1))
        for first in range(0, len(slots), self.parallelism):
            batch = slots[first : first + self.parallelism]
            await asyncio.gather(*(self._replace(slot, version) for slot in batch))
        return time.perf_counter() - started

    async def check(self, version: int) -> None:
        """Exactly `replicas` containers, all running, all made at `version`."""
        found = await self.runtime.list({BENCH_LABEL: self.run_id})
        running = [c for c in found if c.state == ContainerState.RUNNING]
        made = {c.name.rsplit("-v", 1)[-1] for c in found}
        if len(found) != self.replicas or len(running) != self.replicas or made != {str(version)}:
            raise SystemExit(f"by hand: after version {version}: {len(found)} containers, versions {sorted(made)}")

    async def close(self) -> None:
        """Removes every container of this side."""
        for info in await self.runtime.list({BENCH_LABEL: self.run_id}):
            await self.runtime.remove(info.id)
        await self.runtime.close()


async def dockyard_check(replicas: int, previous: set[str]) -> set[str]:
    """The service's containers on the local dockerd: exactly `replicas` running, all at one revision that none
    of `previous` had; returns the revisions seen."""
    runtime = DockerRuntime()
    try:
        found = await runtime.list({labels.SERVICE_NAME: SERVICE})
    finally:
        await runtime.close()
    running = [c for c in found if c.state == ContainerState.RUNNING]
    revisions = {c.labels.get(labels.REVISION, "") for c in running}
    if len(running) != replicas or len(revisions) != 1 or revisions & previous:
        raise SystemExit(f"dockyard: {len(running)} running of {len(found)}, revisions {sorted(revisions)}")
    return revisions


async def slot_steps(controller: BenchController, revision: str) -> dict[str, list[float]]:
    """Where a Dockyard rollout's time per slot went, from the task records (controller timestamps), in the
    order the slots changed: the previous slot's successor RUNNING -> this slot's old task stopped (the
    orchestrator's turn, the agent's stop, its report), stopped -> successor created (the reconciler),
    created -> RUNNING (scheduler, dispatch, the agent's create and start, its report)."""
    async with Client(controller.address, credentials=controller.credentials) as client:
        tasks = await client.list_tasks(SERVICE, include_finished=True)
    new = sorted(
        (t for t in tasks if str(t.revision) == revision),
        key=lambda t: from_timestamp(t.created_at) or datetime.min.astimezone(),
    )
    old_by_slot = {
        t.slot: t
        for t in sorted(tasks, key=lambda t: t.revision)
        if str(t.revision) != revision and t.status.state >= pb.TASK_STATE_COMPLETE
    }
    steps: dict[str, list[float]] = {"running -> next stopped": [], "stopped -> created": [], "created -> running": []}
    previous_running: datetime | None = None
    for task in new:
        created, running = from_timestamp(task.created_at), from_timestamp(task.status.timestamp)
        old = old_by_slot.get(task.slot)
        stopped = from_timestamp(old.status.timestamp) if old is not None else None
        if created is None or running is None or stopped is None:
            continue
        if previous_running is not None:
            steps["running -> next stopped"].append((stopped - previous_running).total_seconds())
        steps["stopped -> created"].append((created - stopped).total_seconds())
        steps["created -> running"].append((running - created).total_seconds())
        previous_running = running
    return steps


def dockyard_apply(env: dict[str, str], spec: Path) -> float:
    """Runs `dockyard apply -f spec` (which waits until the rollout converged); returns seconds."""
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "dockyard.cli.main", "apply", "-f", str(spec), "--timeout", "600", "-o", "json"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(
            f"dockyard apply exited {result.returncode}:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
        )
    return elapsed


@dataclass
class Results:
    """What the rounds measured: seconds per rollout on each side, and Dockyard's per-slot steps."""

    by_hand: list[float] = field(default_factory=list)
    dockyard: list[float] = field(default_factory=list)
    steps: dict[str, list[float]] = field(default_factory=dict)
    hand_steps: dict[str, list[float]] = field(default_factory=dict)


def medians(steps: dict[str, list[float]]) -> str:
    """Each step's median in milliseconds, as one line."""
    return ", ".join(f"{step} {statistics.median(v) * 1000:.0f} ms" for step, v in steps.items() if v)


def run_rounds(args: argparse.Namespace, health: float | None) -> Results:
    """Starts the controller and agent, deploys version 1 on both sides, then times `args.rounds` rollouts."""
    results = Results()
    with tempfile.TemporaryDirectory(prefix="dockyard-bench-") as tmp:
        state = Path(tmp)
        controller, agent = asyncio.run(start_cluster(state, args.insecure))
        env = {**os.environ, "XDG_CONFIG_HOME": str(state / "config"), "DOCKYARD_CONTROLLER": controller.address}
        if controller.credentials is not None:
            env["DOCKYARD_CREDENTIALS"] = str(state / "admin")
        by_hand = ByHand(args.replicas, args.parallelism, health)

        def spec(version: int) -> Path:
            path = state / f"rolling-{version}.json"
            path.write_text(spec_text(args.replicas, version, args.parallelism, args.default_update, health))
            return path

        loop = asyncio.new_event_loop()
        try:
            # Version 1 on both sides, untimed.
            loop.run_until_complete(by_hand.roll(1))
            dockyard_apply(env, spec(1))
            revisions = loop.run_until_complete(dockyard_check(args.replicas, set()))
            for round_ in range(1, args.rounds + 1):
                version = round_ + 1
                results.by_hand.append(loop.run_until_complete(by_hand.roll(version)))
                loop.run_until_complete(by_hand.check(version))
                results.dockyard.append(dockyard_apply(env, spec(version)))
                revisions = loop.run_until_complete(dockyard_check(args.replicas, revisions))
                for step, values in loop.run_until_complete(slot_steps(controller, min(revisions))).items():
                    results.steps.setdefault(step, []).extend(values)
                print(
                    f"round {round_}: by hand {results.by_hand[-1]:.2f}s  dockyard {results.dockyard[-1]:.2f}s",
                    file=sys.stderr,
                )
            results.hand_steps = by_hand.steps
        finally:
            loop.run_until_complete(by_hand.close())
            loop.close()
            subprocess.run(
                [sys.executable, "-m", "dockyard.cli.main", "rm", SERVICE], env=env, capture_output=True, check=False
            )
            stop_process(agent)
            stop_process(controller.process)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--parallelism", type=int, default=1, help="slots replaced at once, on both sides")
    parser.add_argument("--default-update", action="store_true", help="no update block: Dockyard's defaults")
    parser.add_argument("--health", action="store_true", help="a Docker health check on both sides")
    parser.add_argument("--health-interval", type=float, default=0.5, help="seconds between probes")
    parser.add_argument("--insecure", action="store_true", help="a plaintext controller and agent (before issue 8)")
    args = parser.parse_args()
    health = args.health_interval if args.health else None
    update = "defaults" if args.default_update else f"parallelism {args.parallelism}, stop-first, delay 0s, monitor 0s"
    setup = f"replicas {args.replicas}, rounds {args.rounds}, update: {update}; " + (
        f"health check every {health:g}s, waiting for healthy" if health else "no health check, waiting for running"
    )
    print(f"{setup}\nat the start: {machine()}", file=sys.stderr)
    results = run_rounds(args, health)
    hand, dockyard = statistics.median(results.by_hand), statistics.median(results.dockyard)
    print(setup)
    print(f"by hand (aiodocker stop, rm, create, start, wait; per slot): median {hand:.2f}s")
    print(f"dockyard apply (CLI start to converged): median {dockyard:.2f}s")
    print(f"ratio dockyard/by hand: {dockyard / hand:.2f}")
    print(f"by hand per slot (medians): {medians(results.hand_steps)}")
    print(f"dockyard per slot (medians, controller timestamps): {medians(results.steps)}")
    print(f"at the end: {machine()}")


if __name__ == "__main__":
    main()
