"""Benchmark: what networks and volumes add to a deploy, and DNS answer latency inside a container (dev cluster).

On a three-host dev cluster (real dockerds and agents; needs root), in one process and alternating round by
round so machine noise hits both alike:

* with: a stack (its own network, `<stack>_default`, new each round: a subnet per host, a Docker bridge network
  on each, routes, DNS names) of a web service (3 replicas, one per host) and a db (1 replica) on a new named
  volume;
* without: the same two services, same image and replicas, outside any stack and with no volume: they join
  the cluster network `dockyard`, which every host has had since it joined.

Each deploy is one `dockyard apply -f FILE` (the CLI, which waits until every task runs), timed from start to
exit; the services (and the stack's network and volume) are removed between rounds, untimed, and their
containers are waited for (a stack deployed right after another's removal also waits for the old Docker
networks to go: their subnets are reused). Printed: the median
of each, the added time (with - without; the CLI's own start-up is in both, so the difference is what networks
and volumes add) and the ratio of medians.

DNS: from inside a web container's network namespace (nsenter into the container's netns, a Python client with
dnslib), --queries sequential queries, timed each, to Docker's embedded resolver 127.0.0.11 (the path a
container's lookups take: Docker forwards the names it does not know to the agent's server), then straight to the
agent's server on the network's gateway (the container's `dns`). Names alternate between the stack's full name
of a service (`web.<stack>.dockyard`) and a bare name (`db`, resolved within the asking container's stack).
Also: busybox `nslookup` inside the container, whole process per query (mean over the loop).

Run: python bench/apps.py [--rounds 3] [--queries 200]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# The script runs as a file, not as an installed package, so the repository root must be importable.
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.fleet import machine, pct, until  # noqa: E402
from deploy.devcluster import procs  # noqa: E402
from deploy.devcluster.cluster import DevCluster  # noqa: E402

IMAGE = "dockyard-test:latest"
WEB = """\
    image: {image}
    command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
    replicas: 3
    placement: {{max_replicas_per_node: 1}}
    stop_grace_period: 1s
"""
DB = """\
    image: {image}
    command: ["sh", "-c", "exec nc -ll -p 5432 -e echo ok"]
    stop_grace_period: 1s
"""

# Runs inside a container's network namespace: times each query, prints the seconds as JSON.
CLIENT = """
import json, socket, sys, time
from dnslib import DNSRecord
server, count, names = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.settimeout(2)
sock.connect((server, 53))
samples, answered = [], 0
for i in range(count):
    started = time.perf_counter()
    sock.send(DNSRecord.question(names[i % len(names)]).pack())
    reply = DNSRecord.parse(sock.recv(4096))
    samples.append(time.perf_counter() - started)
    answered += bool(reply.rr)
print(json.dumps({"samples": samples, "answered": answered}))
"""


def with_spec(stack: str) -> str:
    """The deploy with a network of its own and a volume."""
    return (
        f"stack: {stack}\nvolumes:\n  data: {{}}\nservices:\n  web:\n{WEB.format(image=IMAGE)}"
        f'  db:\n{DB.format(image=IMAGE)}    mounts: ["data:/data"]\n'
    )


def without_spec(prefix: str) -> str:
    """The same services, no stack (the cluster network every host has already), no volume."""
    return f"services:\n  {prefix}-web:\n{WEB.format(image=IMAGE)}  {prefix}-db:\n{DB.format(image=IMAGE)}"


def cli(env: dict[str, str], *args: str) -> str:
    """Runs the dockyard CLI; returns its stdout (exits with its stderr on failure)."""
    result = subprocess.run(
        [sys.executable, "-m", "dockyard.cli.main", *args], env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise SystemExit(f"dockyard {' '.join(args)} failed ({result.returncode}): {result.stderr}")
    return result.stdout


def timed_apply(env: dict[str, str], spec: Path) -> float:
    """Seconds of one `dockyard apply -f spec` (which waits until every task runs)."""
    started = time.perf_counter()
    cli(env, "apply", "-f", str(spec), "--format", "dockyard", "-o", "json")
    return time.perf_counter() - started


def docker(cluster: DevCluster, host: str, *args: str) -> str:
    """The docker CLI against one host's dockerd; returns stdout."""
    argv = ["docker", "-H", cluster.docker_url(host), *args]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def containers_of(cluster: DevCluster, service: str) -> list[str]:
    """Ids of the service's containers (running or not) on every host."""
    found: list[str] = []
    for host in cluster.hosts:
        found += docker(cluster, host, "ps", "-aq", "--filter", f"label=dockyard.service.name={service}").split()
    return found


def all_gone(cluster: DevCluster, services: tuple[str, ...]) -> bool:
    """Tells whether no host has a container of these services any more."""
    return not any(containers_of(cluster, service) for service in services)


def web_container(cluster: DevCluster, service: str) -> tuple[str, str]:
    """(host, container id) of a running container of the service."""
    for host in cluster.hosts:
        found = docker(cluster, host, "ps", "-q", "--filter", f"label=dockyard.service.name={service}").split()
        if found:
            return host, found[0]
    raise SystemExit(f"no running container of {service}")


def query_from(
    cluster: DevCluster, host: str, container: str, server: str, count: int, names: list[str]
) -> dict[str, Any]:
    """Runs CLIENT in the container's network namespace against server; returns its samples and answer count."""
    pid = docker(cluster, host, "inspect", "-f", "{{.State.Pid}}", container).strip()
    argv = ["nsenter", f"--net=/proc/{pid}/ns/net", "--", sys.executable, "-c", CLIENT, server, str(count), *names]
    result = subprocess.run(argv, capture_output=True, text=True, check=True)
    return dict(json.loads(result.stdout))


def report(label: str, measured: dict[str, Any], count: int) -> str:
    """One line: p50/p99/max in microseconds and how many queries had an answer."""
    samples = measured["samples"]
    p50, p99 = pct(samples, 0.50) * 1e6, pct(samples, 0.99) * 1e6
    worst = max(samples) * 1e6
    return f"{label}: p50 {p50:.0f} us, p99 {p99:.0f} us, max {worst:.0f} us ({measured['answered']}/{count} answered)"


def _seconds(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    print(f"before: {machine()}", file=sys.stderr)
    procs.become_subreaper()
    with tempfile.TemporaryDirectory(prefix="dy-bench-", dir="/tmp") as tmp:
        work = Path(tmp)
        cluster = await DevCluster.up(hosts=3, state_dir=work / "c")
        env = {
            **os.environ,
            "DOCKYARD_CONTROLLER": cluster.controller_address,
            "DOCKYARD_CREDENTIALS": str(cluster.credentials_dir),
            "XDG_CONFIG_HOME": str(work / "config"),
        }
        withs: list[float] = []
        withouts: list[float] = []
        try:
            for round_ in range(args.rounds):
                stack, prefix = f"b{round_}", f"p{round_}"
                (work / f"{stack}.yaml").write_text(with_spec(stack))
                (work / f"{prefix}.yaml").write_text(without_spec(prefix))
                # Alternate which goes first, so a warm-up or drift does not favour one side.
                order = [("with", stack), ("without", prefix)]
                for kind, name in order if round_ % 2 == 0 else order[::-1]:
                    took = timed_apply(env, work / f"{name}.yaml")
                    (withs if kind == "with" else withouts).append(took)
                    print(f"round {round_ + 1}: {kind} networks and volumes: {took:.2f}s", file=sys.stderr)
                cli(env, "rm", f"{prefix}-web", f"{prefix}-db")
                if round_ < args.rounds - 1:
                    cli(env, "stack", "rm", stack)
                    # Untimed: the removed containers stop (1 s grace) before the next round. The next stack gets
                    # the subnets this one had, and its Docker networks can replace the old ones only then; that
                    # wait (a deploy right after a removal) is not what networks and volumes add to a deploy.
                    removed = (f"{stack}_web", f"{stack}_db", f"{prefix}-web", f"{prefix}-db")
                    if await until(functools.partial(all_gone, cluster, removed), within=60) is None:
                        raise SystemExit(f"containers of {', '.join(removed)} still there after 60 s")
            last = f"b{args.rounds - 1}"
            host, container = web_container(cluster, f"{last}_web")
            gateway = json.loads(docker(cluster, host, "inspect", "-f", "{{json .HostConfig.Dns}}", container))[0]
            names = [f"web.{last}.dockyard", "db"]
            embedded = query_from(cluster, host, container, "127.0.0.11", args.queries, names)
            agent = query_from(cluster, host, container, gateway, args.queries, names)
            lookup = f"busybox nslookup web.{last}.dockyard. >/dev/null"
            loop = f"i=0; while [ $i -lt {args.queries} ]; do {lookup}; i=$((i+1)); done"
            started = time.perf_counter()
            docker(cluster, host, "exec", container, "sh", "-c", loop)
            nslookup_mean = (time.perf_counter() - started) / args.queries
        finally:
            await cluster.down()
    with_median, without_median = statistics.median(withs), statistics.median(withouts)
    print(f"after: {machine()}")
    print(f"deploy (3 hosts; web x3 one per host + db x1), {args.rounds} rounds, alternating:")
    print(f"  without networks/volumes: median {without_median:.2f}s ({_seconds(withouts)})")
    print(f"  with a new stack network and a volume: median {with_median:.2f}s ({_seconds(withs)})")
    print(f"  added: {with_median - without_median:+.2f}s; ratio with/without: {with_median / without_median:.2f}")
    print(f"DNS from inside a container on {host} ({args.queries} sequential queries; names {', '.join(names)}):")
    print("  " + report("via Docker's embedded resolver 127.0.0.11", embedded, args.queries))
    print("  " + report(f"straight to the agent's server {gateway}", agent, args.queries))
    print(f"  busybox nslookup in the container, whole process: mean {nslookup_mean * 1e3:.1f} ms per query")


if __name__ == "__main__":
    asyncio.run(main())
