"""Issue 8's attacks, tried against the real controller over real mutual TLS, with real certificates and joins.

Each test attacks the way the issue describes (a plain gRPC client, another node's certificate, a forged
report, a reset store) and checks the attack is refused with the documented code and that nothing changed.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import shutil
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agent.identity import CLUSTER_FILE, NODE_STEM, NotJoined, join, load_credentials
from controller.errors import StartupError
from controller.security.join import JOIN_BURST
from controller.server import Controller, ControllerConfig
from controller.store.base import Put
from controller.store.sqlite import SqliteStore
from dockyard import pki
from dockyard.channels import open_channel, open_server_tls_channel
from dockyard.client import ApiError, Client
from dockyard.v1 import agent_pb2 as apb
from dockyard.v1 import agent_pb2_grpc as apb_grpc
from dockyard.v1 import controller_pb2 as cpb
from dockyard.v1 import controller_pb2_grpc as cpb_grpc
from dockyard.v1 import types_pb2 as pb
from tests.component.harness import IMAGE, FakeCluster, running
from tests.polling import eventually

SessionCall = grpc.aio.StreamStreamCall[apb.AgentMessage, apb.ControllerMessage]
SHORT_LIFETIME = datetime.timedelta(seconds=6)


async def ready(client: Client, count: int) -> bool:
    """Whether exactly `count` nodes are ready."""
    return sum(1 for n in await client.list_nodes() if n.status == pb.NODE_STATUS_READY) == count


async def deploy(cluster: FakeCluster, name: str, replicas: int, hosts: int) -> None:
    """Applies a service and waits until every replica runs on the cluster's fake hosts."""
    async with cluster.client() as client:
        await client.apply([pb.ServiceSpec(name=name, image=IMAGE, replicas=replicas, command=["sleep", "1d"])])

        async def all_running() -> bool:
            tasks = await client.list_tasks(service=name)
            return sum(t.status.state == pb.TASK_STATE_RUNNING for t in tasks) == replicas

        await eventually(all_running, within=15, what=f"{replicas} replicas of {name} on {hosts} hosts")


async def containers(cluster: FakeCluster) -> int:
    """Running containers on every fake host."""
    return sum([len(await running(host)) for host in cluster.hosts.values()])


def identity_of(cluster: FakeCluster, name: str) -> tuple[str, pki.Credentials]:
    """A joined host's node id and credentials, as its agent keeps them."""
    state = cluster.root / name
    return json.loads((state / CLUSTER_FILE).read_text())["node_id"], load_credentials(state)


@asynccontextmanager
async def session(
    address: str, credentials: pki.Credentials | None, hello: apb.Hello | None
) -> AsyncIterator[SessionCall]:
    """Opens AgentService/Session as a raw client would, sends the hello (None: none), yields the call.

    A session the guard refuses before its hello is read is better sent none: a client whose write meets the
    refusal may see gRPC's INTERNAL instead of the controller's code (a client-side race in grpcio).
    """
    async with open_channel(address, credentials) as channel:
        call = apb_grpc.AgentServiceStub(channel).Session()
        # A refused handshake fails the write already; refused_with() then reads the same error.
        if hello is not None:
            with contextlib.suppress(grpc.aio.AioRpcError):
                await call.write(apb.AgentMessage(hello=hello))
        try:
            yield call
        finally:
            call.cancel()


async def refused_with(call: SessionCall) -> grpc.StatusCode:
    """Reads until the controller ends the call; returns its code (never OK for a refused session)."""
    while True:
        try:
            message = await call.read()
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        if message is grpc.aio.EOF:
            return await call.code()


@pytest.fixture
async def two_hosts(fake_cluster: FakeCluster) -> FakeCluster:
    """Two joined agents, ready, with 4 replicas running across them."""
    await fake_cluster.start_agent("h1")
    await fake_cluster.start_agent("h2")
    async with fake_cluster.client() as client:
        await eventually(lambda: ready(client, 2), within=10, what="two ready nodes")
    await deploy(fake_cluster, "web", 4, 2)
    return fake_cluster


async def test_an_anonymous_client_changes_nothing(two_hosts: FakeCluster) -> None:
    cluster = two_hosts
    assert cluster.controller is not None
    revision = cluster.controller.store.revision
    # On the API address a client without a certificate never gets past the TLS handshake.
    async with Client(f"127.0.0.1:{cluster.port}", deadline=5) as anonymous:
        with pytest.raises(ApiError) as caught:
            await anonymous.apply([pb.ServiceSpec(name="evil", image=IMAGE, replicas=1)])
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert "TLS (the default), pass --credentials" in str(caught.value)
    # On the join address (TLS, no client certificate) it reaches the server and is refused by name.
    join_address = f"127.0.0.1:{cluster.join_port}"
    ca_pem = (cluster.root / "controller" / pki.CA_CERT_FILE).read_bytes()
    async with open_server_tls_channel(join_address, ca_pem) as channel:
        stub = cpb_grpc.ControllerServiceStub(channel)
        for call in (
            stub.ApplyService(cpb.ApplyServiceRequest(services=[pb.ServiceSpec(name="evil", image=IMAGE)])),
            stub.DeleteService(cpb.DeleteServiceRequest(name="web")),
            stub.ListServices(cpb.ListServicesRequest()),
            stub.GetJoinToken(cpb.GetJoinTokenRequest(rotate=True)),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "client certificate is required" in (refused.value.details() or "")
        session_call = apb_grpc.AgentServiceStub(channel).Session()  # refused before any hello is read
        assert await refused_with(session_call) == grpc.StatusCode.UNAUTHENTICATED
    assert cluster.controller.store.revision == revision
    assert await containers(cluster) == 4


async def test_an_agent_certificate_cannot_call_the_admin_api(two_hosts: FakeCluster) -> None:
    cluster = two_hosts
    assert cluster.controller is not None
    revision = cluster.controller.store.revision
    _, agent = identity_of(cluster, "h1")
    async with Client(f"127.0.0.1:{cluster.port}", credentials=agent) as stolen:
        for attempt in (
            stolen.list_services(),
            stolen.delete_service("web"),
            stolen.apply([pb.ServiceSpec(name="evil", image=IMAGE, replicas=1)]),
            stolen.join_token(rotate=True),
        ):
            with pytest.raises(ApiError) as caught:
                await attempt
            assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED
            assert "role 'agent'" in str(caught.value)
    assert cluster.controller.store.revision == revision
    assert await containers(cluster) == 4


async def test_an_agent_cannot_claim_another_node(two_hosts: FakeCluster) -> None:
    cluster = two_hosts
    assert cluster.controller is not None
    b_id, _ = identity_of(cluster, "h2")
    _, a_credentials = identity_of(cluster, "h1")
    before = await cluster.controller.store.get_node(b_id)
    async with session(f"127.0.0.1:{cluster.port}", a_credentials, apb.Hello(node_id=b_id)) as call:
        assert await refused_with(call) == grpc.StatusCode.PERMISSION_DENIED
        assert b_id in ((call and (await call.details())) or "")
    assert await cluster.controller.store.get_node(b_id) == before
    async with cluster.client() as client:
        assert await ready(client, 2), "both real agents keep their sessions"
    assert await containers(cluster) == 4


async def test_a_second_session_for_a_connected_node_is_refused(two_hosts: FakeCluster) -> None:
    cluster = two_hosts
    a_id, a_credentials = identity_of(cluster, "h1")
    async with session(f"127.0.0.1:{cluster.port}", a_credentials, apb.Hello(node_id=a_id)) as call:
        assert await refused_with(call) == grpc.StatusCode.ALREADY_EXISTS
    host = cluster.hosts["h1"]
    assert host.agent is not None and host.agent.link.connected.is_set(), "the first session stays"
    async with cluster.client() as client:
        assert await ready(client, 2)


async def test_certificates_of_another_ca_and_expired_ones_are_refused(two_hosts: FakeCluster) -> None:
    cluster = two_hosts
    assert cluster.controller is not None and cluster.controller.authority is not None
    revision = cluster.controller.store.revision
    now = datetime.datetime.now(datetime.UTC)
    a_id, a_credentials = identity_of(cluster, "h1")
    # Another cluster's CA, signing an admin and a node certificate with this cluster's ids in them.
    foreign = pki.Authority(pki.create_ca(cluster.controller.authority.cluster_id, now))
    foreign_admin = pki.Credentials(
        a_credentials.ca_pem, foreign.issue(pki.ROLE_ADMIN, "mallory", now, pki.ADMIN_CERT_LIFETIME)
    )
    # This cluster's own CA, but a certificate that expired a minute ago.
    ca = cluster.controller.authority.ca
    expired = pki.Credentials(
        a_credentials.ca_pem,
        ca.issue(pki.ROLE_ADMIN, "old", now - datetime.timedelta(hours=1), datetime.timedelta(minutes=50)),
    )
    for credentials in (foreign_admin, expired):
        async with Client(f"127.0.0.1:{cluster.port}", credentials=credentials, deadline=5) as client:
            with pytest.raises(ApiError) as caught:
                await client.delete_service("web")
        # The controller ends the handshake: the client cannot tell that from a connection cut at that moment.
        assert caught.value.code == grpc.StatusCode.UNAVAILABLE, caught.value
        assert "or it refused this client's certificate" in str(caught.value)
    foreign_node = pki.Credentials(
        a_credentials.ca_pem, foreign.issue(pki.ROLE_AGENT, a_id, now, pki.DEFAULT_CERT_LIFETIME)
    )
    async with session(f"127.0.0.1:{cluster.port}", foreign_node, None) as call:
        assert await refused_with(call) == grpc.StatusCode.UNAVAILABLE  # the handshake, not the hello, failed
    assert cluster.controller.store.revision == revision
    assert await containers(cluster) == 4


async def test_a_rotated_token_is_refused_at_once_and_the_new_one_joins(fake_cluster: FakeCluster) -> None:
    cluster = fake_cluster
    old = cluster.token()
    async with cluster.client() as client:
        rotated = await client.join_token(rotate=True)
    assert rotated.token != old and rotated.join_port == cluster.join_port
    assert pki.parse_token(rotated.token).ca_digest == pki.parse_token(old).ca_digest
    with pytest.raises(NotJoined, match="UNAUTHENTICATED: token: not this cluster's current join token"):
        await join(cluster.root / "late", f"127.0.0.1:{cluster.join_port}", old, "late")
    assert not (cluster.root / "late" / CLUSTER_FILE).exists()
    async with cluster.client() as client:
        assert await client.list_nodes() == []
    membership = await join(cluster.root / "late", f"127.0.0.1:{cluster.join_port}", rotated.token, "late")
    key = cluster.root / "late" / f"{NODE_STEM}.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE((cluster.root / "controller" / pki.CA_KEY_FILE).stat().st_mode) == 0o600
    certificate = load_credentials(cluster.root / "late").pair.certificate
    assert pki.identity_of(certificate) == pki.Identity(membership.cluster_id, pki.ROLE_AGENT, membership.node_id)


async def test_a_token_for_another_ca_never_sends_the_secret(fake_cluster: FakeCluster, tmp_path: Path) -> None:
    now = datetime.datetime.now(datetime.UTC)
    impostor_digest = pki.ca_digest(pki.create_ca("elsewhere", now).cert_pem)
    token = f"DKY1-{impostor_digest}-{pki.parse_token(fake_cluster.token()).secret}"
    with pytest.raises(NotJoined, match="not the controller of this token"):
        await join(tmp_path / "h", f"127.0.0.1:{fake_cluster.join_port}", token, "h")
    async with fake_cluster.client() as client:
        assert await client.list_nodes() == [], "the controller never saw the join"


async def test_a_hostname_cannot_be_taken_twice_nor_changed_by_a_hello(two_hosts: FakeCluster) -> None:
    cluster = two_hosts
    with pytest.raises(NotJoined, match="ALREADY_EXISTS: hostname: h1 is node"):
        await join(cluster.root / "copycat", f"127.0.0.1:{cluster.join_port}", cluster.token(), "h1")
    # A joined node that claims another hostname in its hello keeps the one it joined with.
    await cluster.join("h3")
    h3_id, h3_credentials = identity_of(cluster, "h3")
    hello = apb.Hello(node_id=h3_id, description=pb.NodeDescription(hostname="h1", labels={"pci": "true"}))
    async with session(f"127.0.0.1:{cluster.port}", h3_credentials, hello) as call:
        first = await call.read()
        assert isinstance(first, apb.ControllerMessage) and first.HasField("welcome")
        async with cluster.client() as client:

            async def described() -> pb.Node | None:
                node = next((n for n in await client.list_nodes() if n.id == h3_id), None)
                return node if node is not None and node.status == pb.NODE_STATUS_READY else None

            node = await eventually(described, what="h3 registered")
    assert node.description.hostname == "h3"
    assert dict(node.labels) == {}, "an agent's labels are engine labels, never operator labels"
    assert dict(node.description.labels) == {"pci": "true"}


async def test_a_removed_node_loses_its_session_and_cannot_come_back(two_hosts: FakeCluster) -> None:
    cluster = two_hosts
    b_id, b_credentials = identity_of(cluster, "h2")
    host = cluster.hosts["h2"]
    assert host.agent is not None
    async with cluster.client() as client:
        await client.remove_node(b_id, force=True)
    # Closed within 5 s of the removal (the router closes it on the node's delete event).
    await eventually(lambda: _disconnected(host), within=5, what="the removed node's session to close")
    async with session(f"127.0.0.1:{cluster.port}", b_credentials, None) as call:  # the guard refuses it
        assert await refused_with(call) == grpc.StatusCode.PERMISSION_DENIED
    async with open_channel(f"127.0.0.1:{cluster.port}", b_credentials) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await apb_grpc.AgentServiceStub(channel).Renew(apb.RenewRequest(csr=pki.create_csr(pki.new_key())))
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "was removed" in (caught.value.details() or "")
    async with cluster.client() as client:
        assert [n.id for n in await client.list_nodes()] != [] and b_id not in {n.id for n in await client.list_nodes()}


async def _disconnected(host: object) -> bool:
    agent = getattr(host, "agent", None)
    return agent is not None and not agent.link.connected.is_set()


async def test_forged_and_malformed_reports_change_nothing_but_their_own(two_hosts: FakeCluster) -> None:
    cluster = two_hosts
    assert cluster.controller is not None
    a_id, a_credentials = identity_of(cluster, "h1")
    b_id, _ = identity_of(cluster, "h2")
    store = cluster.controller.store
    theirs = next(t for t in await store.list_tasks(node_id=b_id))
    # A second, scripted session for h1 after its agent stops: it reports FAILED on h2's task.
    await cluster.stop_agent("h1")
    hello = apb.Hello(node_id=a_id)
    address = f"127.0.0.1:{cluster.port}"

    async def forge() -> bool:
        async with session(address, a_credentials, hello) as call:
            first = await call.read()
            if not (isinstance(first, apb.ControllerMessage) and first.HasField("welcome")):
                return False  # the old session was still within its grace: try again
            forged = pb.TaskStatus(state=pb.TASK_STATE_FAILED, error="forged")
            await call.write(
                apb.AgentMessage(
                    status=apb.StatusUpdate(updates=[apb.TaskStatusUpdate(task_id=theirs.id, status=forged)])
                )
            )
            assert await refused_with(call) == grpc.StatusCode.PERMISSION_DENIED
            return True

    await eventually(forge, within=10, what="a scripted session for h1")
    after = await store.get_task(theirs.id)
    assert after is not None and after.status == theirs.status and after.version == theirs.version

    # A malformed and a far-future timestamp on its own task: stored with the controller's time instead.
    mine = next(t for t in await store.list_tasks(node_id=a_id))
    bad = pb.TaskStatus(state=pb.TASK_STATE_FAILED, error="crashed")
    bad.timestamp.seconds, bad.timestamp.nanos = 10**12, -1
    sent_at = datetime.datetime.now(datetime.UTC)

    async def report() -> bool:
        async with session(address, a_credentials, hello) as call:
            first = await call.read()
            if not (isinstance(first, apb.ControllerMessage) and first.HasField("welcome")):
                return False
            await call.write(
                apb.AgentMessage(status=apb.StatusUpdate(updates=[apb.TaskStatusUpdate(task_id=mine.id, status=bad)]))
            )

            async def stored() -> pb.Task | None:
                task = await store.get_task(mine.id)
                return task if task is not None and task.status.state == pb.TASK_STATE_FAILED else None

            task = await eventually(stored, what="the report stored")
            stamp = task.status.timestamp.ToDatetime(tzinfo=datetime.UTC)
            assert sent_at - datetime.timedelta(seconds=5) <= stamp <= datetime.datetime.now(datetime.UTC)
            return True

    await eventually(report, within=10, what="a scripted session for h1")
    # The orchestrator goes on reconciling: the failed task is replaced, and a new service still deploys.
    await cluster.start_agent("h1")
    await deploy(cluster, "after", 2, 2)


async def test_insecure_is_refused_off_loopback_and_an_empty_state_dir_needs_init(tmp_path: Path) -> None:
    off_loopback = Controller(ControllerConfig(listen="0.0.0.0:0", insecure=True, init=True, state_dir=tmp_path / "a"))
    with pytest.raises(StartupError, match=re.escape("--insecure: refused on 0.0.0.0:0")):
        await off_loopback.start()
    await off_loopback.stop()
    assert not (tmp_path / "a" / "controller.db").exists(), "refused before the store was made"
    empty = Controller(ControllerConfig(listen="127.0.0.1:0", join_listen="127.0.0.1:0", state_dir=tmp_path / "b"))
    with pytest.raises(StartupError, match=r"no cluster here .* start once with --init"):
        await empty.start()
    assert not (tmp_path / "b" / "controller.db").exists()
    made = Controller(
        ControllerConfig(listen="127.0.0.1:0", join_listen="127.0.0.1:0", state_dir=tmp_path / "c", init=True)
    )
    await made.start()
    await made.stop()
    os.remove(tmp_path / "c" / "controller.db")
    lost_store = Controller(
        ControllerConfig(listen="127.0.0.1:0", join_listen="127.0.0.1:0", state_dir=tmp_path / "c", init=True)
    )
    with pytest.raises(StartupError, match="the cluster CA is here but its store"):
        await lost_store.start()


async def test_a_reset_store_or_a_foreign_controller_removes_no_container(two_hosts: FakeCluster) -> None:
    cluster = two_hosts
    assert await containers(cluster) == 4
    await cluster.stop_controller()
    # The store replaced by another one (a wrong backup restored, another cluster's file copied in) that has
    # these very nodes but none of their tasks, under the same CA: every agent would be welcomed and sent an
    # empty full set. Only the store epoch tells them apart.
    db = cluster.root / "controller" / "controller.db"
    async with SqliteStore(db) as old:
        nodes = await old.list_nodes()
    for name in os.listdir(cluster.root / "controller"):
        if name.startswith("controller.db"):
            os.remove(cluster.root / "controller" / name)
    async with SqliteStore(db) as other:
        copies = []
        for node in nodes:
            copy = pb.Node()
            copy.CopyFrom(node)
            copy.version = 0
            copies.append(Put(copy, expect_version=0))
        await other.commit(copies)
    await cluster.start_controller()

    async def refused_twice() -> bool:
        return all(h.agent is not None and h.agent.guard.refusals >= 2 for h in cluster.hosts.values())

    await eventually(refused_twice, within=10, what="each agent to refuse the replaced store twice")
    assert await containers(cluster) == 4, "no container removed for an empty full set from a replaced store"
    for host in cluster.hosts.values():
        assert host.agent is not None and not host.agent.link.connected.is_set()
        assert len(host.agent.book) == 2, "the task book is kept as it was"
    async with cluster.client() as client:
        assert await client.list_services() == [], "the replaced store really has no services"


async def test_renewal_keeps_the_session_and_the_tasks(tmp_path: Path) -> None:
    """A six-second lifetime (the CLI's minimum is a minute; the config takes any): the agent renews after 3 s,
    its session and containers untouched, and its next dial uses the renewed certificate."""
    cluster = FakeCluster(root=tmp_path)
    await cluster.start_controller(cert_lifetime=SHORT_LIFETIME)
    try:
        host = await cluster.start_agent("h1")
        async with cluster.client() as client:
            await eventually(lambda: ready(client, 1), within=10, what="the node ready")
        await deploy(cluster, "web", 2, 1)
        assert host.agent is not None and host.agent.keeper is not None
        first = host.agent.keeper.credentials.pair.certificate
        session_before = host.agent.link.disconnected_since, host.agent.link.connected.is_set()

        async def renewed() -> bool:
            assert host.agent is not None and host.agent.keeper is not None
            return host.agent.keeper.credentials.pair.certificate.serial_number != first.serial_number

        await eventually(renewed, within=10, every=0.2, what="the certificate renewed")
        assert (host.agent.link.disconnected_since, host.agent.link.connected.is_set()) == session_before
        assert len(await running(host)) == 2
        renewed_pem = (cluster.root / "h1" / f"{NODE_STEM}.crt").read_bytes()
        assert pki.KeyPair(b"", renewed_pem).certificate.serial_number != first.serial_number, "kept on disk too"
        # The next dial (after a controller restart) presents the renewed certificate and is welcomed.
        await cluster.stop_controller()
        await cluster.start_controller(cert_lifetime=SHORT_LIFETIME)
        async with cluster.client() as client:
            await eventually(lambda: ready(client, 1), within=15, what="the node ready again")
            tasks = await client.list_tasks(service="web")
        assert sum(t.status.state == pb.TASK_STATE_RUNNING for t in tasks) == 2
        assert len(await running(host)) == 2
    finally:
        await cluster.close()


async def test_without_certificates_the_store_epoch_still_guards_the_containers(tmp_path: Path) -> None:
    """With --insecure there is no CA and no node check: the welcome's store epoch is what stops an agent
    from acting on a reset controller's empty full set."""
    cluster = FakeCluster(root=tmp_path, insecure=True)
    await cluster.start_controller()
    try:
        await cluster.start_agent("h1")
        await cluster.start_agent("h2")
        await deploy(cluster, "web", 4, 2)
        await cluster.stop_controller()
        for name in os.listdir(tmp_path / "controller"):
            if name.startswith("controller.db"):
                os.remove(tmp_path / "controller" / name)
        await cluster.start_controller()  # --init on an emptied dir: a new store, a new epoch

        async def refused_twice() -> bool:
            return all(h.agent is not None and h.agent.guard.refusals >= 2 for h in cluster.hosts.values())

        await eventually(refused_twice, within=10, what="each agent to refuse the reset controller twice")
        assert await containers(cluster) == 4, "no container removed"
        for host in cluster.hosts.values():
            assert host.agent is not None and len(host.agent.book) == 2
    finally:
        await cluster.close()


async def test_without_a_certificate_only_join_and_health_check_answer(two_hosts: FakeCluster) -> None:
    cluster = two_hosts
    ca_pem = (cluster.root / "controller" / pki.CA_CERT_FILE).read_bytes()
    async with open_server_tls_channel(f"127.0.0.1:{cluster.join_port}", ca_pem) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        assert (await stub.Check(health_pb2.HealthCheckRequest())).status == health_pb2.HealthCheckResponse.SERVING
        watch = stub.Watch(health_pb2.HealthCheckRequest())  # a stream held per call: not for anonymous peers
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await watch.read()
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_wrong_secrets_do_not_use_up_the_join_rate(fake_cluster: FakeCluster, tmp_path: Path) -> None:
    token = pki.parse_token(fake_cluster.token())
    wrong = f"DKY1-{token.ca_digest}-{'0' * 32}"
    ca_pem = (fake_cluster.root / "controller" / pki.CA_CERT_FILE).read_bytes()
    request = apb.JoinRequest(secret="0" * 32, csr=pki.create_csr(pki.new_key()), hostname="mallory")
    async with open_server_tls_channel(f"127.0.0.1:{fake_cluster.join_port}", ca_pem) as channel:
        stub = apb_grpc.JoinServiceStub(channel)
        for _ in range(JOIN_BURST + 1):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Join(request)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(NotJoined, match="UNAUTHENTICATED"):
        await join(tmp_path / "w", f"127.0.0.1:{fake_cluster.join_port}", wrong, "w")
    await join(tmp_path / "real", f"127.0.0.1:{fake_cluster.join_port}", str(token), "real")


async def test_a_hostname_with_a_newline_and_a_second_join_are_refused(fake_cluster: FakeCluster) -> None:
    address = f"127.0.0.1:{fake_cluster.join_port}"
    with pytest.raises(NotJoined, match="INVALID_ARGUMENT: hostname"):
        await join(fake_cluster.root / "nl", address, fake_cluster.token(), "db1\n")
    await join(fake_cluster.root / "once", address, fake_cluster.token(), "once")
    with pytest.raises(NotJoined, match="has joined already"):
        await join(fake_cluster.root / "once", address, fake_cluster.token(), "twice")
    await join(fake_cluster.root / "once", address, fake_cluster.token(), "twice", rejoin=True)


async def test_unknown_fields_from_an_agent_are_not_stored(two_hosts: FakeCluster) -> None:
    cluster = two_hosts
    assert cluster.controller is not None
    a_id, a_credentials = identity_of(cluster, "h1")
    await cluster.stop_agent("h1")
    mine = next(t for t in await cluster.controller.store.list_tasks(node_id=a_id))
    status = pb.TaskStatus(state=pb.TASK_STATE_FAILED, error="padded")
    raw = status.SerializeToString() + _unknown_field(1007, b"x" * (1 << 20))
    update = apb.StatusUpdate(updates=[apb.TaskStatusUpdate(task_id=mine.id, status=pb.TaskStatus.FromString(raw))])

    async def report() -> bool:
        async with session(f"127.0.0.1:{cluster.port}", a_credentials, apb.Hello(node_id=a_id)) as call:
            first = await call.read()
            if not (isinstance(first, apb.ControllerMessage) and first.HasField("welcome")):
                return False
            await call.write(apb.AgentMessage(status=update))

            async def stored() -> pb.Task | None:
                assert cluster.controller is not None
                task = await cluster.controller.store.get_task(mine.id)
                return task if task is not None and task.status.state == pb.TASK_STATE_FAILED else None

            task = await eventually(stored, what="the report stored")
            assert task.ByteSize() < 4096, task.ByteSize()
            return True

    await eventually(report, within=10, what="a scripted session for h1")


def _unknown_field(number: int, payload: bytes) -> bytes:
    """A length-delimited field with a number no message of the protocol has."""

    def varint(value: int) -> bytes:
        out = bytearray()
        while True:
            byte, value = value & 0x7F, value >> 7
            out.append(byte | (0x80 if value else 0))
            if not value:
                return bytes(out)

    return varint(number << 3 | 2) + varint(len(payload)) + payload


async def test_a_node_removed_before_its_hello_is_refused(two_hosts: FakeCluster) -> None:
    cluster = two_hosts
    b_id, b_credentials = identity_of(cluster, "h2")
    await cluster.stop_agent("h2")
    async with open_channel(f"127.0.0.1:{cluster.port}", b_credentials) as channel:
        call = apb_grpc.AgentServiceStub(channel).Session()
        await call.wait_for_connection()  # the guard has let the call in; no hello yet
        async with cluster.client() as client:
            await client.remove_node(b_id, force=True)
        await call.write(apb.AgentMessage(hello=apb.Hello(node_id=b_id)))
        assert await refused_with(call) == grpc.StatusCode.PERMISSION_DENIED


async def test_the_cli_client_never_sends_plaintext_off_loopback() -> None:
    with pytest.raises(ApiError, match=re.escape("no admin credentials for 10.1.2.3:7465")):
        Client("10.1.2.3:7465")
    async with Client("127.0.0.1:7465"):  # a loopback controller may run --insecure
        pass


async def test_an_agent_says_loudly_that_a_controller_is_of_another_cluster(tmp_path: Path) -> None:
    """A controller started on an emptied state dir with --init has a new CA: the agent's dials fail in the
    handshake, which gRPC reports like an unreachable controller, so the agent says which it is."""
    cluster = FakeCluster(root=tmp_path)
    await cluster.start_controller()
    try:
        await cluster.start_agent("h1")
        await deploy(cluster, "web", 2, 1)
        await cluster.stop_controller()
        shutil.rmtree(tmp_path / "controller")
        with structlog.testing.capture_logs() as logs:
            await cluster.start_controller()  # init: a new cluster, a new CA, on the same ports

            async def said() -> bool:
                return any(e["event"] == "controller refused" and "cluster CA" in e.get("error", "") for e in logs)

            await eventually(said, within=10, what="the agent to say the controller is another cluster's")
        assert await containers(cluster) == 2, "no container removed"
    finally:
        await cluster.close()
