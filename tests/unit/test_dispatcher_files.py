"""The dispatcher's side of file data: offered per spec, sent once per session, only with the specs sent.

File data goes in messages of files alone just ahead of the message whose tasks need it (credentials go in that
message), chunked, and counts toward the session's outbox.
"""

from __future__ import annotations

from pathlib import Path

from controller.dispatcher.bounds import ASSIGNMENTS_CHUNK_BYTES, OUTBOX_BYTES
from controller.dispatcher.files import FileSource, Offer
from controller.dispatcher.session import AgentSession
from controller.sealing import Sealer, registry_context, secret_context
from controller.store.base import Put
from controller.store.sqlite import SqliteStore
from dockyard.v1 import agent_pb2 as apb
from dockyard.v1 import types_pb2 as pb

SECRET = b"top-secret"


def task(task_id: str, service: str, node: str = "n1") -> pb.Task:
    return pb.Task(
        id=task_id,
        service_id=service,
        service_name=service,
        revision=1,
        node_id=node,
        desired_state=pb.DESIRED_STATE_RUNNING,
    )


WITH = pb.ServiceSpec(name="with", image="registry.example.com/app:1", secrets=[pb.FileRef(name="pw")])
WITHOUT = pb.ServiceSpec(name="without", image="nginx:1")
OFFER = Offer(
    files={(apb.FileData.KIND_SECRET, "pw"): apb.FileData(kind=apb.FileData.KIND_SECRET, name="pw", data=SECRET)},
    auths={"registry.example.com": apb.RegistryAuth(server="registry.example.com", username="u", password="p")},
)


def assignments(session: AgentSession) -> list[apb.Assignments]:
    return [m.assignments for m in session.take() if m.HasField("assignments")]


def files_only(message: apb.Assignments) -> bool:
    """A message of file data alone: incremental, no tasks, specs, removals or credentials."""
    return (
        message.kind == apb.Assignments.KIND_INCREMENTAL
        and bool(message.files)
        and not (message.tasks or message.specs or message.removed_task_ids or message.registry_auths)
    )


def test_files_go_ahead_of_the_spec_that_uses_them_once_per_session() -> None:
    session = AgentSession("n1", "s1")
    session.files.take_offer(OFFER)
    session.send_full([task("t1", "with"), task("t2", "without")], {("with", 1): WITH, ("without", 1): WITHOUT})
    [data, full] = assignments(session)
    assert files_only(data) and [f.name for f in data.files] == ["pw"] and data.files[0].data == SECRET
    assert full.kind == apb.Assignments.KIND_FULL and not full.files
    assert data.sequence + 1 == full.sequence
    assert [a.server for a in full.registry_auths] == ["registry.example.com"]
    # A second task of the same spec: the agent has both the spec and its file already.
    session.files.take_offer(OFFER)
    session.on_task(task("t3", "with"), False, {("with", 1): WITH})
    [change] = assignments(session)
    assert [t.id for t in change.tasks] == ["t3"] and not change.files and not change.registry_auths
    # A new full set starts over: everything again.
    session.files.take_offer(OFFER)
    session.send_full([task("t1", "with")], {("with", 1): WITH})
    [again, _] = assignments(session)
    assert [f.name for f in again.files] == ["pw"]


def test_an_offer_not_used_by_what_is_sent_is_dropped() -> None:
    session = AgentSession("n1", "s1")
    session.files.take_offer(OFFER)
    session.send_full([task("t2", "without")], {("without", 1): WITHOUT})
    [full] = assignments(session)
    assert not full.files and not full.registry_auths
    session.on_task(task("t1", "with"), False, {("with", 1): WITH})  # no offer made for it this time
    [change] = assignments(session)
    assert not change.files


async def test_the_source_unseals_what_specs_refer_to_and_nothing_else(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "db")
    await store.open()
    sealer = Sealer.open(tmp_path)
    try:
        await store.commit(
            [
                Put(pb.Secret(id="s1", name="pw", sealed=sealer.seal(SECRET, secret_context("pw")), digest="sha256:x")),
                Put(pb.Secret(id="s2", name="other", sealed=sealer.seal(b"other", secret_context("other")))),
                Put(pb.Config(id="c1", name="conf", data=b"x=1")),
                Put(
                    pb.RegistryCredential(
                        server="registry.example.com",
                        username="u",
                        sealed_password=sealer.seal(b"pa55", registry_context("registry.example.com")),
                    )
                ),
                # Sealed for another name: does not open, is not sent.
                Put(pb.Secret(id="s3", name="moved", sealed=sealer.seal(b"x", secret_context("elsewhere")))),
            ]
        )
        spec = pb.ServiceSpec(
            name="a",
            image="registry.example.com/app:1",
            secrets=[pb.FileRef(name="pw"), pb.FileRef(name="moved"), pb.FileRef(name="missing")],
            configs=[pb.FileRef(name="conf")],
        )
        offer = await FileSource(store, sealer).offer([spec, WITHOUT])
        assert {key: item.data for key, item in offer.files.items()} == {
            (apb.FileData.KIND_SECRET, "pw"): SECRET,
            (apb.FileData.KIND_CONFIG, "conf"): b"x=1",
        }
        assert offer.files[(apb.FileData.KIND_SECRET, "pw")].digest == "sha256:x"
        assert [(a.server, a.username, a.password) for a in offer.auths.values()] == [
            ("registry.example.com", "u", "pa55")
        ]
    finally:
        await store.close()


def test_credentials_given_after_the_spec_was_sent_go_with_the_next_change_of_its_task() -> None:
    session = AgentSession("n1", "s1")
    session.send_full([task("t1", "with")], {("with", 1): WITH})  # nothing offered yet: no login, no secret
    [full] = assignments(session)
    assert not full.files and not full.registry_auths
    # `dockyard registry login`, `dockyard secret create`; then the task is replaced (new generation).
    session.files.take_offer(OFFER)
    retried = task("t1", "with")
    retried.generation = 1
    session.on_task(retried, False, {("with", 1): WITH})
    [data, change] = assignments(session)
    assert not change.specs  # the agent has the spec
    assert [a.server for a in change.registry_auths] == ["registry.example.com"]
    assert files_only(data) and [f.name for f in data.files] == ["pw"] and not change.files


def big_configs(count: int, size: int) -> tuple[pb.ServiceSpec, Offer]:
    """A spec using `count` configs of `size` bytes each, and the offer of their data."""
    spec = pb.ServiceSpec(name="big", image="nginx:1", configs=[pb.FileRef(name=f"c{i}") for i in range(count)])
    files = {
        (apb.FileData.KIND_CONFIG, f"c{i}"): apb.FileData(
            kind=apb.FileData.KIND_CONFIG, name=f"c{i}", data=bytes([i]) * size, digest=f"d{i}"
        )
        for i in range(count)
    }
    return spec, Offer(files=files)


def test_many_large_files_go_in_messages_within_the_chunk_size_ahead_of_their_tasks() -> None:
    # 40 files of 500 KB: 20 MB, five times the chunk size. Before, they all rode in one message with the task.
    spec, offer = big_configs(40, 500_000)
    for full in (True, False):
        session = AgentSession("n1", "s1")
        if not full:
            session.send_full([], {})
            session.take()
        session.files.take_offer(offer)
        if full:
            session.send_full([task("t1", "big")], {("big", 1): spec})
        else:
            session.on_task(task("t1", "big"), False, {("big", 1): spec})
        messages = [m.assignments for m in session.take()]
        *data, last = messages
        assert [m.sequence for m in messages] == sorted(m.sequence for m in messages)
        assert all(files_only(m) for m in data) and len(data) >= 5
        assert all(m.ByteSize() <= ASSIGNMENTS_CHUNK_BYTES + 1024 for m in messages)
        assert sorted(f.name for m in data for f in m.files) == sorted(f"c{i}" for i in range(40))
        assert [t.id for t in last.tasks] == ["t1"] and not last.files
        assert last.kind == (apb.Assignments.KIND_FULL if full else apb.Assignments.KIND_INCREMENTAL)


def test_chunked_tasks_each_get_their_own_files_just_ahead() -> None:
    # Two specs whose tasks do not fit in one message: each chunk's files come right before that chunk.
    session = AgentSession("n1", "s1")
    session.send_full([], {})
    session.take()
    specs = {}
    for name in ("a", "b"):
        spec = pb.ServiceSpec(name=name, image="nginx:1", configs=[pb.FileRef(name=f"{name}-conf")])
        spec.env["PAD"] = "x" * (ASSIGNMENTS_CHUNK_BYTES * 3 // 4)  # each spec fills most of a chunk
        specs[(name, 1)] = spec
        item = apb.FileData(kind=apb.FileData.KIND_CONFIG, name=f"{name}-conf", data=name.encode(), digest=name)
        session.files.take_offer(Offer(files={(item.kind, item.name): item}))
    for name in ("a", "b"):
        session.on_task(task(f"t-{name}", name), False, specs)
    messages = [m.assignments for m in session.take()]
    shape = [[f.name for f in m.files] or [t.id for t in m.tasks] for m in messages]
    assert shape == [["a-conf"], ["t-a"], ["b-conf"], ["t-b"]]


def test_pending_file_data_counts_toward_the_outbox_bound() -> None:
    # An agent that stopped reading: tasks using large files pile up; the data counts, so the session closes.
    session = AgentSession("n1", "s1")
    session.send_full([], {})
    session.take()
    size = 500_000
    count = OUTBOX_BYTES // size + 2
    for i in range(count):
        spec, offer = big_configs(1, size)
        spec.name = f"s{i}"
        spec.configs[0].name = f"s{i}"
        item = next(iter(offer.files.values()))
        item.name = f"s{i}"
        session.files.take_offer(Offer(files={(item.kind, item.name): item}))
        session.on_task(task(f"t{i}", f"s{i}"), False, {(f"s{i}", 1): spec})
        if session.closed.is_set():
            break
    assert session.closed.is_set(), session.pending_bytes
    assert "bytes of assignments waiting" in session.close_reason


async def test_credentials_are_found_however_the_image_spells_its_registry(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "db")
    await store.open()
    sealer = Sealer.open(tmp_path)
    try:
        for server in ("docker.io", "registry.example.com"):
            sealed = sealer.seal(b"pa55", registry_context(server))
            await store.commit([Put(pb.RegistryCredential(server=server, username="u", sealed_password=sealed))])
        specs = [
            pb.ServiceSpec(name="hub", image="index.docker.io/team/app:1"),
            pb.ServiceSpec(name="mixed", image="Registry.Example.com/x:1"),
        ]
        offer = await FileSource(store, sealer).offer(specs)
        assert sorted(offer.auths) == ["docker.io", "registry.example.com"]
    finally:
        await store.close()


def test_a_full_set_whose_file_data_a_session_cannot_hold_closes_it_saying_why() -> None:
    size = 500_000
    spec, offer = big_configs(OUTBOX_BYTES // size + 1, size)
    session = AgentSession("n1", "s1")
    session.files.take_offer(offer)
    session.send_full([task("t1", "big")], {("big", 1): spec})
    assert session.closed.is_set()
    assert "the node's tasks need" in session.close_reason and "run fewer of them on this node" in session.close_reason
