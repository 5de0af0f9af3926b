"""agent.files: file data in memory, files on a tmpfs for the tasks that use them, nothing in clear on disk."""

from __future__ import annotations

import asyncio
import shutil
import stat
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.files import Files, FilesNotReady, file_target, is_tmpfs
from agent.runtime.base import MountKind, MountSpec
from agent.task_book import TaskBook
from dockyard.v1 import agent_pb2 as apb
from dockyard.v1 import types_pb2 as pb

SECRET = b"hunter2-only-in-memory"
SHM = Path("/dev/shm")
needs_shm = pytest.mark.skipif(not SHM.is_dir() or not is_tmpfs(SHM), reason="no tmpfs at /dev/shm")


@pytest.fixture
def shm_root() -> Iterator[Path]:
    root = SHM / f"dockyard-test-{uuid.uuid4().hex[:12]}"
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _spec(
    name: str, stack: str = "", secrets: list[pb.FileRef] | None = None, configs: list[pb.FileRef] | None = None
) -> pb.ServiceSpec:
    return pb.ServiceSpec(name=name, image="app:1", stack=stack, secrets=secrets or [], configs=configs or [])


def assignments(*pairs: tuple[str, pb.ServiceSpec], files: list[apb.FileData], full: bool = True) -> apb.Assignments:
    kind = apb.Assignments.KIND_FULL if full else apb.Assignments.KIND_INCREMENTAL
    message = apb.Assignments(kind=kind, files=files)
    for task_id, spec in pairs:
        message.tasks.append(
            pb.Task(
                id=task_id,
                service_id=f"s-{spec.name}",
                service_name=spec.name,
                revision=1,
                desired_state=pb.DESIRED_STATE_RUNNING,
            )
        )
        message.specs.append(apb.ServiceRevisionSpec(service_id=f"s-{spec.name}", revision=1, spec=spec))
    return message


def secret(name: str, data: bytes = SECRET) -> apb.FileData:
    return apb.FileData(kind=apb.FileData.KIND_SECRET, name=name, data=data)


def config(name: str, data: bytes) -> apb.FileData:
    return apb.FileData(kind=apb.FileData.KIND_CONFIG, name=name, data=data)


WEB = _spec(
    "shop_web",
    "shop",
    secrets=[pb.FileRef(name="shop_db_password", target="db_password", uid=1000, gid=1001, mode=0o400)],
    configs=[pb.FileRef(name="shop_nginx", target="/etc/nginx/nginx.conf")],
)
PLAIN = _spec("plain")


def with_spec(book: TaskBook, task_id: str) -> pb.Task:
    task = book.get(task_id)
    assert task is not None
    full = book.with_spec(task)
    assert full is not None
    return full


def test_targets_follow_swarm_and_compose() -> None:
    secret_kind, config_kind = apb.FileData.KIND_SECRET, apb.FileData.KIND_CONFIG
    # A spec file's reader gives a stack's reference its short name as target.
    assert (
        file_target(secret_kind, pb.FileRef(name="shop_db_password", target="db_password"))
        == "/run/secrets/db_password"
    )
    assert file_target(secret_kind, pb.FileRef(name="shop_pw", target="/etc/pw")) == "/etc/pw"
    assert file_target(secret_kind, pb.FileRef(name="token")) == "/run/secrets/token"
    assert file_target(config_kind, pb.FileRef(name="nginx")) == "/nginx"
    assert file_target(config_kind, pb.FileRef(name="shop_nginx", target="/etc/n.conf")) == "/etc/n.conf"


def test_statfs_tells_a_tmpfs_from_a_disk(tmp_path: Path) -> None:
    if SHM.is_dir():
        assert is_tmpfs(SHM) == (_mount_type(SHM) == "tmpfs")
    assert is_tmpfs(tmp_path) == (_mount_type(tmp_path) == "tmpfs")


def _names(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir())


def _contents(root: Path) -> list[tuple[Path, bytes]]:
    """Every file under root with its bytes."""
    return [(p, p.read_bytes()) for p in root.rglob("*") if p.is_file()]


def _mount_type(path: Path) -> str:
    """The type of the filesystem holding path, from /proc/self/mounts (longest mount point wins)."""
    best, kind = "", ""
    resolved = str(path.resolve())
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, point, fstype, *_ = line.split()
        if (resolved == point or resolved.startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
            best, kind = point, fstype
    return kind


@needs_shm
async def test_files_are_written_only_for_the_tasks_that_use_them(tmp_path: Path, shm_root: Path) -> None:
    book = TaskBook(tmp_path / "tasks.pb")
    files = Files(shm_root, book)
    message = assignments(
        ("t-web", WEB), ("t-plain", PLAIN), files=[secret("shop_db_password"), config("shop_nginx", b"server {}")]
    )
    book.apply(message)
    files.take(message)
    mounts = await files.mounts(with_spec(book, "t-web"))
    assert [(m.kind, m.target, m.read_only) for m in mounts] == [
        (MountKind.BIND, "/run/secrets/db_password", True),
        (MountKind.BIND, "/etc/nginx/nginx.conf", True),
    ]
    secret_file, config_file = (Path(m.source) for m in mounts)
    assert secret_file.read_bytes() == SECRET and config_file.read_bytes() == b"server {}"
    assert secret_file.parent == shm_root / "t-web"
    info = secret_file.stat()
    assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (0o400, 1000, 1001)
    assert stat.S_IMODE(config_file.stat().st_mode) == 0o444
    assert await files.mounts(with_spec(book, "t-plain")) == ()
    assert _names(shm_root) == ["t-web"]


@needs_shm
async def test_a_task_whose_data_has_not_arrived_waits(tmp_path: Path, shm_root: Path) -> None:
    book = TaskBook(tmp_path / "tasks.pb")
    files = Files(shm_root, book)
    message = assignments(("t-web", WEB), files=[secret("shop_db_password")])
    book.apply(message)
    files.take(message)
    with pytest.raises(FilesNotReady, match="waiting for the data of config 'shop_nginx' from the controller"):
        await files.mounts(with_spec(book, "t-web"))


async def test_no_tmpfs_means_no_files_and_says_why(tmp_path: Path) -> None:
    book = TaskBook(tmp_path / "tasks.pb")
    mounted: list[Path] = []

    def refuse(path: Path) -> None:
        mounted.append(path)
        raise PermissionError(1, "Operation not permitted")

    files = Files(tmp_path / "files", book, mount=refuse, check=lambda _: False)
    message = assignments(("t-web", WEB), files=[secret("shop_db_password"), config("shop_nginx", b"x")])
    book.apply(message)
    files.take(message)
    with pytest.raises(
        FilesNotReady, match=r"secrets and configs need a tmpfs: .* is not a tmpfs and none could be mounted"
    ):
        await files.mounts(with_spec(book, "t-web"))
    assert mounted == [tmp_path / "files"]
    assert _names(tmp_path / "files") == []  # nothing written to the disk


@needs_shm
async def test_files_of_tasks_that_left_the_book_go_and_their_data_is_forgotten(tmp_path: Path, shm_root: Path) -> None:
    book = TaskBook(tmp_path / "tasks.pb")
    files = Files(shm_root, book)
    message = assignments(("t-web", WEB), files=[secret("shop_db_password"), config("shop_nginx", b"x")])
    book.apply(message)
    files.take(message)
    await files.mounts(with_spec(book, "t-web"))
    assert (shm_root / "t-web").is_dir()
    # The controller's next full set no longer has the task; once its container is gone the book forgets it.
    empty = assignments(files=[])
    book.apply(empty)
    files.take(empty)
    assert (shm_root / "t-web").is_dir()  # still in the book (shutting down): its container may still use it
    book.forget("t-web")
    files.sweep()
    assert _names(shm_root) == []
    again = assignments(("t-web2", WEB), files=[], full=False)
    book.apply(again)
    files.take(again)
    with pytest.raises(FilesNotReady):
        await files.mounts(with_spec(book, "t-web2"))  # the data went with the last task that used it


@needs_shm
async def test_the_persisted_task_book_never_holds_the_data(tmp_path: Path, shm_root: Path) -> None:
    path = tmp_path / "tasks.pb"
    book = TaskBook(path)
    files = Files(shm_root, book)
    message = assignments(("t-web", WEB), files=[secret("shop_db_password"), config("shop_nginx", b"server {}")])
    message.registry_auths.append(apb.RegistryAuth(server="r.example.com", username="u", password="pa55-secret"))
    book.apply(message)
    files.take(message)
    book.save()
    await files.mounts(with_spec(book, "t-web"))
    on_disk = path.read_bytes()
    assert SECRET not in on_disk and b"pa55-secret" not in on_disk
    assert b"shop_db_password" in on_disk  # the reference (a name) is kept, with the spec
    for found, content in _contents(tmp_path):
        assert SECRET not in content, found
    reloaded = TaskBook(path)
    reloaded.load()
    assert [t.id for t in reloaded] == ["t-web"]


def test_mount_spec_is_what_the_runtime_takes() -> None:
    # The FilePreparer contract: read-only binds, nothing else.
    assert MountSpec(MountKind.BIND, "/x", "/y", read_only=True).read_only


@needs_shm
async def test_data_stays_while_the_session_keeps_the_spec_for_a_later_task(tmp_path: Path, shm_root: Path) -> None:
    book = TaskBook(tmp_path / "tasks.pb")
    files = Files(shm_root, book)
    first = assignments(("t-1", WEB), files=[secret("shop_db_password"), config("shop_nginx", b"x")])
    book.apply(first)
    files.take(first)
    await files.mounts(with_spec(book, "t-1"))
    book.forget("t-1")  # it failed and its container went
    files.sweep()
    # Its replacement runs the same spec: the controller sends neither the spec nor the files again.
    replacement = apb.Assignments(kind=apb.Assignments.KIND_INCREMENTAL)
    replacement.tasks.append(
        pb.Task(
            id="t-2",
            service_id="s-shop_web",
            service_name="shop_web",
            revision=1,
            desired_state=pb.DESIRED_STATE_RUNNING,
        )
    )
    book.apply(replacement)
    files.take(replacement)
    mounts = await files.mounts(with_spec(book, "t-2"))
    assert _read(Path(mounts[0].source)) == SECRET
    assert _names(shm_root) == ["t-2"]


def _read(path: Path) -> bytes:
    return path.read_bytes()


async def test_two_tasks_at_once_mount_one_tmpfs_not_one_over_the_other(tmp_path: Path) -> None:
    book = TaskBook(tmp_path / "tasks.pb")
    mounted: list[Path] = []
    checked = threading.Event()  # set when a check finds no tmpfs while a mount is under way
    mounting = threading.Event()

    def check(_: Path) -> bool:
        if mounting.is_set():
            checked.set()
        return bool(mounted)

    def mount(path: Path) -> None:
        mounting.set()
        # Give the other task's thread the chance to look while this mount is under way; with the lock it
        # cannot, so this waits the (short) bound and goes on.
        checked.wait(timeout=0.3)
        mounted.append(path)
        mounting.clear()

    files = Files(tmp_path / "files", book, mount=mount, check=check)
    message = assignments(("t-web", WEB), ("t-db", WEB), files=[secret("shop_db_password"), config("shop_nginx", b"x")])
    book.apply(message)
    files.take(message)
    web, db = await asyncio.gather(files.mounts(with_spec(book, "t-web")), files.mounts(with_spec(book, "t-db")))
    assert mounted == [tmp_path / "files"], "one tmpfs, mounted once"
    assert not checked.is_set(), "nobody looked at the mount point while it was being mounted"
    assert [Path(m.source).parent.name for m in web + db] == ["t-web", "t-web", "t-db", "t-db"]


def files_only(*files: apb.FileData) -> apb.Assignments:
    """A message of file data alone, as the controller sends ahead of the tasks that use it."""
    return apb.Assignments(kind=apb.Assignments.KIND_INCREMENTAL, files=files)


@needs_shm
@pytest.mark.parametrize("full", [True, False])
async def test_data_sent_ahead_of_its_tasks_is_kept_for_them(tmp_path: Path, shm_root: Path, full: bool) -> None:
    book = TaskBook(tmp_path / "tasks.pb")
    files = Files(shm_root, book)
    if not full:
        start = assignments(files=[])
        book.apply(start)
        files.take(start)
    # Two messages of files alone (chunked), then the one with the task and its spec, as link._apply takes them.
    for message in (files_only(secret("shop_db_password")), files_only(config("shop_nginx", b"server {}"))):
        assert not book.apply(message)
        files.take(message)
    files.sweep()  # a periodic sweep in between keeps data whose tasks have not arrived yet
    tasks = assignments(("t-web", WEB), files=[], full=full)
    book.apply(tasks)
    files.take(tasks)
    mounts = await files.mounts(with_spec(book, "t-web"))
    assert sorted(_read(Path(m.source)) for m in mounts) == [SECRET, b"server {}"]


@needs_shm
async def test_data_sent_ahead_that_no_task_uses_is_forgotten_at_the_next_tasks(tmp_path: Path, shm_root: Path) -> None:
    book = TaskBook(tmp_path / "tasks.pb")
    files = Files(shm_root, book)
    files.take(files_only(secret("shop_db_password")))
    plain = assignments(("t-plain", PLAIN), files=[], full=False)
    book.apply(plain)
    files.take(plain)
    late = assignments(("t-web", WEB), files=[config("shop_nginx", b"x")], full=False)
    book.apply(late)
    files.take(late)
    with pytest.raises(FilesNotReady, match="shop_db_password"):
        await files.mounts(with_spec(book, "t-web"))
