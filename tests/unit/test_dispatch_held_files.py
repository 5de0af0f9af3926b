"""A task held at the network gate still gets its secrets when the map that covers it lets it through.

Found on the dev cluster: a stack's database, placed on a node before that node had its subnet of the stack's
network, waited for ever for its secret ("waiting for the data of secret ... from the controller"): the offer made
when the task arrived was spent by the take that wrote the map, and the release sent the task without it.
"""

from __future__ import annotations

from controller.dispatcher.files import Offer
from controller.dispatcher.session import AgentSession
from dockyard.v1 import agent_pb2 as apb
from dockyard.v1 import types_pb2 as pb

SECRET = apb.FileData(kind=apb.FileData.KIND_SECRET, name="shop_db_password", data=b"s3cret", digest="d1")
AUTH = apb.RegistryAuth(server="registry.example", username="u", password="p")


def db_task() -> pb.Task:
    task = pb.Task(id="db1", service_id="db", revision=1, node_id="n1", desired_state=pb.DESIRED_STATE_RUNNING)
    task.status.state = pb.TASK_STATE_ASSIGNED
    return task


def test_a_held_task_is_released_with_the_files_and_credentials_offered_when_it_arrived() -> None:
    covered = False
    session = AgentSession(node_id="n1", session_id="s", backlog=None)
    session.gate = lambda task, spec: covered
    spec = pb.ServiceSpec(name="shop_db", image="registry.example/db:1", stack="shop")
    spec.secrets.add(name="shop_db_password")
    session.send_full([], {})
    session.take()
    # The task arrives (the dispatcher offers its files first) and is held: its node has no subnet yet.
    session.files.take_offer(Offer(files={(SECRET.kind, SECRET.name): SECRET}, auths={AUTH.server: AUTH}))
    session.on_task(db_task(), False, {("db", 1): spec})
    assert set(session.held) == {"db1"}
    # Something else is written meanwhile (a DNS delta): the offer must outlive that take.
    session.dns(apb.DnsTable(version=2))
    assert [m.WhichOneof("msg") for m in session.take()] == ["dns"]
    # The covering map comes; the released task carries its spec, the secret's data and the credentials.
    covered = True
    session.network_map(apb.NetworkMap(version=3), b"covers n1")
    session.release_held()
    _, data, message = session.take()
    assert [t.id for t in message.assignments.tasks] == ["db1"]
    assert [(f.name, f.data) for f in data.assignments.files] == [("shop_db_password", b"s3cret")]
    assert [a.server for a in message.assignments.registry_auths] == ["registry.example"]
    # Spent once sent: nothing is kept for tasks no longer held.
    assert session.files.offered == Offer()


def test_an_offer_no_held_task_needs_is_spent_at_the_take() -> None:
    session = AgentSession(node_id="n1", session_id="s", backlog=None)
    session.files.take_offer(Offer(files={(SECRET.kind, SECRET.name): SECRET}))
    session.take()
    assert session.files.offered == Offer()
