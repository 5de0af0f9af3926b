"""The store's reads and commits at fleet size, this SqliteStore against an older one, in one process.

Usage: python bench/store.py [--baseline PATH/controller/store/sqlite.py] [--tasks N] [--nodes N]

With --baseline (e.g. the module from a `git worktree` of an older commit) it runs every figure on both
and prints old/new ratios (above 1: the new store is faster; for pages read during the commit, above 1 means
the new store let fewer through). CPU figures are the process's CPU time (both threads): on a busy machine
they say more than wall time. Each store works on its own file in a temporary
directory, filled alike: 10 services, N tasks spread evenly over the nodes (10 per node by default). It also
prints the resident memory an open store adds for that content (measured in a child process).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controller.store import sqlite as current
from controller.store.base import Put
from dockyard.v1 import types_pb2 as pb

SERVICES = 10
PAGE = 100


def load_module(path: str) -> ModuleType:
    """Imports a sqlite.py from elsewhere under its own name; it shares this tree's controller.store.base."""
    spec = importlib.util.spec_from_file_location("baseline_sqlite", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["baseline_sqlite"] = module
    spec.loader.exec_module(module)
    return module


def task(i: int, nodes: int, state: pb.TaskState.ValueType = pb.TASK_STATE_RUNNING) -> pb.Task:
    """Returns task i: service i % 10, node i % nodes, a realistic status."""
    t = pb.Task(
        id=f"task-{i:08d}-0123456789abcdef",
        service_id=f"svc-{i % SERVICES:02d}",
        service_name=f"web{i % SERVICES}",
        slot=i // SERVICES + 1,
        revision=1,
        node_id=f"node-{i % nodes:05d}",
        desired_state=pb.DESIRED_STATE_RUNNING,
        generation=1,
    )
    t.status.state = state
    t.status.message = "started"
    t.status.container_id = f"{i:064x}"
    t.status.timestamp.seconds = 1_700_000_000 + i
    t.created_at.seconds = 1_700_000_000
    t.created_at.nanos = i
    t.updated_at.seconds = 1_700_000_000 + i
    return t


def node(i: int) -> pb.Node:
    """Returns node i with a description and labels, as an agent registers it."""
    n = pb.Node(id=f"node-{i:05d}", status=pb.NODE_STATUS_READY, address=f"10.0.{i // 256}.{i % 256}:7000")
    n.description.hostname = f"host-{i:05d}"
    n.description.cpus = 8
    n.description.memory_bytes = 32 << 30
    n.description.docker_version = "27.3.1"
    n.description.os, n.description.arch = "linux", "amd64"
    n.description.labels["zone"] = f"z{i % 3}"
    n.last_heartbeat.seconds = 1_700_000_000
    return n


def service(i: int) -> pb.Service:
    """Returns service i with a modest spec."""
    spec = pb.ServiceSpec(name=f"web{i}", image=f"registry.example/web:{i}", replicas=1000)
    return pb.Service(id=f"svc-{i:02d}", name=f"web{i}", revision=1, spec=spec)


async def fill(store: Any, tasks: int, nodes: int) -> None:
    """Commits the services, nodes and tasks in batches of 1,000."""
    await store.commit([Put(service(i)) for i in range(SERVICES)])
    for start in range(0, nodes, 1000):
        await store.commit([Put(node(i)) for i in range(start, min(nodes, start + 1000))])
    for start in range(0, tasks, 1000):
        await store.commit([Put(task(i, nodes)) for i in range(start, min(tasks, start + 1000))])


async def timed(fn: Callable[[], Awaitable[object]], repeat: int = 1) -> float:
    """Returns the median seconds of repeat runs."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        await fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def percentile(values: list[float], p: float) -> float:
    """Returns the p-th percentile (nearest rank) of values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def measure(module: ModuleType, directory: Path, tasks: int, nodes: int) -> dict[str, float]:
    """Returns every figure for one store implementation, in seconds."""
    path = directory / f"{module.__name__}.db"
    figures: dict[str, float] = {}
    async with module.SqliteStore(path) as store:
        await fill(store, tasks, nodes)
    async with module.SqliteStore(path) as store:
        ids = [task(i, nodes).id for i in range(tasks)]

        async def get_each() -> None:
            for tid in ids:
                await store.get_task(tid)

        figures[f"get_task x{tasks}"] = await timed(get_each)
        figures[f"list_tasks() of {tasks}"] = await timed(store.list_tasks, 5)

        async def per_node() -> None:
            for i in range(nodes):
                await store.list_tasks(node_id=f"node-{i:05d}")

        figures[f"list_tasks(node_id) x{nodes}"] = await timed(per_node)

        # Pages walked over and over while one commit of every task (a status round) is written.
        updates = [task(i, nodes, state=pb.TASK_STATE_COMPLETE) for i in range(tasks)]
        latencies: list[float] = []
        commit = asyncio.ensure_future(store.commit([Put(t) for t in updates]))
        commit_start = time.perf_counter()
        after = None
        # From one page's end to the next one's: the page itself plus any time the event loop was held elsewhere
        # (a commit's synchronous steps), which a request arriving then would wait too.
        gaps: list[float] = []
        done = time.perf_counter()
        while not commit.done():
            start = time.perf_counter()
            page = await store.list_tasks_page(None, None, after, PAGE)
            latencies.append(time.perf_counter() - start)
            gaps.append(time.perf_counter() - done)
            done = time.perf_counter()
            last = page[-1] if len(page) == PAGE else None
            after = (
                (last.service_id, last.slot, last.created_at.seconds * 10**9 + last.created_at.nanos, last.id)
                if last is not None
                else None
            )
            await asyncio.sleep(0)
        await commit
        figures[f"commit of {tasks} puts, pages running"] = time.perf_counter() - commit_start
        figures["page p50 during it"] = percentile(latencies, 50)
        figures["page p99 during it"] = percentile(latencies, 99)
        figures["longest page-to-page gap during it"] = max(gaps)
        figures["pages read during it"] = float(len(latencies))

        again = [task(i, nodes, state=pb.TASK_STATE_RUNNING) for i in range(tasks)]
        cpu = time.process_time()
        figures[f"commit of {tasks} task puts"] = await timed(lambda: store.commit([Put(t) for t in again]))
        figures[f"commit of {tasks} task puts, CPU"] = time.process_time() - cpu
        one = task(0, nodes)
        cpu = time.process_time()
        figures["commit of 1 put"] = await timed(lambda: store.commit([Put(one)]), 300)
        figures["commit of 1 put, CPU"] = (time.process_time() - cpu) / 300
    return figures


RSS_CHILD = """
import asyncio, sys
sys.path.insert(0, sys.argv[2])
from bench.store import load_module
from controller.store import sqlite as current
module = current if sys.argv[3] == "-" else load_module(sys.argv[3])
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
async def main():
    before = rss()
    store = module.SqliteStore(sys.argv[1])
    await store.open()
    await store.list_tasks()
    print(rss() - before)
    await store.close()
asyncio.run(main())
"""


def open_rss(path: Path, module_path: str) -> int:
    """Returns the bytes of resident memory opening the store (and one full list) adds, in a fresh process."""
    root = str(Path(__file__).resolve().parents[1])
    out = subprocess.run(
        [sys.executable, "-c", RSS_CHILD, str(path), root, module_path],
        capture_output=True,
        text=True,
        check=True,
        cwd=root,
        env={**os.environ, "PYTHONPATH": root},
    )
    return int(out.stdout.strip().splitlines()[-1])


def main() -> None:
    """Runs the figures on each store and prints them, with old/new ratios when there is a baseline."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", help="path of an older controller/store/sqlite.py to compare with")
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--nodes", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=2, help="runs per store, alternating; the best counts")
    args = parser.parse_args()
    modules = [("new", current)]
    if args.baseline:
        modules.insert(0, ("old", load_module(args.baseline)))
    results: dict[str, dict[str, float]] = {}
    # Rounds alternate between the stores and each figure keeps its best (pages read: its most), so a
    # busy machine disturbs both alike and a passing spike does not decide a ratio.
    for _ in range(args.rounds):
        for label, module in modules:
            with tempfile.TemporaryDirectory() as scratch:
                figures = asyncio.run(measure(module, Path(scratch), args.tasks, args.nodes))
                figures["open RSS MB"] = (
                    open_rss(Path(scratch) / f"{module.__name__}.db", args.baseline if label == "old" else "-") / 1e6
                )
            best = results.setdefault(label, figures)
            for name, value in figures.items():
                best[name] = max(best[name], value) if name.startswith("pages") else min(best[name], value)
    names = list(results["new"])
    print(
        f"{'figure':40} " + " ".join(f"{label:>12}" for label, _ in modules) + ("   old/new" if args.baseline else "")
    )
    for name in names:
        unit = 1 if name.endswith("MB") or name.startswith("pages") else 1000
        cells = " ".join(f"{results[label][name] * unit:12.3f}" for label, _ in modules)
        ratio = ""
        if args.baseline and results["new"][name]:
            ratio = f"   {results['old'][name] / results['new'][name]:7.2f}"
        suffix = "" if unit == 1 else " ms"
        print(f"{name + suffix:40} {cells}{ratio}")


if __name__ == "__main__":
    main()
