"""Server reflection as both `grpc.reflection.v1` and the deprecated `grpc.reflection.v1alpha`.

grpcio-reflection ships only v1alpha. The two protocols are the same messages with the same field
numbers under another package, so v1 is served by describing its file (the v1alpha file with the
package renamed, added to the default descriptor pool so reflection can describe itself) and handing
the bytes of each v1 request to the v1alpha servicer's logic: a v1 request parses as a v1alpha one,
and the v1alpha answer serializes to the v1 answer's bytes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import FileDescriptor
from google.protobuf.message import Message
from grpc_reflection.v1alpha import reflection
from grpc_reflection.v1alpha import reflection_pb2 as alpha_pb2

__all__ = ["SERVICE_NAME", "V1ALPHA_SERVICE_NAME", "enable_reflection", "v1_message"]

_ALPHA_PACKAGE = "grpc.reflection.v1alpha"
_V1_PACKAGE = "grpc.reflection.v1"
_V1_FILE = "grpc/reflection/v1/reflection.proto"
_METHOD = "ServerReflectionInfo"

V1ALPHA_SERVICE_NAME: str = reflection.SERVICE_NAME
SERVICE_NAME = f"{_V1_PACKAGE}.ServerReflection"


def _v1_file() -> descriptor_pb2.FileDescriptorProto:
    """The v1 file: the v1alpha one under the v1 package, with every type reference renamed alike."""
    proto = descriptor_pb2.FileDescriptorProto()
    alpha_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name = _V1_FILE
    proto.package = _V1_PACKAGE
    proto.options.Clear()
    proto.options.go_package = "google.golang.org/grpc/reflection/grpc_reflection_v1"
    proto.options.java_multiple_files = True
    proto.options.java_package = "io.grpc.reflection.v1"
    proto.options.java_outer_classname = "ServerReflectionProto"
    old, new = f".{_ALPHA_PACKAGE}.", f".{_V1_PACKAGE}."
    for message in proto.message_type:
        for field in message.field:
            if field.HasField("type_name"):  # descriptor.proto is proto2: assigning "" would set it
                field.type_name = field.type_name.replace(old, new)
    for service in proto.service:
        for method in service.method:
            method.input_type = method.input_type.replace(old, new)
            method.output_type = method.output_type.replace(old, new)
    return proto


def _v1_descriptor() -> FileDescriptor:
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(_V1_FILE)  # already added (by us, or by generated v1 code)
    except KeyError:
        pool.Add(_v1_file())
    return pool.FindFileByName(_V1_FILE)


_V1 = _v1_descriptor()


def v1_message(name: str) -> type[Message]:
    """Returns the v1 message class `name` (e.g. "ServerReflectionRequest"), for clients and tests."""
    return message_factory.GetMessageClass(_V1.message_types_by_name[name])


class _V1Servicer:
    """Runs the v1alpha servicer's logic for v1 requests; the wire format of both is the same."""

    def __init__(self, service_names: Iterable[str]) -> None:
        self._alpha = reflection.aio.ReflectionServicer(service_names)

    async def info(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> AsyncIterator[bytes]:
        async def parsed() -> AsyncIterator[alpha_pb2.ServerReflectionRequest]:
            async for raw in requests:
                yield alpha_pb2.ServerReflectionRequest.FromString(raw)

        async for response in self._alpha.ServerReflectionInfo(parsed(), context):
            yield response.SerializeToString()


def enable_reflection(service_names: Iterable[str], server: grpc.aio.Server) -> None:
    """Serves v1 and v1alpha reflection on `server`, listing `service_names` and both reflection services."""
    names = sorted({*service_names, SERVICE_NAME, V1ALPHA_SERVICE_NAME})
    reflection.enable_server_reflection(names, server)
    v1 = _V1Servicer(names)
    handler: grpc.RpcMethodHandler[bytes, bytes] = grpc.stream_stream_rpc_method_handler(
        v1.info, request_deserializer=None, response_serializer=None
    )
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE_NAME, {_METHOD: handler})])
