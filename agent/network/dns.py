"""Service discovery: the agent's DNS server, answering `*.dockyard` from the controller's DnsTable.

It listens on every cluster-network gateway of this host (UDP and TCP port 53). Containers reach it
through Docker's embedded DNS (127.0.0.11 on user-defined networks), which forwards every name it does not
know to the container's `dns` servers from the container's own address; that works with dockerd's
--iptables=false too (docs/design/network.md, "DNS").

Answers:
* `<name>.dockyard` in the table: its A records (TTL `TTL_SECONDS`); AAAA and other types: no data.
* Any other `.dockyard` name: NXDOMAIN, at once.
* A bare name (`db`): resolved within the querying container's stack only (`db.<stack>.dockyard`, or
  `db.dockyard` for a container of no stack), never another stack's. Docker writes `options ndots:0`, so
  glibc asks the bare name first and musl (Alpine) never tries the search list at all; the query's source
  address tells which local network it came from, and the local tasks on that network (their specs' stack,
  or the asking container's own address when stacks share the network) which stack: `asking_stack`. When
  that cannot be told exactly, NXDOMAIN.
* `name.more` not under `.dockyard` but present as `name.more.dockyard` (the `dockyard` search domain, for
  resolvers that skip it): that record.
* Anything else: forwarded to the host's resolvers (/etc/resolv.conf); a bare name that is not ours is
  NXDOMAIN rather than leaked upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import socket
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any, Final, cast

import structlog
from dnslib import QTYPE, RCODE, RR, A, DNSError, DNSRecord

from agent.network.plan import DNS_PORT
from dockyard.clock import Clock, SystemClock
from dockyard.logs import Throttle
from dockyard.spec.stacks import DNS_DOMAIN, networks_of, qualified_dns_name
from dockyard.v1 import agent_pb2 as apb
from dockyard.v1 import types_pb2 as pb

__all__ = ["TTL_SECONDS", "DnsServer", "LocalTask", "NameTable", "Resolver", "asking_stack", "upstream_servers"]

log = structlog.get_logger()

# Short, so that a stopped task's address leaves clients' caches within seconds of leaving the table.
TTL_SECONDS: Final = 2
# How long a forwarded query may take before the client gets SERVFAIL (clients retry after ~5 s themselves).
FORWARD_TIMEOUT_SECONDS: Final = 2.0
# Forwarded queries in flight at once (each holds a task and a UDP socket for up to FORWARD_TIMEOUT_SECONDS);
# beyond it a query gets SERVFAIL at once, so a container flooding foreign names costs bounded memory and fds.
# 256 in 2 s is over 100 forwards a second when upstreams are slow, far above real containers' needs.
MAX_FORWARDS_IN_FLIGHT: Final = 256
# TCP clients: connections held open at once (a new one beyond is closed at once), and how long one may sit
# between queries (or mid-message) before it is closed (RFC 7766 suggests seconds; resolvers retry).
MAX_TCP_CONNECTIONS: Final = 64
TCP_IDLE_SECONDS: Final = 10.0
# Names and addresses the controller sends are bounded so a bad table costs bounded memory.
MAX_NAME_BYTES: Final = 253
MAX_ADDRESSES: Final = 512
# The biggest DNS message over TCP (its 2-byte length prefix).
_MAX_TCP_MESSAGE: Final = 65535
_SUFFIX: Final = f".{DNS_DOMAIN}"
_IP_FREEBIND: Final = 15  # linux/in.h; socket.IP_FREEBIND is missing from some Python builds


class NameTable:
    """The records the controller sent: a full table replaces everything, a delta changes the names it lists."""

    def __init__(self) -> None:
        self.version = 0
        self._names: dict[str, tuple[IPv4Address, ...]] = {}

    def __len__(self) -> int:
        return len(self._names)

    def apply(self, table: apb.DnsTable) -> list[str]:
        """Applies a full table or a newer delta; returns problems with its records (those records are skipped).

        A delta not newer than what the table holds is ignored: it was already applied, or a full table that
        came after it covers it. A full table is always taken: a reconnected session starts with one.
        """
        if not table.full and table.version <= self.version:
            return []
        problems: list[str] = []
        records: dict[str, tuple[IPv4Address, ...]] = {}
        for index, record in enumerate(table.records):
            name = record.name.lower().rstrip(".")
            if not name.endswith(_SUFFIX) or len(name) > MAX_NAME_BYTES:
                problems.append(f"dns.records[{index}].name: {record.name!r} is not a name under {_SUFFIX}; skipped")
                continue
            addresses: list[IPv4Address] = []
            for text in record.addresses[:MAX_ADDRESSES]:
                try:
                    addresses.append(IPv4Address(text))
                except ValueError:
                    problems.append(f"dns.records[{index}].addresses: {text!r} is not an IPv4 address; skipped")
            records[name] = tuple(dict.fromkeys(addresses))
        if table.full:
            self._names = {name: found for name, found in records.items() if found}
        else:
            for name, found in records.items():
                if found:
                    self._names[name] = found
                else:
                    self._names.pop(name, None)
        self.version = table.version
        return problems

    def lookup(self, name: str) -> tuple[IPv4Address, ...] | None:
        """The addresses of a fully qualified name (no trailing dot, any case), or None when it is not in the table."""
        return self._names.get(name.lower())

    def snapshot(self) -> apb.DnsTable:
        """The whole table as a full DnsTable of its version (what the agent keeps on disk)."""
        return apb.DnsTable(
            version=self.version,
            full=True,
            records=[
                apb.DnsRecord(name=name, addresses=[str(a) for a in found])
                for name, found in sorted(self._names.items())
            ],
        )


@dataclass(frozen=True)
class LocalTask:
    """A task of this node as the DNS server needs it: its spec and its addresses (cluster network -> IPv4)."""

    spec: pb.ServiceSpec
    addresses: Mapping[str, str]


def asking_stack(network: str, source: IPv4Address, tasks: Iterable[LocalTask]) -> str | None:
    """The stack of the container asking from `source` on local network `network` ("": none); None if unknown.

    A network's name does not tell its stack (`my_shop_default` may be stack `my`'s or `my_shop`'s, and a
    stack may join another's network or the cluster network), so the local tasks on it decide: the task whose
    address is `source`, else the one stack all the network's local tasks belong to.
    """
    stacks: set[str] = set()
    for task in tasks:
        if network not in networks_of(task.spec):
            continue
        if task.addresses.get(network) == str(source):
            return task.spec.stack
        stacks.add(task.spec.stack)
    return stacks.pop() if len(stacks) == 1 else None


class Resolver:
    """Turns a query into an answer from the table, or says it must be forwarded; pure, no sockets."""

    def __init__(self, table: NameTable, stack_of: Callable[[IPv4Address], str | None]) -> None:
        self._table = table
        # The stack of the container at a source address ("": none), for bare names; None: cannot be told.
        self._stack_of = stack_of

    def answer(self, query: DNSRecord, source: IPv4Address | None) -> DNSRecord | None:
        """The reply to `query` from `source`, or None when the name is not ours to answer (forward it)."""
        reply = query.reply()
        reply.header.ra = 1
        if len(query.questions) != 1:
            reply.header.rcode = RCODE.FORMERR
            return reply
        question = query.q
        name = str(question.qname).rstrip(".").lower()
        found = self._find(name, source)
        if found is None:
            if name == DNS_DOMAIN or name.endswith(_SUFFIX) or "." not in name:
                reply.header.rcode = RCODE.NXDOMAIN
                return reply
            return None
        if question.qtype in (QTYPE.A, QTYPE.ANY):
            for address in found:
                reply.add_answer(RR(question.qname, QTYPE.A, rdata=A(str(address)), ttl=TTL_SECONDS))
        return reply

    def _find(self, name: str, source: IPv4Address | None) -> tuple[IPv4Address, ...] | None:
        if name.endswith(_SUFFIX):
            return self._table.lookup(name)
        if "." in name:
            return self._table.lookup(f"{name}{_SUFFIX}")  # `db.shop`, for resolvers that skip the search list
        if not name or source is None:
            return None
        stack = self._stack_of(source)
        # Only the asker's own stack: never another stack's service, nor a name outside the stack.
        return None if stack is None else self._table.lookup(qualified_dns_name(name, stack))


def upstream_servers(resolv_conf: str, exclude: Iterable[IPv4Address] = ()) -> list[tuple[str, int]]:
    """The IPv4 nameservers of a resolv.conf text, without our own listen addresses (no forwarding loops)."""
    excluded = {str(a) for a in exclude}
    servers: list[tuple[str, int]] = []
    for line in resolv_conf.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            try:
                address = IPv4Address(fields[1])
            except ValueError:
                continue  # IPv6 resolvers are not used: our listeners and forwarders are IPv4
            if str(address) not in excluded:
                servers.append((str(address), DNS_PORT))
    return servers


def _read_resolv_conf(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


SocketFactory = Callable[[int], socket.socket]  # socket type (SOCK_DGRAM/SOCK_STREAM) -> an unbound AF_INET socket


def default_socket(kind: int) -> socket.socket:
    """An AF_INET socket in the agent's own network namespace."""
    return socket.socket(socket.AF_INET, kind)


@dataclass
class _Listener:
    udp: asyncio.DatagramTransport
    tcp: asyncio.Server


class DnsServer:
    """Serves the table on a changing set of addresses; `listen_on` opens and closes listeners to match."""

    def __init__(
        self,
        table: NameTable,
        *,
        port: int = DNS_PORT,
        clock: Clock | None = None,
        upstreams: Callable[[], Sequence[tuple[str, int]]] | None = None,
        socket_factory: SocketFactory = default_socket,
        resolv_conf: Path = Path("/etc/resolv.conf"),
        max_forwards: int = MAX_FORWARDS_IN_FLIGHT,
        max_tcp_connections: int = MAX_TCP_CONNECTIONS,
        tcp_idle_seconds: float = TCP_IDLE_SECONDS,
    ) -> None:
        """Serves `table`; the limits default to this module's constants (tests make them small)."""
        self.table = table
        self.port = port
        self._clock: Clock = clock or SystemClock()
        self._throttle = Throttle(self._clock, interval=60.0, burst=3)
        self._socket = socket_factory
        self._listeners: dict[IPv4Address, _Listener] = {}
        self._networks: dict[IPv4Network, str] = {}
        self._max_forwards = max_forwards
        self._max_tcp = max_tcp_connections
        self._tcp_idle = tcp_idle_seconds
        self.forwards_in_flight = 0
        self.tcp_connections = 0
        # Which local tasks there are, to tell a bare name's stack (asking_stack); the NetworkManager sets it.
        self.local_tasks: Callable[[], Iterable[LocalTask]] = tuple
        self.resolver = Resolver(table, self._stack_of)
        self._upstreams = upstreams or (
            lambda: upstream_servers(_read_resolv_conf(resolv_conf), exclude=self._listeners)
        )

    @property
    def addresses(self) -> list[IPv4Address]:
        """The addresses it listens on now."""
        return sorted(self._listeners)

    def _stack_of(self, address: IPv4Address) -> str | None:
        network = next((name for subnet, name in self._networks.items() if address in subnet), None)
        return None if network is None else asking_stack(network, address, self.local_tasks())

    async def listen_on(self, addresses: Iterable[IPv4Address], networks: Mapping[IPv4Network, str]) -> list[str]:
        """Listens on exactly these addresses; `networks` maps local subnets to network names. Returns failures."""
        self._networks = dict(networks)
        wanted = set(addresses)
        for address in [a for a in self._listeners if a not in wanted]:
            self._close(address)
        failures: list[str] = []
        for address in sorted(wanted - set(self._listeners)):
            try:
                self._listeners[address] = await self._open(address)
            except OSError as exc:
                failures.append(f"dns server cannot listen on {address}:{self.port}: {exc}")
        return failures

    async def _open(self, address: IPv4Address) -> _Listener:
        loop = asyncio.get_running_loop()
        udp_socket = self._bound(socket.SOCK_DGRAM, address)
        try:
            transport, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), sock=udp_socket)
        except BaseException:
            udp_socket.close()
            raise
        try:
            tcp_socket = self._bound(socket.SOCK_STREAM, address)
            tcp_socket.listen(64)
            server = await asyncio.start_server(self._serve_tcp, sock=tcp_socket)
        except BaseException:
            transport.close()
            raise
        return _Listener(transport, server)

    def _bound(self, kind: int, address: IPv4Address) -> socket.socket:
        sock = self._socket(kind)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            # The gateway address appears only once Docker has made the bridge: bind before that is fine.
            sock.setsockopt(socket.IPPROTO_IP, _IP_FREEBIND, 1)
            sock.bind((str(address), self.port))
        except BaseException:
            sock.close()
            raise
        return sock

    def _close(self, address: IPv4Address) -> None:
        listener = self._listeners.pop(address)
        listener.udp.close()
        listener.tcp.close()

    async def close(self) -> None:
        """Stops listening everywhere."""
        servers = [listener.tcp for listener in self._listeners.values()]
        for address in list(self._listeners):
            self._close(address)
        for server in servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()

    def answer_now(self, data: bytes, source: IPv4Address | None) -> tuple[DNSRecord | None, bytes | None]:
        """Parses a wire query and answers it from the table: (query, reply); reply None: forward; query None: drop."""
        try:
            query = DNSRecord.parse(data)
        except (DNSError, ValueError, IndexError, struct.error):
            return None, None
        if query.header.qr:
            return None, None  # a response, not a query: never answer one (no reflection loops)
        reply = self.resolver.answer(query, source)
        return query, (bytes(reply.pack()) if reply is not None else None)

    async def respond(self, data: bytes, source: IPv4Address | None) -> bytes | None:
        """The wire reply to a wire query (None for garbage, which gets no answer)."""
        query, reply = self.answer_now(data, source)
        if query is None or reply is not None:
            return reply
        return await self.forward(query, data)

    def reserve_forward(self) -> bool:
        """Takes one of the in-flight forward slots; False (logged, rate-limited) when all are taken."""
        if self.forwards_in_flight >= self._max_forwards:
            suppressed = self._throttle.allow("forward limit")
            if suppressed is not None:
                log.warning("dns forwards at their limit; answering SERVFAIL", limit=self._max_forwards)
            return False
        self.forwards_in_flight += 1
        return True

    async def forward(self, query: DNSRecord, data: bytes, *, reserved: bool = False) -> bytes:
        """Asks the host's resolvers; SERVFAIL when none answers in time or the in-flight forwards are at their limit.

        `reserved`: the caller already holds a slot from reserve_forward() (released here either way).
        """
        if not reserved and not self.reserve_forward():
            return _servfail(query)
        try:
            servers = list(self._upstreams())
            if servers:
                try:
                    async with self._clock.timeout(FORWARD_TIMEOUT_SECONDS):
                        return await _ask(servers, data, query.header.id)
                except (TimeoutError, OSError) as exc:
                    if self._throttle.allow("forward") is not None:
                        log.warning("dns forward failed", name=str(query.q.qname), error=str(exc) or "timeout")
            return _servfail(query)
        finally:
            self.forwards_in_flight -= 1

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.tcp_connections >= self._max_tcp:
            if self._throttle.allow("tcp limit") is not None:
                log.warning("dns tcp connections at their limit; closing a new one", limit=self._max_tcp)
            writer.close()
            return
        self.tcp_connections += 1
        source = _address(writer.get_extra_info("peername"))
        try:
            while True:
                # A client that sends nothing (or half a message) is dropped after the idle time.
                async with self._clock.timeout(self._tcp_idle):
                    (length,) = struct.unpack("!H", await reader.readexactly(2))
                    data = await reader.readexactly(length)
                reply = await self.respond(data, source)
                if reply is None:
                    return
                reply = reply[:_MAX_TCP_MESSAGE]
                writer.write(struct.pack("!H", len(reply)) + reply)
                async with self._clock.timeout(self._tcp_idle):
                    await writer.drain()  # nor does one that never reads its answers hold us
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            pass
        finally:
            self.tcp_connections -= 1
            writer.close()


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self._server = server
        self._transport: asyncio.DatagramTransport | None = None
        self._pending: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)  # asyncio's own class is not a subclass

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        # Table answers go out without a task switch (the common case); forwarding waits on the network,
        # so it runs beside the other queries.
        query, reply = self._server.answer_now(data, _address(addr))
        if reply is not None:
            self._send(reply, addr)
        elif query is not None:
            # The slot is taken before the task exists, so a flood makes no tasks beyond the limit.
            if not self._server.reserve_forward():
                self._send(_servfail(query), addr)
                return
            task = asyncio.get_running_loop().create_task(self._forward(query, data, addr))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _forward(self, query: DNSRecord, data: bytes, addr: tuple[str | Any, int]) -> None:
        self._send(await self._server.forward(query, data, reserved=True), addr)

    def _send(self, reply: bytes, addr: tuple[str | Any, int]) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.sendto(reply, addr)


class _Client(asyncio.DatagramProtocol):
    """Takes the first reply with the query's id from one upstream server."""

    def __init__(self, done: asyncio.Future[bytes], query_id: int) -> None:
        self._done = done
        self._id = query_id

    def datagram_received(self, reply: bytes, addr: tuple[str | Any, int]) -> None:
        if len(reply) >= 2 and struct.unpack("!H", reply[:2])[0] == self._id and not self._done.done():
            self._done.set_result(reply)

    def error_received(self, exc: Exception) -> None:
        if not self._done.done():
            self._done.set_exception(exc)


async def _ask(servers: Sequence[tuple[str, int]], data: bytes, query_id: int) -> bytes:
    """Sends the query to the servers in turn (a random one first) and returns the first matching reply."""
    loop = asyncio.get_running_loop()
    order = list(servers)
    random.shuffle(order)
    last: Exception = OSError("no upstream answered")
    for server in order:
        done: asyncio.Future[bytes] = loop.create_future()
        transport, _ = await loop.create_datagram_endpoint(
            functools.partial(_Client, done, query_id), remote_addr=server
        )
        try:
            transport.sendto(data)
            try:
                return await asyncio.wait_for(asyncio.shield(done), FORWARD_TIMEOUT_SECONDS / len(order))
            except (TimeoutError, OSError) as exc:
                last = exc
        finally:
            transport.close()
    raise last


def _servfail(query: DNSRecord) -> bytes:
    reply = query.reply()
    reply.header.ra = 1
    reply.header.rcode = RCODE.SERVFAIL
    return bytes(reply.pack())


def _address(peer: object) -> IPv4Address | None:
    if isinstance(peer, tuple) and peer and isinstance(peer[0], str):
        try:
            return IPv4Address(peer[0])
        except ValueError:
            return None
    return None
