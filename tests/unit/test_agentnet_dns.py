"""agent.network.dns: the table (full, then deltas), the answers, and a real dnslib server on loopback."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network

import pytest
from dnslib import QTYPE, RCODE, DNSRecord
from hypothesis import given
from hypothesis import strategies as st

from agent.network.dns import (
    FORWARD_TIMEOUT_SECONDS,
    TTL_SECONDS,
    DnsServer,
    LocalTask,
    NameTable,
    Resolver,
    asking_stack,
    upstream_servers,
)
from dockyard.clock import FakeClock
from dockyard.v1 import agent_pb2 as apb
from dockyard.v1 import types_pb2 as pb

LOOPBACK = IPv4Address("127.0.0.1")


async def eventually(check: Callable[[], bool], what: str) -> None:
    """Polls a synchronous condition on the event loop, a bounded number of turns."""
    for _ in range(500):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never: {what}")


def table(version: int, full: bool, **records: list[str]) -> apb.DnsTable:
    return apb.DnsTable(
        version=version,
        full=full,
        records=[apb.DnsRecord(name=name.replace("__", "."), addresses=a) for name, a in records.items()],
    )


def names(t: NameTable, *wanted: str) -> dict[str, list[str] | None]:
    found = {n: t.lookup(n) for n in wanted}
    return {n: None if a is None else [str(x) for x in a] for n, a in found.items()}


def test_full_table_then_deltas_then_a_new_full_table() -> None:
    t = NameTable()
    assert t.apply(table(1, True, web__shop__dockyard=["10.128.0.2", "10.128.1.2"], db__dockyard=["10.128.0.3"])) == []
    t.apply(table(2, False, web__shop__dockyard=["10.128.0.2"], cache__dockyard=["10.128.2.9"]))
    t.apply(table(3, False, db__dockyard=[]))  # empty: the name is gone
    assert names(t, "web.shop.dockyard", "db.dockyard", "cache.dockyard") == {
        "web.shop.dockyard": ["10.128.0.2"],
        "db.dockyard": None,
        "cache.dockyard": ["10.128.2.9"],
    }
    t.apply(table(2, False, db__dockyard=["10.9.9.9"]))  # older delta: already covered, ignored
    assert t.lookup("db.dockyard") is None and t.version == 3
    t.apply(table(1, True, other__dockyard=["10.128.5.5"]))  # a full table always wins (a new session)
    assert names(t, "web.shop.dockyard", "other.dockyard") == {
        "web.shop.dockyard": None,
        "other.dockyard": ["10.128.5.5"],
    }
    assert len(t) == 1


def test_bad_records_are_skipped_and_named() -> None:
    t = NameTable()
    problems = t.apply(table(1, True, example__com=["1.2.3.4"], ok__dockyard=["10.0.0.1", "nope", "10.0.0.1"]))
    assert problems == [
        "dns.records[0].name: 'example.com' is not a name under .dockyard; skipped",
        "dns.records[1].addresses: 'nope' is not an IPv4 address; skipped",
    ]
    assert names(t, "ok.dockyard") == {"ok.dockyard": ["10.0.0.1"]}


def spec(name: str, stack: str = "", *networks: str) -> pb.ServiceSpec:
    return pb.ServiceSpec(name=f"{stack}_{name}" if stack else name, stack=stack, networks=networks)


# This node's tasks: stack shop on shop_default, stack my_shop on my_shop_default, a service of no stack on the
# cluster network, and on the shared network `shop_public` stack shop's web and stack my_shop's api (joined as an
# external network), told apart by their addresses.
LOCAL = [
    LocalTask(spec("web", "shop", "shop_default", "shop_public"), {"shop_public": "10.128.9.2"}),
    LocalTask(spec("api", "my_shop", "my_shop_public"), {}),
    LocalTask(spec("web", "my_shop"), {}),
    LocalTask(spec("api", "my_shop", "shop_public"), {"shop_public": "10.128.9.3"}),
    LocalTask(spec("cron"), {}),
]
SUBNETS = {
    IPv4Network("10.128.3.0/24"): "shop_default",
    IPv4Network("10.128.0.0/24"): "dockyard",
    IPv4Network("10.128.8.0/24"): "my_shop_default",
    IPv4Network("10.128.9.0/24"): "shop_public",
}


def test_the_asking_stack_is_the_local_tasks_on_the_network_or_the_asking_containers_own() -> None:
    source = IPv4Address("10.128.8.7")
    assert asking_stack("my_shop_default", source, LOCAL) == "my_shop", "not `my`, whatever the name suggests"
    assert asking_stack("shop_default", IPv4Address("10.128.3.2"), LOCAL) == "shop"
    assert asking_stack("dockyard", IPv4Address("10.128.0.2"), LOCAL) == "", "the cluster network: no stack"
    # Two stacks share shop_public: only the container's own address tells, and an unknown one tells nothing.
    assert asking_stack("shop_public", IPv4Address("10.128.9.2"), LOCAL) == "shop"
    assert asking_stack("shop_public", IPv4Address("10.128.9.3"), LOCAL) == "my_shop"
    assert asking_stack("shop_public", IPv4Address("10.128.9.4"), LOCAL) is None
    assert asking_stack("elsewhere", source, LOCAL) is None, "no task of ours on it"


def resolver() -> Resolver:
    t = NameTable()
    t.apply(
        table(
            1,
            True,
            db__shop__dockyard=["10.128.3.5"],
            db__dockyard=["10.128.0.7"],
            db__my__dockyard=["10.128.7.7"],
            web__my_shop__dockyard=["10.128.8.2"],
            api__dockyard=["10.128.0.9", "10.128.1.9"],
        )
    )

    def stack_of(address: IPv4Address) -> str | None:
        network = next((n for s, n in SUBNETS.items() if address in s), None)
        return None if network is None else asking_stack(network, address, LOCAL)

    return Resolver(t, stack_of)


def ask(r: Resolver, name: str, source: str = "10.128.3.2", qtype: str = "A") -> tuple[int, list[str]] | None:
    reply = r.answer(DNSRecord.question(name, qtype), IPv4Address(source))
    if reply is None:
        return None
    return reply.header.rcode, [str(rr.rdata) for rr in reply.rr]


def test_answers_names_bare_names_by_stack_and_forwards_the_rest() -> None:
    r = resolver()
    assert ask(r, "api.dockyard") == (RCODE.NOERROR, ["10.128.0.9", "10.128.1.9"])
    assert ask(r, "API.Dockyard.") == (RCODE.NOERROR, ["10.128.0.9", "10.128.1.9"])
    assert ask(r, "gone.dockyard") == (RCODE.NXDOMAIN, [])
    assert ask(r, "api.dockyard", qtype="AAAA") == (RCODE.NOERROR, [])  # the name exists, no IPv6
    # A bare name resolves within the asking container's stack only.
    assert ask(r, "db", source="10.128.3.2") == (RCODE.NOERROR, ["10.128.3.5"])
    assert ask(r, "db", source="10.128.0.2") == (RCODE.NOERROR, ["10.128.0.7"]), "no stack: db.dockyard"
    assert ask(r, "web", source="10.128.8.3") == (RCODE.NOERROR, ["10.128.8.2"])
    assert ask(r, "web", source="10.128.3.2") == (RCODE.NXDOMAIN, [])  # another stack's: not found, not leaked
    # Stack my_shop has no db: neither stack my's db.my.dockyard nor the stackless db.dockyard answers.
    assert ask(r, "db", source="10.128.8.3") == (RCODE.NXDOMAIN, [])
    assert ask(r, "api", source="10.128.3.2") == (RCODE.NXDOMAIN, []), "not the stackless api.dockyard either"
    # On a shared network the asker's own address decides; an address no task of ours has gets nothing.
    assert ask(r, "db", source="10.128.9.2") == (RCODE.NOERROR, ["10.128.3.5"])
    assert ask(r, "web", source="10.128.9.3") == (RCODE.NOERROR, ["10.128.8.2"])
    assert ask(r, "db", source="10.128.9.4") == (RCODE.NXDOMAIN, [])
    assert ask(r, "db", source="192.0.2.1") == (RCODE.NXDOMAIN, []), "not from a network of ours"
    # `dockyard` as a search domain, for resolvers that do not search: db.shop -> db.shop.dockyard.
    assert ask(r, "db.shop", source="192.0.2.1") == (RCODE.NOERROR, ["10.128.3.5"])
    assert ask(r, "example.com") is None  # forwarded


def test_answers_carry_the_short_ttl() -> None:
    reply = resolver().answer(DNSRecord.question("api.dockyard"), None)
    assert reply is not None and {rr.ttl for rr in reply.rr} == {TTL_SECONDS}
    assert 1 <= TTL_SECONDS <= 5


def test_upstreams_from_resolv_conf_without_our_addresses() -> None:
    text = "# c\nnameserver 10.128.0.1\nnameserver 192.0.2.53\nnameserver fe80::1\nsearch x\n"
    assert upstream_servers(text, exclude=[IPv4Address("10.128.0.1")]) == [("192.0.2.53", 53)]


async def query_udp(port: int, name: str, qtype: str = "A") -> DNSRecord:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, ("127.0.0.1", port))
        await loop.sock_sendall(sock, DNSRecord.question(name, qtype).pack())
        async with asyncio.timeout(5):
            return DNSRecord.parse(await loop.sock_recv(sock, 4096))
    finally:
        sock.close()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a, socket.socket() as b:
        a.bind(("127.0.0.1", 0))
        port = a.getsockname()[1]
        b.bind(("127.0.0.1", port))  # free for TCP too
        return int(port)


async def test_real_server_answers_udp_and_tcp_and_follows_a_delta() -> None:
    t = NameTable()
    s = DnsServer(t, port=free_port(), upstreams=lambda: [])
    try:
        assert await s.listen_on([LOOPBACK], {}) == []
        assert s.addresses == [LOOPBACK]
        t.apply(table(1, True, web__shop__dockyard=["10.128.0.2"]))
        reply = await query_udp(s.port, "web.shop.dockyard")
        assert [str(rr.rdata) for rr in reply.rr] == ["10.128.0.2"]
        t.apply(table(2, False, web__shop__dockyard=["10.128.0.2", "10.128.1.4"]))
        reply = await query_udp(s.port, "web.shop.dockyard")
        assert sorted(str(rr.rdata) for rr in reply.rr) == ["10.128.0.2", "10.128.1.4"]
        assert (await query_udp(s.port, "nope.dockyard")).header.rcode == RCODE.NXDOMAIN
        # No upstream resolvers: a foreign name gets SERVFAIL, not silence.
        assert (await query_udp(s.port, "example.com")).header.rcode == RCODE.SERVFAIL

        reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
        wire = DNSRecord.question("web.shop.dockyard").pack()
        writer.write(struct.pack("!H", len(wire)) + wire)
        (length,) = struct.unpack("!H", await reader.readexactly(2))
        answer = DNSRecord.parse(await reader.readexactly(length))
        writer.close()
        assert answer.q.qtype == QTYPE.A and len(answer.rr) == 2

        await s.listen_on([], {})  # a network left: its listener goes
        assert s.addresses == []
    finally:
        await s.close()


async def test_garbage_and_responses_get_no_answer() -> None:
    s = DnsServer(NameTable(), port=0, upstreams=lambda: [])
    assert await s.respond(b"\x00", None) is None
    response = DNSRecord.question("x.dockyard").reply().pack()
    assert await s.respond(response, None) is None


names_st = st.sampled_from(["a.dockyard", "b.dockyard", "c.shop.dockyard", "d.dockyard"])
addresses_st = st.lists(st.sampled_from(["10.128.0.2", "10.128.1.3", "10.128.2.4"]), max_size=3)


@given(st.lists(st.tuples(st.booleans(), st.dictionaries(names_st, addresses_st, max_size=4)), max_size=12))
def test_table_matches_a_model_of_full_tables_and_in_order_deltas(
    messages: list[tuple[bool, dict[str, list[str]]]],
) -> None:
    t = NameTable()
    model: dict[str, list[str]] = {}
    for version, (full, records) in enumerate(messages, start=1):
        t.apply(
            apb.DnsTable(
                version=version, full=full, records=[apb.DnsRecord(name=n, addresses=a) for n, a in records.items()]
            )
        )
        if full:
            model = {}
        for name, addresses in records.items():
            if addresses:
                model[name] = list(dict.fromkeys(addresses))
            else:
                model.pop(name, None)
        # A replayed delta changes nothing.
        t.apply(apb.DnsTable(version=version, records=[apb.DnsRecord(name="a.dockyard", addresses=["10.9.9.9"])]))
    assert {n: [str(a) for a in t.lookup(n) or ()] for n in model} == model
    assert len(t) == len(model)


async def test_forwards_in_flight_are_bounded_and_the_rest_get_servfail_at_once() -> None:
    clock = FakeClock()
    upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # a resolver that never answers
    upstream.bind(("127.0.0.1", 0))
    upstream.setblocking(False)
    s = DnsServer(
        NameTable(), port=free_port(), clock=clock, upstreams=lambda: [upstream.getsockname()], max_forwards=2
    )
    try:
        assert await s.listen_on([LOOPBACK], {}) == []
        asked = [asyncio.create_task(query_udp(s.port, f"n{i}.example.com")) for i in range(2)]
        await eventually(lambda: s.forwards_in_flight == 2, what="two forwards in flight")
        refused = await query_udp(s.port, "n2.example.com")  # answered at once, no third forward made
        assert refused.header.rcode == RCODE.SERVFAIL and s.forwards_in_flight == 2
        await clock.advance(FORWARD_TIMEOUT_SECONDS)
        assert [(await a).header.rcode for a in asked] == [RCODE.SERVFAIL, RCODE.SERVFAIL]
        assert s.forwards_in_flight == 0, "slots released"
        forwarded = sorted(str(DNSRecord.parse(upstream.recv(4096)).q.qname) for _ in range(2))
        assert forwarded == ["n0.example.com.", "n1.example.com."]
        with pytest.raises(BlockingIOError):
            upstream.recv(4096)
    finally:
        await s.close()
        upstream.close()


async def test_tcp_connections_are_capped_and_an_idle_one_is_closed() -> None:
    clock = FakeClock()
    t = NameTable()
    t.apply(table(1, True, web__dockyard=["10.128.0.2"]))
    s = DnsServer(t, port=free_port(), clock=clock, upstreams=lambda: [], max_tcp_connections=2, tcp_idle_seconds=5)
    wire = DNSRecord.question("web.dockyard").pack()

    async def query(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> list[str]:
        writer.write(struct.pack("!H", len(wire)) + wire)
        (length,) = struct.unpack("!H", await reader.readexactly(2))
        return [str(rr.rdata) for rr in DNSRecord.parse(await reader.readexactly(length)).rr]

    try:
        assert await s.listen_on([LOOPBACK], {}) == []
        first = await asyncio.open_connection("127.0.0.1", s.port)
        second = await asyncio.open_connection("127.0.0.1", s.port)
        assert await query(*first) == ["10.128.0.2"] and await query(*second) == ["10.128.0.2"]
        third_reader, third_writer = await asyncio.open_connection("127.0.0.1", s.port)
        async with asyncio.timeout(5):
            assert await third_reader.read() == b"", "closed at once: two are open"
        third_writer.close()
        # Idle connections are closed after the idle time (virtual), and the slots come back.
        await clock.advance(5)
        async with asyncio.timeout(5):
            assert await first[0].read() == b"" and await second[0].read() == b""
        await eventually(lambda: s.tcp_connections == 0, what="slots released")
        again = await asyncio.open_connection("127.0.0.1", s.port)
        assert await query(*again) == ["10.128.0.2"]
        again[1].close()
        for _, writer in (first, second):
            writer.close()
    finally:
        await s.close()
