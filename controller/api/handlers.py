"""Registers ControllerService with a parsing seam in front of every method.

grpcio parses a request with the registered deserializer before the method runs, and a DecodeError
there (invalid UTF-8 in a string, nesting past protobuf's recursion limit) becomes UNKNOWN with
"Unexpected DecodeError", which tells the caller nothing. Here the methods receive the raw bytes and
parse them in one wrapper, so such a request is INVALID_ARGUMENT naming the request type; so is one
with more than MAX_REQUEST_ITEMS items in a list or map (controller.api.bounds), before any item is
looked at. The same wrapper turns a damaged store met by any read into UNAVAILABLE with the store's
one-line message (the store itself reports the damage once, which is how the server turns health to
NOT_SERVING).
Server-streaming methods (Watch) go through the same seam: the request is parsed the same way, and a
damaged store met while streaming ends the stream with the same UNAVAILABLE.
A request above the receive limit is still refused by grpcio before any of this (RESOURCE_EXHAUSTED).

add_agent_service puts AgentService behind the same seam. Its unary methods (Renew) parse as above.
Session reads a stream of messages, which a servicer cannot receive as bytes, so it gets a deserializer
that never raises: a message that does not parse reaches the servicer as an Unparsable (not an
AgentMessage, so a first message that does not parse is refused like any first message that is not a
hello: INVALID_ARGUMENT), instead of grpcio ending the stream with UNKNOWN.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import DecodeError, Message

from controller.api.bounds import MAX_REQUEST_ITEMS
from controller.api.servicer import ControllerApi
from controller.api.status import Context, abort, abort_invalid, abort_store_damaged
from controller.errors import StoreDamaged
from dockyard.spec.issues import Issue
from dockyard.v1 import agent_pb2 as apb
from dockyard.v1 import agent_pb2_grpc
from dockyard.v1 import controller_pb2 as cpb

__all__ = ["SERVICE_NAME", "Unparsable", "add_agent_service", "add_controller_api", "lenient", "too_many_items"]

SERVICE = cpb.DESCRIPTOR.services_by_name["ControllerService"]
SERVICE_NAME = SERVICE.full_name

Behaviour = Callable[[Message, Context], Awaitable[Message]]
StreamBehaviour = Callable[[Message, Context], AsyncIterator[Message]]


async def _parse(method: MethodDescriptor, raw: bytes, context: Context) -> Message:
    """Returns the parsed request; INVALID_ARGUMENT when it does not parse or a list in it is too long."""
    try:
        request: Message = message_factory.GetMessageClass(method.input_type).FromString(raw)
        # Fields this controller does not know are kept by protobuf and would be stored and served with the
        # object: a peer could grow every record it touches by megabytes.
        request.DiscardUnknownFields()
    except DecodeError as exc:
        reason = str(exc).rpartition(": ")[2] or "cannot be parsed"
        type_name = method.input_type.full_name
        await abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"request: not a valid {type_name}: {reason}")
    issues = too_many_items(request)
    if issues:
        await abort_invalid(context, issues)
    return request


def too_many_items(request: Message) -> list[Issue]:
    """Returns a problem for each repeated or map field of the request with more than MAX_REQUEST_ITEMS items."""
    return [
        Issue(field.name, f"{count} items, more than the {MAX_REQUEST_ITEMS} one request may hold; split it")
        for field in request.DESCRIPTOR.fields
        if field.is_repeated and (count := len(getattr(request, field.name))) > MAX_REQUEST_ITEMS
    ]


def _parsing(method: MethodDescriptor, behaviour: Behaviour) -> Callable[[bytes, Context], Awaitable[Message]]:
    async def handle(raw: bytes, context: Context) -> Message:
        request = await _parse(method, raw, context)
        try:
            return await behaviour(request, context)
        except StoreDamaged as exc:
            await abort_store_damaged(context, exc)

    return handle


def _parsing_stream(
    method: MethodDescriptor, behaviour: StreamBehaviour
) -> Callable[[bytes, Context], AsyncIterator[Message]]:
    async def handle(raw: bytes, context: Context) -> AsyncIterator[Message]:
        request = await _parse(method, raw, context)
        try:
            async for response in behaviour(request, context):
                yield response
        except StoreDamaged as exc:
            await abort_store_damaged(context, exc)

    return handle


BidiBehaviour = Callable[[AsyncIterator[Message], Context], AsyncIterator[Message]]


def _parsing_bidi(
    method: MethodDescriptor, behaviour: BidiBehaviour
) -> Callable[[AsyncIterator[bytes], Context], AsyncIterator[Message]]:
    """The seam for a method with a stream of requests (PushImage): each request is parsed as a single one."""

    async def handle(requests: AsyncIterator[bytes], context: Context) -> AsyncIterator[Message]:
        async def parsed() -> AsyncIterator[Message]:
            async for raw in requests:
                yield await _parse(method, raw, context)

        try:
            async for response in behaviour(parsed(), context):
                yield response
        except StoreDamaged as exc:
            await abort_store_damaged(context, exc)

    return handle


def add_controller_api(api: ControllerApi, server: grpc.aio.Server) -> None:
    """Serves every ControllerService method of `api` on `server`, each behind the parsing seam."""
    handlers: dict[str, grpc.RpcMethodHandler[bytes, Message]] = {}
    for method in SERVICE.methods:
        if not hasattr(api, method.name):
            # A method of the contract this controller does not serve yet: gRPC answers UNIMPLEMENTED.
            continue
        response_class = message_factory.GetMessageClass(method.output_type)
        if method.client_streaming:
            assert method.server_streaming, method.full_name  # a stream of requests gets a stream of answers
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(
                _parsing_bidi(method, getattr(api, method.name)),
                request_deserializer=None,  # bytes in: _parsing_bidi parses each
                response_serializer=response_class.SerializeToString,
            )
        elif method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                _parsing_stream(method, getattr(api, method.name)),
                request_deserializer=None,  # bytes in: _parsing_stream parses
                response_serializer=response_class.SerializeToString,
            )
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _parsing(method, getattr(api, method.name)),
                request_deserializer=None,  # bytes in: _parsing parses
                response_serializer=response_class.SerializeToString,
            )
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)])


@dataclass(frozen=True)
class Unparsable:
    """A stream message that did not parse: what `lenient` hands the servicer instead of raising."""

    type_name: str
    reason: str

    def __str__(self) -> str:
        """Renders the problem as the peer should read it."""
        return f"message: not a valid {self.type_name}: {self.reason}"


M = TypeVar("M", bound=Message)


def lenient(message_class: type[M]) -> Callable[[bytes], M | Unparsable]:
    """Returns a request deserializer that parses `message_class`, or returns an Unparsable; it never raises."""
    type_name = message_class.DESCRIPTOR.full_name

    def parse(raw: bytes) -> M | Unparsable:
        try:
            message = message_class.FromString(raw)
        except DecodeError as exc:
            return Unparsable(type_name, str(exc).rpartition(": ")[2] or "cannot be parsed")
        message.DiscardUnknownFields()  # unknown fields would be stored with what the message reports
        return message

    return parse


def add_agent_service(servicer: agent_pb2_grpc.AgentServiceServicer, server: grpc.aio.Server) -> None:
    """Serves AgentService as the generated code does, except for requests that do not parse.

    A streamed message that does not parse arrives as an Unparsable; a unary request that does not parse is
    INVALID_ARGUMENT before the method runs (the same seam as ControllerService's).
    """
    service = apb.DESCRIPTOR.services_by_name["AgentService"]
    # Requests are bytes (unary methods) or parsed messages and Unparsables (streams).
    handlers: dict[str, grpc.RpcMethodHandler[Any, Message]] = {}
    for method in service.methods:
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        behaviour = getattr(servicer, method.name)
        if method.client_streaming and method.server_streaming:
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(
                behaviour,
                request_deserializer=lenient(request_class),
                response_serializer=response_class.SerializeToString,
            )
        else:
            assert not method.client_streaming and not method.server_streaming, method.full_name
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _parsing(method, behaviour),
                request_deserializer=None,  # bytes in: _parsing parses
                response_serializer=response_class.SerializeToString,
            )
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(service.full_name, handlers)])
