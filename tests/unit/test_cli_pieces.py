"""The CLI's pure pieces: rollout progress, table views, controller resolution, backoff, task states, waiting."""

from __future__ import annotations

import asyncio
import json
import random
from datetime import UTC, datetime
from pathlib import Path

import click
import pytest

from dockyard.backoff import Backoff
from dockyard.cli.context import (
    DEFAULT_CONTROLLER,
    LocalContext,
    config_dir,
    read_context,
    resolve_controller,
    write_context,
)
from dockyard.cli.polling import poll_until
from dockyard.cli.rollout import Progress, progress
from dockyard.cli.views import node_view, port_text, service_view, task_view
from dockyard.cli.workloads import parse_if_revision
from dockyard.client import ApiError
from dockyard.clock import FakeClock
from dockyard.task_state import TERMINAL_FROM, can_move, desired_name, is_terminal, state_name
from dockyard.timestamps import to_timestamp
from dockyard.v1 import types_pb2 as pb

CREATED = datetime(2026, 2, 1, 8, 0, tzinfo=UTC)
UPDATED = datetime(2026, 2, 1, 9, 30, tzinfo=UTC)
ALL_STATES: list[pb.TaskState.ValueType] = list(pb.TaskState.values())


def make_service(replicas: int = 3, image: str = "app:2", revision: int = 2, spec_revision: int = 2) -> pb.Service:
    service = pb.Service(id="svc", name="web", revision=revision, spec_revision=spec_revision)
    service.spec.name = "web"
    service.spec.image = image
    service.spec.replicas = replicas
    service.spec.ports.add(host_port=8080, container_port=80, protocol="tcp")
    return service


def make_task(
    slot: int,
    state: pb.TaskState.ValueType = pb.TASK_STATE_RUNNING,
    desired: pb.DesiredState.ValueType = pb.DESIRED_STATE_RUNNING,
    service: pb.Service | None = None,
    node: str = "n1",
    message: str = "",
    error: str = "",
) -> pb.Task:
    service = service or make_service()
    task = pb.Task(
        id=f"task-{slot}-{state}-{desired}",
        service_id=service.id,
        service_name=service.name,
        slot=slot,
        revision=service.revision,
        node_id=node,
        desired_state=desired,
    )
    task.status.state = state
    task.status.message = message
    task.status.error = error
    return task


# --- rollout progress -----------------------------------------------------------------------------------


def test_done_when_exactly_the_desired_tasks_run_at_the_current_spec() -> None:
    service = make_service(replicas=3)
    result = progress(service, [make_task(slot) for slot in (1, 2, 3)])
    assert (result.running, result.stale, result.stopping) == (3, 0, 0)
    assert result.done
    assert result.line() == "web: 3/3 updated, 3 healthy"


def test_not_done_with_too_few_or_too_many_running() -> None:
    service = make_service(replicas=3)
    assert not progress(service, [make_task(1), make_task(2)]).done
    assert not progress(service, [make_task(slot) for slot in (1, 2, 3, 4)]).done


def test_a_service_scaled_to_zero_with_nothing_left_is_done() -> None:
    assert progress(make_service(replicas=0), []).done


def test_a_task_from_before_a_scale_runs_the_current_spec() -> None:
    service = make_service(replicas=3, revision=2, spec_revision=1)  # revision 2 only scaled revision 1
    old_count = make_service(replicas=1, revision=1, spec_revision=1)
    result = progress(service, [make_task(slot, service=old_count) for slot in (1, 2, 3)])
    assert result.stale == 0
    assert result.done


def test_tasks_on_an_older_spec_count_as_stale_whatever_their_state() -> None:
    service = make_service(replicas=2)
    old = make_service(image="app:1", revision=1, spec_revision=1)
    tasks = [
        make_task(1),
        make_task(2, service=old),
        make_task(3, state=pb.TASK_STATE_STARTING, service=old),
    ]
    result = progress(service, tasks)
    assert (result.running, result.stale) == (1, 2)
    assert not result.done
    assert result.line() == "web: 1/2 updated, 1 healthy, 2 to update"


def test_tasks_still_stopping_block_done() -> None:
    service = make_service(replicas=2)
    tasks = [
        make_task(1),
        make_task(2),
        make_task(3, desired=pb.DESIRED_STATE_SHUTDOWN),  # running, told to stop
        make_task(4, state=pb.TASK_STATE_SHUTDOWN, desired=pb.DESIRED_STATE_SHUTDOWN),  # stopped
        make_task(5, state=pb.TASK_STATE_PENDING, desired=pb.DESIRED_STATE_SHUTDOWN, node=""),  # never placed
    ]
    result = progress(service, tasks)
    assert (result.running, result.stopping, result.stale) == (2, 1, 0)
    assert not result.done
    assert result.line() == "web: 2/2 updated, 2 healthy, 1 stopping"


def test_the_line_lists_failed_stopping_moving_then_stale_and_the_rollout() -> None:
    line = Progress("web", 3, updated=2, running=1, starting=1, failed=1, stale=2, stopping=1, moving=1).line()
    assert line == "web: 2/3 updated, 1 healthy, 1 starting, 1 failed, 1 stopping, 1 moving, 2 to update"
    assert Progress("web", 3, updated=3, running=3, rollout="updating").line() == (
        "web: 3/3 updated, 3 healthy (rollout updating)"
    )


def test_other_services_tasks_are_ignored() -> None:
    service = make_service(replicas=1)
    other = pb.Service(id="other", name="db", spec=pb.ServiceSpec(name="db", image="db:1"))
    result = progress(service, [make_task(1), make_task(2, service=other)])
    assert result.running == 1
    assert result.done


def test_rejected_failed_and_pending_tasks_are_explained() -> None:
    service = make_service(replicas=5)
    tasks = [
        make_task(1, state=pb.TASK_STATE_REJECTED, error="image 'app:2' not found"),
        make_task(2, state=pb.TASK_STATE_REJECTED, message="no reason given as an error"),
        make_task(3, state=pb.TASK_STATE_FAILED, error="exited with code 3"),
        make_task(4, state=pb.TASK_STATE_PENDING, message="no node has 2 CPUs free"),
        make_task(5, state=pb.TASK_STATE_STARTING),
    ]
    tasks[2].status.exit_code = 3
    result = progress(service, tasks)
    assert result.failures == [
        "web.1: rejected: image 'app:2' not found",
        "web.2: rejected: no reason given as an error",
        "web.3: failed (exit 3): exited with code 3",
    ]
    assert result.failed == 3
    assert result.waiting == ["web.4: no node has 2 CPUs free"]
    assert (result.running, result.starting, result.updated) == (0, 1, 2)
    assert not result.done


def test_a_task_newer_than_spec_revision_is_current() -> None:
    service = make_service(replicas=1, revision=5, spec_revision=3)
    result = progress(service, [make_task(1, service=make_service(revision=4, spec_revision=3))])
    assert (result.stale, result.running) == (0, 1)
    assert progress(service, [make_task(1, service=make_service(revision=2))]).stale == 1


def test_old_failures_are_history_and_a_current_failure_counts_even_once_told_to_stop() -> None:
    service = make_service(replicas=1)
    old = make_service(image="app:1", revision=1, spec_revision=1)
    tasks = [
        make_task(1),
        make_task(2, state=pb.TASK_STATE_FAILED, service=old, error="old failure"),
        make_task(3, state=pb.TASK_STATE_FAILED, desired=pb.DESIRED_STATE_SHUTDOWN, error="stopped failure"),
    ]
    result = progress(service, tasks)
    assert result.failures == ["web.3: failed: stopped failure"]  # a current-spec task failed, then told to stop
    assert result.stale == 0  # a failed task of an older spec is history, not a task to update


# --- views ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("port", "text"),
    [
        (pb.PortMapping(host_port=8080, container_port=80, protocol="tcp"), "8080:80/tcp"),
        (pb.PortMapping(host_port=5353, container_port=53, protocol="udp"), "5353:53/udp"),
        (pb.PortMapping(host_port=0, container_port=80, protocol="tcp"), "80/tcp"),
        (pb.PortMapping(host_port=9000, container_port=9000), "9000:9000/tcp"),
        (pb.PortMapping(container_port=53, protocol="udp"), "53/udp"),
    ],
)
def test_port_text(port: pb.PortMapping, text: str) -> None:
    assert port_text(port) == text


def make_node(node_id: str = "n1", hostname: str = "host-a") -> pb.Node:
    node = pb.Node(id=node_id, status=pb.NODE_STATUS_READY, address="10.0.0.5:41234", status_message="")
    node.description.hostname = hostname
    node.description.cpus = 4.0
    node.description.memory_bytes = 8 << 30
    node.description.docker_version = "27.1.0"
    return node


def test_task_view_fields() -> None:
    task = make_task(2, state=pb.TASK_STATE_FAILED, error="exited with code 3")
    task.status.exit_code = 3
    task.status.container_id = "c" * 64
    task.status.timestamp.CopyFrom(to_timestamp(UPDATED))
    task.created_at.CopyFrom(to_timestamp(CREATED))

    view = task_view(task, {"n1": make_node()}, make_service().spec)

    assert view == {
        "id": task.id,
        "service": "web",
        "slot": 2,
        "name": "web.2",
        "node": "host-a",
        "node_id": "n1",
        "state": "failed",
        "desired_state": "running",
        "message": "",
        "error": "exited with code 3",
        "exit_code": 3,
        "cause": "task",
        "attempt": 0,
        "health": None,
        "health_output": None,
        "failing_streak": 0,
        "replaced": False,
        "container_id": "c" * 64,
        "revision": 2,
        "image": "app:2",
        "ports": ["8080:80/tcp"],
        "created_at": CREATED.isoformat(),
        "updated_at": UPDATED.isoformat(),
    }


@pytest.mark.parametrize(
    ("node_id", "nodes", "node", "shown_id"),
    [
        ("n1", {"n1": make_node(hostname="")}, "n1", "n1"),  # a node without a host name shows its id
        ("n9", {"n1": make_node()}, "n9", "n9"),  # a node the CLI does not know
        ("", {"n1": make_node()}, None, None),  # not placed yet
    ],
)
def test_task_view_node_column(node_id: str, nodes: dict[str, pb.Node], node: str | None, shown_id: str | None) -> None:
    view = task_view(make_task(1, state=pb.TASK_STATE_PENDING, node=node_id), nodes)
    assert (view["node"], view["node_id"]) == (node, shown_id)
    assert view["container_id"] is None
    assert view["created_at"] is None
    assert view["updated_at"] is None
    assert view["state"] == "pending"


def test_task_view_without_a_spec_has_no_image_or_ports_and_uses_a_full_view_spec() -> None:
    task = make_task(1)
    assert (task_view(task, {})["image"], task_view(task, {})["ports"]) == ("", [])
    task.spec.CopyFrom(make_service(image="app:9").spec)  # as TASK_VIEW_FULL returns it
    assert task_view(task, {})["image"] == "app:9"


def test_node_view_fields() -> None:
    node = make_node()
    node.description.labels["zone"] = "a"
    node.description.labels["disk"] = "hdd"
    node.labels["disk"] = "ssd"
    node.availability = pb.NODE_AVAILABILITY_DRAIN
    node.status_message = "draining"
    tasks = [
        make_task(1),
        make_task(2),
        make_task(3, state=pb.TASK_STATE_STARTING),
        make_task(4, node="n2"),
    ]

    view = node_view(node, tasks)

    assert view == {
        "id": "n1",
        "hostname": "host-a",
        "status": "ready",
        "availability": "drain",
        "labels": {"zone": "a", "disk": "ssd"},
        "cpus": 4.0,
        "memory_bytes": 8 << 30,
        "docker_version": "27.1.0",
        "address": "10.0.0.5:41234",
        "message": "draining",
        "tasks_running": 2,
    }


def test_node_view_shows_unspecified_availability_as_active_and_no_tasks_as_zero() -> None:
    node = make_node()
    node.status = pb.NODE_STATUS_DOWN
    view = node_view(node)
    assert (view["availability"], view["status"], view["tasks_running"]) == ("active", "down", 0)


def test_service_view_fields() -> None:
    service = make_service(replicas=3)
    service.created_at.CopyFrom(to_timestamp(CREATED))
    service.updated_at.CopyFrom(to_timestamp(UPDATED))
    other = pb.Service(id="other", name="db")
    tasks = [
        make_task(1),
        make_task(2),
        make_task(3, state=pb.TASK_STATE_STARTING),
        make_task(4, desired=pb.DESIRED_STATE_SHUTDOWN),  # running, but on its way out
        make_task(5, service=other),
    ]

    view = service_view(service, tasks)

    assert view == {
        "id": "svc",
        "name": "web",
        "mode": "replicated",
        "revision": 2,
        "spec_revision": 2,
        "image": "app:2",
        "replicas": 3,
        "running": 2,
        "ports": ["8080:80/tcp"],
        "rollout": None,
        "rollout_from": None,
        "rollout_to": None,
        "rollout_message": None,
        "rollout_started_at": None,
        "rollout_completed_at": None,
        "change_cause": None,
        "created_at": CREATED.isoformat(),
        "updated_at": UPDATED.isoformat(),
    }


def test_views_are_json_serialisable() -> None:
    task = make_task(1)
    json.dumps(task_view(task, {"n1": make_node()}))
    json.dumps(node_view(make_node(), [task]))
    json.dumps(service_view(make_service(), [task]))


# --- controller resolution ------------------------------------------------------------------------------


@pytest.fixture
def config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty XDG config home and no DOCKYARD_CONTROLLER."""
    home = tmp_path / "config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    monkeypatch.delenv("DOCKYARD_CONTROLLER", raising=False)
    return home


def write_raw_context(home: Path, text: str | bytes) -> None:
    path = home / "dockyard" / "context.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)


def test_the_default_without_flag_env_or_context(config_home: Path) -> None:
    assert resolve_controller(None) == DEFAULT_CONTROLLER == "127.0.0.1:7465"
    assert read_context() is None


def test_the_context_file_beats_the_default(config_home: Path) -> None:
    write_context(LocalContext(controller="10.1.1.1:7465", state_dir="/var/lib/dockyard"))
    assert resolve_controller(None) == "10.1.1.1:7465"


def test_the_environment_beats_the_context_file(config_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_context(LocalContext(controller="10.1.1.1:7465", state_dir="/var/lib/dockyard"))
    monkeypatch.setenv("DOCKYARD_CONTROLLER", "env-host:7465")
    assert resolve_controller(None) == "env-host:7465"


def test_the_flag_beats_everything(config_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_context(LocalContext(controller="10.1.1.1:7465", state_dir="/var/lib/dockyard"))
    monkeypatch.setenv("DOCKYARD_CONTROLLER", "env-host:7465")
    assert resolve_controller("flag-host:7465") == "flag-host:7465"


def test_empty_flag_and_environment_count_as_unset(config_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_context(LocalContext(controller="10.1.1.1:7465", state_dir="/var/lib/dockyard"))
    monkeypatch.setenv("DOCKYARD_CONTROLLER", "")
    assert resolve_controller("") == "10.1.1.1:7465"


def test_write_context_then_read_context_round_trips(config_home: Path) -> None:
    context = LocalContext(controller="127.0.0.1:9999", state_dir="/tmp/dockyard-state")
    write_context(context)
    assert read_context() == context
    assert config_dir() == config_home / "dockyard"
    assert sorted(p.name for p in config_dir().iterdir()) == ["context.json"]


def test_config_dir_falls_back_to_the_home_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", "")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert config_dir() == tmp_path / ".config" / "dockyard"


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("{not json", id="not-json"),
        pytest.param("[]", id="a-list"),
        pytest.param("null", id="null"),
        pytest.param('"127.0.0.1:1"', id="a-string"),
        pytest.param('{"controller": "10.1.1.1:7465"}', id="missing-state-dir"),
        pytest.param(b"\xff\xfe\x00garbage", id="not-utf8"),
    ],
)
def test_a_corrupt_context_file_is_ignored(config_home: Path, text: str | bytes) -> None:
    write_raw_context(config_home, text)
    assert read_context() is None
    assert resolve_controller(None) == DEFAULT_CONTROLLER


@pytest.mark.parametrize(
    "controller",
    [pytest.param(None, id="null"), pytest.param("", id="empty"), pytest.param(7465, id="number")],
)
def test_a_context_whose_controller_is_not_an_address_is_ignored(config_home: Path, controller: object) -> None:
    write_raw_context(config_home, json.dumps({"controller": controller, "state_dir": "/var/lib/dockyard"}))
    assert resolve_controller(None) == DEFAULT_CONTROLLER


# --- backoff --------------------------------------------------------------------------------------------


class FixedRandom(random.Random):
    """An rng whose random() always answers the same value."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


def ceilings(base: float, cap: float, count: int) -> list[float]:
    return [min(cap, base * 2**attempt) for attempt in range(count)]


def test_seeded_delays_stay_within_half_to_full_ceiling_doubling_to_the_cap() -> None:
    backoff = Backoff(base=0.5, cap=10.0, rng=random.Random(1234))
    for attempt, ceiling in enumerate(ceilings(0.5, 10.0, 12)):
        delay = backoff.next_delay()
        assert ceiling / 2 <= delay <= ceiling, (attempt, delay)
    assert backoff.attempt == 12


def test_the_ceiling_doubles_until_the_cap() -> None:
    low = Backoff(base=0.2, cap=5.0, rng=FixedRandom(0.0))
    high = Backoff(base=0.2, cap=5.0, rng=FixedRandom(1.0))
    assert [high.next_delay() for _ in range(8)] == pytest.approx([0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0])
    assert [low.next_delay() for _ in range(8)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 2.5, 2.5, 2.5])


def test_the_same_seed_gives_the_same_delays() -> None:
    first = Backoff(rng=random.Random(99))
    second = Backoff(rng=random.Random(99))
    assert [first.next_delay() for _ in range(10)] == [second.next_delay() for _ in range(10)]


def test_reset_starts_over() -> None:
    backoff = Backoff(base=0.5, cap=10.0, rng=FixedRandom(1.0))
    for _ in range(6):
        backoff.next_delay()
    backoff.reset()
    assert backoff.attempt == 0
    assert backoff.next_delay() == pytest.approx(0.5)
    assert backoff.next_delay() == pytest.approx(1.0)


def test_the_defaults() -> None:
    backoff = Backoff(rng=FixedRandom(1.0))
    assert (backoff.base, backoff.cap, backoff.attempt) == (0.2, 10.0, 0)
    assert backoff.next_delay() == pytest.approx(0.2)


def test_a_long_outage_keeps_the_delay_at_the_cap() -> None:
    backoff = Backoff(base=0.5, cap=10.0, rng=random.Random(5))
    for _ in range(1100):
        delay = backoff.next_delay()
        assert 0.25 <= delay <= 10.0


# --- task states ----------------------------------------------------------------------------------------


def test_terminal_states_start_at_complete() -> None:
    assert TERMINAL_FROM == pb.TASK_STATE_COMPLETE
    terminal = {state_name(s) for s in ALL_STATES if is_terminal(s)}
    assert terminal == {"complete", "failed", "shutdown", "rejected", "orphaned", "lost"}
    assert not is_terminal(pb.TASK_STATE_RUNNING)
    assert not is_terminal(pb.TASK_STATE_UNSPECIFIED)


def test_can_move_only_forward_and_never_out_of_a_terminal_state() -> None:
    for current in ALL_STATES:
        for new in ALL_STATES:
            expected = not is_terminal(current) and new >= current
            assert can_move(current, new) is expected, (state_name(current), state_name(new))


@pytest.mark.parametrize(
    ("current", "new", "allowed"),
    [
        (pb.TASK_STATE_ASSIGNED, pb.TASK_STATE_RUNNING, True),
        (pb.TASK_STATE_RUNNING, pb.TASK_STATE_RUNNING, True),
        (pb.TASK_STATE_RUNNING, pb.TASK_STATE_FAILED, True),
        (pb.TASK_STATE_RUNNING, pb.TASK_STATE_STARTING, False),
        (pb.TASK_STATE_FAILED, pb.TASK_STATE_FAILED, False),
        (pb.TASK_STATE_COMPLETE, pb.TASK_STATE_SHUTDOWN, False),
    ],
)
def test_can_move_examples(current: int, new: int, allowed: bool) -> None:
    assert can_move(current, new) is allowed


@pytest.mark.parametrize(
    ("state", "name"),
    [
        (pb.TASK_STATE_UNSPECIFIED, "unspecified"),
        (pb.TASK_STATE_PENDING, "pending"),
        (pb.TASK_STATE_RUNNING, "running"),
        (pb.TASK_STATE_ORPHANED, "orphaned"),
    ],
)
def test_state_name(state: int, name: str) -> None:
    assert state_name(state) == name


@pytest.mark.parametrize(
    ("state", "name"),
    [
        (pb.DESIRED_STATE_UNSPECIFIED, "unspecified"),
        (pb.DESIRED_STATE_RUNNING, "running"),
        (pb.DESIRED_STATE_SHUTDOWN, "shutdown"),
    ],
)
def test_desired_name(state: int, name: str) -> None:
    assert desired_name(state) == name


# --- waiting and --if-revision --------------------------------------------------------------------------


async def test_poll_until_returns_the_first_result_and_sleeps_on_the_clock_between_checks() -> None:
    clock = FakeClock()
    answers = iter([None, None, "done"])
    calls: list[float] = []

    async def check() -> str | None:
        calls.append(clock.monotonic())
        return next(answers)

    waiter = asyncio.ensure_future(poll_until(check, within=5, waiting_for=lambda: "", every=0.5, clock=clock))
    await clock.advance(2, step=0.5)
    assert await waiter == "done"
    assert calls == [0.0, 0.5, 1.0]


async def test_poll_until_times_out_saying_what_it_waited_for() -> None:
    clock = FakeClock()
    seen = 0

    async def check() -> None:
        nonlocal seen
        seen += 1

    waiter = asyncio.ensure_future(
        poll_until(check, within=1, waiting_for=lambda: f"after {seen} looks", every=0.25, clock=clock)
    )
    await clock.advance(2, step=0.25)
    with pytest.raises(ApiError, match=r"^timed out after 1s after 5 looks$"):
        await waiter


async def test_an_error_in_the_check_ends_the_wait() -> None:
    async def check() -> None:
        raise ApiError("web.1: rejected: no such image")

    with pytest.raises(ApiError, match="rejected"):
        await poll_until(check, within=10, waiting_for=lambda: "", clock=FakeClock())


@pytest.mark.parametrize(
    ("values", "names", "expected"),
    [
        ((), ["web"], (0, {})),
        (("812",), ["web"], (812, {})),  # a bare N is a plan's state revision, whatever the file holds
        (("812",), ["web", "db"], (812, {})),
        (("web=0",), ["web"], (0, {"web": 0})),
        (("web=2", "db=0"), ["web", "db"], (0, {"web": 2, "db": 0})),
        (("db=5", "812"), ["web", "db"], (812, {"db": 5})),  # both forms together
        (("0",), ["web", "db"], (0, {"web": 0, "db": 0})),  # a plan of an empty store: none may exist yet
        (("0", "db=4"), ["web", "db"], (0, {"web": 0, "db": 4})),
    ],
)
def test_parse_if_revision(values: tuple[str, ...], names: list[str], expected: tuple[int, dict[str, int]]) -> None:
    assert parse_if_revision(values, names) == expected


@pytest.mark.parametrize(
    ("values", "names", "problem"),
    [
        (("3", "4"), ["web"], "a state revision is given twice"),
        (("0", "0"), ["web"], "a state revision is given twice"),
        (("web=x",), ["web"], "N must be a revision number"),
        (("web=-1",), ["web"], "N must be a revision number"),
        (("cache=1",), ["web"], "the file has no service 'cache'"),
        (("web=1", "web=2"), ["web"], "'web' is given twice"),
    ],
)
def test_parse_if_revision_refuses(values: tuple[str, ...], names: list[str], problem: str) -> None:
    with pytest.raises(click.BadParameter, match=problem):
        parse_if_revision(values, names)
