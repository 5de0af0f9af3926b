"""A unix-socket proxy in front of a daemon's socket that can make the daemon look dead or hung to its clients."""

from __future__ import annotations

import asyncio
import contextlib
import os

__all__ = ["UnixSocketProxy"]

_CHUNK = 65536


class UnixSocketProxy:
    """Forwards a unix socket to a daemon's socket, and can drop or freeze every connection to fake an outage.

    Point the runtime under test at `path` (e.g. ``unix://{path}``); `close()` then looks to it like the
    daemon died, `freeze()` like the daemon hangs with its connections open.
    """

    def __init__(self, target: str, path: str) -> None:
        """Will listen on `path` and forward to the socket at `target`."""
        self._target = target
        self.path = path
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._pumps: set[asyncio.Task[None]] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()

    async def start(self) -> None:
        """Starts listening."""
        self._server = await asyncio.start_unix_server(self._handle, path=self.path)

    def freeze(self) -> None:
        """Stops forwarding bytes while keeping every connection open: a daemon that hangs."""
        self._flowing.clear()

    async def close(self) -> None:
        """Stops listening, closes every connection and removes the socket file: a daemon that died."""
        if self._server is not None:
            self._server.close()
        # Cancelling the pumps, not the handlers: asyncio's stream server logs cancelled handlers.
        for pump in list(self._pumps):
            pump.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        for writer in list(self._writers):
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        """Pumps one client connection to the daemon and back."""
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        self._writers.add(client_writer)
        try:
            daemon_reader, daemon_writer = await asyncio.open_unix_connection(self._target)
        except OSError:
            client_writer.close()
            self._handlers.discard(handler)
            return
        self._writers.add(daemon_writer)
        pumps = {
            asyncio.create_task(self._pump(client_reader, daemon_writer)),
            asyncio.create_task(self._pump(daemon_reader, client_writer)),
        }
        self._pumps |= pumps
        await asyncio.gather(*pumps, return_exceptions=True)
        self._pumps -= pumps
        self._handlers.discard(handler)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copies bytes one way until EOF, holding them back while frozen."""
        try:
            while data := await reader.read(_CHUNK):
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()
