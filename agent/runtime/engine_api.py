"""A small HTTP/1.1 client for the Docker Engine API, on asyncio streams: what the Docker adapter speaks through.

It replaces aiodocker and aiohttp in the agent, which cost every host about 11 MB of RSS for a client (cookie
jars, multipart, websockets, tracing, TLS contexts made at import) the agent does not use; the adapter needs
eleven plain requests and one stream. One connection per request (`Connection: close`): on a local socket a
connect costs tens of microseconds, and no idle pool outlives its use.

Where the daemon is, in the order aiodocker looked (so an agent finds the same daemon it found before): the given
URL, else the current Docker context (DOCKER_CONTEXT, else currentContext in ~/.docker/config.json; "default"
means none), else DOCKER_HOST, else the first of the usual sockets that exists. unix:// paths and tcp:// or
http:// addresses are spoken to directly; tcp:// with DOCKER_TLS_VERIFY=1 (or https://) uses TLS with the
ca.pem, cert.pem and key.pem in DOCKER_CERT_PATH, as the docker CLI does, and a context uses its own TLS files.
ssh:// is not spoken (aiodocker needed asyncssh for it, which Dockyard never installed).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

__all__ = ["ConnectionFailed", "EngineAPI", "EngineError"]

# Where dockerd listens when nobody says otherwise; the first that exists is used.
SOCKET_SEARCH_PATHS = (Path("/run/docker.sock"), Path("/var/run/docker.sock"), Path.home() / ".docker/run/docker.sock")
# A status line or header longer than this is not Docker speaking.
_MAX_LINE = 64 * 1024
# The largest body read whole (an inspect is a few kB; `docker info` tens of kB).
_MAX_BODY = 64 * 1024 * 1024


class EngineError(Exception):
    """The daemon answered with an error status; `message` is what it said."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class ConnectionFailed(EngineError):
    """The daemon could not be reached, or the connection broke before a whole answer arrived."""

    def __init__(self, message: str) -> None:
        super().__init__(0, message)


@dataclass(frozen=True)
class _Endpoint:
    """How to open a connection to the daemon."""

    unix_path: str | None = None
    host: str = ""
    port: int = 0
    tls: ssl.SSLContext | None = None

    def describe(self) -> str:
        """The address as a person would write it."""
        if self.unix_path is not None:
            return f"unix://{self.unix_path}"
        return f"{'https' if self.tls else 'tcp'}://{self.host}:{self.port}"


def _tls_context(cert_path: str | None) -> ssl.SSLContext:
    """The client TLS context the docker CLI uses for DOCKER_TLS_VERIFY=1."""
    if cert_path is None:
        raise ValueError("DOCKER_TLS_VERIFY is set but DOCKER_CERT_PATH is not")
    certs = Path(cert_path)
    context = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    context.load_cert_chain(certfile=str(certs / "cert.pem"), keyfile=str(certs / "key.pem"))
    return context


def _context_tls(directory: Path, skip_verify: bool) -> ssl.SSLContext | None:
    """The TLS context of a Docker context's endpoint, None when it keeps no TLS files."""
    ca, cert, key = (directory / name for name in ("ca.pem", "cert.pem", "key.pem"))
    if not (ca.exists() or cert.exists()):
        return None
    context = ssl.create_default_context(cafile=str(ca) if ca.exists() else None)
    if skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if cert.exists() and key.exists():
        context.load_cert_chain(certfile=str(cert), keyfile=str(key))
    return context


def _context_endpoint(env: Mapping[str, str], home: Path) -> tuple[str, ssl.SSLContext | None] | None:
    """The current Docker context's daemon address and TLS, or None when no context other than "default" is set."""
    name = env.get("DOCKER_CONTEXT")
    if name is None:
        try:
            name = json.loads((home / ".docker" / "config.json").read_bytes()).get("currentContext")
        except OSError:
            return None
    if not name or name == "default":
        return None
    digest = hashlib.sha256(name.encode()).hexdigest()
    contexts = home / ".docker" / "contexts"
    try:
        endpoint = json.loads((contexts / "meta" / digest / "meta.json").read_bytes())["Endpoints"]["docker"]
        host = str(endpoint["Host"])
    except (OSError, KeyError, TypeError) as exc:
        raise ValueError(f"docker context {name!r} is unreadable: {exc!r}") from exc
    return host, _context_tls(contexts / "tls" / digest / "docker", bool(endpoint.get("SkipTLSVerify", False)))


def resolve_endpoint(url: str | None, env: Mapping[str, str] = os.environ, home: Path | None = None) -> _Endpoint:
    """Returns where the daemon is, by the rules in the module's docstring; raises ValueError when it cannot tell."""
    context_tls: ssl.SSLContext | None = None
    address = url
    if not address:
        context = _context_endpoint(env, Path.home() if home is None else home)
        if context is not None:
            address, context_tls = context
    address = address or env.get("DOCKER_HOST")
    if not address:
        for path in SOCKET_SEARCH_PATHS:
            if path.is_socket():
                return _Endpoint(unix_path=str(path))
        raise ValueError("no DOCKER_HOST and no docker socket at " + ", ".join(map(str, SOCKET_SEARCH_PATHS)))
    if address.startswith("unix://"):
        return _Endpoint(unix_path=address.removeprefix("unix://"))
    parts = urlsplit(address)
    if parts.scheme not in ("tcp", "http", "https") or not parts.hostname:
        raise ValueError(f"unsupported docker address {address!r}: use unix://PATH or tcp://HOST:PORT")
    if context_tls is not None:
        return _Endpoint(host=parts.hostname, port=parts.port or 2376, tls=context_tls)
    tls = parts.scheme == "https" or (parts.scheme == "tcp" and env.get("DOCKER_TLS_VERIFY", "") == "1")
    port = parts.port or (2376 if tls else 2375)
    return _Endpoint(host=parts.hostname, port=port, tls=_tls_context(env.get("DOCKER_CERT_PATH")) if tls else None)


class _Response:
    """The status, headers and body stream of one answer; the body is read once."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self.writer = writer
        self.status = 0
        self.headers: dict[str, str] = {}

    async def read_head(self) -> None:
        """Reads the status line and the headers."""
        line = await self._line()
        version, _, rest = line.partition(" ")
        if not version.startswith("HTTP/1."):
            raise ConnectionFailed(f"not an HTTP answer: {line[:80]!r}")
        self.status = int(rest.split(" ", 1)[0])
        while header := await self._line():
            name, _, value = header.partition(":")
            self.headers[name.strip().lower()] = value.strip()

    async def _line(self) -> str:
        data = await self._reader.readuntil(b"\r\n")
        if len(data) > _MAX_LINE:
            raise ConnectionFailed("a header line too long")
        return data[:-2].decode("latin-1")

    async def chunks(self) -> AsyncIterator[bytes]:
        """Yields the body as it arrives (chunked, by Content-Length, or until the connection closes)."""
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int((await self._line()).split(";", 1)[0], 16)
                if size == 0:
                    return
                data = await self._reader.readexactly(size + 2)
                yield data[:-2]
        elif "content-length" in self.headers:
            length = int(self.headers["content-length"])
            if length > _MAX_BODY:
                raise ConnectionFailed(f"an answer of {length} bytes")
            if length:
                yield await self._reader.readexactly(length)
        else:
            while data := await self._reader.read(65536):
                yield data

    async def body(self) -> bytes:
        """The whole body."""
        parts = []
        size = 0
        async for chunk in self.chunks():
            size += len(chunk)
            if size > _MAX_BODY:
                raise ConnectionFailed(f"an answer of more than {_MAX_BODY} bytes")
            parts.append(chunk)
        return b"".join(parts)

    async def json_lines(self) -> AsyncIterator[Any]:
        """Yields each JSON document of a stream of them (Docker writes one per line); ValueError on garbage."""
        pending = b""
        async for chunk in self.chunks():
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if line.strip():
                    yield json.loads(line)
        if pending.strip():
            yield json.loads(pending)

    async def error(self) -> EngineError:
        """The EngineError this error answer stands for, with Docker's message when it sent one."""
        raw = (await self.body()).decode("utf-8", "replace")
        message = raw.strip()
        if self.headers.get("content-type", "").startswith("application/json"):
            with contextlib.suppress(ValueError, AttributeError):
                message = str(json.loads(raw).get("message", message))
        return EngineError(self.status, message)


class EngineAPI:
    """Requests to one daemon; every call opens its own connection, so calls never wait on each other."""

    def __init__(self, url: str | None = None, *, connect_timeout: float = 10.0) -> None:
        """Resolves the daemon's address at once; raises ValueError when there is none."""
        self._endpoint = resolve_endpoint(url)
        self._connect_timeout = connect_timeout
        self._open: set[asyncio.StreamWriter] = set()

    @property
    def address(self) -> str:
        """Where the daemon is, for messages."""
        return self._endpoint.describe()

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        endpoint = self._endpoint
        try:
            async with asyncio.timeout(self._connect_timeout):
                if endpoint.unix_path is not None:
                    return await asyncio.open_unix_connection(endpoint.unix_path, limit=_MAX_LINE)
                return await asyncio.open_connection(endpoint.host, endpoint.port, ssl=endpoint.tls, limit=_MAX_LINE)
        except TimeoutError:
            raise ConnectionFailed(
                f"cannot connect to {self.address}: no answer in {self._connect_timeout:g}s"
            ) from None
        except OSError as exc:
            raise ConnectionFailed(f"cannot connect to {self.address}: {exc}") from exc

    async def _send(self, method: str, path: str, query: Mapping[str, str] | None, body: object | None) -> _Response:
        """Sends one request and reads the answer's head; the caller reads the body and closes the response."""
        reader, writer = await self._connect()
        self._open.add(writer)
        target = quote(path, safe="/:@") + (f"?{urlencode(query)}" if query else "")
        payload = b"" if body is None else json.dumps(body).encode()
        head = [f"{method} {target} HTTP/1.1", "Host: docker", "Connection: close", "User-Agent: dockyard-agent"]
        if body is not None:
            head += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
        elif method in ("POST", "PUT"):
            head.append("Content-Length: 0")
        response = _Response(reader, writer)
        try:
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload)
            await writer.drain()
            await response.read_head()
        except BaseException:
            self._forget(writer)
            raise
        return response

    def _forget(self, writer: asyncio.StreamWriter) -> None:
        self._open.discard(writer)
        writer.close()

    async def call(
        self, method: str, path: str, *, query: Mapping[str, str] | None = None, body: object | None = None
    ) -> Any:
        """Makes one request and returns its JSON answer (None when empty); raises EngineError or ConnectionFailed."""
        try:
            response = await self._send(method, path, query, body)
            try:
                if response.status >= 400:
                    raise await response.error()
                raw = await response.body()
            finally:
                self._forget(response.writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            raise ConnectionFailed(f"connection to {self.address} broke: {exc!r}") from exc
        return json.loads(raw) if raw.strip() else None

    async def stream(self, method: str, path: str, *, query: Mapping[str, str] | None = None) -> AsyncIterator[Any]:
        """Yields the JSON documents of a streaming answer until the daemon ends it; raises as call() does."""
        try:
            response = await self._send(method, path, query, None)
            try:
                if response.status >= 400:
                    raise await response.error()
                async for document in response.json_lines():
                    yield document
            finally:
                self._forget(response.writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            raise ConnectionFailed(f"connection to {self.address} broke: {exc!r}") from exc

    async def close(self) -> None:
        """Closes every connection still open (a stream abandoned mid-way, for one)."""
        writers, self._open = self._open, set()
        for writer in writers:
            writer.close()
