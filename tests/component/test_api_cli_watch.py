"""`apply`, `scale`, `rm` and `node drain` wait on Watch: the same output, one listing per wait, no polling.

A stand-in for the orchestrator and the agents follows the store and moves tasks through their states in
several commits, so the CLI sees the cluster converge through watch events. The server counts the calls it
serves, which is how the tests know that the CLI listed tasks once per wait instead of every 100 ms.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from click.testing import CliRunner, Result

from controller.api.handlers import SERVICE, add_controller_api
from controller.api.servicer import ControllerApi
from controller.ids import new_id
from controller.store.base import Action, Event, Kind, Put, Store
from controller.store.follow import follow
from controller.store.sqlite import SqliteStore
from dockyard.cli.main import cli
from dockyard.clock import SystemClock
from dockyard.v1 import types_pb2 as pb

T = TypeVar("T")


class CountingApi(ControllerApi):
    """The real API, counting the calls it serves by method."""

    def __init__(self, store: Store) -> None:
        super().__init__(store, SystemClock(), new_id)
        self.calls: collections.Counter[str] = collections.Counter()
        for method in SERVICE.methods:
            if not hasattr(self, method.name):
                continue  # not served yet: gRPC answers UNIMPLEMENTED
            setattr(self, method.name, self._counting(method.name, getattr(self, method.name)))

    def _counting(self, name: str, serve: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
        def counted(request: Any, context: Any) -> Any:
            self.calls[name] += 1
            return serve(request, context)  # a coroutine, or Watch's async generator

        return counted


async def pretend_cluster(store: Store) -> None:
    """Plays orchestrator and agents: each service's tasks go pending then running; extra ones stop."""
    async for event in follow(store):
        if not isinstance(event, Event):
            continue
        if isinstance(event.obj, pb.Node) and event.obj.availability == pb.NODE_AVAILABILITY_DRAIN:
            for task in await store.list_tasks(node_id=event.obj.id):
                task.desired_state = pb.DESIRED_STATE_SHUTDOWN
                task.status.state = pb.TASK_STATE_SHUTDOWN
                await store.commit([Put(task)])
        if event.kind is not Kind.SERVICE:
            continue
        service = event.obj
        assert isinstance(service, pb.Service)
        tasks = await store.list_tasks(service.id)
        live = {t.slot: t for t in tasks if t.desired_state == pb.DESIRED_STATE_RUNNING}
        wanted = 0 if event.action is Action.DELETE else service.spec.replicas
        for slot, task in live.items():
            if slot > wanted:
                task.desired_state = pb.DESIRED_STATE_SHUTDOWN
                await store.commit([Put(task)])
                task.status.state = pb.TASK_STATE_SHUTDOWN
                await store.commit([Put(task)])
        new = []
        for slot in range(1, wanted + 1):
            if slot not in live:
                task = pb.Task(id=f"{service.name}-{slot}-{service.revision}", service_id=service.id, slot=slot)
                task.service_name, task.revision = service.name, service.revision
                task.desired_state = pb.DESIRED_STATE_RUNNING
                task.node_id = "node-1"
                task.status.state = pb.TASK_STATE_PENDING
                new.append(task)
        if new:
            await store.commit([Put(t) for t in new])
        for task in new:
            task.status.state = pb.TASK_STATE_RUNNING
            await store.commit([Put(task)])


class Served:
    """The counting API and the stand-in cluster on an event loop of their own thread; the CLI runs in the test's."""

    def __init__(self, root: Path) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="api-under-test", daemon=True)
        self._thread.start()
        self.api, self.address = self._run(self._start(root))

    def _run(self, step: Awaitable[T]) -> T:
        async def wrapped() -> T:
            return await step

        return asyncio.run_coroutine_threadsafe(wrapped(), self._loop).result(timeout=30)

    async def _start(self, root: Path) -> tuple[CountingApi, str]:
        self._store = SqliteStore(root / "cli.db")
        await self._store.open()
        node = pb.Node(id="node-1", status=pb.NODE_STATUS_READY, availability=pb.NODE_AVAILABILITY_ACTIVE)
        node.description.hostname = "host-1"
        await self._store.commit([Put(node)])
        api = CountingApi(self._store)
        self._server = grpc.aio.server()
        add_controller_api(api, self._server)
        port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        self._cluster = asyncio.ensure_future(pretend_cluster(self._store))
        return api, f"127.0.0.1:{port}"

    async def _stop(self) -> None:
        self._cluster.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._cluster
        await self._server.stop(None)
        await self._store.close()

    def close(self) -> None:
        """Stops the server, the store and the loop."""
        self._run(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def dockyard(self, *args: str) -> tuple[Result, dict[str, int]]:
        """Runs the CLI against this server; returns what it printed and the calls it made."""
        before = collections.Counter(self.api.calls)
        result = CliRunner().invoke(cli, [*args, "--controller", self.address], catch_exceptions=False)
        return result, dict(self.api.calls - before)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    server = Served(tmp_path)
    try:
        yield server
    finally:
        server.close()


def test_apply_scale_drain_and_rm_wait_on_a_watch_and_list_once(served: Served, tmp_path: Path) -> None:
    spec = tmp_path / "web.yaml"
    spec.write_text("services:\n  web:\n    image: app:1\n    replicas: 3\n")

    applied, calls = served.dockyard("apply", "-f", str(spec), "-o", "json")
    assert applied.exit_code == 0, applied.output
    report = json.loads(applied.stdout)
    assert (report["outcome"], report["exit_code"]) == ("ok", 0)
    [web] = report["services"]
    assert {k: web[k] for k in ("service", "action", "revision", "desired", "updated", "healthy", "converged")} == {
        "service": "web",
        "action": "created",
        "revision": 1,
        "desired": 3,
        "updated": 3,
        "healthy": 3,
        "converged": True,
    }
    assert applied.stderr == ""  # with -o json, no progress lines
    assert calls == {"ApplyService": 1, "Watch": 1, "ListServices": 1, "ListTasks": 1}

    scaled, calls = served.dockyard("scale", "web", "5")
    assert scaled.exit_code == 0, scaled.output
    assert "web scaled to 5" in scaled.stdout
    assert "web: 5/5 updated, 5 healthy" in scaled.stderr
    assert calls == {"ScaleService": 1, "Watch": 1, "ListServices": 1, "ListTasks": 1}

    shrunk, calls = served.dockyard("scale", "web", "1", "-o", "json")
    assert shrunk.exit_code == 0, shrunk.output
    assert json.loads(shrunk.stdout) == {"service": "web", "replicas": 1, "revision": 3}
    assert calls == {"ScaleService": 1, "Watch": 1, "ListServices": 1, "ListTasks": 1}

    drained, calls = served.dockyard("node", "drain", "host-1")
    assert drained.exit_code == 0, drained.output
    assert "host-1: drained" in drained.stdout
    assert "0 task(s) left on the node" in drained.stderr
    assert calls == {"UpdateNode": 1, "Watch": 1, "ListTasks": 1}

    removed, calls = served.dockyard("rm", "web")
    assert removed.exit_code == 0, removed.output
    assert removed.stdout == "web removed\n"
    assert calls == {"DeleteService": 1, "Watch": 1, "ListTasks": 1}
