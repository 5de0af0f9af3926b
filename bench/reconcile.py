"""Measures what a change costs the orchestrator and the scheduler at 10,000 tasks, old roles against new.

The old roles are those of a base commit (default: the one before event-driven reconcile), unpacked with
`git archive` into a temporary directory; each side runs in its own interpreter with its own tree first on
sys.path, against the same synthetic cluster in a SQLite file in a temporary directory, and this script prints
both sides and their ratio. Figures (each the median of a few repetitions, system clock):

- one orchestrator pass after one task of 10,000 reported running, and after one reported failed;
- one full orchestrator pass (what the periodic safety-net pass costs);
- one scheduler wake after a running report;
- 100 of 500 nodes marked down in one commit: time until every lost task's replacement is committed, and
  until every replacement is assigned, with both roles running on their Reactors.

Run: python bench/reconcile.py [--base COMMIT] [--repetitions 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import itertools
import json
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BASE = "8260700b8fefc05b8009ddce0211488bf186e22e"
NODES = 500
SERVICES = 10
REPLICAS = 1_000
LOST_NODES = 100


def main() -> None:
    """Runs both sides and prints their figures and ratios."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default=BASE, help="the commit whose roles are the baseline")
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--side", help=argparse.SUPPRESS)  # internal: measure the roles of this tree
    args = parser.parse_args()
    if args.side:
        sys.path.insert(0, args.side)
        print(json.dumps(asyncio.run(measure(args.repetitions))))
        return
    with tempfile.TemporaryDirectory(prefix="dockyard-base-") as base:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.base], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", base], input=archive.stdout, check=True)
        results = {name: run_side(tree, args.repetitions) for name, tree in (("old", base), ("new", str(ROOT)))}
    print(
        f"{NODES} nodes, {SERVICES} services x {REPLICAS} replicas; base {args.base[:10]}; median of {args.repetitions}"
    )
    print(f"{'figure':58} {'old':>10} {'new':>10} {'old/new':>9}")
    for key, label in LABELS.items():
        old, new = results["old"][key], results["new"][key]
        ratio = f"{old / new:9.1f}" if new > 0 else "      inf"
        print(f"{label:58} {old * 1000:8.1f}ms {new * 1000:8.1f}ms {ratio}")


LABELS = {
    "orchestrator_running": "orchestrator pass, 1 task of 10,000 reported running",
    "orchestrator_failed": "orchestrator pass, 1 task of 10,000 reported failed",
    "orchestrator_full": "orchestrator full pass (the periodic safety net)",
    "scheduler_running": "scheduler wake on a running report",
    "lost_replaced": f"{LOST_NODES} nodes down in one commit: replacements committed",
    "lost_assigned": f"{LOST_NODES} nodes down in one commit: replacements assigned",
}


def run_side(tree: str, repetitions: int) -> dict[str, float]:
    """Measures the roles of one tree in a fresh interpreter."""
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--side", tree, "--repetitions", str(repetitions)],
        capture_output=True,
        text=True,
        cwd=tree,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"the {tree} side failed:\n{done.stderr}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


async def measure(repetitions: int) -> dict[str, float]:
    """Returns each figure in seconds for the roles found first on sys.path."""
    import structlog

    from controller.store.sqlite import SqliteStore

    # The roles log each pass; the figures are about the work, not about formatting log lines.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="dockyard-bench-") as tmp:
        async with SqliteStore(Path(tmp) / "controller.db") as store:
            await populate(store)
            results.update(await passes(store, repetitions))
        async with SqliteStore(Path(tmp) / "lost.db") as store:
            await populate(store)
            results.update(await lost_nodes(store))
    return results


def node(index: int) -> Any:
    """Returns a ready node with room for everything."""
    from dockyard.v1 import types_pb2 as pb

    result = pb.Node(id=f"node{index:04}", status=pb.NODE_STATUS_READY, availability=pb.NODE_AVAILABILITY_ACTIVE)
    result.description.hostname = f"host{index:04}"
    result.description.cpus = 64
    result.description.memory_bytes = 256 << 30
    return result


async def populate(store: Any) -> None:
    """Writes the nodes, the services and their tasks, all running, spread evenly over the nodes."""
    from controller.store.base import Put
    from dockyard.v1 import types_pb2 as pb

    stamp = datetime.now(UTC)
    await store.commit([Put(node(i)) for i in range(NODES)])
    placement = itertools.cycle(range(NODES))
    for s in range(SERVICES):
        service = pb.Service(id=f"svc{s}", name=f"web{s}", revision=1, spec_revision=1)
        service.spec.name = service.name
        service.spec.image = "nginx:1"
        service.spec.replicas = REPLICAS
        service.spec.restart.condition = pb.RestartPolicy.CONDITION_ANY
        service.spec.restart.delay.FromSeconds(0)
        tasks = []
        for slot in range(1, REPLICAS + 1):
            task = pb.Task(
                id=f"t{s}-{slot}",
                service_id=service.id,
                service_name=service.name,
                slot=slot,
                node_id=f"node{next(placement):04}",
                revision=1,
                generation=1,
                desired_state=pb.DESIRED_STATE_RUNNING,
            )
            task.status.state = pb.TASK_STATE_STARTING
            task.status.timestamp.FromDatetime(stamp)
            task.created_at.FromDatetime(stamp)
            tasks.append(Put(task))
        await store.commit([Put(service), *tasks])


async def events_since(store: Any, revision: int) -> list[Any]:
    """Returns the store's events after revision, as a Reactor hands them."""
    events: list[Any] = []
    async with contextlib.aclosing(store.watch(revision)) as feed:
        async for event in feed:
            events.append(event)
            if event.revision >= store.revision:
                break
    return events


async def call(role: Any, changes: list[Any] | None) -> float:
    """Runs one pass of a role, old (no arguments) or new (what changed), and returns its duration."""
    takes_changes = bool(inspect.signature(role.reconcile).parameters)
    started = time.perf_counter()
    if takes_changes:
        await role.reconcile(changes)
    else:
        await role.reconcile()
    return time.perf_counter() - started


async def passes(store: Any, repetitions: int) -> dict[str, float]:
    """Times single passes of both roles after single status reports."""
    from controller.ids import new_id
    from controller.orchestrator.role import Orchestrator
    from controller.scheduler.role import Scheduler
    from controller.store.base import Put
    from dockyard.clock import SystemClock
    from dockyard.v1 import types_pb2 as pb

    clock = SystemClock()
    orchestrator = Orchestrator(store, clock, new_id)
    scheduler = Scheduler(store, clock)
    full = [await call(orchestrator, None) for _ in range(repetitions)]
    await call(scheduler, None)
    figures: dict[str, list[float]] = {"orchestrator_full": full}
    victims = iter(await store.list_tasks(service_id="svc3"))
    for _ in range(repetitions):
        for state, figure in (
            (pb.TASK_STATE_RUNNING, "orchestrator_running"),
            (pb.TASK_STATE_FAILED, "orchestrator_failed"),
        ):
            task = next(victims)
            mark = store.revision
            task.status.state = state
            await store.commit([Put(task, expect_version=task.version)])
            events = await events_since(store, mark)
            figures.setdefault(figure, []).append(await call(orchestrator, events))
            if state == pb.TASK_STATE_RUNNING:
                figures.setdefault("scheduler_running", []).append(await call(scheduler, events))
            else:
                # Let the scheduler place the replacement outside the timing, as it would between reports.
                await call(scheduler, await events_since(store, mark))
    return {key: statistics.median(values) for key, values in figures.items()}


async def lost_nodes(store: Any) -> dict[str, float]:
    """Marks LOST_NODES nodes down in one commit and times the roles, on their Reactors, until all is replaced."""
    from controller.ids import new_id
    from controller.orchestrator.role import Orchestrator
    from controller.reactor import Reactor
    from controller.scheduler.role import Scheduler
    from controller.store.base import Kind, Put
    from dockyard.clock import SystemClock
    from dockyard.v1 import types_pb2 as pb

    clock = SystemClock()
    idle = {"orchestrator": asyncio.Event(), "scheduler": asyncio.Event()}

    def signalling(name: str, reconcile: Any) -> Any:
        async def wrapped(*args: Any) -> Any:
            result = await reconcile(*args)
            idle[name].set()
            return result

        return wrapped

    orchestrator = Orchestrator(store, clock, new_id)
    scheduler = Scheduler(store, clock)
    roles = [
        asyncio.create_task(
            Reactor(
                "orchestrator",
                store,
                signalling("orchestrator", orchestrator.reconcile),
                (Kind.SERVICE, Kind.TASK, Kind.NODE),
                clock,
            ).run()
        ),
        asyncio.create_task(
            Reactor(
                "scheduler", store, signalling("scheduler", scheduler.reconcile), (Kind.NODE, Kind.TASK), clock
            ).run()
        ),
    ]
    try:
        for event in idle.values():
            await event.wait()
        lost = {t.id for t in await store.list_tasks() if int(t.node_id.removeprefix("node")) < LOST_NODES}
        known = {t.id for t in await store.list_tasks()}
        mark = store.revision
        started = time.perf_counter()
        down = []
        for i in range(LOST_NODES):
            gone = node(i)
            gone.status = pb.NODE_STATUS_DOWN
            down.append(Put(gone))
        await store.commit(down)
        created: set[str] = set()
        assigned: set[str] = set()
        replaced_at = assigned_at = float("nan")
        async with asyncio.timeout(300), contextlib.aclosing(store.watch(mark)) as feed:
            async for event in feed:
                if event.kind != Kind.TASK or event.id in known:
                    continue
                if event.obj.status.state == pb.TASK_STATE_PENDING:
                    created.add(event.id)
                    if len(created) == len(lost):
                        replaced_at = time.perf_counter() - started
                elif event.obj.status.state == pb.TASK_STATE_ASSIGNED:
                    assigned.add(event.id)
                    if len(assigned) == len(lost):
                        assigned_at = time.perf_counter() - started
                        break
    finally:
        for role in roles:
            role.cancel()
        for role in roles:
            with contextlib.suppress(asyncio.CancelledError):
                await role
    return {"lost_replaced": replaced_at, "lost_assigned": assigned_at}


if __name__ == "__main__":
    main()
