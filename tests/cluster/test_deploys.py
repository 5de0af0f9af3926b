"""Issue 9's "Done when", proven on the dev cluster: real dockerds, real agents, the real CLI.

One cluster of three hosts serves the module (zone a: h1; zone b: h2 and h3), and the tests run in file order;
each deploys its own services and removes them at the end, and the one that kills the controller comes last.
Every claim is checked where it is true or false, on each host's own dockerd (`docker -H` on the host's
socket: State.Running, State.Health, StartedAt, labels, env), never only in what the controller believes;
the controller's task records are read beside them through the API (attempts, causes, timestamps).

Continuity ("never fewer than N healthy") is proven twice: by sampling every host's Docker in a bounded loop
while the rollout runs, and by each host's `docker events` stream (start, die, health_status), recorded from
just before the rollout, replayed as a timeline, which sees every change between the samples too.

Health checks are Docker's own (`test`), every 250 ms: each probe is a `docker exec`, which costs this
machine about 0.4 of a core per container at 100 ms (measured), and the hosts share two cores.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest

from deploy.devcluster import DevCluster, find_leftovers
from dockyard import labels
from dockyard.cli.exitcodes import ExitCode
from dockyard.client import Client
from dockyard.task_state import runs_current_spec
from dockyard.timestamps import from_timestamp
from dockyard.v1 import types_pb2 as pb
from tests.cluster.harness import ROOT, ClusterHarness
from tests.polling import wait_for

T = TypeVar("T")

IMAGE = "dockyard-test:latest"
ZONES = {"h1": {"zone": "a"}, "h2": {"zone": "b"}, "h3": {"zone": "b"}}
HEALTHY_FILE = "/tmp/ok"
# A container that is healthy at once, and one that needs a while (a slow start a rollout must wait for).
READY = ["sh", "-c", f"touch {HEALTHY_FILE}; exec sleep 3600"]
SLOW_READY = ["sh", "-c", f"sleep 1; touch {HEALTHY_FILE}; exec sleep 3600"]
NEVER_READY = ["sh", "-c", "exec sleep 3600"]
HEALTH_INTERVAL = "250ms"
ROLLOUT_WITHIN = 120.0  # seconds any one apply or rollout may take before the test fails
DOCKER_HEALTHY = "healthy"


# ----- specs ----------------------------------------------------------------------------------------------------


def healthcheck(start_period: str = "0s") -> dict[str, Any]:
    """The services' check: the file exists (Docker runs it; 2 failures in a row make the container unhealthy)."""
    return {
        "test": ["CMD", "test", "-f", HEALTHY_FILE],
        "interval": HEALTH_INTERVAL,
        "timeout": "2s",
        "retries": 2,
        "start_period": start_period,
    }


def service(
    command: Sequence[str],
    replicas: int,
    *,
    version: str = "1",
    health: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One service of a spec file: the test image, quick stops and restarts, VERSION in its env."""
    body: dict[str, Any] = {
        "image": IMAGE,
        "command": list(command),
        "replicas": replicas,
        "env": {"VERSION": version},
        "stop_grace_period": "0s",
        "restart": {"condition": "any", "delay": "0s"},
    }
    if health is not None:
        body["healthcheck"] = health
    body.update(extra)
    return body


def spec_file(path: Path, **services: dict[str, Any]) -> Path:
    """Writes a spec file (JSON is YAML) with these services and returns its path."""
    path.write_text(json.dumps({"services": services}, indent=2))
    return path


# ----- every host's dockerd ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Box:
    """One container as its host's own dockerd reports it (`docker inspect`)."""

    host: str
    id: str
    service: str
    task_id: str
    revision: int
    running: bool
    health: str  # State.Health.Status; "" without a health check
    started_at: datetime | None
    env: dict[str, str]
    command: list[str]
    image: str

    @property
    def version(self) -> str:
        """The VERSION its env carries (which spec it was made from)."""
        return self.env.get("VERSION", "")

    @property
    def serving(self) -> bool:
        """Running and healthy, by Docker's own account."""
        return self.running and self.health == DOCKER_HEALTHY


async def _docker(url: str, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        "docker", "-H", url, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await process.communicate()
    return process.returncode or 0, out.decode(), err.decode()


def _time(text: str | None) -> datetime | None:
    if not text or text.startswith("0001-01-01"):
        return None
    # Docker writes nanoseconds; Python keeps microseconds.
    head, _, rest = text.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{head}.{(rest + '000000')[:6]}+00:00")


def _box(host: str, data: dict[str, Any]) -> Box:
    config, state = data.get("Config") or {}, data.get("State") or {}
    found = config.get("Labels") or {}
    env = dict(item.split("=", 1) for item in config.get("Env") or [] if "=" in item)
    return Box(
        host=host,
        id=str(data["Id"]),
        service=found.get(labels.SERVICE_NAME, ""),
        task_id=found.get(labels.TASK_ID, ""),
        revision=int(found.get(labels.REVISION, "0") or 0),
        running=bool(state.get("Running")),
        health=str((state.get("Health") or {}).get("Status", "")),
        started_at=_time(state.get("StartedAt")),
        env=env,
        command=list(config.get("Cmd") or []),
        image=str(config.get("Image", "")),
    )


async def _boxes_on(host: str, url: str, service_name: str) -> list[Box]:
    while True:
        code, out, err = await _docker(url, "ps", "-aq", "--no-trunc", "--filter", f"label={labels.SERVICE_NAME}")
        assert code == 0, f"docker ps on {host}: {err}"
        ids = out.split()
        if not ids:
            return []
        code, out, err = await _docker(url, "inspect", *ids)
        # A container removed between the two calls fails the inspect (the others are printed); ask again.
        if code == 0:
            found = [_box(host, data) for data in json.loads(out)]
            return [b for b in found if not service_name or b.service == service_name]
        if "No such" not in err:
            raise AssertionError(f"docker inspect on {host}: {err}")


def boxes(h: ClusterHarness, service_name: str = "") -> list[Box]:
    """Every container of the service (all of ours with ""), running or not, on every host's own dockerd."""

    async def everywhere() -> list[list[Box]]:
        return await asyncio.gather(*(_boxes_on(host, h.cluster.docker_url(host), service_name) for host in h.hosts))

    return [b for per_host in h.run(everywhere()) for b in per_host]


def describe(found: Sequence[Box]) -> str:
    """A readable census for failure messages."""
    rows = [
        f"{b.host} {b.id[:12]} {b.service} rev={b.revision} v{b.version} "
        f"{'running' if b.running else 'stopped'} health={b.health or '-'} started={b.started_at}"
        for b in sorted(found, key=lambda b: (b.host, b.service, b.id))
    ]
    return "\n".join(rows) or "(no containers)"


# ----- each host's docker events ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """One container event of a host's dockerd: start, die, health_status: healthy|unhealthy|starting."""

    at_ns: int
    host: str
    container: str
    action: str
    service: str

    @property
    def at(self) -> datetime:
        """When, as a datetime (UTC; microseconds)."""
        return datetime.fromtimestamp(self.at_ns / 1e9).astimezone()


@dataclass
class Recorder:
    """`docker events` of every host (our containers: start, die, health changes), from `since` on.

    `--since` replays what the daemon kept from that moment, so nothing between the start of the recording
    and the attachment of the stream is lost.
    """

    h: ClusterHarness
    work: Path
    since: float = field(default_factory=time.time)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self) -> Recorder:
        """Starts one `docker events` per host."""
        for host in self.h.hosts:
            with open(self.work / f"events-{host}.jsonl", "wb") as out:
                self.processes[host] = subprocess.Popen(
                    [
                        *("docker", "-H", self.h.cluster.docker_url(host), "events"),
                        *("--since", f"{self.since:.6f}", "--format", "{{json .}}"),
                        *("--filter", "type=container", "--filter", f"label={labels.SERVICE_NAME}"),
                        *("--filter", "event=start", "--filter", "event=die", "--filter", "event=health_status"),
                    ],
                    stdout=out,
                    stderr=subprocess.DEVNULL,
                )
        return self

    def stop(self) -> list[Event]:
        """Stops the streams (after a last moment to deliver) and returns every event, oldest first."""
        time.sleep(0.3)
        for process in self.processes.values():
            process.terminate()
            process.wait(10)
        events: list[Event] = []
        for host in self.processes:
            for line in (self.work / f"events-{host}.jsonl").read_text().splitlines():
                raw = json.loads(line)
                events.append(
                    Event(
                        at_ns=int(raw["timeNano"]),
                        host=host,
                        container=str(raw["id"]),
                        action=str(raw["Action"]),
                        service=str(raw["Actor"]["Attributes"].get(labels.SERVICE_NAME, "")),
                    )
                )
        return sorted(events, key=lambda e: e.at_ns)

    def __enter__(self) -> Recorder:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait(10)


def fewest_serving(initial: set[str], events: Sequence[Event], service_name: str) -> tuple[int, str]:
    """Replays the events over the containers serving (running and healthy) at first; returns the fewest seen at
    any moment, and when, with the event that got there."""
    serving = set(initial)
    fewest, when = len(serving), "at the start"
    for event in events:
        if event.service != service_name:
            continue
        if event.action == f"health_status: {DOCKER_HEALTHY}":
            serving.add(event.container)
        elif event.action == "die" or event.action.startswith("health_status:"):
            serving.discard(event.container)
        if len(serving) < fewest:
            fewest, when = len(serving), f"{event.at.isoformat()} {event.host} {event.container[:12]} {event.action}"
    return fewest, when


# ----- the controller's records -----------------------------------------------------------------------------------


def api(h: ClusterHarness, call: Callable[[Client], Awaitable[T]]) -> T:
    """Runs one call with an admin client of the cluster."""

    async def body() -> T:
        async with Client(h.cluster.controller_address, credentials=h.cluster.admin_credentials()) as client:
            return await call(client)

    return h.run(body())


def get_service(h: ClusterHarness, name: str) -> pb.Service:
    """The service as the controller stores it now."""
    return api(h, lambda c: c.get_service(name))


def created(task: pb.Task) -> tuple[datetime, str]:
    """Orders tasks by creation."""
    return (from_timestamp(task.created_at) or datetime.min.astimezone(), task.id)


def all_tasks(h: ClusterHarness, name: str) -> list[pb.Task]:
    """Every task of the service the controller still keeps, finished ones too, oldest first."""
    return sorted(api(h, lambda c: c.list_tasks(name, include_finished=True)), key=created)


def update_state(h: ClusterHarness, name: str) -> str:
    """The service's rollout state ("COMPLETED", "ROLLBACK_COMPLETED", ...)."""
    state = get_service(h, name).update_status.state
    return str(pb.UpdateStatus.State.Name(state)).removeprefix("STATE_")


def cli_apply(
    h: ClusterHarness, path: Path, *args: str, within: float = ROLLOUT_WITHIN
) -> subprocess.CompletedProcess[str]:
    """`dockyard apply -f PATH` (which waits), whatever it exits with."""
    return h.cli("apply", "-f", str(path), "--timeout", f"{within:g}", *args, check=False, timeout=within + 30)


def popen_apply(h: ClusterHarness, path: Path) -> subprocess.Popen[str]:
    """`dockyard apply -f PATH` in the background, so a test can watch the hosts while it runs."""
    return subprocess.Popen(
        [sys.executable, "-m", "dockyard.cli.main", "apply", "-f", str(path), "--timeout", f"{ROLLOUT_WITHIN:g}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=h.env,
        cwd=ROOT,
    )


def shown(result: subprocess.CompletedProcess[str] | tuple[int | None, str, str]) -> str:
    """A CLI call's exit code and output, for failure messages."""
    if isinstance(result, tuple):
        code, out, err = result
    else:
        code, out, err = result.returncode, result.stdout, result.stderr
    return f"exit {code}\n--- stdout ---\n{out[-3000:]}\n--- stderr ---\n{err[-3000:]}"


def remove(h: ClusterHarness, *names: str) -> None:
    """Removes the services and waits until their containers are gone (a failed test's leftovers too)."""
    h.cli("rm", *names, check=False)


# ----- the module's cluster ---------------------------------------------------------------------------------------


@dataclass
class Deploys:
    """The module's cluster and a directory for its files."""

    h: ClusterHarness
    work: Path


@pytest.fixture(scope="module")
def deploys(tmp_path_factory: pytest.TempPathFactory, dev_cluster_prerequisites: str) -> Iterator[Deploys]:
    """Three hosts (h1 in zone a, h2 and h3 in zone b) for the whole module; torn down, nothing left behind."""
    work = tmp_path_factory.mktemp("deploys")
    cluster = asyncio.run(DevCluster.up(hosts=3, labels=ZONES, images=(dev_cluster_prerequisites,)))
    h = ClusterHarness(cluster, config_home=work / "config")
    started = time.monotonic()
    try:
        yield Deploys(h, work)
    finally:
        if cluster.state_dir.exists():
            print(h.logs())  # shown only when a test fails
        report = asyncio.run(cluster.down())
        leftovers = report["leftovers"] or find_leftovers(cluster.cluster_id, cluster.state_dir)
        print(f"deploys module: {time.monotonic() - started:.1f}s on the cluster")
        assert leftovers == [], f"dev cluster {cluster.cluster_id} left behind: {leftovers}"


# ----- 1. a rollout that fails its health check rolls back by itself --------------------------------------------


def test_unhealthy_rollout_rolls_back_and_apply_says_so(deploys: Deploys) -> None:
    h, work = deploys.h, deploys.work
    name = "web"
    # Defaults (one at a time, stop-first, roll back on the first failure) but a short monitor.
    update = {"monitor": "2s"}
    good = spec_file(
        work / "web-1.json",
        web=service(READY, 3, version="1", health=healthcheck(), update=update),
    )
    # The new version never becomes healthy: its command no longer makes the file the (same) check looks for.
    bad = spec_file(
        work / "web-2.json",
        web=service(NEVER_READY, 3, version="2", health=healthcheck(), update=update),
    )
    try:
        first = cli_apply(h, good)
        assert first.returncode == ExitCode.OK, shown(first)
        before = [b for b in boxes(h, name) if b.running]
        assert len(before) == 3 and all(b.serving and b.version == "1" for b in before), describe(before)
        old_revision = get_service(h, name).spec_revision

        result = cli_apply(h, bad)
        # Read right at apply's exit: exit 3 means rolled back, not "rolling back".
        at_exit = [b for b in boxes(h, name) if b.running]
        assert result.returncode == ExitCode.ROLLED_BACK, shown(result)
        assert "roll" in (result.stdout + result.stderr).lower(), shown(result)
        assert update_state(h, name) == "ROLLBACK_COMPLETED"
        current = get_service(h, name)
        assert current.spec_revision > old_revision + 1, "a rollback is a new revision"
        assert current.change_cause.startswith(f"rollback to revision {old_revision}"), current.change_cause
        assert list(current.spec.command) == READY and current.spec.env["VERSION"] == "1", current.spec
        assert current.also_current_from <= old_revision <= current.also_current_to, current

        after = at_exit
        assert len(after) == 3 and all(b.serving and b.version == "1" for b in after), describe(at_exit)
        for box in after:
            assert box.command == READY and box.image == IMAGE, describe(after)
            in_range = current.also_current_from <= box.revision <= current.also_current_to
            assert box.revision >= current.spec_revision or in_range, f"revision label:\n{describe(after)}"
        assert not [b for b in boxes(h, name) if b.running and b.version == "2"], "a version 2 container still runs"
        # A rollback replaces only what the update changed: the slots it never reached keep their containers.
        kept = {b.id for b in before} & {b.id for b in after}
        assert kept, f"every container was replaced:\n{describe(before)}\n---\n{describe(after)}"

        tasks = all_tasks(h, name)
        live = [t for t in tasks if t.desired_state == pb.DESIRED_STATE_RUNNING]
        assert len(live) == 3, live
        assert all(t.status.state == pb.TASK_STATE_RUNNING and runs_current_spec(current, t) for t in live), live
        assert all(t.status.health.state == pb.TaskHealth.STATE_HEALTHY for t in live), live
        failed = [t for t in tasks if t.revision == old_revision + 1 and t.status.state == pb.TASK_STATE_FAILED]
        assert failed, "the new revision's task failed"
        assert all(t.status.cause == pb.TaskStatus.CAUSE_UNHEALTHY for t in failed), failed
        assert all(t.status.error.startswith("health check failed") for t in failed), failed

        history = h.json("history", name)
        causes = json.dumps(history)
        assert f"rollback to revision {old_revision}" in causes, history
    finally:
        remove(h, name)


# ----- 2. start-first never runs fewer than the replicas, healthy -----------------------------------------------


def test_start_first_update_never_drops_below_the_replica_count(deploys: Deploys) -> None:
    h, work = deploys.h, deploys.work
    name, replicas = "api", 3
    # Each new container needs a second to become healthy: a start-first update must keep its predecessor up
    # all that while. start_period keeps the slow start from counting as failures.
    update = {"order": "start-first", "parallelism": 1, "monitor": "1s"}
    health = healthcheck(start_period="20s")
    v1 = spec_file(work / "api-1.json", api=service(SLOW_READY, replicas, version="1", health=health, update=update))
    v2 = spec_file(work / "api-2.json", api=service(SLOW_READY, replicas, version="2", health=health, update=update))
    try:
        first = cli_apply(h, v1)
        assert first.returncode == ExitCode.OK, shown(first)
        start = [b for b in boxes(h, name) if b.running]
        assert len(start) == replicas and all(b.serving for b in start), describe(start)

        samples: list[list[Box]] = []

        def at_least_replicas_serving() -> list[Box]:
            """One sample of every host; fails the test the moment fewer than `replicas` serve."""
            now = boxes(h, name)
            serving = [b for b in now if b.serving]
            assert len(serving) >= replicas, f"only {len(serving)} healthy during the update:\n{describe(now)}"
            samples.append(now)
            return now

        with Recorder(h, work) as recorder:
            apply = popen_apply(h, v2)
            deadline = time.monotonic() + ROLLOUT_WITHIN
            while apply.poll() is None and time.monotonic() < deadline:
                at_least_replicas_serving()
            out, err = apply.communicate(timeout=30)
            assert apply.returncode == ExitCode.OK, shown((apply.returncode, out, err))

            def all_new() -> bool:
                serving = [b for b in at_least_replicas_serving() if b.serving]
                return len(serving) == replicas and all(b.version == "2" for b in serving)

            wait_for(all_new, 30, "every replica healthy at version 2")
            events = recorder.stop()

        fewest, when = fewest_serving({b.id for b in start}, events, name)
        assert fewest >= replicas, f"{fewest} healthy at {when} (docker events)"
        mixed = [s for s in samples if {b.version for b in s if b.serving} == {"1", "2"}]
        most = max(sum(1 for b in s if b.running) for s in samples)
        assert mixed, f"no sample caught the rollout half-way ({len(samples)} samples)"
        assert most > replicas, "start-first: a successor runs beside its predecessor for a while"
        assert sum(1 for e in events if e.service == name and e.action == "start") == replicas, events
        assert update_state(h, name) == "COMPLETED"
        print(f"start-first: {len(samples)} samples, {len(mixed)} half-way, at most {most} running")
    finally:
        remove(h, name)


# ----- 3. a crash loop backs off -----------------------------------------------------------------------------------

DELAY = 0.2
MAX_DELAY = 1.6
CRASHES = 7  # attempts 0..6: delays 0.2, 0.4, 0.8, 1.6 (capped from here), 1.6, 1.6
MAX_ATTEMPT_SHOWN = 3  # `ps --all` lists the slot's last few tasks: a late attempt is among them
# Timestamps are stored to the microsecond; a little less than the delay is rounding, not an early restart.
ROUNDING = timedelta(milliseconds=5)


def backoff(attempt: int) -> timedelta:
    """The documented delay before the replacement of a task that failed at this attempt."""
    return timedelta(seconds=min(DELAY * 2**attempt, MAX_DELAY))


def test_crash_loop_backs_off_exponentially_up_to_max_delay(deploys: Deploys) -> None:
    h, work = deploys.h, deploys.work
    name = "crash"
    restart = {"condition": "on-failure", "delay": f"{DELAY * 1000:.0f}ms", "max_delay": f"{MAX_DELAY * 1000:.0f}ms"}
    path = spec_file(work / "crash.json", crash=service(["sh", "-c", "exit 3"], 1, restart=restart))
    try:
        with Recorder(h, work) as recorder:
            h.cli("apply", "--detach", "-f", str(path))

            # The controller keeps only a slot's last few finished tasks, so every record is collected as seen.
            seen: dict[str, pb.Task] = {}

            def crashed_enough() -> list[pb.Task]:
                seen.update((t.id, t) for t in all_tasks(h, name))
                tasks = sorted(seen.values(), key=created)
                return tasks if sum(t.status.state == pb.TASK_STATE_FAILED for t in tasks) >= CRASHES else []

            tasks = wait_for(crashed_enough, 60, f"{CRASHES} failed tasks of the crash loop", every=0.2)
            rows = h.json("ps", name, "--all")
            remove(h, name)
            events = recorder.stop()

        failed = [t for t in tasks if t.status.state == pb.TASK_STATE_FAILED][:CRASHES]
        assert [t.attempt for t in failed] == list(range(CRASHES)), [(t.id, t.attempt) for t in failed]
        for task in failed:
            assert task.slot == 1 and task.status.exit_code == 3, task
            assert task.status.cause == pb.TaskStatus.CAUSE_TASK, task
        gaps = []
        for stopped, successor in itertools.pairwise(failed):
            stopped_at, created_at = from_timestamp(stopped.status.timestamp), from_timestamp(successor.created_at)
            assert stopped_at is not None and created_at is not None
            gap = created_at - stopped_at
            gaps.append(gap.total_seconds())
            assert gap >= backoff(stopped.attempt) - ROUNDING, f"attempt {stopped.attempt}: replaced after {gap}"
            uncapped = timedelta(seconds=DELAY * 2**stopped.attempt)
            if uncapped > backoff(stopped.attempt):  # capped: shorter than a delay that kept doubling
                assert gap < uncapped, f"attempt {stopped.attempt}: replaced after {gap}, past the cap"

        # The same gaps on the hosts' own dockerds: from each container's death to the next one's start.
        mine = [e for e in events if e.service == name and e.action in ("start", "die")]
        starts = [e for e in mine if e.action == "start"]
        deaths = [e for e in mine if e.action == "die"]
        assert len(starts) >= CRASHES and len(deaths) >= CRASHES - 1, mine
        for attempt, (death, start) in enumerate(zip(deaths, starts[1:], strict=False)):
            if attempt >= CRASHES - 1:
                break
            gap = timedelta(microseconds=(start.at_ns - death.at_ns) // 1000)
            assert gap >= backoff(attempt) - ROUNDING, f"docker: attempt {attempt} restarted after {gap}"

        # `dockyard ps` shows the reason, the exit code and the attempt.
        by_id = {row["id"]: row for row in rows}
        listed = [task for task in failed if task.id in by_id]
        assert listed and max(t.attempt for t in listed) >= MAX_ATTEMPT_SHOWN, rows
        for task in listed:
            row = by_id[task.id]
            assert row["exit_code"] == 3 and row["attempt"] == task.attempt and row["error"], row
        print(f"crash loop: gaps {', '.join(f'{g:.2f}' for g in gaps)} s")
    finally:
        remove(h, name)


# ----- 4. plan predicts what apply does ----------------------------------------------------------------------------


def planned(plan: dict[str, Any], name: str, kind: str) -> dict[int, str]:
    """Slot -> node name of the tasks of one kind ("start" or "stop") the plan shows for a service."""
    [entry] = [s for s in plan["services"] if s["name"] == name]
    return {int(t["slot"]): t["node"] for t in entry["tasks"] if t["kind"] == kind}


def plan(h: ClusterHarness, path: Path, expect: ExitCode) -> dict[str, Any]:
    """`dockyard plan -f PATH --output json`, which must exit with `expect`."""
    result = h.cli("plan", "-f", str(path), "--output", "json", check=False)
    assert result.returncode == expect, shown(result)
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def placed(h: ClusterHarness, name: str, revision: int = 0) -> dict[int, str]:
    """Slot -> host of the service's live tasks (at `revision` or later), per the hosts' dockerds."""
    tasks = {t.id: t for t in all_tasks(h, name) if t.desired_state == pb.DESIRED_STATE_RUNNING}
    found = [b for b in boxes(h, name) if b.running and b.task_id in tasks and b.revision >= revision]
    return {tasks[b.task_id].slot: b.host for b in found}


def test_plan_predicts_the_nodes_apply_uses(deploys: Deploys) -> None:
    h, work = deploys.h, deploys.work
    # Uneven load first, so placement is a real choice: two tasks held on h2.
    anchor = service(["sleep", "3600"], 2, placement={"constraints": ["node.hostname == h2"]})
    spec_file(work / "anchor.json", anchor=anchor)
    web = service(["sleep", "3600"], 4)
    zoned = service(["sleep", "3600"], 3, placement={"constraints": ["engine.labels.zone == b"]})
    create = spec_file(work / "plan-1.json", anchor=anchor, pweb=web, pzoned=zoned)
    # An update that scales and changes the spec: a stop-first rollout of every slot and two new ones.
    changed = {**web, "replicas": 6, "env": {"VERSION": "2"}}
    update = spec_file(work / "plan-2.json", anchor=anchor, pweb=changed, pzoned=zoned)
    try:
        h.cli("apply", "-f", str(work / "anchor.json"))

        first = plan(h, create, ExitCode.CHANGES)
        assert planned(first, "anchor", "start") == {} and planned(first, "anchor", "stop") == {}
        applied = cli_apply(h, create, "--if-revision", str(first["state_revision"]))
        assert applied.returncode == ExitCode.OK, shown(applied)
        for name in ("pweb", "pzoned"):
            assert placed(h, name) == planned(first, name, "start"), f"{name}: plan\n{json.dumps(first, indent=1)}"

        # The state moved since the first plan: applying against it is refused, and changes nothing.
        stale = cli_apply(h, update, "--if-revision", str(first["state_revision"]))
        assert stale.returncode == ExitCode.ERROR, shown(stale)
        assert get_service(h, "pweb").spec.replicas == 4

        second = plan(h, update, ExitCode.CHANGES)
        live_before = {t.id for t in all_tasks(h, "pweb") if t.desired_state == pb.DESIRED_STATE_RUNNING}
        [entry] = [s for s in second["services"] if s["name"] == "pweb"]
        stopped = {t["task_id"] for t in entry["tasks"] if t["kind"] == "stop"}
        applied = cli_apply(h, update, "--if-revision", str(second["state_revision"]))
        assert applied.returncode == ExitCode.OK, shown(applied)
        revision = get_service(h, "pweb").spec_revision
        assert placed(h, "pweb", revision) == planned(second, "pweb", "start"), json.dumps(second, indent=1)
        assert stopped == live_before, "the plan stops every task of the old spec"
        assert planned(second, "pzoned", "start") == {} and planned(second, "pzoned", "stop") == {}

        plan(h, update, ExitCode.OK)  # nothing left to change
    finally:
        remove(h, "anchor", "pweb", "pzoned")


# ----- 5. depends_on across hosts ----------------------------------------------------------------------------------


def test_depends_on_holds_across_hosts(deploys: Deploys) -> None:
    h, work = deploys.h, deploys.work
    # db on h1 (zone a), needing a second to be healthy; web on h2 and h3 (zone b), waiting for it.
    db = service(
        SLOW_READY,
        1,
        health=healthcheck(start_period="20s"),
        placement={"constraints": ["engine.labels.zone == a"]},
    )
    web = service(
        ["sleep", "3600"],
        2,
        placement={"constraints": ["engine.labels.zone == b"], "max_replicas_per_node": 1},
        depends_on={"db": {"condition": "service_healthy"}},
    )
    path = spec_file(work / "depends.json", db=db, dweb=web)
    try:
        order = plan(h, path, ExitCode.CHANGES)
        ranks = {s["name"]: s for s in order["services"]}
        assert ranks["db"]["start_order"] < ranks["dweb"]["start_order"], order
        assert ranks["dweb"]["depends_on"] == ["db"], order

        waiting_seen: list[str] = []
        with Recorder(h, work) as recorder:
            apply = popen_apply(h, path)
            deadline = time.monotonic() + ROLLOUT_WITHIN
            while apply.poll() is None and time.monotonic() < deadline:
                shown_now = h.cli("service", "inspect", "dweb", "--output", "json", check=False).stdout
                shown_now += h.cli("ps", "dweb", "--output", "json", check=False).stdout
                if "waiting for db" in shown_now:
                    waiting_seen.append(shown_now)
                time.sleep(0.2)
            out, err = apply.communicate(timeout=30)
            assert apply.returncode == ExitCode.OK, shown((apply.returncode, out, err))
            events = recorder.stop()

        dbs = [b for b in boxes(h, "db") if b.running]
        webs = [b for b in boxes(h, "dweb") if b.running]
        assert [b.host for b in dbs] == ["h1"] and all(b.serving for b in dbs), describe(dbs)
        assert sorted(b.host for b in webs) == ["h2", "h3"], describe(webs)
        healthy = [e for e in events if e.service == "db" and e.action == f"health_status: {DOCKER_HEALTHY}"]
        assert healthy, events
        db_healthy_at = healthy[0].at_ns
        web_starts = [e for e in events if e.service == "dweb" and e.action == "start"]
        assert len(web_starts) == 2, events
        assert all(e.at_ns > db_healthy_at for e in web_starts), (
            f"web started before db was healthy ({healthy[0]}):\n{web_starts}"
        )
        db_started = min(b.started_at for b in dbs if b.started_at is not None)
        for box in webs:  # Docker's own StartedAt of each web container, on h2 and h3
            assert box.started_at is not None and box.started_at > db_started + timedelta(seconds=1), describe(webs)
        assert waiting_seen, "while db was not healthy, web said it was waiting for db"
    finally:
        remove(h, "dweb", "db")


# ----- 6. a controller restart in the middle of a rollout ----------------------------------------------------------


def test_rollout_resumes_after_the_controller_is_killed_half_way(deploys: Deploys) -> None:
    h, work = deploys.h, deploys.work
    name, replicas = "resume", 3
    # One at a time, 2 s between batches: time enough to kill the controller after the first slot.
    update = {"parallelism": 1, "delay": "2s", "monitor": "0s"}
    v1 = spec_file(work / "resume-1.json", resume=service(READY, replicas, health=healthcheck(), update=update))
    v2 = spec_file(
        work / "resume-2.json", resume=service(READY, replicas, version="2", health=healthcheck(), update=update)
    )
    try:
        first = cli_apply(h, v1)
        assert first.returncode == ExitCode.OK, shown(first)
        h.cli("apply", "--detach", "-f", str(v2))

        def half_way() -> list[Box]:
            now = [b for b in boxes(h, name) if b.serving]
            new = [b for b in now if b.version == "2"]
            return now if 1 <= len(new) < replicas else []

        wait_for(half_way, 60, "the first slot updated")
        h.run(h.cluster.stop_controller(signal.SIGKILL))
        mid = [b for b in boxes(h, name) if b.running]
        done_before = {b.id for b in mid if b.version == "2"}
        assert done_before and len(done_before) < replicas, f"killed half-way:\n{describe(mid)}"

        h.start_controller()

        def all_new() -> list[Box]:
            now = [b for b in boxes(h, name) if b.running]
            return now if len(now) == replicas and all(b.serving and b.version == "2" for b in now) else []

        after = wait_for(all_new, 90, "the rollout to finish after the controller came back")
        assert done_before <= {b.id for b in after}, "the slots updated before the restart were not redone"
        wait_for(lambda: update_state(h, name) == "COMPLETED", 30, "the rollout to be recorded complete")
        current = get_service(h, name)
        live = [t for t in all_tasks(h, name) if t.desired_state == pb.DESIRED_STATE_RUNNING]
        assert sorted(t.slot for t in live) == [1, 2, 3] and all(runs_current_spec(current, t) for t in live), live
        new_tasks = [t for t in all_tasks(h, name) if t.revision >= current.spec_revision]
        assert len(new_tasks) == replicas, f"a slot was updated twice: {new_tasks}"
        again = cli_apply(h, v2)
        assert again.returncode == ExitCode.OK, shown(again)
    finally:
        remove(h, name)
