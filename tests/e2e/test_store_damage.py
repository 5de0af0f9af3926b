"""A damaged store, backup and restore, with real controller processes, the real CLI and real files.

None of these tests needs Docker: the controller runs without agents, and `dockyard up` fails before its
agent matters.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from controller.errors import EXIT_CONFIG
from controller.store.sqlite import SqliteStore
from dockyard import pki
from dockyard.channels import tls_options
from dockyard.client import ApiError, Client
from dockyard.v1 import types_pb2 as pb
from tests.e2e.harness import ROOT, free_port, run_cli, wait_for
from tests.unit.test_store_damage import make_store, overwrite

CONTROLLER = [sys.executable, "-m", "controller.main"]
# These controllers take no joins: a join address on a free port keeps them off the default one.
NO_JOIN = ("--join-listen", "127.0.0.1:0")
SERVING: int = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING: int = health_pb2.HealthCheckResponse.NOT_SERVING
UNKNOWN: int = health_pb2.HealthCheckResponse.UNKNOWN


def controller_command(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Runs dockyard-controller to completion and returns what it did."""
    return subprocess.run([*CONTROLLER, *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout, check=False)


def admin_for(state_dir: Path) -> pki.Credentials:
    """Admin credentials of the cluster whose CA is in state_dir (made once, beside it)."""
    out = state_dir.parent / f"{state_dir.name}-admin"
    if not (out / "admin.crt").exists():
        made = controller_command("admin-cert", "--out", str(out), "--state-dir", str(state_dir))
        assert made.returncode == 0, made.stderr
    return pki.Credentials.load(out, "admin")


def health(address: str, credentials: pki.Credentials) -> int:
    """Returns the overall health status the controller reports (UNKNOWN when it does not answer)."""
    tls = grpc.ssl_channel_credentials(credentials.ca_pem, credentials.pair.key_pem, credentials.pair.cert_pem)
    with grpc.secure_channel(address, tls, options=tls_options()) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
        except grpc.RpcError:
            return UNKNOWN
        return int(reply.status)


@dataclass
class RunningController:
    """A controller process on its own port and state dir, logging to a file."""

    state_dir: Path
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def address(self) -> str:
        """Where it listens."""
        return f"127.0.0.1:{self.port}"

    @property
    def db(self) -> Path:
        """Its store file."""
        return self.state_dir / "controller.db"

    def health(self) -> int:
        """Its overall health, asked with admin credentials (UNKNOWN before it has made its CA)."""
        if not (self.state_dir / pki.CA_CERT_FILE).exists():
            return UNKNOWN
        return health(self.address, admin_for(self.state_dir))

    def client(self) -> Client:
        """An API client with admin credentials."""
        return Client(self.address, credentials=admin_for(self.state_dir))

    def stop(self) -> int:
        """Stops it with SIGTERM and returns its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return self.process.returncode


def start_controller(state_dir: Path, port: int | None = None) -> RunningController:
    """Starts a controller and waits until it reports SERVING."""
    port = port or free_port()
    log = state_dir.parent / f"{state_dir.name}-{port}.log"
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [*CONTROLLER, "--init", *NO_JOIN, "--listen", f"127.0.0.1:{port}", "--state-dir", str(state_dir)],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    running = RunningController(state_dir, port, process, log)

    def serving() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"the controller exited ({process.returncode}):\n{log.read_text()}")
        return running.health() == SERVING

    try:
        wait_for(serving, 30, "the controller to serve")
    except BaseException:
        running.stop()  # not yet in the test's list of controllers to stop: never leave it running
        raise
    return running


@pytest.fixture
def controllers() -> Iterator[list[RunningController]]:
    """Collects the controllers a test starts and stops them afterwards."""
    started: list[RunningController] = []
    yield started
    for running in started:
        running.stop()


def assert_one_line(stderr: str, *needles: str, prefix: str = "dockyard-controller: ") -> str:
    """Checks stderr is one line with the prefix and every needle, and no traceback; returns it."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(prefix), stderr
    for needle in needles:
        assert needle in lines[0], stderr
    return lines[0]


def damage(db: Path, how: str) -> None:
    """Damages a store file: garbage instead of it, cut in half, or random bytes over middle pages."""
    if how == "garbage":
        db.write_bytes(os.urandom(64 * 1024))
    elif how == "truncated":
        os.truncate(db, db.stat().st_size // 2)
    else:
        overwrite(db, db.stat().st_size // 2, 64 * 1024)


@pytest.mark.parametrize("how", ["garbage", "truncated", "damaged pages"])
def test_a_damaged_store_stops_the_controller_with_one_line(tmp_path: Path, how: str) -> None:
    state = tmp_path / "controller"
    state.mkdir()
    db = state / "controller.db"
    asyncio.run(make_store(db))
    damage(db, how)
    result = controller_command(*NO_JOIN, "--listen", f"127.0.0.1:{free_port()}", "--state-dir", str(state))
    assert result.returncode == EXIT_CONFIG, result.stderr
    assert_one_line(result.stderr, str(db), f"dockyard-controller restore BACKUP --state-dir {state}")


def test_a_second_controller_on_the_same_state_dir_is_refused(
    tmp_path: Path, controllers: list[RunningController]
) -> None:
    first = start_controller(tmp_path / "controller")
    controllers.append(first)
    result = controller_command(*NO_JOIN, "--listen", f"127.0.0.1:{free_port()}", "--state-dir", str(first.state_dir))
    assert result.returncode == EXIT_CONFIG, result.stderr
    assert_one_line(result.stderr, str(first.db), f"in use by pid {first.process.pid}")
    assert first.health() == SERVING, "the first one is unharmed"


def spec(name: str, replicas: int = 1, env_bytes: int = 0) -> pb.ServiceSpec:
    """Returns a small service spec, with one large env value when env_bytes is set."""
    spec = pb.ServiceSpec(name=name, image="dockyard-test:latest", replicas=replicas)
    if env_bytes:
        spec.env["BULK"] = "x" * env_bytes
    return spec


Snapshot = tuple[list[tuple[str, str, int, bytes]], list[tuple[str, str, int, int, int]]]


async def snapshot(running: RunningController) -> Snapshot:
    """Returns what must survive a backup and restore: services with their specs, and tasks by slot."""
    async with running.client() as client:
        services = await client.list_services()
        tasks = await client.list_tasks(include_finished=True)
    return (
        sorted((s.id, s.name, s.revision, s.spec.SerializeToString(deterministic=True)) for s in services),
        sorted((t.id, t.service_id, t.slot, t.revision, int(t.desired_state)) for t in tasks),
    )


async def write_while_backing_up(running: RunningController, state: Path, backups: list[Path]) -> int:
    """Applies services while `dockyard-controller backup` runs once for each path; returns the writes."""
    done = asyncio.Event()

    async def writer() -> int:
        writes = 0
        async with running.client() as client:
            while not done.is_set() or writes < 20:
                await client.apply([spec(f"svc{writes % 7}", replicas=writes % 4)])
                writes += 1
        return writes

    writing = asyncio.create_task(writer())
    try:
        for path in backups:
            process = await asyncio.create_subprocess_exec(
                *CONTROLLER,
                "backup",
                str(path),
                "--state-dir",
                str(state),
                cwd=ROOT,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await process.communicate()
            assert process.returncode == 0, err.decode()
            assert out.decode().startswith("backed up "), out.decode()
    finally:
        done.set()
    return await writing


def assert_sound(path: Path) -> int:
    """Opens (a copy of) a backup as a store, checks every object is at or below its revision; returns it."""
    copy = path.with_name(path.name + ".check")
    shutil.copyfile(path, copy)

    async def check() -> int:
        async with SqliteStore(copy) as store:
            services = await store.list_services()
            objects: list[pb.Service | pb.Task | pb.Node] = [*services, *await store.list_tasks()]
            assert objects, "the backup holds the store's objects"
            assert all(0 < o.version <= store.revision for o in objects)
            for service in services:
                assert await store.get_service_spec(service.id, service.revision) is not None
            return store.revision

    return asyncio.run(check())


def test_backup_during_writes_and_restore_round_trip(tmp_path: Path, controllers: list[RunningController]) -> None:
    state = tmp_path / "controller"
    running = start_controller(state)
    controllers.append(running)
    mid_write = [tmp_path / f"during-{n}.db" for n in range(3)]
    writes = asyncio.run(write_while_backing_up(running, state, mid_write))
    assert writes >= 20
    revisions = [assert_sound(path) for path in mid_write]
    assert revisions == sorted(revisions)

    # A quiet moment: what the final backup holds is what the API shows.
    before = asyncio.run(snapshot(running))
    final = tmp_path / "final.db"
    made = controller_command("backup", str(final), "--state-dir", str(state))
    assert made.returncode == 0, made.stderr
    again = controller_command("backup", str(final), "--state-dir", str(state))
    assert again.returncode == 1
    assert_one_line(again.stderr, str(final), "--force")

    async def change() -> None:
        async with running.client() as client:
            await client.delete_service("svc0")
            await client.apply([spec("later", replicas=2)])

    asyncio.run(change())
    assert asyncio.run(snapshot(running)) != before

    refused = controller_command("restore", str(final), "--state-dir", str(state))
    assert refused.returncode == 1
    assert_one_line(refused.stderr, str(running.db), f"in use by pid {running.process.pid}", "stop the controller")

    assert running.stop() == 0
    restored = controller_command("restore", str(final), "--state-dir", str(state))
    assert restored.returncode == 0, restored.stderr
    assert "restored" in restored.stdout
    kept = sorted(p.name for p in state.iterdir() if p.name.endswith(".bak"))
    assert len(kept) == 1, sorted(p.name for p in state.iterdir())
    assert f"kept as {state / kept[0]}" in restored.stdout

    again_running = start_controller(state, running.port)
    controllers.append(again_running)
    assert asyncio.run(snapshot(again_running)) == before


def test_damage_while_running_reports_not_serving(tmp_path: Path, controllers: list[RunningController]) -> None:
    state = tmp_path / "controller"
    first = start_controller(state)
    controllers.append(first)

    async def fill() -> None:
        async with first.client() as client:
            for n in range(40):
                await client.apply([spec(f"bulky{n:02}", replicas=0, env_bytes=100_000)])

    asyncio.run(fill())
    assert first.stop() == 0
    # After a clean stop every page is in the main file, and a restarted controller has read few of them.
    running = start_controller(state, first.port)
    controllers.append(running)
    overwrite(running.db, running.db.stat().st_size // 4, running.db.stat().st_size // 2)

    async def remove_services() -> ApiError:
        # Reads come from the controller's memory; removing the services writes where the damage is.
        async with running.client() as client:
            for n in range(40):
                try:
                    await client.delete_service(f"bulky{n:02}")
                except ApiError as exc:
                    return exc
        raise AssertionError("every delete succeeded on a damaged store")

    error = asyncio.run(remove_services())
    assert error.code == grpc.StatusCode.UNAVAILABLE, error
    assert str(running.db) in str(error)
    wait_for(lambda: running.health() == NOT_SERVING, 10, "health NOT_SERVING")
    running.stop()
    result = controller_command(*NO_JOIN, "--listen", running.address, "--state-dir", str(state))
    assert result.returncode == EXIT_CONFIG
    assert_one_line(result.stderr, str(running.db), "damaged")


@pytest.fixture
def up_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """An environment whose config home is private; any cluster left running is stopped afterwards."""
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "config")}
    env.pop("DOCKYARD_CONTROLLER", None)
    yield env
    run_cli(env, "down", "--state-dir", str(tmp_path / "state"), check=False)


def garbage_state(tmp_path: Path) -> Path:
    """Returns a `dockyard up` state dir whose store file is garbage."""
    state = tmp_path / "state"
    (state / "controller").mkdir(parents=True)
    (state / "controller" / "controller.db").write_bytes(os.urandom(10_000))
    return state


def test_up_detached_with_a_garbage_store_says_so_in_one_line(tmp_path: Path, up_env: dict[str, str]) -> None:
    state = garbage_state(tmp_path)
    result = run_cli(
        up_env,
        "up",
        "--detach",
        "--state-dir",
        str(state),
        "--listen",
        f"127.0.0.1:{free_port()}",
        check=False,
        timeout=60,
    )
    assert result.returncode == 1
    db = state / "controller" / "controller.db"
    assert_one_line(result.stderr, str(db), "not a SQLite database", prefix="Error: dockyard-controller: ")
    assert not (state / "dockyard.pid").exists()


def test_up_in_the_foreground_with_a_garbage_store_stops_instead_of_looping(
    tmp_path: Path, up_env: dict[str, str]
) -> None:
    state = garbage_state(tmp_path)
    result = run_cli(
        up_env, "up", "--state-dir", str(state), "--listen", f"127.0.0.1:{free_port()}", check=False, timeout=60
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: dockyard-controller: "), result.stderr
    assert str(state / "controller" / "controller.db") in last
    starts = [line for line in result.stderr.splitlines() if "started" in line and "child=controller" in line]
    assert len(starts) == 1, result.stderr


def test_up_on_an_address_another_cluster_holds_says_so_in_one_line(
    tmp_path: Path, up_env: dict[str, str], controllers: list[RunningController]
) -> None:
    other = start_controller(tmp_path / "other")
    controllers.append(other)
    result = run_cli(
        up_env,
        "up",
        "--detach",
        "--state-dir",
        str(tmp_path / "state"),
        "--listen",
        other.address,
        check=False,
        timeout=60,
    )
    assert result.returncode == 1
    assert_one_line(result.stderr, other.address, f"already in use by pid {other.process.pid}", prefix="Error: ")
    assert not (tmp_path / "state" / "agent").exists(), "no agent was started to dial the other cluster"
    assert other.health() == SERVING, "the other cluster is unharmed"
