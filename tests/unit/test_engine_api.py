"""The Engine API client against a scripted HTTP server on a unix socket: requests, answers, errors, streams."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from agent.runtime.engine_api import ConnectionFailed, EngineAPI, EngineError, resolve_endpoint

# Given the request (head and body as received), writes the answer.
Script = Callable[[bytes, bytes, asyncio.StreamWriter], Awaitable[None]]


class Server:
    """A unix-socket server that records each request and answers it with the script in place."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.requests: list[tuple[bytes, bytes]] = []
        self.script: Script = answer(200, b"{}")

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        body = await reader.readexactly(length)
        self.requests.append((head, body))
        try:
            await self.script(head, body, writer)
        finally:
            writer.close()


def answer(status: int, body: bytes, content_type: str = "application/json") -> Script:
    """A script that answers with a Content-Length body."""

    async def script(_head: bytes, _body: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(
            f"HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()

    return script


def chunked(*chunks: bytes) -> Script:
    """A script that answers 200 with the body in these chunks, then ends it."""

    async def script(_head: bytes, _body: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        for chunk in chunks:
            writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    return script


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    scripted = Server(tmp_path / "docker.sock")
    listener = await asyncio.start_unix_server(scripted._handle, str(scripted.path))
    try:
        yield scripted
    finally:
        listener.close()
        await listener.wait_closed()


def test_the_address_comes_from_the_url_then_docker_host_and_tcp_defaults_to_port_2375(tmp_path: Path) -> None:
    home = tmp_path  # no Docker config there
    assert resolve_endpoint("unix:///tmp/d.sock", {"DOCKER_HOST": "tcp://x:1"}, home).describe() == "unix:///tmp/d.sock"
    assert resolve_endpoint(None, {"DOCKER_HOST": "tcp://10.0.0.2"}, home).describe() == "tcp://10.0.0.2:2375"
    assert resolve_endpoint(None, {"DOCKER_HOST": "unix:///x.sock"}, home).describe() == "unix:///x.sock"
    with pytest.raises(ValueError, match="DOCKER_CERT_PATH"):
        resolve_endpoint("tcp://10.0.0.2", {"DOCKER_TLS_VERIFY": "1"}, home)
    with pytest.raises(ValueError, match="unsupported"):
        resolve_endpoint("ssh://me@host", {}, home)


async def test_a_call_sends_method_path_query_and_json_body_and_returns_the_json_answer(server: Server) -> None:
    server.script = answer(201, b'{"Id": "abc"}')
    api = EngineAPI(f"unix://{server.path}")
    result = await api.call("POST", "/containers/create", query={"name": "web.1"}, body={"Image": "busybox"})
    assert result == {"Id": "abc"}
    head, body = server.requests[0]
    assert head.startswith(b"POST /containers/create?name=web.1 HTTP/1.1\r\n")
    assert json.loads(body) == {"Image": "busybox"}


async def test_an_empty_answer_is_none_and_a_chunked_one_is_joined(server: Server) -> None:
    api = EngineAPI(f"unix://{server.path}")
    server.script = answer(204, b"")
    assert await api.call("POST", "/containers/x/start") is None
    server.script = chunked(b'{"Name": ', b'"h1"}')
    assert await api.call("GET", "/info") == {"Name": "h1"}


async def test_an_error_status_raises_with_dockers_message(server: Server) -> None:
    api = EngineAPI(f"unix://{server.path}")
    server.script = answer(404, b'{"message": "No such container: x"}')
    with pytest.raises(EngineError) as caught:
        await api.call("GET", "/containers/x/json")
    assert (caught.value.status, caught.value.message) == (404, "No such container: x")
    server.script = answer(500, b"plain words", content_type="text/plain")
    with pytest.raises(EngineError, match="plain words"):
        await api.call("GET", "/info")


async def test_a_stream_yields_each_document_whatever_the_chunking(server: Server) -> None:
    server.script = chunked(b'{"a": 1}\n{"b"', b": 2}\n", b'{"c": 3}')
    api = EngineAPI(f"unix://{server.path}")
    assert [doc async for doc in api.stream("GET", "/events")] == [{"a": 1}, {"b": 2}, {"c": 3}]
    server.script = chunked(b"not json\n")
    with pytest.raises(json.JSONDecodeError):
        _ = [doc async for doc in api.stream("GET", "/events")]


async def test_no_daemon_and_a_broken_answer_are_connection_failures(server: Server, tmp_path: Path) -> None:
    with pytest.raises(ConnectionFailed, match="cannot connect"):
        await EngineAPI(f"unix://{tmp_path / 'absent.sock'}").call("GET", "/info")

    async def cut_short(_head: bytes, _body: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{")
        await writer.drain()

    server.script = cut_short
    with pytest.raises(ConnectionFailed, match="broke"):
        await EngineAPI(f"unix://{server.path}").call("GET", "/info")


def test_a_docker_context_comes_before_docker_host(tmp_path: Path) -> None:
    name = "remote"
    digest = hashlib.sha256(name.encode()).hexdigest()
    meta = tmp_path / ".docker" / "contexts" / "meta" / digest
    meta.mkdir(parents=True)
    (meta / "meta.json").write_text(
        json.dumps({"Name": name, "Endpoints": {"docker": {"Host": "tcp://10.0.0.9:2375"}}})
    )
    env = {"DOCKER_HOST": "unix:///other.sock"}
    assert (
        resolve_endpoint(None, env={**env, "DOCKER_CONTEXT": name}, home=tmp_path).describe() == "tcp://10.0.0.9:2375"
    )
    (tmp_path / ".docker" / "config.json").write_text(json.dumps({"currentContext": name}))
    assert resolve_endpoint(None, env=env, home=tmp_path).describe() == "tcp://10.0.0.9:2375"
    # "default" is no context: DOCKER_HOST decides.
    assert (
        resolve_endpoint(None, env={**env, "DOCKER_CONTEXT": "default"}, home=tmp_path).describe()
        == "unix:///other.sock"
    )
    with pytest.raises(ValueError, match="unreadable"):
        resolve_endpoint(None, env={"DOCKER_CONTEXT": "missing"}, home=tmp_path)
