"""Who this agent is and which cluster it serves: joining, its certificate and renewal, and the cluster guard.

The agent's state dir holds node.key (0600), node.crt and ca.crt, written by `dockyard-agent join`, and
cluster.json: the node id, the cluster id, the controller's API address and the store epoch of the last
controller it accepted. With --insecure (loopback experiments) only node-id is kept.

The guard: a controller of another cluster, or one whose store is not the one this agent was serving (a store
made afresh on an empty or wrong state dir has a new epoch), could otherwise send an empty full assignment and
make the agent remove every container. Such a session is refused before any assignment is read, loudly, and
the agent keeps its containers and tries again later; joining again is how an operator accepts the new store.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import socket
import ssl
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import grpc
import structlog
from cryptography.hazmat.primitives.asymmetric import ec

from dockyard import pki
from dockyard.addresses import host_of, split_listen, with_port
from dockyard.channels import open_channel, open_server_tls_channel
from dockyard.clock import Clock
from dockyard.v1 import agent_pb2 as apb
from dockyard.v1 import agent_pb2_grpc as apb_grpc

log = structlog.get_logger()

NODE_STEM = pki.NODE_STEM
CLUSTER_FILE = pki.CLUSTER_FILE
# The pair renewal replaced, kept until the new one is saved whole: a crash between writing the new key and
# its certificate must not leave the node without a pair that works.
PREVIOUS_STEM = "node-prev"
EPOCH_FILE = "store-epoch"  # with --insecure only: the epoch of the store this node serves
TASK_BOOK_FILE = "tasks.pb"  # the agent's task book (agent.Agent keeps it here)
JOIN_DEADLINE = 15.0
RENEW_RETRY_SECONDS = 10.0


class NotJoined(Exception):
    """The host has no node identity (or a damaged one); the message says how to join."""


class ClusterMismatch(Exception):
    """A controller of another cluster, or with another store, welcomed this agent; nothing was applied."""


@dataclass(frozen=True)
class Membership:
    """What the agent knows of its place in the cluster."""

    node_id: str
    cluster_id: str
    controller: str  # the API address (mutual TLS)
    store_epoch: int = 0  # 0 until a controller's welcome was accepted


def load_or_create_node_id(state_dir: Path) -> str:
    """Returns the node id kept in state_dir/node-id, creating it on first start (--insecure only)."""
    path = state_dir / "node-id"
    if path.exists():
        node_id = path.read_text().strip()
        if node_id:
            return node_id
    node_id = uuid.uuid4().hex[:25]
    pki.write_file(path, (node_id + "\n").encode())
    return node_id


def load_membership(state_dir: Path) -> Membership:
    """Returns the membership `join` recorded; NotJoined (saying how to join) when there is none."""
    path = state_dir / CLUSTER_FILE
    try:
        data = json.loads(path.read_text())
        membership = Membership(
            node_id=str(data["node_id"]),
            cluster_id=str(data["cluster_id"]),
            controller=str(data["controller"]),
            store_epoch=int(data.get("store_epoch", 0)),
        )
    except FileNotFoundError:
        raise NotJoined(
            f"{state_dir}: this host has not joined a cluster. Run `dockyard-agent join --token TOKEN "
            "CONTROLLER` (print the token on the controller with `dockyard join-token`), or pass --insecure "
            "for a plaintext loopback experiment"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise NotJoined(f"{path}: unreadable ({exc}); join this host again") from None
    return membership


def save_membership(state_dir: Path, membership: Membership) -> None:
    """Records the membership atomically."""
    pki.write_file(state_dir / CLUSTER_FILE, (json.dumps(asdict(membership), indent=2) + "\n").encode())


def load_credentials(state_dir: Path) -> pki.Credentials:
    """Returns the node's key, certificate and CA (the pair before the last renewal if the current one is
    damaged or half-written); NotJoined when neither is usable."""
    try:
        return pki.Credentials.load(state_dir, NODE_STEM)
    except pki.PkiError as exc:
        try:
            previous = pki.Credentials.load(state_dir, PREVIOUS_STEM)
        except pki.PkiError:
            raise NotJoined(f"{exc}; join this host again (dockyard-agent join)") from None
        log.warning("node certificate unusable; using the one before the last renewal", error=str(exc))
        return previous


def _fetch_chain(host: str, port: int, timeout: float) -> list[bytes]:
    """Returns the DER certificates the server at host:port presents, without trusting any of them yet."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the chain is checked against the token's digest by the caller
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection((host, port), timeout=timeout) as raw,
        context.wrap_socket(raw, server_hostname=pki.CONTROLLER_NAME) as tls,
    ):
        sslobj = tls._sslobj  # type: ignore[attr-defined]
        # Public as SSLSocket.get_unverified_chain() from Python 3.13; the same method before it.
        chain = sslobj.get_unverified_chain() or []
        return [cert.public_bytes(ssl._ssl.ENCODING_DER) for cert in chain]  # type: ignore[attr-defined]


async def of_another_ca(address: str, ca_pem: bytes) -> bool:
    """Whether the server at address presents a certificate its CA (ca_pem) did not sign: another cluster, or
    a controller started on a wrong state dir. False when it cannot tell (unreachable, no TLS)."""
    parts = split_listen(address)
    if parts is None:
        return False
    try:
        chain = await asyncio.to_thread(_fetch_chain, parts[0], parts[1], JOIN_DEADLINE)
    except (OSError, ssl.SSLError):
        return False
    return bool(chain) and pki.chain_ca_matching(chain, pki.ca_digest(ca_pem)) is None


async def fetch_ca(address: str, digest: str) -> bytes:
    """Returns the controller's CA certificate (PEM) once it matches the token's digest; NotJoined otherwise."""
    parts = split_listen(address)
    if parts is None:
        raise NotJoined(f"CONTROLLER: {address!r} is not HOST:PORT")
    try:
        chain = await asyncio.to_thread(_fetch_chain, parts[0], parts[1], JOIN_DEADLINE)
    except (OSError, ssl.SSLError) as exc:
        raise NotJoined(f"cannot reach the controller's join address {address}: {exc}") from None
    ca_pem = pki.chain_ca_matching(chain, digest)
    if ca_pem is None:
        raise NotJoined(
            f"the server at {address} is not the controller of this token: its certificate is not signed by the "
            "CA whose digest the token carries. Check the address, or print a fresh token on the controller"
        )
    return ca_pem


def join_address(controller: str) -> str:
    """The join address for what an operator typed: HOST (port 7466 assumed) or HOST:PORT."""
    from dockyard.addresses import JOIN_PORT

    return controller if split_listen(controller) is not None else with_port(controller, JOIN_PORT)


def join_request(token: pki.JoinToken, hostname: str) -> tuple[ec.EllipticCurvePrivateKey, apb.JoinRequest]:
    """Returns a new node key and the JoinRequest for it: the token's secret, a CSR and the hostname."""
    key = pki.new_key()
    return key, apb.JoinRequest(secret=token.secret, csr=pki.create_csr(key), hostname=hostname)


def joined_credentials(
    token: pki.JoinToken, key: ec.EllipticCurvePrivateKey, response: apb.JoinResponse
) -> pki.Credentials:
    """Returns the node's credentials from a JoinResponse; NotJoined unless the CA is the token's and the
    certificate is for the key and names an agent of that cluster."""
    if pki.ca_digest(response.ca_certificate) != token.ca_digest:
        raise NotJoined("the controller answered with another CA than the token names; join refused")
    credentials = pki.Credentials(response.ca_certificate, pki.KeyPair(pki.key_pem(key), response.certificate))
    try:
        fits = credentials.pair.belong_together()
        identity = pki.identity_of(credentials.pair.certificate)
    except (ValueError, pki.PkiError) as exc:
        raise NotJoined(f"the controller answered with an unusable certificate ({exc}); join refused") from None
    if not fits or identity != pki.Identity(response.cluster_id, pki.ROLE_AGENT, response.node_id):
        raise NotJoined("the controller answered with a certificate for another key or node; join refused")
    return credentials


async def join(state_dir: Path, controller: str, token_text: str, hostname: str, *, rejoin: bool = False) -> Membership:
    """Joins the cluster at controller's join address with the token; writes the identity; returns it.

    Checks the controller against the token's CA digest before sending anything, so the secret never goes
    to another server. NotJoined with the reason (refused token, hostname taken, unreachable, already
    joined and not rejoin) otherwise.
    """
    if (state_dir / CLUSTER_FILE).exists() and not rejoin:
        raise NotJoined(
            f"{state_dir}: this host has joined already. Joining again makes it a new node: the containers of "
            "the old one are removed after the stranger grace. Pass --rejoin if that is what you want"
        )
    token = pki.parse_token(token_text)
    address = join_address(controller)
    ca_pem = await fetch_ca(address, token.ca_digest)
    key, request = join_request(token, hostname)
    async with open_server_tls_channel(address, ca_pem) as channel:
        try:
            response = await apb_grpc.JoinServiceStub(channel).Join(request, timeout=JOIN_DEADLINE)
        except grpc.aio.AioRpcError as exc:
            raise NotJoined(f"the controller refused the join: {exc.code().name}: {exc.details()}") from None
    credentials = joined_credentials(token, key, response)
    credentials.save(state_dir, NODE_STEM)
    membership = Membership(
        node_id=response.node_id,
        cluster_id=response.cluster_id,
        controller=with_port(host_of(address), response.api_port),
    )
    save_membership(state_dir, membership)
    # A node id from an earlier --insecure life must not linger beside the real one, nor the tasks of an
    # earlier identity: they were another node's, and reporting on them would be a forgery. Their containers
    # become strangers to the new node and are reaped after the stranger grace.
    (state_dir / "node-id").unlink(missing_ok=True)
    (state_dir / TASK_BOOK_FILE).unlink(missing_ok=True)
    return membership


class ClusterGuard:
    """Accepts or refuses a controller's welcome for this agent's cluster and store (see the module docstring)."""

    def __init__(self, state_dir: Path, membership: Membership | None) -> None:
        self._dir = state_dir
        self._membership = membership
        self.refusals = 0  # welcomes refused so far, for operators' metrics and tests

    def check(self, welcome: apb.Welcome) -> None:
        """Returns when the welcome is from this agent's cluster and store; ClusterMismatch otherwise.

        The first controller's store epoch is recorded; from then on another epoch is refused.
        """
        try:
            self._check(welcome)
        except ClusterMismatch:
            self.refusals += 1
            raise

    def _check(self, welcome: apb.Welcome) -> None:
        membership = self._membership
        if membership is None:
            self._check_epoch_only(welcome.store_epoch)  # --insecure: no cluster identity, only the store's
            return
        if welcome.cluster_id != membership.cluster_id:
            raise ClusterMismatch(
                f"the controller belongs to cluster {welcome.cluster_id or '(none: --insecure)'}, this node to "
                f"{membership.cluster_id}; acting on nothing it sends (containers kept)"
            )
        if membership.store_epoch == 0:
            self._membership = replace(membership, store_epoch=welcome.store_epoch)
            save_membership(self._dir, self._membership)
            return
        if welcome.store_epoch != membership.store_epoch:
            raise ClusterMismatch(
                f"the controller's store is not the one this node served (store epoch {welcome.store_epoch}, "
                f"was {membership.store_epoch}): it was reset or replaced. Acting on nothing it sends, so no "
                "container is removed; restore the controller's store, or join this host again to accept the new one"
            )

    def _check_epoch_only(self, epoch: int) -> None:
        path = self._dir / EPOCH_FILE
        try:
            known = int(path.read_text().strip())
        except (OSError, ValueError):
            pki.write_file(path, f"{epoch}\n".encode())
            return
        if epoch != known:
            raise ClusterMismatch(
                f"the controller's store is not the one this node served (store epoch {epoch}, was {known}): it "
                f"was reset or replaced. Acting on nothing it sends, so no container is removed; restore the "
                f"controller's store, or delete {path} to accept the new one"
            )


class CertificateKeeper:
    """Holds the node's credentials and renews them before they expire, without touching the session."""

    def __init__(self, state_dir: Path, credentials: pki.Credentials, clock: Clock) -> None:
        self._dir = state_dir
        self.credentials = credentials
        self._clock = clock

    def due(self) -> datetime.datetime:
        """When the current certificate should be renewed."""
        return pki.renew_due(self.credentials.pair.certificate, self._clock.now())

    async def renew(self, address: str) -> None:
        """Asks the controller for a certificate for a new key and stores it; the next dial uses it."""
        key = pki.new_key()
        async with open_channel(address, self.credentials) as channel:
            response = await apb_grpc.AgentServiceStub(channel).Renew(
                apb.RenewRequest(csr=pki.create_csr(key)), timeout=JOIN_DEADLINE
            )
        renewed = pki.Credentials(self.credentials.ca_pem, pki.KeyPair(pki.key_pem(key), response.certificate))
        # What comes back must be for the new key and for this very node, or it does not replace a good pair.
        if not renewed.pair.belong_together() or pki.identity_of(renewed.pair.certificate) != pki.identity_of(
            self.credentials.pair.certificate
        ):
            raise ValueError("the renewed certificate is not this node's for the new key")
        self.credentials.save(self._dir, PREVIOUS_STEM)
        renewed.save(self._dir, NODE_STEM)
        self.credentials = renewed
        log.info(
            "node certificate renewed", valid_until=f"{renewed.pair.certificate.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}"
        )

    async def keep_renewed(self, address: str) -> None:
        """Renews whenever due, until cancelled; a failed renewal is retried (the link is unaffected)."""
        while True:
            wait = (self.due() - self._clock.now()).total_seconds()
            if wait > 0:
                await self._clock.sleep(wait)
                continue
            try:
                await self.renew(address)
            except (grpc.aio.AioRpcError, OSError, ValueError, pki.PkiError) as exc:
                detail = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
                log.warning("certificate renewal failed; retrying", error=detail)
                await self._clock.sleep(RENEW_RETRY_SECONDS)
