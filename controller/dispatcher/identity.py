"""Where a session's node identity comes from: the client certificate, or (only with --insecure) the hello."""

from __future__ import annotations

import re

import grpc

from controller.security.guard import peer_identity
from dockyard import pki
from dockyard.v1 import agent_pb2 as apb

_NODE_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


class IdentityError(Exception):
    """The session may not act as the node it claims; code says which gRPC status refuses it."""

    def __init__(self, message: str, code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT) -> None:
        super().__init__(message)
        self.code = code


def node_identity(
    context: grpc.aio.ServicerContext[apb.AgentMessage, apb.ControllerMessage], hello: apb.Hello, *, secure: bool
) -> str:
    """Returns the node id a session acts for.

    Secure (mutual TLS): the node id is the client certificate's, and a hello that names another node is
    PERMISSION_DENIED (an empty hello.node_id is fine). Insecure: the hello's node id, checked for shape.
    """
    if secure:
        try:
            identity = peer_identity(context)
        except pki.PkiError as exc:
            raise IdentityError(f"client certificate: {exc}", grpc.StatusCode.UNAUTHENTICATED) from None
        if identity is None or identity.role != pki.ROLE_AGENT:
            raise IdentityError("a node certificate is required", grpc.StatusCode.UNAUTHENTICATED)
        if hello.node_id and hello.node_id != identity.name:
            raise IdentityError(
                f"hello.node_id: {hello.node_id[:64]!r} is not the node of this certificate ({identity.name})",
                grpc.StatusCode.PERMISSION_DENIED,
            )
        return identity.name
    if not _NODE_ID.fullmatch(hello.node_id):
        raise IdentityError(f"hello.node_id: must be 1 to 63 lower-case letters, digits or '-', got {hello.node_id!r}")
    return hello.node_id
