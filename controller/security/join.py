"""Joining and renewing: a host with the join token gets a node (and its certificate); a node renews its own.

A join creates the node in the store with the hostname it asked for, which is fixed from then on (sessions
cannot change it) and unique: a hostname another node has is refused, so a placement constraint on a
hostname means the host the operator joined. Joins are rate-limited, so a leaked token cannot flood the
cluster faster than JOIN_RATE nodes a second, and each one is logged.
"""

from __future__ import annotations

import asyncio
import re

import grpc
import structlog

from controller.ids import new_id
from controller.security.authority import ClusterAuthority
from controller.security.guard import peer_identity
from controller.store.base import ConflictError, Put, Store
from dockyard import pki
from dockyard.clock import Clock
from dockyard.logs import Throttle
from dockyard.timestamps import to_timestamp
from dockyard.v1 import agent_pb2 as apb
from dockyard.v1 import agent_pb2_grpc as apb_grpc
from dockyard.v1 import types_pb2 as pb

log = structlog.get_logger()

# Joins the controller accepts per second, with a burst for a fleet brought up at once.
JOIN_RATE = 20.0
JOIN_BURST = 200
CSR_BYTES = 4096
# A host name as DNS and Docker know it: labels of letters, digits and '-', dot-separated, at most 253.
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)

Context = grpc.aio.ServicerContext[apb.JoinRequest, apb.JoinResponse]


class _Bucket:
    """A token bucket on the controller's clock."""

    def __init__(self, clock: Clock, rate: float, burst: int) -> None:
        self._clock = clock
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._at = clock.monotonic()

    def take(self) -> bool:
        now = self._clock.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


class JoinServicer(apb_grpc.JoinServiceServicer):
    """Serves JoinService.Join on the join port."""

    def __init__(
        self, store: Store, authority: ClusterAuthority, clock: Clock, api_port: int, throttle: Throttle
    ) -> None:
        self._store = store
        self._authority = authority
        self._clock = clock
        self._api_port = api_port
        self._bucket = _Bucket(clock, JOIN_RATE, JOIN_BURST)
        self._throttle = throttle
        # The hostname check and the node's creation are one step, or two joins could take one name.
        self._creating = asyncio.Lock()

    async def Join(self, request: apb.JoinRequest, context: Context) -> apb.JoinResponse:
        """Checks the secret, the hostname and the CSR; creates the node and returns its certificate.

        UNAUTHENTICATED for a wrong secret, RESOURCE_EXHAUSTED past the join rate, INVALID_ARGUMENT for a bad
        hostname or CSR, ALREADY_EXISTS for a hostname another node has. A refused join writes nothing.
        """
        # The secret first: a peer without it must not be able to use up the join rate of those with it.
        if not self._authority.secret_matches(request.secret):
            if self._throttle.allow("join refused") is not None:
                log.warning("join refused: wrong token", peer=context.peer())
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "token: not this cluster's current join token (it may have been rotated); "
                "print the current one on the controller with `dockyard join-token`",
            )
        if not self._bucket.take():
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED, f"joins: more than {JOIN_RATE:g} a second; try again shortly"
            )
        hostname = request.hostname
        if not _HOSTNAME.fullmatch(hostname):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"hostname: {hostname[:64]!r} is not a host name (letters, digits, '-' and '.', at most 253); "
                "pass --hostname",
            )
        if len(request.csr) > CSR_BYTES:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"csr: larger than {CSR_BYTES} bytes")
        node_id = new_id()
        try:
            certificate = self._authority.sign_node(request.csr, node_id)
        except pki.PkiError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        async with self._creating:
            await self._create(context, node_id, hostname)
        log.info("node joined", node_id=node_id, hostname=hostname, peer=context.peer())
        return apb.JoinResponse(
            node_id=node_id,
            certificate=certificate,
            ca_certificate=self._authority.ca.ca_pem,
            cluster_id=self._authority.cluster_id,
            api_port=self._api_port,
        )

    async def _create(self, context: Context, node_id: str, hostname: str) -> None:
        """Creates the node unless another has the hostname (ALREADY_EXISTS)."""
        taken = [n for n in await self._store.list_nodes() if n.description.hostname.lower() == hostname.lower()]
        if taken:
            await context.abort(
                grpc.StatusCode.ALREADY_EXISTS,
                f"hostname: {hostname} is node {taken[0].id}'s; remove that node first (dockyard node rm "
                f"{taken[0].id}) or join under another --hostname",
            )
        node = pb.Node(
            id=node_id,
            status=pb.NODE_STATUS_UNKNOWN,
            status_message="joined; waiting for the agent's first session",
            availability=pb.NODE_AVAILABILITY_ACTIVE,
            description=pb.NodeDescription(hostname=hostname),
        )
        node.created_at.CopyFrom(to_timestamp(self._clock.now()))
        try:
            await self._store.commit([Put(node, expect_version=0)])
        except ConflictError:
            await context.abort(grpc.StatusCode.ABORTED, "the node could not be created; join again")


async def renew(
    authority: ClusterAuthority,
    request: apb.RenewRequest,
    context: grpc.aio.ServicerContext[apb.RenewRequest, apb.RenewResponse],
) -> apb.RenewResponse:
    """AgentService.Renew: a new certificate for the caller's own node (the guard has checked it exists)."""
    identity = peer_identity(context)
    if identity is None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "a node certificate is required to renew one")
        raise AssertionError("unreachable")
    if len(request.csr) > CSR_BYTES:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"csr: larger than {CSR_BYTES} bytes")
    try:
        certificate = authority.sign_node(request.csr, identity.name)
    except pki.PkiError as exc:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    return apb.RenewResponse(certificate=certificate)
