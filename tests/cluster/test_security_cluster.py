"""Issue 8's attacks on the dev cluster: real dockerds, real agents that joined with the token, real certificates.

tests/component/test_security.py tries the same attacks on an in-process controller with fake runtimes; here
they meet the processes a real deployment runs. One cluster of two hosts serves the whole module (a bring-up
per attack would cost most of the module's time), so the tests run in file order and the disruptive ones come
last: scripted sessions with h1's certificate (its agent stopped meanwhile), a controller whose state is gone
and one on a reset store (the state restored after each), and the removal of h2, after which the cluster
serves no further test.

Every test checks, besides its own refusal, that nothing changed in the store (ListServices, ListTasks and
ListNodes before and after, compared whole; where the controller restarted or a scripted session stood in for
h1, what a restart or a new session rewrites is left out of the comparison) and that no container was removed,
counted on every host's own dockerd. The containers the module started and never meant to stop are kept in
`Secured.kept` and must still run, on their host, at the end of every test.
"""

from __future__ import annotations

import asyncio
import datetime
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from agent.identity import CLUSTER_FILE, NODE_STEM, load_credentials, load_membership
from agent.runtime.base import ContainerState
from controller.store.base import Put
from controller.store.sqlite import STORE_FILE, SqliteStore
from deploy.devcluster import DevCluster, find_leftovers
from deploy.devcluster.cluster import CONTROLLER_DIR
from deploy.devcluster.errors import DevClusterError
from dockyard import labels, pki
from dockyard.channels import open_channel, open_server_tls_channel
from dockyard.client import ApiError, Client
from dockyard.timestamps import to_timestamp
from dockyard.v1 import agent_pb2 as apb
from dockyard.v1 import agent_pb2_grpc as apb_grpc
from dockyard.v1 import controller_pb2 as cpb
from dockyard.v1 import controller_pb2_grpc as cpb_grpc
from dockyard.v1 import types_pb2 as pb
from tests.cluster.harness import ROOT, ClusterHarness
from tests.component.test_security import refused_with, session
from tests.polling import eventually, wait_for

IMAGE = "dockyard-test:latest"
WEB = "web"  # 2 replicas on each host; never legitimately touched by any test here
VICTIM = "victim"  # 2 replicas pinned to h1, reported FAILED (with bad timestamps) by h1's own certificate
AFTER = "after"  # deployed after the bad reports: the orchestrator still reconciles
# Heartbeat grace, in periods of 1 s: h1's real agent is stopped while scripted sessions use its certificate,
# and a restarted agent needs a few seconds to start; with the default 3 s h1 could be marked down meanwhile
# and its tasks replaced, which would remove containers for a reason that is no attack.
GRACE_PERIODS = 10.0
REMOVED_SESSION_BOUND = 5.0  # issue 8: a removed node's open session is closed within 5 s
REFUSALS = 2  # redial rounds each agent must refuse a reset store before its containers are counted

SPEC = f"""\
services:
  {WEB}:
    image: {IMAGE}
    command: ["sleep", "3600"]
    replicas: 4
    stop_grace_period: 1s
  {VICTIM}:
    image: {IMAGE}
    command: ["sleep", "3600"]
    replicas: 2
    placement:
      constraints: ["node.hostname == h1"]
    restart: {{condition: any, delay: 0s}}
    stop_grace_period: 1s
"""


@dataclass
class Secured:
    """The module's cluster, and the containers that must keep running (id -> host)."""

    h: ClusterHarness
    work: Path
    kept: dict[str, str] = field(default_factory=dict)

    @property
    def address(self) -> str:
        """The API address (mutual TLS)."""
        return self.h.cluster.controller_address

    @property
    def join_address(self) -> str:
        """The join address (server-authenticated TLS)."""
        return self.h.cluster.join_address

    @property
    def ca_pem(self) -> bytes:
        """The cluster CA's certificate, as every client trusts it."""
        return (self.h.cluster.credentials_dir / pki.CA_CERT_FILE).read_bytes()

    def node_id(self, host: str) -> str:
        """The node id the host joined with."""
        node_id = self.h.cluster.node_id(host)
        assert node_id is not None, f"{host} has not joined"
        return node_id

    def agent_credentials(self, host: str) -> pki.Credentials:
        """The node certificate the host's agent keeps in its state dir (what a thief of that host has)."""
        return load_credentials(self.h.cluster.paths(host).agent_state)

    def agent_log(self, host: str) -> str:
        """The host's agent log so far."""
        return self.h.cluster.paths(host).agent_log.read_text()


# ----- the store and the containers ---------------------------------------------------------------------------------

View = dict[str, list[bytes]]


async def _view(s: Secured) -> View:
    """Every service, task (finished ones too) and node, serialized, each list in id order."""
    async with Client(s.address, deadline=5, credentials=s.h.cluster.admin_credentials()) as client:
        services = await client.list_services()
        tasks = await client.list_tasks(include_finished=True)
        nodes = await client.list_nodes()
    return {
        "services": [x.SerializeToString(deterministic=True) for x in sorted(services, key=lambda x: x.id)],
        "tasks": [x.SerializeToString(deterministic=True) for x in sorted(tasks, key=lambda x: x.id)],
        "nodes": [x.SerializeToString(deterministic=True) for x in sorted(nodes, key=lambda x: x.id)],
    }


def view(s: Secured) -> View:
    """The store as the admin API shows it."""
    return asyncio.run(_view(s))


def running_containers(s: Secured) -> dict[str, str]:
    """Every running container on every host's own dockerd: id -> host."""
    return {c.id: host for host in s.h.hosts for c in s.h.containers(host) if c.state == ContainerState.RUNNING}


def assert_kept(s: Secured) -> None:
    """Every container the module started and never meant to stop still runs, on the host it started on."""
    now = running_containers(s)
    gone = {cid[:12]: host for cid, host in s.kept.items() if now.get(cid) != host}
    assert not gone, f"containers removed or stopped: {gone}\n{s.h.logs()}"


def assert_unchanged(s: Secured, before: View, containers: dict[str, str]) -> None:
    """Nothing changed in the store, and every container that ran still runs."""
    after = view(s)
    for kind in ("services", "tasks", "nodes"):
        assert after[kind] == before[kind], f"{kind} changed"
    now = running_containers(s)
    assert {cid: host for cid, host in containers.items() if now.get(cid) != host} == {}, "a container went away"
    assert_kept(s)


def ready_hosts(s: Secured) -> set[str]:
    """The hosts the controller reports ready."""
    return {host for host, status in s.h.node_statuses().items() if status == "ready"}


async def _tasks(s: Secured, service: str) -> list[pb.Task]:
    async with Client(s.address, deadline=5, credentials=s.h.cluster.admin_credentials()) as client:
        return await client.list_tasks(service=service, include_finished=True)


def tasks_of(s: Secured, service: str) -> list[pb.Task]:
    """Every task of one service, finished ones too."""
    return asyncio.run(_tasks(s, service))


def containers_of(s: Secured, service: str) -> dict[str, str]:
    """The running containers of one service: id -> host."""
    return {c.id: host for host in s.h.hosts for c in s.h.running(host, service)}


def log_mark(s: Secured) -> dict[str, int]:
    """Where each host's agent log ends now, so a test reads only what was logged after."""
    return {host: len(s.agent_log(host)) for host in s.h.hosts}


def logged_since(s: Secured, host: str, mark: dict[str, int], *needles: str) -> int:
    """How many lines the host's agent logged since the mark that contain every needle."""
    return sum(all(n in line for n in needles) for line in s.agent_log(host)[mark[host] :].splitlines())


# ----- the cluster --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory, dev_cluster_prerequisites: str) -> Iterator[Secured]:
    """Two joined hosts running WEB (two replicas each) and VICTIM (two on h1); torn down, nothing left behind."""
    work = tmp_path_factory.mktemp("security")
    cluster = asyncio.run(DevCluster.up(hosts=2, images=(dev_cluster_prerequisites,), heartbeat_grace=GRACE_PERIODS))
    h = ClusterHarness(cluster, config_home=work / "config")
    try:
        (work / "spec.yaml").write_text(SPEC)
        h.cli("apply", "-f", str(work / "spec.yaml"))
        s = Secured(h, work)
        s.kept = containers_of(s, WEB)
        assert sorted(s.kept.values()) == ["h1", "h1", "h2", "h2"], "spread puts two web replicas on each host"
        assert set(containers_of(s, VICTIM).values()) == {"h1"}
        yield s
    finally:
        if cluster.state_dir.exists():
            print(h.logs())  # shown only when a test fails
        report = asyncio.run(cluster.down())
        leftovers = report["leftovers"] or find_leftovers(cluster.cluster_id, cluster.state_dir)
        assert leftovers == [], f"dev cluster {cluster.cluster_id} left behind: {leftovers}"


# ----- the attacks, in this order -----------------------------------------------------------------------------------


def test_an_anonymous_client_is_refused(secured: Secured) -> None:
    s = secured
    before, containers, token = view(s), running_containers(s), s.h.cluster.join_token()

    async def attack() -> None:
        request = cpb.ListServicesRequest()
        # The API address: no certificate, no handshake, whether the client speaks plaintext or TLS.
        for channel in (grpc.aio.insecure_channel(s.address), open_server_tls_channel(s.address, s.ca_pem)):
            async with channel:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await cpb_grpc.ControllerServiceStub(channel).ListServices(request, timeout=5)
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value
        # The join address: the call reaches the controller, which refuses it by name.
        async with open_server_tls_channel(s.join_address, s.ca_pem) as channel:
            stub = cpb_grpc.ControllerServiceStub(channel)
            for call in (
                stub.ApplyService(cpb.ApplyServiceRequest(services=[pb.ServiceSpec(name="evil", image=IMAGE)])),
                stub.DeleteService(cpb.DeleteServiceRequest(name=WEB)),
                stub.ListServices(request),
                stub.RemoveNode(cpb.RemoveNodeRequest(node="h2", force=True)),
                stub.GetJoinToken(cpb.GetJoinTokenRequest(rotate=True)),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await call
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, refused.value
                assert "client certificate is required" in (refused.value.details() or "")
            # A session is refused before its hello is read, so none is sent: a write racing with the refusal
            # makes grpcio's client report INTERNAL ("Internal error from Core") instead of the server's code
            # (17 of 300 calls here), which says nothing about the controller.
            agent_call = apb_grpc.AgentServiceStub(channel).Session()
            assert await refused_with(agent_call) == grpc.StatusCode.UNAUTHENTICATED

    asyncio.run(attack())
    assert_unchanged(s, before, containers)
    assert s.h.cluster.join_token() == token, "the join token was not rotated"


def test_an_agent_certificate_cannot_call_the_admin_api(secured: Secured) -> None:
    s = secured
    before, containers = view(s), running_containers(s)

    async def attack() -> None:
        async with Client(s.address, deadline=5, credentials=s.agent_credentials("h1")) as stolen:
            for attempt in (
                stolen.list_services(),
                stolen.delete_service(WEB),
                stolen.apply([pb.ServiceSpec(name="evil", image=IMAGE, replicas=1)]),
                stolen.remove_node(s.node_id("h2"), force=True),
                stolen.join_token(rotate=True),
            ):
                with pytest.raises(ApiError) as caught:
                    await attempt
                assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED, caught.value
                assert "role 'agent'" in str(caught.value)

    asyncio.run(attack())
    assert_unchanged(s, before, containers)


def test_an_agent_cannot_claim_another_node_nor_open_a_second_session(secured: Secured) -> None:
    s = secured
    before, containers, mark = view(s), running_containers(s), log_mark(s)
    h1, h2 = s.node_id("h1"), s.node_id("h2")

    async def attack() -> None:
        # h1's certificate, a hello naming h2 (with h2's name and an operator-looking label).
        hello = apb.Hello(node_id=h2, description=pb.NodeDescription(hostname="h2", labels={"pci": "true"}))
        async with session(s.address, s.agent_credentials("h1"), hello) as call:
            assert await refused_with(call) == grpc.StatusCode.PERMISSION_DENIED
            assert h2 in (await call.details() or "")
        # h1's certificate for h1 while h1's agent is connected: an impostor (or a confused twin) is refused
        # rather than knocking the real agent off.
        async with session(s.address, s.agent_credentials("h1"), apb.Hello(node_id=h1)) as call:
            assert await refused_with(call) == grpc.StatusCode.ALREADY_EXISTS

    asyncio.run(attack())
    assert_unchanged(s, before, containers)
    assert ready_hosts(s) == {"h1", "h2"}
    for host in s.h.hosts:
        assert logged_since(s, host, mark, "controller session lost") == 0, f"{host}'s agent lost its session"


def test_certificates_of_another_ca_and_expired_ones_are_refused_at_the_handshake(secured: Secured) -> None:
    s = secured
    before, containers = view(s), running_containers(s)
    now = datetime.datetime.now(datetime.UTC)
    h1 = s.node_id("h1")
    cluster_id = load_membership(s.h.cluster.paths("h1").agent_state).cluster_id
    # Another CA that names this very cluster, signing an admin and a node certificate for h1.
    foreign = pki.Authority(pki.create_ca(cluster_id, now))
    # This cluster's own CA, read from the controller's state dir, signing certificates that expired an hour ago.
    controller_dir = s.h.cluster.state_dir / CONTROLLER_DIR
    ca = pki.Authority(
        pki.KeyPair((controller_dir / pki.CA_KEY_FILE).read_bytes(), (controller_dir / pki.CA_CERT_FILE).read_bytes())
    )
    assert ca.ca_pem == s.ca_pem
    past, lifetime = now - datetime.timedelta(hours=2), datetime.timedelta(hours=1)
    admins = {
        "another CA": foreign.issue(pki.ROLE_ADMIN, "mallory", now, pki.ADMIN_CERT_LIFETIME),
        "expired": ca.issue(pki.ROLE_ADMIN, "admin", past, lifetime),
    }
    nodes = {
        "another CA": foreign.issue(pki.ROLE_AGENT, h1, now, pki.DEFAULT_CERT_LIFETIME),
        "expired": ca.issue(pki.ROLE_AGENT, h1, past, lifetime),
    }

    async def attack() -> None:
        for what, pair in admins.items():
            async with Client(s.address, deadline=5, credentials=pki.Credentials(s.ca_pem, pair)) as client:
                for attempt in (client.delete_service(WEB), client.join_token(rotate=True)):
                    with pytest.raises(ApiError) as caught:
                        await attempt
                    # The controller ends the handshake: the client cannot tell that from a connection cut then.
                    assert caught.value.code == grpc.StatusCode.UNAVAILABLE, f"{what}: {caught.value}"
                    assert "refused this client's certificate" in str(caught.value), what
        for what, pair in nodes.items():
            async with session(s.address, pki.Credentials(s.ca_pem, pair), apb.Hello(node_id=h1)) as call:
                assert await refused_with(call) == grpc.StatusCode.UNAVAILABLE, what  # the handshake, not the hello
            async with open_channel(s.address, pki.Credentials(s.ca_pem, pair)) as channel:
                request = apb.RenewRequest(csr=pki.create_csr(pki.new_key()))
                with pytest.raises(grpc.aio.AioRpcError) as renewal:
                    await apb_grpc.AgentServiceStub(channel).Renew(request, timeout=5)
                assert renewal.value.code() == grpc.StatusCode.UNAVAILABLE, f"{what}: renewal"

    asyncio.run(attack())
    assert_unchanged(s, before, containers)
    assert ready_hosts(s) == {"h1", "h2"}


def _join(s: Secured, state_dir: Path, token: str, hostname: str) -> subprocess.CompletedProcess[str]:
    """`dockyard-agent join` as a new machine runs it, the token in DOCKYARD_JOIN_TOKEN."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "agent.main",
            "join",
            "--state-dir",
            str(state_dir),
            "--hostname",
            hostname,
            s.join_address,
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**s.h.env, "DOCKYARD_JOIN_TOKEN": token},
        timeout=60,
        check=False,
    )


def test_a_rotated_token_is_refused_at_once_and_the_new_one_joins(secured: Secured) -> None:
    s = secured
    before, containers = view(s), running_containers(s)
    old = s.h.cluster.join_token()
    rotated = s.h.cli("join-token", "--rotate", "--quiet").stdout.strip()
    assert rotated != old
    assert pki.parse_token(rotated).ca_digest == pki.parse_token(old).ca_digest, "the same CA, a new secret"
    late = s.work / "late"  # a third machine, as far as the controller can tell
    refused = _join(s, late, old, "late")
    assert refused.returncode != 0
    assert "UNAUTHENTICATED: token: not this cluster's current join token" in refused.stderr, refused.stderr
    assert not (late / CLUSTER_FILE).exists()
    assert_unchanged(s, before, containers)

    joined = _join(s, late, rotated, "late")
    assert joined.returncode == 0, joined.stderr
    membership = load_membership(late)
    certificate = load_credentials(late).pair.certificate
    assert pki.identity_of(certificate) == pki.Identity(membership.cluster_id, pki.ROLE_AGENT, membership.node_id)
    assert (late / f"{NODE_STEM}.key").stat().st_mode & 0o777 == 0o600

    async def added_then_removed() -> str:
        async with Client(s.address, deadline=5, credentials=s.h.cluster.admin_credentials()) as client:
            hostname = {n.id: n.description.hostname for n in await client.list_nodes()}[membership.node_id]
            # No agent runs for it: removed again, so the later tests see the cluster they began with.
            await client.remove_node(membership.node_id, force=True)
        return hostname

    assert asyncio.run(added_then_removed()) == "late"
    assert_unchanged(s, before, containers)


def _session_facts_cleared(nodes: list[bytes], node_id: str) -> list[pb.Node]:
    """The nodes, with what any new session of node_id rewrites (its address, last heartbeat, version) cleared."""
    parsed = [pb.Node.FromString(raw) for raw in nodes]
    for node in parsed:
        if node.id == node_id:
            node.ClearField("address")
            node.ClearField("last_heartbeat")
            node.version = 0
    return parsed


SessionCall = grpc.aio.StreamStreamCall[apb.AgentMessage, apb.ControllerMessage]


async def _welcomed(call: SessionCall) -> bool:
    """Whether the controller welcomed a scripted session; False while it still holds the stopped agent's."""
    try:
        first = await call.read()
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
            raise
        return False  # the controller has not yet seen the stopped agent's session end: try again
    return isinstance(first, apb.ControllerMessage) and first.HasField("welcome")


def _bad_timestamps(own: list[pb.Task]) -> tuple[apb.StatusUpdate, datetime.datetime]:
    """FAILED on two of the node's own tasks, stamped with nanos -1 and a year ahead; and when it was made."""
    malformed = pb.TaskStatus(state=pb.TASK_STATE_FAILED, error="crashed")
    malformed.timestamp.seconds, malformed.timestamp.nanos = int(time.time()), -1
    ahead = pb.TaskStatus(state=pb.TASK_STATE_FAILED, error="crashed")
    made = datetime.datetime.now(datetime.UTC)
    ahead.timestamp.CopyFrom(to_timestamp(made + datetime.timedelta(days=365)))
    updates = [
        apb.TaskStatusUpdate(task_id=own[0].id, status=malformed),
        apb.TaskStatusUpdate(task_id=own[1].id, status=ahead),
    ]
    return apb.StatusUpdate(updates=updates), made


def test_forged_and_malformed_reports_change_nothing_but_their_own_task(secured: Secured) -> None:
    s = secured
    h1, h2 = s.node_id("h1"), s.node_id("h2")
    credentials = s.agent_credentials("h1")
    theirs = next(t for t in tasks_of(s, WEB) if t.node_id == h2)
    victims = [t for t in tasks_of(s, VICTIM) if t.status.state == pb.TASK_STATE_RUNNING]
    assert len(victims) == 2 and {t.node_id for t in victims} == {h1}
    # A scripted session with h1's certificate needs h1's agent gone: a second session is refused (ALREADY_EXISTS).
    s.h.stop_agent("h1")
    before, containers = view(s), running_containers(s)
    node = next(n for n in map(pb.Node.FromString, before["nodes"]) if n.id == h1)
    hello = apb.Hello(node_id=h1, description=node.description)  # what the real agent said: the node stays as it is

    async def forge() -> bool:
        async with session(s.address, credentials, hello) as call:
            if not await _welcomed(call):
                return False
            forged = pb.TaskStatus(state=pb.TASK_STATE_FAILED, error="forged")
            update = apb.TaskStatusUpdate(task_id=theirs.id, status=forged)
            await call.write(apb.AgentMessage(status=apb.StatusUpdate(updates=[update])))
            assert await refused_with(call) == grpc.StatusCode.PERMISSION_DENIED
            return True

    asyncio.run(eventually(forge, within=10, what="a scripted session for h1"))
    after = view(s)
    assert after["services"] == before["services"] and after["tasks"] == before["tasks"], "h2's task unchanged"
    assert _session_facts_cleared(after["nodes"], h1) == _session_facts_cleared(before["nodes"], h1)
    assert running_containers(s) == containers

    # Its own tasks, FAILED, one with a malformed timestamp and one a year ahead: both stored, with the
    # controller's time of the report, and the orchestrator replaces them at once (restart delay 0s).
    status, sent_at = _bad_timestamps(victims)

    async def stored() -> list[pb.Task]:
        found = {t.id: t for t in await _tasks(s, VICTIM)}
        reported = [found[v.id] for v in victims]
        return reported if all(t.status.state == pb.TASK_STATE_FAILED for t in reported) else []

    async def report() -> list[pb.Task]:
        async with session(s.address, credentials, hello) as call:
            if not await _welcomed(call):
                return []
            await call.write(apb.AgentMessage(status=status))
            return await eventually(stored, within=10, what="both reports stored")

    reported = asyncio.run(eventually(report, within=10, what="a scripted session for h1"))
    received = datetime.datetime.now(datetime.UTC)
    for task in reported:
        stamp = task.status.timestamp.ToDatetime(tzinfo=datetime.UTC)
        assert sent_at - datetime.timedelta(seconds=1) <= stamp <= received, f"stored {stamp}, not the report's time"
    s.h.start_agent("h1")
    _check_reconciling(s, failed={v.id for v in victims})


def _check_reconciling(s: Secured, failed: set[str]) -> None:
    """The failed tasks are replaced on h1, a new service deploys, and no container the module keeps went."""

    def replaced() -> set[str]:
        running = {t.id for t in tasks_of(s, VICTIM) if t.status.state == pb.TASK_STATE_RUNNING} - failed
        on_h1 = {c.labels.get(labels.TASK_ID, "") for c in s.h.running("h1", VICTIM)}
        return running if len(running) == 2 and running <= on_h1 else set()

    replacements = wait_for(replaced, 30, "the reported tasks replaced on h1")
    (s.work / "after.yaml").write_text(
        f'services:\n  {AFTER}:\n    image: {IMAGE}\n    command: ["sleep", "3600"]\n    replicas: 2\n'
    )
    s.h.cli("apply", "-f", str(s.work / "after.yaml"))
    assert sorted(containers_of(s, AFTER).values()) == ["h1", "h2"]
    assert "Traceback" not in (s.h.cluster.state_dir / "controller.log").read_text()
    assert ready_hosts(s) == {"h1", "h2"}
    assert_kept(s)
    s.kept |= containers_of(s, AFTER)
    s.kept |= {c.id: "h1" for c in s.h.running("h1", VICTIM) if c.labels.get(labels.TASK_ID) in replacements}


def _store_files(directory: Path) -> list[Path]:
    """The store's files in a directory: the database and its -wal and -shm files."""
    return sorted(directory.glob(f"{STORE_FILE}*"))


async def _fresh_store_with_nodes_of(saved: Path, into: Path) -> None:
    """A new store at `into` holding copies of the nodes of the store at `saved`, and nothing else.

    A wrong backup restored, another cluster's file copied in: a store with these very nodes under the same
    CA, so every agent is welcomed, but none of their tasks. Only the store epoch tells it apart.
    """
    async with SqliteStore(saved) as old:
        nodes = await old.list_nodes()
    async with SqliteStore(into) as fresh:
        copies = []
        for node in nodes:
            copy = pb.Node()
            copy.CopyFrom(node)
            copy.version = 0
            copies.append(Put(copy, expect_version=0))
        await fresh.commit(copies)


def _task_states(raw: list[bytes]) -> list[tuple[str, str, int, int]]:
    """Each task's id, node, desired and observed state."""
    tasks = [pb.Task.FromString(t) for t in raw]
    return [(t.id, t.node_id, t.desired_state, t.status.state) for t in tasks]


def _restart_controller_and_wait(s: Secured) -> None:
    """Starts the controller on its own state again and waits until every agent is back in a session."""
    mark = log_mark(s)
    s.h.start_controller()
    s.h.run(s.h.cluster.wait_ready(s.h.hosts, 30))
    wait_for(
        lambda: all(logged_since(s, host, mark, "controller session open") for host in s.h.hosts),
        15,
        "every agent back in a session",
    )


def test_a_controller_whose_state_is_gone_neither_starts_empty_nor_is_obeyed(secured: Secured) -> None:
    s = secured
    before, containers = view(s), running_containers(s)
    controller_dir = s.h.cluster.state_dir / CONTROLLER_DIR
    s.h.stop_controller()
    # The store lost, the CA still there: even with --init the controller refuses to start an empty cluster.
    lost = s.work / "lost-store"
    lost.mkdir()
    for path in _store_files(controller_dir):
        shutil.move(path, lost / path.name)
    with pytest.raises(DevClusterError, match="the cluster CA is here but its store"):
        s.h.run(s.h.cluster.start_controller(init=True))
    for path in _store_files(lost):
        shutil.move(path, controller_dir / path.name)
    # A wrong --state-dir (here: the whole dir gone) and --init: a new cluster, with another CA. Every agent's
    # dial fails at the handshake, and it keeps its containers.
    kept_dir = s.work / "controller-state"
    shutil.move(controller_dir, kept_dir)
    s.h.run(s.h.cluster.start_controller(init=True))
    mark = log_mark(s)

    def refused_everywhere() -> bool:
        assert running_containers(s) == containers, "a container went away"  # watched while waiting
        return all(
            logged_since(s, host, mark, "controller session lost", "failed_dials=") >= REFUSALS for host in s.h.hosts
        )

    wait_for(refused_everywhere, 30, f"every agent to fail {REFUSALS} dials to the new cluster", every=0.2)
    assert all(logged_since(s, host, mark, "controller session open") == 0 for host in s.h.hosts)
    s.h.stop_controller()
    shutil.rmtree(controller_dir)
    shutil.move(kept_dir, controller_dir)
    _restart_controller_and_wait(s)
    after = view(s)
    assert after["services"] == before["services"]
    assert _task_states(after["tasks"]) == _task_states(before["tasks"])
    assert running_containers(s) == containers
    assert_kept(s)


def test_a_reset_store_makes_no_agent_remove_a_container(secured: Secured) -> None:
    s = secured
    before, containers = view(s), running_containers(s)
    controller_dir = s.h.cluster.state_dir / CONTROLLER_DIR
    saved = s.work / "saved-store"
    saved.mkdir()
    s.h.stop_controller()
    for path in _store_files(controller_dir):
        shutil.move(path, saved / path.name)
    asyncio.run(_fresh_store_with_nodes_of(saved / STORE_FILE, controller_dir / STORE_FILE))
    mark = log_mark(s)
    s.h.start_controller()

    def refused_everywhere() -> bool:
        assert running_containers(s) == containers, "a container went away"  # watched while waiting
        return all(logged_since(s, host, mark, "controller refused", "store epoch") >= REFUSALS for host in s.h.hosts)

    wait_for(refused_everywhere, 30, f"every agent to refuse the reset store {REFUSALS} times", every=0.2)
    reset = view(s)
    assert reset["services"] == [] and reset["tasks"] == [], "the reset store really offered an empty full set"
    assert running_containers(s) == containers
    assert_kept(s)

    # The store restored: the agents take it back, and every task is as it was.
    s.h.stop_controller()
    for path in _store_files(controller_dir):
        path.unlink()
    for path in _store_files(saved):
        shutil.move(path, controller_dir / path.name)
    _restart_controller_and_wait(s)
    after = view(s)
    assert after["services"] == before["services"]
    assert _task_states(after["tasks"]) == _task_states(before["tasks"])
    assert running_containers(s) == containers
    assert_kept(s)


def test_a_removed_node_loses_its_session_and_keeps_its_containers(secured: Secured) -> None:
    s = secured
    h2 = s.node_id("h2")
    on_h2 = {cid for cid, host in running_containers(s).items() if host == "h2"}
    assert len(on_h2) == 3, "h2 runs two web replicas and one of after"
    mark = log_mark(s)
    asked = time.monotonic()
    s.h.cli("node", "rm", "h2", "--force")
    removed = time.monotonic()

    def session_closed() -> bool:
        return logged_since(s, "h2", mark, "controller session lost", "was removed") > 0

    wait_for(session_closed, REMOVED_SESSION_BOUND, "h2's session closed after its removal", every=0.02)
    closed = time.monotonic()
    print(
        f"removed node: h2's session closed {closed - removed:.2f}s after `dockyard node rm` returned "
        f"({closed - asked:.2f}s after it was run)"
    )
    # It cannot come back: every redial is refused at the guard, and so is a renewal of its certificate.
    wait_for(
        lambda: logged_since(s, "h2", mark, "controller session lost", "was removed") >= 3,
        15,
        "h2's agent refused on redial",
    )

    async def renew() -> grpc.StatusCode:
        async with open_channel(s.address, s.agent_credentials("h2")) as channel:
            csr = pki.create_csr(pki.new_key())
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await apb_grpc.AgentServiceStub(channel).Renew(apb.RenewRequest(csr=csr), timeout=5)
        assert "was removed" in (caught.value.details() or "")
        return caught.value.code()

    assert asyncio.run(renew()) == grpc.StatusCode.PERMISSION_DENIED
    assert h2 not in {pb.Node.FromString(raw).id for raw in view(s)["nodes"]}
    assert logged_since(s, "h2", mark, "controller session open") == 0
    # Cut off, h2 keeps its containers: `docker ps` in its own namespace, against its own dockerd.
    ps = s.h.run(s.h.cluster.exec("h2", "docker", "-H", s.h.cluster.docker_url("h2"), "ps", "-q", "--no-trunc"))
    assert on_h2 <= set(ps.stdout.split()), ps.stdout
    assert_kept(s)
