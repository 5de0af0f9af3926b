"""Where a session's node identity comes from."""

from __future__ import annotations

import re

import grpc

from dockyard.v1 import agent_pb2 as apb

_NODE_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


class IdentityError(Exception):
    """The session may not act as the node it claims."""


def node_identity(context: grpc.aio.ServicerContext[apb.AgentMessage, apb.ControllerMessage], hello: apb.Hello) -> str:
    """Returns the node id a session acts for.

    Today the id comes from the hello; with mutual TLS on, this is the one place that will take it from
    the client certificate instead and refuse a hello that names another node.
    """
    del context  # the peer's certificate lives here once TLS is on
    if not _NODE_ID.match(hello.node_id):
        raise IdentityError(f"hello.node_id: must be 1 to 63 lower-case letters, digits or '-', got {hello.node_id!r}")
    return hello.node_id
