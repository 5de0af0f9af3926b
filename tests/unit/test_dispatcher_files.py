"""The dispatcher's side of file data: offered per spec, attached once per session, only beside the specs sent."""

from __future__ import annotations

from pathlib import Path

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


def test_files_go_beside_the_spec_that_uses_them_once_per_session() -> None:
    session = AgentSession("n1", "s1")
    session.files.take_offer(OFFER)
    session.send_full([task("t1", "with"), task("t2", "without")], {("with", 1): WITH, ("without", 1): WITHOUT})
    [full] = assignments(session)
    assert [f.name for f in full.files] == ["pw"] and full.files[0].data == SECRET
    assert [a.server for a in full.registry_auths] == ["registry.example.com"]
    # A second task of the same spec: the agent has both the spec and its file already.
    session.files.take_offer(OFFER)
    session.on_task(task("t3", "with"), False, {("with", 1): WITH})
    [change] = assignments(session)
    assert [t.id for t in change.tasks] == ["t3"] and not change.files and not change.registry_auths
    # A new full set starts over: everything again.
    session.files.take_offer(OFFER)
    session.send_full([task("t1", "with")], {("with", 1): WITH})
    [again] = assignments(session)
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
    [change] = assignments(session)
    assert not change.specs  # the agent has the spec
    assert [a.server for a in change.registry_auths] == ["registry.example.com"]
    assert [f.name for f in change.files] == ["pw"]
