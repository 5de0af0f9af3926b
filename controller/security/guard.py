"""Who may call what: one interceptor in front of every service, deciding from the peer's certificate alone.

- ControllerService (and reflection) needs an admin certificate.
- AgentService needs an agent certificate whose node is still in the store: a removed node is refused.
- JoinService/Join and Health/Check need no certificate (the join port has none to offer); health's Watch
  needs one of any role.
Nothing in a request body can change who the caller is. A call without a certificate (only possible on the
join port) for anything but those is UNAUTHENTICATED; a certificate of the wrong role or of a removed node is
PERMISSION_DENIED. The check runs before the request is read, so a refused call changes nothing.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health

from controller.store.base import Store
from dockyard import pki
from dockyard.logs import Throttle
from dockyard.v1 import agent_pb2

log = structlog.get_logger()

AGENT_SERVICE = agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name
JOIN_SERVICE = agent_pb2.DESCRIPTOR.services_by_name["JoinService"].full_name

# The methods anyone who reached a port may call: methods, not services, so that nothing streaming (health's
# Watch holds a stream per call) is open to a peer without a certificate.
OPEN_METHODS: frozenset[str] = frozenset({f"/{JOIN_SERVICE}/Join", f"/{health.SERVICE_NAME}/Check"})


def required_role(method: str) -> str | None:
    """Returns the role a full method name (/pkg.Service/Method) needs, None for the open methods."""
    if method in OPEN_METHODS:
        return None
    service = method.lstrip("/").partition("/")[0]
    if service == AGENT_SERVICE:
        return pki.ROLE_AGENT
    # The API, reflection and anything added later: admins only unless listed above.
    return pki.ROLE_ADMIN


def peer_identity(context: grpc.aio.ServicerContext[Any, Any]) -> pki.Identity | None:
    """Returns who the verified client certificate of this call names, None when the peer presented none.

    The TLS handshake already checked the certificate against the cluster CA and its validity (the API port
    requires one); this only reads the subject.
    """
    pems = list(context.auth_context().get("x509_pem_cert", ()))
    if not pems:
        return None
    return pki.identity_of_pem(pems[0])


class Guard(grpc.aio.ServerInterceptor):
    """Refuses every call whose certificate does not allow it; see the module docstring."""

    def __init__(self, store: Store, cluster_id: str, throttle: Throttle) -> None:
        self._store = store
        self._cluster_id = cluster_id
        self._throttle = throttle

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        """Wraps the method's behaviour in the check of the caller's certificate."""
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        role = required_role(method)
        if handler is None or role is None:
            return handler
        return _wrapped(handler, lambda context: self._refusal(context, method, role))

    async def _refusal(self, context: grpc.aio.ServicerContext[Any, Any], method: str, role: str) -> None:
        """Aborts the call unless its certificate has the role (and, for agents, a node still in the store)."""
        try:
            identity = peer_identity(context)
        except pki.PkiError as exc:
            await self._refuse(context, grpc.StatusCode.UNAUTHENTICATED, f"client certificate: {exc}", method)
            return
        if identity is None:
            await self._refuse(
                context,
                grpc.StatusCode.UNAUTHENTICATED,
                "a client certificate is required: this address serves joins only; call the API address with "
                "admin credentials (dockyard-controller admin-cert) or an agent's node certificate",
                method,
            )
            return
        if identity.cluster_id != self._cluster_id:
            await self._refuse(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                f"certificate of another cluster ({identity.cluster_id})",
                method,
            )
        if identity.role != role:
            await self._refuse(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                f"a certificate of role {identity.role!r} ({identity.name}) cannot call {method}; it needs {role!r}",
                method,
            )
        if role == pki.ROLE_AGENT and await self._store.get_node(identity.name) is None:
            await self._refuse(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                f"node {identity.name} was removed from the cluster; join the host again to serve it",
                method,
            )

    async def _refuse(
        self, context: grpc.aio.ServicerContext[Any, Any], code: grpc.StatusCode, message: str, method: str
    ) -> None:
        peer = context.peer()
        suppressed = self._throttle.allow(f"refused:{peer.rpartition(':')[0]}")
        if suppressed is not None:
            log.warning(
                "call refused", method=method, peer=peer, code=code.name, reason=message, lines_suppressed=suppressed
            )
        await context.abort(code, message)


Check = Callable[[grpc.aio.ServicerContext[Any, Any]], Awaitable[None]]


def _wrapped(handler: grpc.RpcMethodHandler[Any, Any], check: Check) -> grpc.RpcMethodHandler[Any, Any]:
    """Returns a handler like `handler` whose behaviour first awaits check (which aborts to refuse)."""
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            _checked(handler.unary_unary, check), handler.request_deserializer, handler.response_serializer
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            _checked(handler.unary_stream, check), handler.request_deserializer, handler.response_serializer
        )
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(
            _checked(handler.stream_unary, check), handler.request_deserializer, handler.response_serializer
        )
    assert handler.stream_stream is not None
    return grpc.stream_stream_rpc_method_handler(
        _checked(handler.stream_stream, check), handler.request_deserializer, handler.response_serializer
    )


def _checked(behaviour: Callable[..., Any], check: Check) -> Callable[..., Any]:
    """Wraps a coroutine or async-generator behaviour (request, context) in the check."""
    if inspect.isasyncgenfunction(behaviour):

        async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            await check(context)
            async for response in behaviour(request, context):
                yield response

        return stream

    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await check(context)
        return await behaviour(request, context)

    return call
