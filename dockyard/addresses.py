"""Whether a listen address is free, and who holds it when it is not: the controller and `dockyard up` both ask."""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from pathlib import Path

__all__ = [
    "JOIN_PORT",
    "address_in_use",
    "connect_address",
    "host_of",
    "in_use_message",
    "is_loopback",
    "join_listen_for",
    "port_holder",
    "split_listen",
    "with_port",
]

# The controller's join address (server-authenticated TLS, no client certificate) defaults to this port on
# the host of its API address (mutual TLS, limits.CONTROLLER_PORT).
JOIN_PORT = 7466


def split_listen(listen: str) -> tuple[str, int] | None:
    """Returns (host, port) of "host:port" or "[v6]:port"; None for other forms (such as unix:)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or host.startswith("unix"):
        return None
    return host.removeprefix("[").removesuffix("]"), int(port)


def host_of(address: str) -> str:
    """Returns the host part of "host:port" or "[v6]:port" (the whole string when there is no port)."""
    parts = split_listen(address)
    return parts[0] if parts is not None else address


def with_port(host: str, port: int) -> str:
    """Returns "host:port", bracketing an IPv6 host."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def join_listen_for(listen: str) -> str:
    """The default join address for an API address: its host, JOIN_PORT (port 0, for tests, stays 0)."""
    parts = split_listen(listen)
    if parts is None:
        return listen
    host, port = parts
    return with_port(host, 0 if port == 0 else JOIN_PORT)


def connect_address(listen: str) -> str:
    """The address a local client dials for a listen address: a wildcard host becomes 127.0.0.1."""
    host, _, port = listen.rpartition(":")
    if host in ("0.0.0.0", "[::]", ""):
        host = "127.0.0.1"
    return f"{host}:{port}"


def is_loopback(address: str) -> bool:
    """Whether a "host:port" address names only this machine (127.0.0.0/8, ::1 or localhost)."""
    host = host_of(address)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def address_in_use(listen: str, flag: str = "--listen") -> str | None:
    """Binds each address `listen` resolves to as gRPC would, without SO_REUSEPORT; a one-line reason if taken.

    Forms it cannot parse, and port 0, return None: gRPC's own bind reports on those.
    """
    parts = split_listen(listen)
    if parts is None or parts[1] == 0:
        return None
    host, port = parts
    try:
        addresses = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError:
        return None
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC: TIME_WAIT is no conflict
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return in_use_message(listen, flag)
    return None


def in_use_message(listen: str, flag: str = "--listen") -> str:
    """Returns "FLAG ADDR: address already in use by pid N (command); ..." (the holder where it can tell)."""
    parts = split_listen(listen)
    holder = port_holder(parts[1]) if parts and parts[1] else None
    held = f" by {holder}" if holder else ""
    return f"{flag} {listen}: address already in use{held}; stop it or choose another address"


def _listening_inodes(port: int) -> set[str]:
    """Returns the socket inodes listening on `port` in this network namespace (from /proc/net/tcp{,6})."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) < 10 or fields[3] != "0A":  # 0A: LISTEN
                continue
            if int(fields[1].rpartition(":")[2], 16) == port:
                inodes.add(fields[9])
    return inodes


def port_holder(port: int) -> str | None:
    """Names the process listening on `port` ("pid 123 (dockyard-controller ...)"), or None when unknown."""
    sockets = {f"socket:[{inode}]" for inode in _listening_inodes(port)}
    if not sockets:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            owns = any(os.readlink(fd) in sockets for fd in (proc / "fd").iterdir())
            command = (proc / "cmdline").read_bytes()
        except OSError:
            continue  # gone, or another user's
        if owns:
            words = [Path(w).name if i == 0 else w for i, w in enumerate(command.decode(errors="replace").split("\0"))]
            text = " ".join(w for w in words if w)
            return f"pid {proc.name} ({text[:120]}{'...' if len(text) > 120 else ''})"
    return "a process of another user"
