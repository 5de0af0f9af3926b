"""Health checks and failure causes end to end on the real dockerd: the agent's worker and observer drive
real containers (no controller: tasks go straight into the agent's book), and every check reads what the
agent reported and what Docker shows.

Checks probe every 100 ms (the spec's minimum), so each test settles in about a second.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import textwrap
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.observer import Observer
from agent.reporter import Reporter
from agent.runtime.base import ContainerState, RuntimeUnavailable
from agent.runtime.docker import DockerRuntime
from agent.task_book import TaskBook
from agent.testing.conformance import HEALTHCHECK_IMAGE, TEST_IMAGE
from agent.worker import Worker
from dockyard import labels
from dockyard.timestamps import duration
from dockyard.v1 import agent_pb2 as apb
from dockyard.v1 import types_pb2 as pb
from tests.conftest import require_docker
from tests.e2e.harness import ROOT, Cluster, wait_for
from tests.polling import eventually

pytestmark = pytest.mark.docker

FAST = {"interval": duration(0.1), "timeout": duration(2)}
# Runs until stopped, honouring SIGTERM, after marking itself ready a moment after the start.
READY_LATER = ("sh", "-c", "sleep 0.3; touch /tmp/ready; trap 'exit 0' TERM; sleep 600 & wait")
HTTPD = ("sh", "-c", "mkdir -p /www && echo ok > /www/up && exec httpd -f -p 8080 -h /www")
WAITING = "waiting to be healthy"


class Recording(Reporter):
    """Keeps every status the worker reports, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.history: list[tuple[str, pb.TaskStatus]] = []

    def report(self, task_id: str, status: pb.TaskStatus) -> None:
        copy = pb.TaskStatus()
        copy.CopyFrom(status)
        self.history.append((task_id, copy))
        super().report(task_id, status)

    def of(self, task_id: str) -> list[pb.TaskStatus]:
        return [s for t, s in self.history if t == task_id]


@dataclass
class Agent:
    """The agent's task machinery on the real dockerd, for one test's node id."""

    runtime: DockerRuntime
    book: TaskBook
    reporter: Recording
    worker: Worker
    node_id: str

    def assign(self, task_id: str, spec: pb.ServiceSpec) -> None:
        task = pb.Task(
            id=task_id,
            service_id=f"svc-{task_id}",
            service_name=spec.name,
            slot=1,
            revision=1,
            node_id=self.node_id,
            desired_state=pb.DESIRED_STATE_RUNNING,
            generation=1,
            version=1,
        )
        task.status.state = pb.TASK_STATE_ASSIGNED
        revision = apb.ServiceRevisionSpec(service_id=task.service_id, revision=1, spec=spec)
        assignments = apb.Assignments(kind=apb.Assignments.KIND_INCREMENTAL, tasks=[task], specs=[revision])
        assert self.book.apply(assignments)
        self.worker.wake([task_id])

    def status(self, task_id: str) -> pb.TaskStatus:
        task = self.book.get(task_id)
        assert task is not None
        return task.status

    async def reaches(self, task_id: str, state: int, within: float = 20.0) -> pb.TaskStatus:
        async def reached() -> bool:
            return self.status(task_id).state == state

        await eventually(reached, within, f"{task_id} to be {pb.TaskState.Name(state)}")  # type: ignore[arg-type]
        return self.status(task_id)


def build(*options: str) -> None:
    script = ROOT / "scripts" / "build-test-image.sh"
    subprocess.run(["bash", str(script), *options], check=True, capture_output=True)


@pytest.fixture
async def agent(tmp_path: Path) -> AsyncIterator[Agent]:
    runtime = DockerRuntime()
    try:
        await runtime.host_facts()
    except RuntimeUnavailable as exc:
        await runtime.close()
        require_docker(f"no docker daemon answers: {exc}")
    await asyncio.to_thread(build)
    await asyncio.to_thread(build, "--healthcheck")
    node_id = f"e2e-health-{uuid.uuid4().hex[:8]}"
    book = TaskBook(tmp_path / "tasks.pb")
    reporter = Recording()
    worker = Worker(runtime, book, reporter, node_id)
    observer = Observer(runtime, book, worker, node_id, relist_period=1.0, stranger_grace=60.0)
    watching = asyncio.create_task(observer.run())
    try:
        yield Agent(runtime, book, reporter, worker, node_id)
    finally:
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)
        await worker.close()
        for info in await runtime.list({labels.NODE_ID: node_id}):
            await runtime.remove(info.id)
        await runtime.close()


def service(command: tuple[str, ...], image: str = TEST_IMAGE, **check: object) -> pb.ServiceSpec:
    spec = pb.ServiceSpec(name="web", image=image, command=command)
    spec.stop_grace_period.CopyFrom(duration(1))
    if check:
        spec.healthcheck.CopyFrom(pb.HealthCheck(**check))  # type: ignore[arg-type]
    return spec


async def test_a_task_runs_only_once_dockers_check_passes(agent: Agent) -> None:
    agent.assign("t1", service(READY_LATER, test=["CMD-SHELL", "test -e /tmp/ready && echo ready"], **FAST))
    status = await agent.reaches("t1", pb.TASK_STATE_RUNNING)
    assert (status.health.state, status.health.output) == (pb.TaskHealth.STATE_HEALTHY, "ready\n")
    states = [(s.state, s.message) for s in agent.reporter.of("t1")]
    assert (pb.TASK_STATE_STARTING, WAITING) in states
    assert states.index((pb.TASK_STATE_STARTING, WAITING)) < states.index((pb.TASK_STATE_RUNNING, "healthy"))
    assert next(s for s in agent.reporter.of("t1") if s.state == pb.TASK_STATE_RUNNING).health.state == (
        pb.TaskHealth.STATE_HEALTHY
    )


async def test_an_unhealthy_container_is_stopped_and_the_task_fails_unhealthy(agent: Agent) -> None:
    agent.assign("t1", service(READY_LATER, test=["CMD-SHELL", "echo broken; exit 1"], retries=2, **FAST))
    status = await agent.reaches("t1", pb.TASK_STATE_FAILED)
    assert status.cause == pb.TaskStatus.CAUSE_UNHEALTHY
    assert status.error == "health check failed: broken"
    assert status.health.state == pb.TaskHealth.STATE_UNHEALTHY
    assert status.health.failing_streak >= 2
    assert pb.TASK_STATE_RUNNING not in [s.state for s in agent.reporter.of("t1")]
    info = await agent.runtime.inspect(status.container_id)
    assert info.state is ContainerState.EXITED, "the agent stopped it"


async def test_the_images_own_healthcheck_counts_and_none_turns_it_off(agent: Agent) -> None:
    agent.assign("own", service(READY_LATER, image=HEALTHCHECK_IMAGE))
    status = await agent.reaches("own", pb.TASK_STATE_RUNNING)
    assert (status.health.state, status.health.output) == (pb.TaskHealth.STATE_HEALTHY, "image-check\n")

    agent.assign("off", service(READY_LATER, image=HEALTHCHECK_IMAGE, test=["NONE"]))
    status = await agent.reaches("off", pb.TASK_STATE_RUNNING)
    assert not status.HasField("health")
    assert (await agent.runtime.inspect(status.container_id)).health is None


async def test_an_http_check_is_probed_from_the_host(agent: Agent) -> None:
    agent.assign("up", service(HTTPD, http=pb.HttpProbe(port=8080, path="/up"), **FAST))
    status = await agent.reaches("up", pb.TASK_STATE_RUNNING)
    address = (await agent.runtime.inspect(status.container_id)).ip_address
    assert status.health.state == pb.TaskHealth.STATE_HEALTHY
    assert status.health.output == f"GET http://{address}:8080/up: 200 ok"

    agent.assign("missing", service(HTTPD, http=pb.HttpProbe(port=8080, path="/missing"), retries=2, **FAST))
    status = await agent.reaches("missing", pb.TASK_STATE_FAILED)
    assert status.cause == pb.TaskStatus.CAUSE_UNHEALTHY
    assert status.error.startswith("health check failed: GET http://")
    assert ":8080/missing: 404" in status.error


async def test_a_tcp_check_is_probed_from_the_host(agent: Agent) -> None:
    agent.assign("open", service(HTTPD, tcp=pb.TcpProbe(port=8080), **FAST))
    status = await agent.reaches("open", pb.TASK_STATE_RUNNING)
    assert status.health.output.endswith(":8080 succeeded")

    agent.assign("closed", service(HTTPD, tcp=pb.TcpProbe(port=9), retries=2, **FAST))
    status = await agent.reaches("closed", pb.TASK_STATE_FAILED)
    assert status.cause == pb.TaskStatus.CAUSE_UNHEALTHY
    assert "Connection refused" in status.error


async def test_failures_inside_the_start_period_do_not_count(agent: Agent) -> None:
    # httpd comes up after 0.6 s: without the start period, 2 failures at 100 ms would make it unhealthy.
    late = ("sh", "-c", "sleep 0.6; " + HTTPD[2])
    check = {"http": pb.HttpProbe(port=8080, path="/up"), "retries": 2, "start_period": duration(5)}
    agent.assign("late", service(late, start_interval=duration(0.1), **check, **FAST))
    status = await agent.reaches("late", pb.TASK_STATE_RUNNING)
    assert status.health.state == pb.TaskHealth.STATE_HEALTHY
    assert all(s.state != pb.TASK_STATE_FAILED for s in agent.reporter.of("late"))


async def test_exits_and_unpullable_images_name_their_cause(agent: Agent) -> None:
    agent.assign("crash", service(("sh", "-c", "exit 3")))
    status = await agent.reaches("crash", pb.TASK_STATE_FAILED)
    assert (status.cause, status.exit_code) == (pb.TaskStatus.CAUSE_TASK, 3)

    agent.assign("nowhere", service(("true",), image="127.0.0.1:1/dockyard-nonexistent:latest"))
    status = await agent.reaches("nowhere", pb.TASK_STATE_REJECTED)
    assert status.cause == pb.TaskStatus.CAUSE_HOST


# --- a dockerd that restarts ----------------------------------------------------------------------------

TERM_HONOURING = ("sh", "-c", "trap 'exit 143' TERM; sleep 600 & wait")


@dataclass
class PrivateDockerd:
    """A dockerd of this test's own (its own data, exec root, socket and containerd), so restarting it
    disturbs nobody: the machine's dockerd and the dev cluster's stay as they are.

    It runs in a network namespace of its own, with no bridge and no iptables rules: a dockerd started with
    --bridge=none deletes the host's docker0, which the machine's dockerd needs.
    """

    root: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> Path:
        return self.root / "docker.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> None:
        with open(self.root / "dockerd.log", "ab") as log:
            self.process = subprocess.Popen(
                [
                    "unshare",
                    "--net",
                    "--",
                    "dockerd",
                    f"--data-root={self.root / 'data'}",
                    f"--exec-root={self.root / 'exec'}",
                    f"--host={self.url}",
                    f"--pidfile={self.root / 'dockerd.pid'}",
                    "--bridge=none",
                    "--iptables=false",
                    "--ip-masq=false",
                    "--shutdown-timeout=5",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    async def answering(self) -> None:
        runtime = DockerRuntime(self.url)
        try:

            async def answers() -> bool:
                try:
                    await runtime.host_facts()
                except RuntimeUnavailable:
                    return False
                return True

            await eventually(answers, 30, "the private dockerd to answer", every=0.1)
        finally:
            await runtime.close()

    def dispose(self) -> None:
        """Stops it and removes its directory; a daemon that did not shut down cleanly leaves mounts behind,
        and then the directory stays as it is."""
        self.stop()
        if f" {self.root}/" not in Path("/proc/mounts").read_text():
            shutil.rmtree(self.root, ignore_errors=True)

    def stop(self) -> None:
        """Stops it as `systemctl stop docker` does (SIGTERM: Docker stops its containers and exits)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


@pytest.fixture
async def private_dockerd() -> AsyncIterator[PrivateDockerd]:
    if os.geteuid() != 0 or shutil.which("dockerd") is None or shutil.which("unshare") is None:
        require_docker("a private dockerd needs root, dockerd and unshare")
    # A short path: a unix socket's path is limited to about 100 bytes.
    daemon = PrivateDockerd(Path(tempfile.mkdtemp(prefix="dy-", dir="/tmp")))
    daemon.start()
    try:
        await daemon.answering()
        env = {**os.environ, "DOCKER_HOST": daemon.url}
        script = ROOT / "scripts" / "build-test-image.sh"
        await asyncio.to_thread(subprocess.run, ["bash", str(script)], env=env, check=True, capture_output=True)
        yield daemon
    finally:
        await asyncio.to_thread(daemon.dispose)


async def test_a_container_that_dockerd_stopped_by_restarting_failed_by_the_hosts_fault(
    private_dockerd: PrivateDockerd, tmp_path: Path
) -> None:
    runtime = DockerRuntime(private_dockerd.url, heartbeat_seconds=0.5)
    node_id = "e2e-restart"
    book = TaskBook(tmp_path / "tasks.pb")
    reporter = Recording()
    worker = Worker(runtime, book, reporter, node_id)
    observer = Observer(runtime, book, worker, node_id, relist_period=1.0, stranger_grace=60.0)
    watching = asyncio.create_task(observer.run())
    agent = Agent(runtime, book, reporter, worker, node_id)
    try:
        agent.assign("t1", service(TERM_HONOURING))
        status = await agent.reaches("t1", pb.TASK_STATE_RUNNING)
        await asyncio.to_thread(private_dockerd.stop)
        private_dockerd.start()
        await private_dockerd.answering()
        status = await agent.reaches("t1", pb.TASK_STATE_FAILED, within=30)
        assert status.cause == pb.TaskStatus.CAUSE_HOST, status
        assert "Docker going down or restarting" in status.error
        info = await runtime.inspect(status.container_id)
        assert info.state is ContainerState.EXITED

        # A crash of its own on the restarted daemon is the task's fault again.
        agent.assign("t2", service(("sh", "-c", "exit 4")))
        status = await agent.reaches("t2", pb.TASK_STATE_FAILED, within=30)
        assert (status.cause, status.exit_code) == (pb.TaskStatus.CAUSE_TASK, 4)
    finally:
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)
        await worker.close()
        await runtime.close()


# --- through the whole stack ----------------------------------------------------------------------------


def test_apply_waits_for_health_and_ps_shows_it(cluster: Cluster, tmp_path: Path) -> None:
    spec = tmp_path / "web.yaml"
    spec.write_text(
        textwrap.dedent(
            f"""\
            services:
              web:
                image: {TEST_IMAGE}
                command: ["sh", "-c", "sleep 0.5; {HTTPD[2]}"]
                stop_grace_period: 1s
                healthcheck:
                  http: {{port: 8080, path: /up}}
                  interval: 100ms
                  retries: 2
                  start_period: 10s
                  start_interval: 100ms
              broken:
                image: {TEST_IMAGE}
                command: ["sh", "-c", "{HTTPD[2]}"]
                stop_grace_period: 1s
                restart: {{condition: none}}
                healthcheck:
                  http: {{port: 8080, path: /missing}}
                  interval: 100ms
                  retries: 2
            """
        )
    )
    cluster.cli("apply", "-f", str(spec), "--detach")
    web = wait_for(lambda: _running(cluster, "web"), 30, "web running (healthy)")
    assert (web["health"], web["failing_streak"], web["message"]) == ("healthy", 0, "healthy")
    assert web["health_output"].endswith(":8080/up: 200 ok")
    broken = wait_for(lambda: _failed(cluster, "broken"), 30, "broken failed")
    assert broken["cause"] == "unhealthy"
    assert broken["health"] == "unhealthy"
    assert ":8080/missing: 404" in broken["error"]


def _running(cluster: Cluster, service: str) -> dict[str, Any] | None:
    tasks = cluster.json("ps", service)
    return next((t for t in tasks if t["state"] == "running"), None)


def _failed(cluster: Cluster, service: str) -> dict[str, Any] | None:
    tasks = cluster.json("ps", service, "--all")
    return next((t for t in tasks if t["state"] == "failed"), None)
