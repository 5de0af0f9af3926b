"""Benchmark: a host cut off (link down) until its tasks run elsewhere, on a three-host dev cluster.

Each round partitions the host of one task, times until every task of the service runs again on the
other hosts, heals the host and waits until its stale copy is gone. The baseline, measured in the same
run and alternating with it, is a container killed behind Dockyard's back on a healthy host: the time
to a running replacement when the failure is seen at once. The difference is the cost of noticing a
silent host (heartbeat period x grace). Target: median failover at most 5 s. Needs root.
The dev cluster is secured as a real deployment is (hosts joined with the token, mutual TLS); this script's
client uses its admin credentials. There is no plaintext variant: the dev cluster's controller listens on its
bridge address, where --insecure is refused; the figures before issue 8 are in the issue 7 note (3.42 s).
Run: python bench/failover.py [--rounds 5] [--replicas 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from agent.runtime.docker import DockerRuntime
from deploy.devcluster import procs
from deploy.devcluster.cluster import DevCluster
from dockyard.client import Client
from dockyard.spec import load_spec
from dockyard.v1 import types_pb2 as pb

SPEC = """
services:
  bench:
    image: dockyard-test:latest
    command: ["sleep", "3600"]
    replicas: {replicas}
    stop_grace_period: 1s
    restart: {{condition: any, delay: 0s}}
"""


async def _running(client: Client) -> list[pb.Task]:
    tasks = await client.list_tasks("bench")
    return [t for t in tasks if t.desired_state == pb.DESIRED_STATE_RUNNING and t.status.state == pb.TASK_STATE_RUNNING]


async def _until(check: object, within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await check():  # type: ignore[operator]
            return
        await asyncio.sleep(0.02)
    raise TimeoutError("the cluster did not converge in time")


async def _converged(client: Client, replicas: int, avoid: str = "") -> bool:
    running = await _running(client)
    live = [t for t in await client.list_tasks("bench") if t.desired_state == pb.DESIRED_STATE_RUNNING]
    return len(running) == replicas == len(live) and all(t.node_id != avoid for t in running)


async def _hostnames(client: Client) -> dict[str, str]:
    return {n.id: n.description.hostname for n in await client.list_nodes()}


async def failover_round(cluster: DevCluster, client: Client, replicas: int) -> float:
    """Partitions the host of the first task; returns seconds until all tasks run elsewhere."""
    names = await _hostnames(client)
    victim_node = (await _running(client))[0].node_id
    victim = names[victim_node]
    started = time.monotonic()
    await cluster.partition(victim)
    await _until(lambda: _converged(client, replicas, avoid=victim_node))
    elapsed = time.monotonic() - started
    await cluster.heal(victim)
    await cluster.wait_ready([victim])
    runtime = DockerRuntime(cluster.docker_url(victim))
    try:

        async def stale_gone() -> bool:
            return not await runtime.list({"dockyard.service.name": "bench"})

        await _until(stale_gone)
    finally:
        await runtime.close()
    return elapsed


async def crash_round(cluster: DevCluster, client: Client, replicas: int) -> float:
    """Kills one task's container behind Dockyard's back; returns seconds until a replacement runs."""
    names = await _hostnames(client)
    task = (await _running(client))[0]
    host = names[task.node_id]
    started = time.monotonic()
    await cluster.exec(host, "docker", "-H", cluster.docker_url(host), "kill", task.status.container_id)
    await _until(lambda: _gone_and_converged(client, replicas, task.id))
    return time.monotonic() - started


async def _gone_and_converged(client: Client, replicas: int, task_id: str) -> bool:
    running = await _running(client)
    return task_id not in {t.id for t in running} and await _converged(client, replicas)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--replicas", type=int, default=3)
    args = parser.parse_args()
    procs.become_subreaper()
    with tempfile.TemporaryDirectory(prefix="dy-bench-", dir="/tmp") as tmp:
        cluster = await DevCluster.up(hosts=3, state_dir=Path(tmp) / "c")
        try:
            async with Client(cluster.controller_address, credentials=cluster.admin_credentials()) as client:
                await client.apply(load_spec(SPEC.format(replicas=args.replicas)))
                await _until(lambda: _converged(client, args.replicas))
                failovers, crashes = [], []
                for round_ in range(args.rounds):
                    crashes.append(await crash_round(cluster, client, args.replicas))
                    failovers.append(await failover_round(cluster, client, args.replicas))
                    print(
                        f"round {round_ + 1}: crash replaced in {crashes[-1]:.2f}s, "
                        f"cut-off host replaced in {failovers[-1]:.2f}s",
                        file=sys.stderr,
                    )
                log = (cluster.state_dir / "controller.log").read_text()
                false_downs = log.count("node down") - args.rounds
        finally:
            await cluster.down()
    crash, failover = statistics.median(crashes), statistics.median(failovers)
    print(f"rounds: {args.rounds}, replicas: {args.replicas}, heartbeat 1s x 3 (defaults)")
    print(f"baseline (container killed on a healthy host -> replacement running): median {crash:.2f}s")
    print(
        f"failover (host link down -> replacement running elsewhere): median {failover:.2f}s "
        f"(min {min(failovers):.2f}s, max {max(failovers):.2f}s); target <= 5s: {'met' if failover <= 5 else 'MISSED'}"
    )
    print(f"ratio failover/baseline: {failover / crash:.1f}")
    print(f"nodes marked down other than the partitioned ones: {max(0, false_downs)}")


if __name__ == "__main__":
    asyncio.run(main())
