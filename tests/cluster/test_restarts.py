"""Restarts of the agent, the controller and dockerd, checked by counting containers on every host's own dockerd.

Every check reads each host's dockerd directly (ClusterHarness.containers), never only what the controller
believes: a restart must not restart, recreate, duplicate or remove a container it should have left alone.
Waiting is always polling against a deadline with short sleeps.
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from agent.config import AgentConfig
from agent.runtime.base import ContainerSpec, ContainerState, RuntimeFailure
from agent.runtime.docker import DockerRuntime
from deploy.devcluster import procs
from dockyard.v1 import agent_pb2 as apb
from tests.cluster.harness import ClusterHarness
from tests.polling import wait_for

IMAGE = "dockyard-test:latest"
SERVICE = "sleeper"
PROBE = "probe"
REPLICAS = 3
SERVICE_LABEL = "dockyard.service.name"
TASK_LABEL = "dockyard.task.id"
# The agents run with the defaults: a periodic re-list every 5 s, strangers (our labels, no task) reaped after 30 s.
RELIST = AgentConfig().relist_period
STRANGER_GRACE = AgentConfig().stranger_grace
# What the agent logs when a session opens, and when it loses one or fails to dial (it then re-dials).
SESSION_OPEN = "controller session open"
SESSION_LOST = "controller session lost"
OUTAGE = 20.0

SLEEPER_SPEC = f"""\
services:
  {SERVICE}:
    image: {IMAGE}
    command: ["sleep", "3600"]
    replicas: {REPLICAS}
    stop_grace_period: 1s
    restart: {{condition: any, delay: 0s}}
"""
# One task pinned to every node: its replacement always lands on the same host, so a container killed there
# tells whether that host's agent hears Docker's events.
PROBE_SPEC = f"""\
services:
  {PROBE}:
    image: {IMAGE}
    command: ["sleep", "3600"]
    mode: global
    stop_grace_period: 1s
    restart: {{condition: any, delay: 0s}}
"""


@dataclass(frozen=True)
class Seen:
    """One container as its host's own dockerd reports it."""

    host: str
    service: str  # "" for a container Dockyard did not make
    task_id: str
    state: ContainerState
    started_at: datetime | None
    restart_count: int


Census = dict[str, Seen]  # container id -> what its host's dockerd says


# ----- polling ------------------------------------------------------------------------------------------------------


# ----- what every host's dockerd holds ------------------------------------------------------------------------------


def census(harness: ClusterHarness) -> Census:
    """Every container on every host's dockerd, ours or not, running or not."""
    found: Census = {}
    for host in harness.hosts:
        for info in harness.containers(host):
            assert info.id not in found, f"container {info.id[:12]} on two hosts?"
            found[info.id] = Seen(
                host=host,
                service=info.labels.get(SERVICE_LABEL, ""),
                task_id=info.labels.get(TASK_LABEL, ""),
                state=info.state,
                started_at=info.started_at,
                restart_count=info.restart_count,
            )
    return found


def of(seen: Census, service: str) -> Census:
    """The containers of one service."""
    return {cid: s for cid, s in seen.items() if s.service == service}


def running(seen: Census) -> Census:
    """The running containers."""
    return {cid: s for cid, s in seen.items() if s.state == ContainerState.RUNNING}


def describe(seen: Census) -> str:
    """A readable census for failure messages."""
    rows = [
        f"{s.host} {cid[:12]} {s.service or '-'} {s.state} started={s.started_at} restarts={s.restart_count}"
        for cid, s in sorted(seen.items(), key=lambda item: (item[1].host, item[0]))
    ]
    return "\n".join(rows) or "(no containers)"


def assert_same(harness: ClusterHarness, before: Census, when: str) -> Census:
    """Every host holds exactly the containers of `before`, each as it was (id, state, StartedAt, RestartCount)."""
    now = census(harness)
    if now != before:
        raise AssertionError(
            f"containers changed {when}:\n--- before ---\n{describe(before)}\n--- now ---\n{describe(now)}\n"
            f"{harness.logs()}"
        )
    return now


def hold_steady(harness: ClusterHarness, before: Census, seconds: float, when: str) -> None:
    """Polls every host's containers for `seconds` and fails the moment any of them differs from `before`."""
    deadline = time.monotonic() + seconds

    def still_same_until_deadline() -> bool:
        assert_same(harness, before, when)
        return time.monotonic() > deadline

    wait_for(still_same_until_deadline, seconds + 60, f"{seconds:g}s of watching", every=0.5)


# ----- the CLI, agents and their logs -------------------------------------------------------------------------------


def node_statuses(harness: ClusterHarness) -> dict[str, str]:
    """Host name -> node status per `dockyard nodes`; empty while the controller does not answer."""
    result = harness.cli("nodes", "--output", "json", check=False, timeout=30)
    if result.returncode != 0:
        return {}
    return {n["hostname"]: n["status"] for n in json.loads(result.stdout)}


def all_ready(harness: ClusterHarness) -> bool:
    """Tells whether the controller reports every host's node ready."""
    statuses = node_statuses(harness)
    return all(statuses.get(host) == "ready" for host in harness.hosts)


def log_offset(harness: ClusterHarness, host: str) -> int:
    """The current end of the host's agent log (it is appended to across agent restarts)."""
    return harness.cluster.paths(host).agent_log.stat().st_size


def log_since(harness: ClusterHarness, host: str, offset: int) -> str:
    """What the host's agent logged after `offset`."""
    with harness.cluster.paths(host).agent_log.open("rb") as handle:
        handle.seek(offset)
        return handle.read().decode(errors="replace")


def agent_ref(harness: ClusterHarness, host: str) -> procs.ProcRef:
    """The host's agent process as the cluster recorded it."""
    ref = harness.cluster.record.hosts[host].agent
    assert ref is not None, f"{host} has no agent"
    return ref


def wait_new_session(harness: ClusterHarness, host: str, offset: int, within: float = 30.0) -> None:
    """Waits until the host's (new) agent has opened a session since `offset` and the controller calls it ready."""

    def opened() -> bool:
        return SESSION_OPEN in log_since(harness, host, offset) and node_statuses(harness).get(host) == "ready"

    wait_for(opened, within, f"{host}'s agent to open a new session and its node to be ready")


def task_book(harness: ClusterHarness, host: str) -> Path:
    """The agent's persisted task book (its --state-dir/tasks.pb)."""
    return harness.cluster.paths(host).agent_state / "tasks.pb"


def book_task_ids(path: Path) -> set[str]:
    """The ids of the tasks in a persisted task book; empty when there is none."""
    if not path.exists():
        return set()
    return {t.id for t in apb.Assignments.FromString(path.read_bytes()).tasks}


def ps_all(harness: ClusterHarness, service: str = SERVICE) -> list[dict[str, Any]]:
    """Every task of the service, finished ones too."""
    tasks: list[dict[str, Any]] = harness.json("ps", service, "--all")
    return tasks


# ----- deploying and checking the service ---------------------------------------------------------------------------


def deploy(harness: ClusterHarness, tmp_path: Path) -> Census:
    """Applies the service; returns the census of every host once its replicas run, one per host."""
    spec = tmp_path / "sleeper.yaml"
    spec.write_text(SLEEPER_SPEC)
    harness.cli("apply", "-f", str(spec))
    before = census(harness)
    sleepers = of(before, SERVICE)
    assert len(running(sleepers)) == REPLICAS == len(sleepers), describe(before)
    assert sorted(s.host for s in sleepers.values()) == harness.hosts, "spread: one replica per host"
    assert all(s.restart_count == 0 and s.started_at is not None for s in before.values()), describe(before)
    assert_tasks_match(harness, sleepers)
    return before


def deploy_probe(harness: ClusterHarness, tmp_path: Path) -> Census:
    """Adds the global probe service; returns the census once a probe runs on every host."""
    spec = tmp_path / "probe.yaml"
    spec.write_text(PROBE_SPEC)
    # --detach: `apply` never returns for a global service (it waits for `replicas`, 0, tasks to run).
    harness.cli("apply", "--detach", "-f", str(spec))

    def every_host_probed() -> Census:
        now = census(harness)
        probes = of(now, PROBE)
        hosts = sorted(s.host for s in running(probes).values())
        return now if hosts == harness.hosts and len(probes) == len(hosts) else {}

    return wait_for(every_host_probed, 60, "a running probe on every host")


def assert_tasks_match(harness: ClusterHarness, containers: Census) -> None:
    """`ps --all` shows exactly one task per container, each running on the container's host: none replaced."""
    tasks = ps_all(harness)
    assert len(tasks) == REPLICAS, f"a task was replaced or added: {tasks}"
    assert all(t["state"] == "running" and t["desired_state"] == "running" for t in tasks), tasks
    assert {t["container_id"]: t["node"] for t in tasks} == {cid: s.host for cid, s in containers.items()}, tasks
    assert {t["id"] for t in tasks} == {s.task_id for s in containers.values()}, tasks


# ----- containers Dockyard did not make -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Plain:
    """A container someone else started on a host, without any Dockyard label."""

    host: str
    container_id: str
    created: float  # time.monotonic() when it was started


async def _start_plain(url: str, name: str) -> str:
    runtime = DockerRuntime(url)
    try:
        container_id = await runtime.create(ContainerSpec(name=name, image=IMAGE, command=("sleep", "3600")))
        await runtime.start(container_id)
        return container_id
    finally:
        await runtime.close()


async def _remove(url: str, container_id: str) -> None:
    runtime = DockerRuntime(url)
    try:
        await runtime.remove(container_id)
    finally:
        await runtime.close()


@pytest.fixture
def plain_containers(dev_cluster: ClusterHarness) -> Iterator[list[Plain]]:
    """One plain container (none of our labels) on every host's dockerd, started by hand; removed by this fixture."""
    made: list[Plain] = []
    try:
        for host in dev_cluster.hosts:
            url = dev_cluster.cluster.docker_url(host)
            container_id = dev_cluster.run(_start_plain(url, f"plain-{host}"))
            made.append(Plain(host, container_id, time.monotonic()))
        for plain in made:
            [info] = [c for c in dev_cluster.containers(plain.host) if c.id == plain.container_id]
            assert info.state == ContainerState.RUNNING
            assert not any(key.startswith("dockyard.") for key in info.labels), info.labels
        yield made
    finally:
        for plain in made:
            # The cluster's teardown would take it with the host anyway; a dockerd that is down is no error here.
            with contextlib.suppress(RuntimeFailure):
                dev_cluster.run(_remove(dev_cluster.cluster.docker_url(plain.host), plain.container_id))


def assert_plain_untouched(harness: ClusterHarness, plain: list[Plain], before: Census) -> None:
    """Every plain container still runs, as it was: same id, StartedAt, RestartCount 0."""
    now = census(harness)
    for p in plain:
        assert p.container_id in now, f"the plain container on {p.host} is gone:\n{describe(now)}"
        seen = now[p.container_id]
        assert seen == before[p.container_id], f"the plain container on {p.host} changed: {seen}"
        assert seen.state == ContainerState.RUNNING and seen.restart_count == 0 and seen.service == ""


# ----- 1. agent restarts --------------------------------------------------------------------------------------------


def test_agent_sigkilled_ten_times_keeps_every_container(dev_cluster: ClusterHarness, tmp_path: Path) -> None:
    before = deploy(dev_cluster, tmp_path)
    host = "h2"
    pids: list[int] = []
    for round_ in range(1, 11):
        offset = log_offset(dev_cluster, host)
        dev_cluster.restart_agent(host)  # SIGKILL, then start again
        pids.append(agent_ref(dev_cluster, host).pid)
        wait_new_session(dev_cluster, host, offset)
        assert_same(dev_cluster, before, f"after SIGKILL {round_} of {host}'s agent")
    assert len(set(pids)) == 10, f"every restart runs a new agent process: {pids}"

    # A re-list period later the agent has looked at every container again: still nothing to do.
    hold_steady(dev_cluster, before, RELIST + 1, "after the agent restarts")
    now = assert_same(dev_cluster, before, "at the end")
    assert len(running(now)) == len(now) == REPLICAS, describe(now)
    assert all(s.restart_count == 0 for s in now.values()), describe(now)
    assert_tasks_match(dev_cluster, of(before, SERVICE))
    assert all_ready(dev_cluster)


# ----- 2. lost local state ------------------------------------------------------------------------------------------


def test_agent_without_its_task_book_adopts_containers_from_labels(dev_cluster: ClusterHarness, tmp_path: Path) -> None:
    before = deploy(dev_cluster, tmp_path)
    host = "h3"
    book = task_book(dev_cluster, host)
    mine = {s.task_id for s in of(before, SERVICE).values() if s.host == host}
    assert len(mine) == 1
    assert book_task_ids(book) == mine, "the agent keeps its tasks in <state>/agent/tasks.pb"

    dev_cluster.stop_agent(host)
    book.unlink()
    offset = log_offset(dev_cluster, host)
    dev_cluster.start_agent(host)
    wait_new_session(dev_cluster, host, offset)
    # The book is rebuilt from the controller's full set; the task's container is found by its labels.
    wait_for(lambda: book_task_ids(book) == mine, 15, f"{host}'s agent to rebuild its task book")

    hold_steady(dev_cluster, before, RELIST + 1, "after the agent lost its task book")
    assert_tasks_match(dev_cluster, of(before, SERVICE))
    assert "reaping" not in log_since(dev_cluster, host, offset), "the agent reaped a container"


# ----- 3. containers without our labels -----------------------------------------------------------------------------


def test_containers_without_our_labels_survive_agent_restarts(
    dev_cluster: ClusterHarness, plain_containers: list[Plain], tmp_path: Path
) -> None:
    before = deploy(dev_cluster, tmp_path)
    assert len(before) == REPLICAS + len(plain_containers), describe(before)
    host = "h1"

    offset = log_offset(dev_cluster, host)
    dev_cluster.restart_agent(host)
    wait_new_session(dev_cluster, host, offset)
    assert_same(dev_cluster, before, f"after SIGKILL of {host}'s agent")

    # The hardest look at unknown containers: an agent with no task book adopts what carries its labels.
    dev_cluster.stop_agent(host)
    task_book(dev_cluster, host).unlink()
    offset = log_offset(dev_cluster, host)
    dev_cluster.start_agent(host)
    wait_new_session(dev_cluster, host, offset)

    hold_steady(dev_cluster, before, RELIST + 1, f"after {host}'s agent restarts")
    assert_plain_untouched(dev_cluster, plain_containers, before)
    assert_tasks_match(dev_cluster, of(before, SERVICE))


# ----- 4. controller outage -----------------------------------------------------------------------------------------


class NodeDownAfterControllerRestart(AssertionError):
    """The known bug: a restarted controller declares a node down whose agent is still in its re-dial backoff."""


# Beyond the node grace (3 x 1 s); the agent is frozen (SIGSTOP) meanwhile, so its own redial delay does not matter.
SLOW_REDIAL = 4.0


def test_controller_outage_changes_no_container(
    dev_cluster: ClusterHarness, plain_containers: list[Plain], tmp_path: Path
) -> None:
    before = deploy(dev_cluster, tmp_path)
    agents = {host: agent_ref(dev_cluster, host) for host in dev_cluster.hosts}
    offsets = {host: log_offset(dev_cluster, host) for host in dev_cluster.hosts}

    dev_cluster.stop_controller()
    stopped = time.monotonic()
    # The outage lasts at least OUTAGE seconds, until every agent logged a lost session and failed re-dials, and
    # until the plain containers are older than the stranger grace plus a re-list (a reaper that looked past our
    # labels would have struck by then); every host's containers are watched all the while.
    old_enough = max(p.created for p in plain_containers) + STRANGER_GRACE + RELIST + 1
    redialling: set[str] = set()

    def outage_over() -> bool:
        assert_same(dev_cluster, before, "while the controller is down")
        redialling.update(
            h for h in dev_cluster.hosts if log_since(dev_cluster, h, offsets[h]).count(SESSION_LOST) >= 3
        )
        now = time.monotonic()
        return now - stopped >= OUTAGE and now >= old_enough and redialling == set(dev_cluster.hosts)

    wait_for(outage_over, OUTAGE + STRANGER_GRACE, "every agent re-dialling through the outage", every=0.5)
    assert all(procs.is_alive(ref) for ref in agents.values()), "an agent exited while the controller was away"
    assert_plain_untouched(dev_cluster, plain_containers, before)

    # One agent is still waiting out its re-dial backoff when the controller comes back (frozen for SLOW_REDIAL s,
    # which its own backoff may take anyway): deterministic, where the agents' jitter makes it so only by chance.
    slow = "h2"
    dev_cluster.stop_agent(slow, signal.SIGSTOP)
    try:
        dev_cluster.start_controller()
        back = time.monotonic()
        wait_for(lambda: time.monotonic() - back >= SLOW_REDIAL, SLOW_REDIAL + 1, f"{slow}'s re-dial delay")
    finally:
        dev_cluster.stop_agent(slow, signal.SIGCONT)
    wait_for(lambda: all_ready(dev_cluster), 30, "every node ready after the controller came back")
    wait_for(lambda: all(t["state"] == "running" for t in dev_cluster.json("ps", SERVICE)), 15, "every task running")

    after = census(dev_cluster)
    tasks = ps_all(dev_cluster)
    if after != before or len(tasks) != REPLICAS:
        controller_log = (dev_cluster.cluster.state_dir / "controller.log").read_text()
        restarted = controller_log[controller_log.rindex("controller serving") :]
        failure = NodeDownAfterControllerRestart if "node down" in restarted else AssertionError
        raise failure(
            f"containers or tasks changed after the controller came back:\n--- before ---\n{describe(before)}\n"
            f"--- now ---\n{describe(after)}\n--- ps --all ---\n"
            + "\n".join(f"{t['node']} {t['id']} {t['state']}/{t['desired_state']} {t['error']}" for t in tasks)
            + f"\n--- controller since its restart ---\n{restarted}"
        )
    assert_tasks_match(dev_cluster, of(before, SERVICE))
    hold_steady(dev_cluster, before, RELIST + 1, "after the controller outage")
    assert_plain_untouched(dev_cluster, plain_containers, before)
    assert_tasks_match(dev_cluster, of(before, SERVICE))
    assert all(procs.is_alive(ref) for ref in agents.values()), "an agent exited"


# ----- 5. dockerd restart -------------------------------------------------------------------------------------------


async def _kill(url: str, container_id: str) -> None:
    runtime = DockerRuntime(url)
    try:
        await runtime.stop(container_id, 0)  # SIGKILL at once: exit code 137
    finally:
        await runtime.close()


# A re-list period far longer than the waits below: what converges the tasks is the agent's event stream and the
# re-list it does whenever that stream reconnects, not the periodic one.
SLOW_RELIST = 30.0


@pytest.mark.parametrize("dev_cluster", [{"relist_period": SLOW_RELIST}], indirect=True)
def test_dockerd_restart_converges_back_to_three_replicas(dev_cluster: ClusterHarness, tmp_path: Path) -> None:
    deploy(dev_cluster, tmp_path)
    before = deploy_probe(dev_cluster, tmp_path)
    host = "h1"
    agent = agent_ref(dev_cluster, host)
    offset = log_offset(dev_cluster, host)
    stopped = {cid for cid, s in before.items() if s.host == host}
    elsewhere = {cid: s for cid, s in before.items() if s.host != host}

    started = time.monotonic()
    dev_cluster.restart_docker(host)
    restart_seconds = time.monotonic() - started
    after_restart = census(dev_cluster)
    assert not any(after_restart[c].state == ContainerState.RUNNING for c in stopped if c in after_restart), (
        f"Docker stops the containers when it stops (no live-restore):\n{describe(after_restart)}"
    )

    def converged() -> Census:
        """The census once the service is whole again; empty (falsy) until then."""
        now = census(dev_cluster)
        sleepers, probes = of(now, SERVICE), of(now, PROBE)
        if len(running(sleepers)) != REPLICAS or len(sleepers) != REPLICAS:
            return {}  # not yet 3 running, or a stopped container not yet removed
        probe_hosts = sorted(s.host for s in running(probes).values())
        if probe_hosts != dev_cluster.hosts or len(probes) != len(dev_cluster.hosts):
            return {}
        tasks = dev_cluster.json("ps", SERVICE)
        if sorted(t["container_id"] for t in tasks if t["state"] == "running") != sorted(sleepers):
            return {}
        return now

    now = wait_for(converged, 60, "3 running sleepers (and a probe per host) after dockerd's restart")
    converge_seconds = time.monotonic() - started - restart_seconds
    assert not stopped & set(running(now)), "the stopped containers are replaced, never restarted"
    assert not stopped & set(now), "the stopped containers are removed"
    for cid, seen in elsewhere.items():
        assert now.get(cid) == seen, f"a container on another host changed: {now.get(cid)} was {seen}"
    assert procs.is_alive(agent) and agent_ref(dev_cluster, host) == agent, f"{host}'s agent did not survive"
    assert node_statuses(dev_cluster).get(host) == "ready"
    logged = log_since(dev_cluster, host, offset)
    assert "docker event stream" in logged and "reconnecting" in logged, logged[-3000:]

    # The event stream is live again: a container killed on that host is seen within seconds, long before the
    # next periodic re-list could notice it.
    [(victim, _)] = [(cid, s) for cid, s in running(of(now, PROBE)).items() if s.host == host]
    killed = time.monotonic()
    dev_cluster.run(_kill(dev_cluster.cluster.docker_url(host), victim))

    def probe_replaced() -> bool:
        probes = running(of(census(dev_cluster), PROBE))
        return victim not in probes and any(s.host == host for s in probes.values())

    wait_for(probe_replaced, SLOW_RELIST / 3, f"the probe killed on {host} to be replaced (Docker events)")
    reaction = time.monotonic() - killed
    failed = [t for t in ps_all(dev_cluster, PROBE) if t["container_id"] == victim]
    assert failed and failed[0]["state"] == "failed" and "137" in failed[0]["error"], failed
    print(f"dockerd restart {restart_seconds:.1f}s, converged {converge_seconds:.1f}s after, kill seen {reaction:.1f}s")
