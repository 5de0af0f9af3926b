"""Floods: sessions that never say hello, and connections that send garbage or nothing, cost bounded memory.

The server here is the controller's own AgentService (behind add_agent_service) and ControllerService on one
plaintext port, as --insecure serves them: there, a session needs no certificate, so this is the cheapest
flood anyone can send (with mutual TLS only holders of a node certificate reach the session, and
certificate-less connections end in the TLS handshake). The server takes bounds.SERVER_OPTIONS, as proposed
for controller/server.py, with the hello and handshake timeouts cut short so the test is quick.

Each round opens FLOOD sessions that never speak plus garbage and silent sockets, checks that the API
answers meanwhile, and that every session is ended by the hello deadline (DEADLINE_EXCEEDED) and every
silent socket closed by the server. Python memory (tracemalloc) after later rounds must stay within a small
margin of that after the first: what a flood holds is freed with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import tracemalloc
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import grpc
import pytest

from controller.api.bounds import SERVER_OPTIONS
from controller.api.handlers import add_agent_service, add_controller_api
from controller.api.servicer import ControllerApi
from controller.dispatcher.dispatcher import Dispatcher
from controller.ids import new_id
from controller.store.sqlite import SqliteStore
from dockyard.clock import SystemClock
from dockyard.v1 import controller_pb2 as cpb
from dockyard.v1 import controller_pb2_grpc as cpb_grpc
from dockyard.v1 import types_pb2 as pb

SESSION: Final = "/dockyard.v1.AgentService/Session"
FLOOD: Final = 200  # silent sessions per round
GARBAGE: Final = 30  # sockets that send random bytes, and as many that send nothing, per round
STREAMS_PER_CHANNEL: Final = 50
# Channels of one process to one address share a connection unless told otherwise; the flood and the API's
# client are different peers, so each gets its own.
OWN_CONNECTION: Final = [("grpc.use_local_subchannel_pool", 1)]
HELLO_TIMEOUT: Final = 0.5
HANDSHAKE_TIMEOUT_MS: Final = 500
# Python heap the third round may hold beyond the first's (allocator slack, caches warmed late).
MEMORY_SLACK_BYTES: Final = 512 * 1024


def _identity(data: bytes) -> bytes:
    return data


@dataclass
class Flooded:
    """The server under the flood, its address, and an API stub on a channel of its own."""

    address: str
    api: cpb_grpc.ControllerServiceStub
    port: int


@pytest.fixture
async def flooded(tmp_path: Path) -> AsyncIterator[Flooded]:
    """AgentService with a short hello timeout and ControllerService on one plaintext loopback port."""
    store = SqliteStore(tmp_path / "flood.db")
    await store.open()
    clock = SystemClock()
    options = dict(SERVER_OPTIONS) | {"grpc.server_handshake_timeout_ms": HANDSHAKE_TIMEOUT_MS}
    server = grpc.aio.server(options=list(options.items()))
    add_agent_service(Dispatcher(store, clock, hello_timeout=HELLO_TIMEOUT), server)
    add_controller_api(ControllerApi(store, clock, new_id), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    address = f"127.0.0.1:{port}"
    try:
        async with grpc.aio.insecure_channel(address, options=OWN_CONNECTION) as channel:
            api = cpb_grpc.ControllerServiceStub(channel)
            await api.ApplyService(
                cpb.ApplyServiceRequest(services=[pb.ServiceSpec(name="web", image="nginx:1", replicas=1)]), timeout=10
            )
            yield Flooded(address, api, port)
    finally:
        await server.stop(None)
        await store.close()


async def silent_sessions(address: str, count: int) -> list[grpc.StatusCode]:
    """Opens `count` sessions that never send a message; returns how each ended."""
    channels = [
        grpc.aio.insecure_channel(address, options=OWN_CONNECTION) for _ in range(-(-count // STREAMS_PER_CHANNEL))
    ]
    try:
        calls = [
            channels[i // STREAMS_PER_CHANNEL].stream_stream(
                SESSION, request_serializer=_identity, response_deserializer=_identity
            )(timeout=30)  # far beyond the hello timeout: the server must end them, not this deadline
            for i in range(count)
        ]
        return list(await asyncio.gather(*(call.code() for call in calls)))
    finally:
        for channel in channels:
            await channel.close()


async def garbage_connections(port: int, count: int) -> int:
    """Opens `count` sockets sending random bytes and `count` sending nothing; returns how many the server closed."""

    async def one(payload: bytes) -> bool:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            if payload:
                writer.write(payload)
                await writer.drain()
            # The server ends the connection: at once for garbage, after the handshake timeout for silence.
            async with asyncio.timeout(10):
                while await reader.read(4096):
                    pass
            return True
        except (TimeoutError, ConnectionError):
            return False
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    payloads = [os.urandom(512) for _ in range(count)] + [b""] * count
    return sum(await asyncio.gather(*(one(payload) for payload in payloads)))


async def flood_round(flooded: Flooded) -> None:
    """One flood: silent sessions and garbage at once; the API answers meanwhile, and all of it is ended."""
    sessions = asyncio.ensure_future(silent_sessions(flooded.address, FLOOD))
    garbage = asyncio.ensure_future(garbage_connections(flooded.port, GARBAGE))
    for _ in range(5):
        service = await flooded.api.GetService(cpb.GetServiceRequest(name="web"), timeout=5)
        assert service.spec.image == "nginx:1"
    codes = await sessions
    assert set(codes) == {grpc.StatusCode.DEADLINE_EXCEEDED}, {code.name: codes.count(code) for code in set(codes)}
    assert await garbage == 2 * GARBAGE


def traced() -> int:
    """Bytes of Python heap in use now, after a full collection."""
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


async def test_floods_are_ended_by_the_server_and_their_memory_is_freed(flooded: Flooded) -> None:
    tracemalloc.start()
    try:
        await flood_round(flooded)
        first = traced()
        await flood_round(flooded)
        await flood_round(flooded)
        third = traced()
    finally:
        tracemalloc.stop()
    assert third - first < MEMORY_SLACK_BYTES, f"the heap grew {third - first} bytes over two more floods"
